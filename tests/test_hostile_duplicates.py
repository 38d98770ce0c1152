"""Duplicates that a template or a hostile feed could fool, through the real pipeline.

Feeds are served on 127.0.0.1 and refreshed by ``Pipeline`` with a clock we set; the articles'
links name other sites but are never fetched (``full_text: false``), and the resolver maps every
name to 127.0.0.1 all the same. Each test runs on SQLite and on PostgreSQL (``database_url``).
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.cli import main
from aggregator.config import Settings, load_settings
from aggregator.dedup import BACKDATE_TRUST, is_near_duplicate, normalise_words, shingles
from aggregator.fetcher import Fetcher
from aggregator.models import RefreshOutcome, StoredArticle
from aggregator.pipeline import Pipeline
from aggregator.storage import Store

from .conftest import DATA, ConfigWriter

# Hours before the real clock: the runs below happen at T0, T0 + 2 h, T0 + 4 h.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
GAZETTE = "https://www.harbourgazette.test"
ORIGINAL, COPIES = "https://original.test", "https://copies.test"


def doc(name: str) -> str:
    """A text of the labelled near-duplicate set (tests/data/dedup/docs)."""
    return (DATA / "dedup" / "docs" / f"{name}.txt").read_text(encoding="utf-8")


def item(guid: str, title: str, link: str, text: str, published: datetime) -> dict[str, Any]:
    return {"guid": guid, "title": title, "link": link, "text": text, "published": published}


def rss(items: list[dict[str, Any]]) -> str:
    """An RSS document whose items carry their text, a paragraph a <p>, in the description."""
    entries = "".join(
        "<item><title>{title}</title><link>{link}</link><guid>{guid}</guid>"
        "<pubDate>{date}</pubDate><description>{body}</description></item>".format(
            title=html.escape(i["title"]),
            link=html.escape(i["link"]),
            guid=html.escape(i["guid"]),
            date=format_datetime(i["published"]),
            body=html.escape("".join(f"<p>{html.escape(p)}</p>" for p in i["text"].split("\n\n"))),
        )
        for i in items
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed</title>{entries}</channel></rss>'


class FeedFarm:
    """Feeds at /<name>, each serving whatever items it was last given."""

    def __init__(self, httpserver: HTTPServer) -> None:
        self.httpserver = httpserver
        self.documents: dict[str, str] = {}

    def serve(self, name: str, items: list[dict[str, Any]]) -> str:
        if name not in self.documents:
            self.httpserver.expect_request(f"/{name}").respond_with_handler(self._handler(name))
        self.documents[name] = rss(items)
        return self.httpserver.url_for(f"/{name}")

    def _handler(self, name: str) -> Callable[[Request], Response]:
        return lambda request: Response(self.documents[name], content_type="application/rss+xml")


@pytest.fixture
def farm(httpserver: HTTPServer) -> FeedFarm:
    return FeedFarm(httpserver)


async def loopback(host: str, port: int) -> list[str]:
    """Every name is 127.0.0.1: nothing here may leave the machine."""
    return ["127.0.0.1"]


def settings_for(write_config: ConfigWriter, database_url: str, feeds: dict[str, str]) -> Settings:
    listed = [{"url": url, "name": name, "full_text": False} for name, url in feeds.items()]
    return load_settings(write_config(feeds=listed, database_url=database_url), environ={})


def refresh_at(settings: Settings, when: datetime) -> list[RefreshOutcome]:
    """One pass over the configured feeds, as `aggregator fetch` runs it, at ``when``."""
    store = Store.open(settings.database_url)

    async def run() -> list[RefreshOutcome]:
        async with Fetcher(settings.fetch, resolver=loopback) as fetcher:
            pipeline = Pipeline(settings, store, fetcher, clock=lambda: when)
            try:
                return await pipeline.refresh_all(settings.feeds)
            finally:
                pipeline.close()

    try:
        outcomes = asyncio.run(run())
    finally:
        store.close()
    assert all(o.ok for o in outcomes), outcomes
    return outcomes


def by_link(settings: Settings) -> dict[str, StoredArticle]:
    store = Store.open(settings.database_url)
    try:
        return {a.url: a for a in store.list_articles()}
    finally:
        store.close()


def digest_headlines(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> list[tuple[str, str]]:
    """(link, headline) of each story of `aggregator digest --output preview.html`."""
    preview = tmp_path / "preview.html"
    assert main(["digest", "--output", str(preview), "--config", str(config)]) == 0
    capsys.readouterr()
    page = preview.read_text(encoding="utf-8")
    return [
        (html.unescape(link), html.unescape(title))
        for link, title in re.findall(r'<h3[^>]*><a href="([^"]+)"[^>]*>([^<]+)</a></h3>', page)
    ]


def also_in(tmp_path: Path) -> list[str]:
    """The "Also in" links of the preview ``digest_headlines`` wrote."""
    page = (tmp_path / "preview.html").read_text(encoding="utf-8")
    return [
        html.unescape(link)
        for block in re.findall(r'<p class="also"[^>]*>(.*?)</p>', page)
        for link in re.findall(r'href="([^"]+)"', block)
    ]


# -- one site's footer is not a story (issue #25, item 10) ----------------------------------------

STORIES = {
    "bike-lanes": ("Council backs bike lanes on Harbour Road", doc("harbour-bike-lanes")),
    "bakery": ("Mill Street bakery wins national bread prize", doc("harbour-bakery")),
}


def test_the_footer_alone_would_have_merged_the_two_stories() -> None:
    # The premise: 24 and 27 words over one 70-word footer, which the containment check takes
    # for one story.
    a, b = (normalise_words(text) for _, text in STORIES.values())
    assert (len(a), len(b)) == (94, 97)
    assert is_near_duplicate(shingles(a), shingles(b))


@pytest.mark.parametrize("polls", [1, 2], ids=["one poll", "two polls"])
def test_two_stories_under_one_footer_stay_two_stories(
    farm: FeedFarm, write_config: ConfigWriter, database_url: str, polls: int
) -> None:
    entries = [
        item(key, title, f"{GAZETTE}/news/{key}", text, T0 - timedelta(hours=2 - n))
        for n, (key, (title, text)) in enumerate(STORIES.items())
    ]
    if polls == 2:  # the second story arrives in the next poll
        url = farm.serve("gazette", entries[:1])
        settings = settings_for(write_config, database_url, {"Harbour Gazette": url})
        refresh_at(settings, T0)
    url = farm.serve("gazette", entries)
    settings = settings_for(write_config, database_url, {"Harbour Gazette": url})
    (outcome,) = refresh_at(settings, T0 + timedelta(hours=1))
    assert outcome.duplicates == 0
    stored = by_link(settings)
    assert len(stored) == 2
    assert [a.duplicate_of for a in stored.values()] == [None, None]


def test_two_stories_under_one_footer_in_two_feeds_of_the_site_stay_two_stories(
    farm: FeedFarm, write_config: ConfigWriter, database_url: str
) -> None:
    # The site's news and business feeds; its links with and without "www.".
    (news_title, news), (business_title, business) = STORIES.values()
    feeds = {"Gazette news": farm.serve("news", [item("n1", news_title, f"{GAZETTE}/news/1", news, T0)])}
    refresh_at(settings_for(write_config, database_url, feeds), T0)
    link = "https://harbourgazette.test/business/1"
    feeds["Gazette business"] = farm.serve("business", [item("b1", business_title, link, business, T0)])
    settings = settings_for(write_config, database_url, feeds)
    refresh_at(settings, T0 + timedelta(hours=1))
    assert [a.duplicate_of for a in by_link(settings).values()] == [None, None]


def test_a_correction_of_the_sites_own_story_is_still_that_story(
    farm: FeedFarm, write_config: ConfigWriter, database_url: str
) -> None:
    # Taking the template off must not split what a site republishes under a new guid and link.
    first = item("1", "Council backs bike lanes", f"{GAZETTE}/news/1", doc("harbour-bike-lanes"), T0)
    again = item(
        "2",
        "Council backs bike lanes (corrected)",
        f"{GAZETTE}/news/2",
        doc("harbour-bike-lanes-corrected"),
        T0,
    )
    url = farm.serve("gazette", [first])
    settings = settings_for(write_config, database_url, {"Harbour Gazette": url})
    refresh_at(settings, T0)
    farm.serve("gazette", [again, first])
    (outcome,) = refresh_at(settings, T0 + timedelta(hours=1))
    assert outcome.duplicates == 1
    stored = by_link(settings)
    assert stored[f"{GAZETTE}/news/2"].duplicate_of == stored[f"{GAZETTE}/news/1"].id


def test_a_wire_story_retold_by_two_sites_is_still_one_story(
    farm: FeedFarm, write_config: ConfigWriter, database_url: str
) -> None:
    # Two outlets share the wire's whole body after leads of their own: across sites that shared
    # end is the evidence, and the template rule must not take it away.
    paragraphs = doc("fire-wire").split("\n\n")
    lead = "Hundreds of people fled their homes overnight as a fast-moving blaze swept through dry hills."
    one = farm.serve("one", [item("1", "Wildfire", f"{ORIGINAL}/fire", doc("fire-wire"), T0)])
    retold = "\n\n".join([lead, *paragraphs[1:]])
    two = farm.serve("two", [item("1", "Blaze forces hundreds out", f"{COPIES}/fire", retold, T0)])
    settings = settings_for(write_config, database_url, {"One": one, "Two": two})
    refresh_at(settings, T0)
    stored = by_link(settings)
    first, second = sorted(stored.values(), key=lambda a: a.id)
    assert first.duplicate_of is None and second.duplicate_of == first.id


# -- a backdated copy does not take over (issue #25, item 11) -------------------------------------

TITLE = "Wildfire forces hundreds from their homes"
SPONSORED = "Sponsored: the fire everyone is talking about"


@pytest.mark.parametrize("copy_first", [False, True], ids=["copy stored after", "copy stored before"])
def test_a_backdated_copy_does_not_lead_the_story(
    farm: FeedFarm,
    write_config: ConfigWriter,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    copy_first: bool,
) -> None:
    original = item("fire-1", TITLE, f"{ORIGINAL}/fire", doc("fire-wire"), T0 - timedelta(hours=1))
    backdated = item(
        "s-1", SPONSORED, f"{COPIES}/s-1", "Sponsored. " + doc("fire-wire"), datetime(1990, 1, 1, tzinfo=UTC)
    )
    first, second = ("Copies", backdated), ("Original News", original)
    if not copy_first:
        first, second = second, first
    feeds = {first[0]: farm.serve(first[0].split()[0].lower(), [first[1]])}
    refresh_at(settings_for(write_config, database_url, feeds), T0)
    feeds[second[0]] = farm.serve(second[0].split()[0].lower(), [second[1]])
    settings = settings_for(write_config, database_url, feeds)
    refresh_at(settings, T0 + timedelta(hours=2))
    stored = by_link(settings)
    lead, copy = stored[f"{ORIGINAL}/fire"], stored[f"{COPIES}/s-1"]
    assert lead.duplicate_of is None and copy.duplicate_of == lead.id
    config = tmp_path / "config" / "aggregator.yaml"
    assert digest_headlines(config, tmp_path, capsys) == [(f"{ORIGINAL}/fire", TITLE)]
    assert also_in(tmp_path) == [f"{COPIES}/s-1"]


def test_an_original_polled_late_still_leads_the_story(
    farm: FeedFarm,
    write_config: ConfigWriter,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A copy (dated honestly) is stored first; the original, published before it, reaches us
    # hours later because its feed is polled once a day: its date is a day before we see it, well
    # within BACKDATE_TRUST, and it takes the lead.
    seen_late = T0 + timedelta(hours=4)
    published = seen_late - timedelta(hours=24)
    assert seen_late - published < BACKDATE_TRUST
    copy = item("c-1", "Fire: hundreds flee", f"{COPIES}/c-1", doc("fire-herald"), T0 - timedelta(hours=1))
    feeds = {"Copies": farm.serve("copies", [copy])}
    refresh_at(settings_for(write_config, database_url, feeds), T0)
    feeds["Original News"] = farm.serve(
        "original", [item("fire-1", TITLE, f"{ORIGINAL}/fire", doc("fire-wire"), published)]
    )
    settings = settings_for(write_config, database_url, feeds)
    refresh_at(settings, seen_late)
    stored = by_link(settings)
    lead, later = stored[f"{ORIGINAL}/fire"], stored[f"{COPIES}/c-1"]
    assert lead.duplicate_of is None and later.duplicate_of == lead.id
    config = tmp_path / "config" / "aggregator.yaml"
    assert digest_headlines(config, tmp_path, capsys) == [(f"{ORIGINAL}/fire", TITLE)]
    assert also_in(tmp_path) == [f"{COPIES}/c-1"]


def test_old_backlogs_of_feeds_added_together_keep_their_publishers_order(
    farm: FeedFarm, write_config: ConfigWriter, database_url: str
) -> None:
    # Two feeds subscribed today both carry a story of 2017: neither date is believed, yet the
    # copies came in together (within SEEN_TOGETHER), so the earlier published leads even though
    # the other feed answered first.
    retold = item(
        "c-1",
        "Fire: hundreds flee",
        f"{COPIES}/c-1",
        doc("fire-herald"),
        datetime(2017, 8, 15, 11, tzinfo=UTC),
    )
    feeds = {"Copies": farm.serve("copies", [retold])}
    refresh_at(settings_for(write_config, database_url, feeds), T0)
    original = item(
        "fire-1", TITLE, f"{ORIGINAL}/fire", doc("fire-wire"), datetime(2017, 8, 15, 9, 30, tzinfo=UTC)
    )
    feeds["Original News"] = farm.serve("original", [original])
    settings = settings_for(write_config, database_url, feeds)
    refresh_at(settings, T0 + timedelta(minutes=10))
    stored = by_link(settings)
    lead, copy = stored[f"{ORIGINAL}/fire"], stored[f"{COPIES}/c-1"]
    assert lead.duplicate_of is None and copy.duplicate_of == lead.id
