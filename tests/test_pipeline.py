from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from aggregator.config import Settings, load_settings
from aggregator.storage import Store

from .conftest import ConfigWriter, refresh, serve, serve_gazette, stored_articles

RSS = """<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>
<link>{base}/</link>{items}</channel></rss>"""
ITEM = (
    "<item><title>{title}</title><link>{link}</link><guid>{guid}</guid>"
    "<description>{description}</description></item>"
)


def stored(settings: Settings) -> list:  # type: ignore[type-arg]
    return stored_articles(settings)


def page_requests(httpserver: HTTPServer, prefix: str) -> int:
    return sum(1 for entry in httpserver.log if entry[0].path.startswith(prefix))


def test_the_same_page_in_two_feeds_is_fetched_once(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    gazette = serve_gazette(httpserver)
    base = httpserver.url_for("/").rstrip("/")
    link = f"{base}/gazette/haftar-meets-lavrov/?utm_campaign=aggregated"
    other = RSS.format(
        title="Aggregated",
        base=base,
        items=ITEM.format(title="Haftar in Moscow", link=link, guid="agg-1", description="Short."),
    )
    httpserver.expect_request("/aggregated/feed").respond_with_data(other, content_type="application/rss+xml")
    config = write_config(feeds=[{"url": gazette}])
    settings = load_settings(config, environ={})
    refresh(settings)
    assert page_requests(httpserver, "/gazette/haftar") == 1
    config = write_config(feeds=[{"url": gazette}, {"url": httpserver.url_for("/aggregated/feed")}])
    settings = load_settings(config, environ={})
    outcomes = {o.feed_url: o for o in refresh(settings)}
    assert page_requests(httpserver, "/gazette/haftar") == 1  # checked by URL before fetching
    assert outcomes[httpserver.url_for("/aggregated/feed")].duplicates == 1
    copies = [a for a in stored(settings) if "haftar" in a.url]
    assert sorted(a.duplicate_of is None for a in copies) == [False, True]


def test_full_text_off_fetches_no_pages(httpserver: HTTPServer, write_config: ConfigWriter) -> None:
    gazette = serve_gazette(httpserver)
    settings = load_settings(write_config(feeds=[{"url": gazette, "full_text": False}]), environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok and outcome.new_articles == 3
    assert page_requests(httpserver, "/gazette/") == 1  # the feed itself only
    assert {a.extraction for a in stored(settings)} == {"feed"}


def test_unreachable_or_non_html_pages_fall_back_to_the_feed_text(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    base = httpserver.url_for("/").rstrip("/")
    items = "".join(
        [
            ITEM.format(
                title="Gone",
                link=f"{base}/gone",
                guid="1",
                description="The feed's own words about a page that is gone.",
            ),
            ITEM.format(title="PDF", link=f"{base}/doc.pdf", guid="2", description="A document, not a page."),
            ITEM.format(title="Nothing", link=f"{base}/gone2", guid="3", description=""),
        ]
    )
    httpserver.expect_request("/feed").respond_with_data(
        RSS.format(title="Mixed", base=base, items=items), content_type="application/rss+xml"
    )
    httpserver.expect_request("/doc.pdf").respond_with_data(b"%PDF-1.4", content_type="application/pdf")
    settings = load_settings(write_config(feeds=[{"url": httpserver.url_for("/feed")}]), environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok and outcome.new_articles == 3
    by_title = {a.title: a for a in stored(settings)}
    assert by_title["Gone"].extraction == "feed"
    assert by_title["Gone"].text == "The feed's own words about a page that is gone."
    assert by_title["PDF"].extraction == "feed"
    assert (by_title["Nothing"].extraction, by_title["Nothing"].text) == ("none", "")


def test_one_failing_feed_does_not_stop_the_others(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path
) -> None:
    good = serve(httpserver, "/blog/feed", "feeds/full-content.rss", "application/rss+xml")
    httpserver.expect_request("/500").respond_with_data("oops", status=500)
    broken = serve(httpserver, "/broken", "feeds/broken.xml", "application/xml")
    feeds = [
        {"url": httpserver.url_for("/500")},
        {"url": broken},
        {"url": good},
        {"url": "http://127.0.0.1:1/closed"},
    ]
    settings = load_settings(write_config(feeds=feeds), environ={})
    outcomes = {o.feed_url: o for o in refresh(settings)}
    assert outcomes[good].ok and outcomes[good].new_articles == 2
    assert outcomes[httpserver.url_for("/500")].error_kind == "http"
    assert outcomes[httpserver.url_for("/500")].status == 500
    assert outcomes[broken].error_kind in ("parse", "not_a_feed")
    assert outcomes["http://127.0.0.1:1/closed"].error_kind == "connect"


@pytest.mark.parametrize(
    "hostile", ["<script>alert(1)</script>", 'onclick="steal()"', "javascript:", "pixel.gif"]
)
def test_feed_html_is_sanitised_before_storing(
    httpserver: HTTPServer, write_config: ConfigWriter, hostile: str
) -> None:
    feed = serve(httpserver, "/blog/feed", "feeds/full-content.rss", "application/rss+xml")
    settings = load_settings(write_config(feeds=[{"url": feed, "full_text": False}]), environ={})
    refresh(settings)
    raw = (Path(__file__).parent / "data/feeds/full-content.rss").read_text()
    assert hostile.split("(")[0].split("=")[0] in raw  # the fixture really carries it
    for article in stored(settings):
        assert hostile not in article.html


def test_permanent_redirect_is_adopted_after_three_polls(
    httpserver: HTTPServer, write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    from aggregator.cli import main

    new = serve(httpserver, "/new/feed", "feeds/full-content.rss", "application/rss+xml")
    httpserver.expect_request("/old/feed").respond_with_data("", status=301, headers={"Location": new})
    old = httpserver.url_for("/old/feed")
    config = write_config(feeds=[{"url": old, "full_text": False}])
    settings = load_settings(config, environ={})
    for poll in range(1, 4):
        refresh(settings)
        store = Store.open(settings.database_url)
        state = store.feed_state(old)
        store.close()
        if poll < 3:
            assert (state.moved_to, state.moved_count, state.fetch_url) == (new, poll, None)
    assert (state.fetch_url, state.fetch_url_reason) == (new, "moved")
    old_requests = sum(1 for e in httpserver.log if e[0].path == "/old/feed")
    refresh(settings)
    assert sum(1 for e in httpserver.log if e[0].path == "/old/feed") == old_requests  # polls new
    assert main(["feeds", "--config", str(config)]) == 0
    assert f"moved permanently to {new}: update feeds.yaml" in capsys.readouterr().out


def test_not_modified_writes_only_the_fetch_record(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    from werkzeug import Request, Response

    base = httpserver.url_for("/").rstrip("/")
    body = RSS.format(
        title="Undated",
        base=base,
        items="".join(
            ITEM.format(title=f"T{i}", link=f"{base}/{i}", guid=i, description="Text.") for i in range(2)
        ),
    )

    def handler(request: Request) -> Response:
        if request.headers.get("If-Modified-Since") == "Mon, 14 Aug 2017 10:00:00 GMT":
            return Response(status=304)
        return Response(
            body,
            content_type="application/rss+xml",
            headers={"Last-Modified": "Mon, 14 Aug 2017 10:00:00 GMT", "Cache-Control": "max-age=7200"},
        )

    httpserver.expect_request("/feed").respond_with_handler(handler)
    settings = load_settings(
        write_config(feeds=[{"url": httpserver.url_for("/feed"), "full_text": False}]), environ={}
    )
    refresh(settings)
    before = stored(settings)
    (outcome,) = refresh(settings)
    assert outcome.not_modified
    assert stored(settings) == before
    store = Store.open(settings.database_url)
    (status,) = store.feed_statuses([(httpserver.url_for("/feed"), "f")])
    store.close()
    assert status.last_status == 304
    assert status.poll_interval == 7200  # Cache-Control max-age from the full response


def test_per_host_limit(httpserver: HTTPServer, write_config: ConfigWriter) -> None:
    import threading
    import time as clock

    from werkzeug import Request, Response

    lock = threading.Lock()
    active = {"now": 0, "peak": 0}
    body = (Path(__file__).parent / "data/feeds/full-content.rss").read_text()

    def slow(request: Request) -> Response:
        with lock:
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
        clock.sleep(0.2)
        with lock:
            active["now"] -= 1
        return Response(body, content_type="application/rss+xml")

    for i in range(6):
        httpserver.expect_request(f"/feed{i}").respond_with_handler(slow)
    feeds = [{"url": httpserver.url_for(f"/feed{i}"), "full_text": False} for i in range(6)]
    settings = load_settings(write_config(feeds=feeds, fetch={"per_host": 2}), environ={})
    outcomes = refresh(settings)
    assert all(o.ok for o in outcomes)
    assert active["peak"] == 2


def test_missing_and_future_dates(httpserver: HTTPServer, write_config: ConfigWriter) -> None:
    base = httpserver.url_for("/").rstrip("/")
    items = (
        "<item><title>Undated</title><link>" + base + "/u</link><guid>u</guid>"
        "<description>No date.</description></item>"
        "<item><title>Future</title><link>" + base + "/f</link><guid>f</guid>"
        "<pubDate>Fri, 01 Jan 2100 00:00:00 GMT</pubDate><description>Later.</description></item>"
    )
    httpserver.expect_request("/feed").respond_with_data(
        RSS.format(title="Dates", base=base, items=items), content_type="application/rss+xml"
    )
    settings = load_settings(
        write_config(feeds=[{"url": httpserver.url_for("/feed"), "full_text": False}]), environ={}
    )
    refresh(settings)
    for article in stored(settings):
        assert article.published is not None
        assert abs((article.published - article.first_seen).total_seconds()) < 60


STORY_PAGE = (
    "<html><head><title>Harbour story</title></head><body><article><h1>Harbour story</h1>"
    "<p class='byline'>By <span class='author'>Jane Roe</span></p>"
    "<time datetime='2024-05-06'>6 May 2024</time>{paragraphs}</article></body></html>"
).format(
    paragraphs="".join(
        f"<p>Paragraph {i} of the story tells of the harbour, the boats and the people who sail "
        "them out every morning before the town wakes.</p>"
        for i in range(8)
    )
)


def test_the_page_fills_in_the_date_and_author_the_feed_lacks(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    base = httpserver.url_for("/").rstrip("/")
    items = (
        f"<item><title>Undated</title><link>{base}/p/u</link><guid>u</guid>"
        "<description>Short.</description></item>"
        f"<item><title>Future</title><link>{base}/p/f</link><guid>f</guid>"
        "<pubDate>Fri, 01 Jan 2100 00:00:00 GMT</pubDate><description>Short.</description></item>"
        f"<item><title>Dated</title><link>{base}/p/d</link><guid>d</guid>"
        "<pubDate>Sat, 01 Jun 2024 08:00:00 GMT</pubDate><dc:creator>Feed Writer</dc:creator>"
        "<description>Short.</description></item>"
    )
    feed = RSS.format(title="Harbour", base=base, items=items).replace(
        '<rss version="2.0">', '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    )
    httpserver.expect_request("/feed").respond_with_data(feed, content_type="application/rss+xml")
    for name in ("u", "f", "d"):
        httpserver.expect_request(f"/p/{name}").respond_with_data(STORY_PAGE, content_type="text/html")
    settings = load_settings(write_config(feeds=[{"url": httpserver.url_for("/feed")}]), environ={})
    refresh(settings)
    by_title = {a.title: a for a in stored(settings)}
    assert {a.extraction for a in by_title.values()} == {"page"}
    # No date, or an absurd one: the page's date, not the time first seen.
    for title in ("Undated", "Future"):
        assert by_title[title].published == datetime(2024, 5, 6, tzinfo=UTC)
        assert by_title[title].author == "Jane Roe"  # the byline in the page's text
    # The feed's date wins; its author too over a byline the page gives only in its text.
    assert by_title["Dated"].published == datetime(2024, 6, 1, 8, tzinfo=UTC)
    assert by_title["Dated"].author == "Feed Writer"


@pytest.mark.parametrize("full_text", [False, True], ids=["feed-text", "full-text"])
def test_fetched_feeds_waiting_for_a_worker_are_bounded_by_the_concurrency(
    httpserver: HTTPServer, write_config: ConfigWriter, full_text: bool
) -> None:
    """Feeds are fetched faster than they are parsed and stored: a fetched body must wait in
    memory only while fewer than fetch.concurrency others do (10,000 feeds held 600 MB). With
    full text, a feed waits for its pages too: that wait counts, or every feed of a pass is
    fetched long before its pages and held in memory until they come."""
    import asyncio
    import threading

    from werkzeug import Request, Response

    from aggregator.fetcher import Fetcher
    from aggregator.pipeline import Pipeline

    concurrency, feeds = 2, 10
    items_per_feed = 4 if full_text else 100
    lock = threading.Lock()
    counts = {"served": 0, "done": 0, "peak": 0}

    def respond(request: Request) -> Response:
        index = request.path.removeprefix("/bound/")
        items = "".join(
            ITEM.format(
                title=f"Story {index}-{n}",
                link=f"{httpserver.url_for('/')}story/{index}/{n}",
                guid=f"{index}-{n}",
                description=f"Story {index}-{n}: " + "words of the story " * 60,
            )
            for n in range(items_per_feed)
        )
        with lock:
            counts["served"] += 1
            counts["peak"] = max(counts["peak"], counts["served"] - counts["done"])
        return Response(
            RSS.format(title=f"Feed {index}", base="", items=items), content_type="application/rss+xml"
        )

    for i in range(feeds):
        httpserver.expect_request(f"/bound/{i}").respond_with_handler(respond)
    paragraphs = "".join(f"<p>Paragraph {n} of the story, told at some length here.</p>" for n in range(8))
    httpserver.expect_request(re.compile(r"/story/.*")).respond_with_data(
        STORY_PAGE.format(paragraphs=paragraphs), content_type="text/html"
    )
    config = write_config(
        feeds=[{"url": httpserver.url_for(f"/bound/{i}"), "full_text": full_text} for i in range(feeds)],
        fetch={"concurrency": concurrency, "max_entries": 100},
    )
    settings = load_settings(config, environ={})

    def on_done(_outcome: object) -> None:
        with lock:
            counts["done"] += 1

    async def go() -> list:  # type: ignore[type-arg]
        store = Store.open(settings.database_url)
        try:
            async with Fetcher(settings.fetch) as fetcher:
                pipeline = Pipeline(settings, store, fetcher)
                try:
                    return await pipeline.refresh_all(settings.feeds, on_done=on_done)
                finally:
                    pipeline.close()
        finally:
            store.close()

    outcomes = asyncio.run(go())
    assert all(o.ok and o.new_articles == items_per_feed for o in outcomes)
    assert counts["served"] == feeds
    # Fetched (served) but not yet stored (done): never more than the concurrency.
    assert 1 <= counts["peak"] <= concurrency


def test_a_slow_sites_pages_do_not_hold_up_another_sites(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    """Pages wait for fetch.concurrency places from their fetch to their extraction. Pages of one
    slow site, queued for its host limit, must not hold all the places while another site's
    pages wait: two host names (our resolver maps both to 127.0.0.1), one serving slow pages."""
    import threading
    import time as clock

    from werkzeug import Request, Response

    port = httpserver.port
    started = clock.monotonic()
    lock = threading.Lock()
    served: dict[str, list[float]] = {"slow": [], "fast": []}

    def feed(site: str, items: int) -> str:
        return RSS.format(
            title=f"The {site} site",
            base="",
            items="".join(
                ITEM.format(
                    title=f"{site} story {n}",
                    link=f"http://{site}.example.test:{port}/{site}-page/{n}",
                    guid=f"{site}-{n}",
                    description=f"{site} story {n}, the feed's short text.",
                )
                for n in range(items)
            ),
        )

    def slow_feed(request: Request) -> Response:
        return Response(feed("slow", 8), content_type="application/rss+xml")

    def fast_feed(request: Request) -> Response:
        clock.sleep(0.3)  # the slow site's pages are queued first
        return Response(feed("fast", 2), content_type="application/rss+xml")

    def page(site: str, delay: float):  # type: ignore[no-untyped-def]
        def respond(request: Request) -> Response:
            clock.sleep(delay)
            with lock:
                served[site].append(clock.monotonic() - started)
            return Response(STORY_PAGE, content_type="text/html")

        return respond

    httpserver.expect_request("/slow-feed").respond_with_handler(slow_feed)
    httpserver.expect_request("/fast-feed").respond_with_handler(fast_feed)
    httpserver.expect_request(re.compile(r"/slow-page/.*")).respond_with_handler(page("slow", 0.6))
    httpserver.expect_request(re.compile(r"/fast-page/.*")).respond_with_handler(page("fast", 0.0))

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    feeds = [
        {"url": f"http://slow.example.test:{port}/slow-feed"},
        {"url": f"http://fast.example.test:{port}/fast-feed"},
    ]
    settings = load_settings(write_config(feeds=feeds, fetch={"concurrency": 4, "per_host": 1}), environ={})
    outcomes = refresh(settings, resolver=resolver)
    assert all(o.ok for o in outcomes)
    assert len(served["slow"]) == 8 and len(served["fast"]) == 2
    # The slow site's eight pages take 8 × 0.6 s one at a time; the fast site's come at once
    # (behind the slow site's queue, they came after its sixth page, some 3 s in).
    assert max(served["fast"]) < 1.5 < 4.0 < max(served["slow"])
