"""Extraction in the worker processes: per-feed selector, time limit, hostile pages."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator import metrics
from aggregator.config import Settings, load_settings
from aggregator.errors import ConfigError
from aggregator.fetcher import Fetcher
from aggregator.models import RefreshOutcome, StoredArticle
from aggregator.pipeline import Pipeline, start_workers
from aggregator.storage import Store

from .conftest import ConfigWriter, base_url, fixture_text, refresh, stored_articles

RSS = (
    '<?xml version="1.0"?><rss version="2.0"><channel><title>T</title><link>{base}/</link>'
    "{items}</channel></rss>"
)
ITEM = (
    "<item><title>{title}</title><link>{base}{path}</link><guid>{path}</guid>"
    "<description>The feed's own words about {title}.</description></item>"
)


def stored(settings: Settings) -> dict[str, StoredArticle]:
    return {a.title: a for a in stored_articles(settings)}


def serve_pages(httpserver: HTTPServer, pages: dict[str, tuple[bytes | str, str]]) -> str:
    base = base_url(httpserver)
    items = "".join(
        ITEM.format(title=title, base=base, path=path)
        for path, (_, _) in pages.items()
        for title in [path.strip("/")]
    )
    for path, (body, content_type) in pages.items():
        httpserver.expect_request(path).respond_with_data(body, content_type=content_type)
    httpserver.expect_request("/feed").respond_with_data(
        RSS.format(base=base, items=items), content_type="application/rss+xml"
    )
    return httpserver.url_for("/feed")


@pytest.mark.parametrize(
    ("selector", "has_story", "extraction"),
    [
        (None, True, "page"),
        (".entry-content", True, "page"),
        # The author's bio only: a selector naming the wrong part proves it is applied.
        (".author-bio", False, "page"),
        # Nothing matches: the feed's own text.
        ("#no-such-element", False, "feed"),
    ],
)
def test_selector_names_the_article_body(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    selector: str | None,
    has_story: bool,
    extraction: str,
) -> None:
    page = fixture_text("pages/gazette-haftar.html")
    feed = serve_pages(httpserver, {"/story": (page, "text/html")})
    entry = {"url": feed} if selector is None else {"url": feed, "selector": selector}
    settings = load_settings(write_config(feeds=[entry]), environ={})
    refresh(settings)
    (article,) = stored(settings).values()
    assert ("A meeting between General Khalifa Haftar" in article.text) is has_story
    assert article.extraction == extraction


def test_bad_selector_is_a_config_error(write_config: ConfigWriter) -> None:
    config = write_config(feeds=[{"url": "https://a.example/feed", "selector": "div[[["}])
    with pytest.raises(ConfigError, match="selector"):
        load_settings(config, environ={})


def test_a_stuck_extraction_is_abandoned_for_the_feed_text(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    page = fixture_text("pages/gazette-haftar.html")
    feed = serve_pages(httpserver, {"/story": (page, "text/html")})
    # One real worker process, and a limit far below what extracting this page takes.
    config = write_config(feeds=[{"url": feed}], extract={"workers": 1, "timeout": "1ms"})
    settings = load_settings(config, environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok and outcome.new_articles == 1
    (article,) = stored(settings).values()
    assert article.extraction == "feed"
    assert article.text == "The feed's own words about story."


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400, "text/html"),  # binary labelled HTML
        ("<html><body>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000 + "</body></html>", "text/html"),
        (
            "<html><body><p>" + "caf\udcff ".replace("\udcff", "") * 10 + "</p></body></html>",
            "text/html; charset=utf-16",
        ),  # an encoding the bytes are not in
        (b"<html><body><p>Latin-1 \xe9t\xe9 \xff\xfe</p></body></html>", "text/html; charset=utf-8"),
    ],
    ids=["binary", "deeply-nested", "wrong-charset", "invalid-utf8"],
)
def test_hostile_pages_fall_back_to_the_feed(
    httpserver: HTTPServer, write_config: ConfigWriter, body: bytes | str, content_type: str
) -> None:
    feed = serve_pages(httpserver, {"/page": (body, content_type)})
    settings = load_settings(write_config(feeds=[{"url": feed}]), environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok and outcome.new_articles == 1
    (article,) = stored(settings).values()
    assert article.text  # never empty when the feed had text
    assert article.extraction in ("feed", "page")


def test_oversized_page_falls_back(httpserver: HTTPServer, write_config: ConfigWriter) -> None:
    big = "<html><body><p>" + "word " * 2_000_000 + "</p></body></html>"  # about 10 MB
    feed = serve_pages(httpserver, {"/big": (big, "text/html")})
    settings = load_settings(write_config(feeds=[{"url": feed}], fetch={"max_bytes": "1MB"}), environ={})
    (outcome,) = refresh(settings)
    assert outcome.ok
    (article,) = stored(settings).values()
    assert article.extraction == "feed"


def fetch_command(config: Path) -> str:
    """`aggregator fetch` in a process of its own, returning its log: this test process runs the
    HTTP server's thread, and start_workers does not fork a process that runs threads."""
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "fetch", "--log-level", "debug", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_fetch_forks_its_workers_when_a_feed_will_be_parsed(
    httpserver: HTTPServer, write_config: ConfigWriter, database_url: str
) -> None:
    page = fixture_text("pages/gazette-haftar.html")
    serve_pages(httpserver, {"/story": (page, "text/html"), "/other": (page, "text/html")})
    base = base_url(httpserver)
    version = {"etag": '"1"', "items": ["story"]}

    def feed(request: Request) -> Response:
        if request.headers.get("If-None-Match") == version["etag"]:
            return Response(status=304, headers={"ETag": version["etag"]})
        items = "".join(ITEM.format(title=t, base=base, path=f"/{t}") for t in version["items"])
        return Response(
            RSS.format(base=base, items=items),
            content_type="application/rss+xml",
            headers={"ETag": version["etag"]},
        )

    httpserver.expect_request("/etag-feed").respond_with_handler(feed)
    config = write_config(
        feeds=[{"url": httpserver.url_for("/etag-feed")}], extract={"workers": 2}, database_url=database_url
    )
    settings = load_settings(config, environ={})

    # Never fetched: the workers are forked before the pass, and extract the page.
    assert "started worker processes=2 method=fork" in fetch_command(config)
    (article,) = stored(settings).values()
    assert article.extraction == "page" and "General Khalifa Haftar" in article.text
    # Every feed keeps an ETag, and answers 304: no worker is started.
    assert "started worker processes" not in fetch_command(config)
    # The feed changed after all: workers are spawned once it has been fetched.
    version.update(etag='"2"', items=["story", "other"])
    assert "started worker processes=2 method=spawn" in fetch_command(config)
    assert sorted(stored(settings)) == ["other", "story"]


def test_workers_are_spawned_in_a_process_that_runs_threads(write_config: ConfigWriter) -> None:
    settings = load_settings(write_config(extract={"workers": 1}), environ={})
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        pool = start_workers(settings, fork=True)
        assert pool is not None
        try:
            assert pool.start_method == "spawn"
            assert asyncio.run(asyncio.wait_for(pool.run(os.getpid), 60)) != os.getpid()
        finally:
            pool.shutdown()
    finally:
        stop.set()
        other.join()
    assert start_workers(load_settings(write_config(extract={"workers": 0}), environ={}), fork=True) is None


def worker_pids() -> list[int]:
    """This process's spawned worker processes, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def serve_story_with(httpserver: HTTPServer, on_first_request: Callable[[], None]) -> tuple[str, list[str]]:
    """A feed of the entries named in the list returned (one, "story", to begin with), each a
    page; the story's page, on its first request, first runs ``on_first_request``."""
    page = fixture_text("pages/gazette-haftar.html")
    base = base_url(httpserver)
    entries = ["story"]
    served: list[bool] = []

    def feed(request: Request) -> Response:
        items = "".join(ITEM.format(title=name, base=base, path=f"/{name}") for name in entries)
        return Response(RSS.format(base=base, items=items), content_type="application/rss+xml")

    def story(request: Request) -> Response:
        if not served:
            served.append(True)
            on_first_request()
        return Response(page, content_type="text/html")

    httpserver.expect_request("/feed").respond_with_handler(feed)
    httpserver.expect_request("/story").respond_with_handler(story)
    httpserver.expect_request("/later").respond_with_data(page, content_type="text/html")
    return httpserver.url_for("/feed"), entries


def refresh_twice(settings: Settings, between: Callable[[], None]) -> list[list[RefreshOutcome]]:
    """Two passes with one Pipeline, as the service makes them: the pool outlives a pass."""
    store = Store.open(settings.database_url)

    async def go() -> list[list[RefreshOutcome]]:
        async with Fetcher(settings.fetch) as fetcher:
            pipeline = Pipeline(settings, store, fetcher)
            try:
                first = await pipeline.refresh_all(settings.feeds)
                between()
                return [first, await pipeline.refresh_all(settings.feeds)]
            finally:
                pipeline.close()

    try:
        return asyncio.run(asyncio.wait_for(go(), 60))  # a pool left with a stuck worker hangs
    finally:
        store.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_worker_is_replaced_and_its_jobs_run_again(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    killed: list[int] = []

    def kill_a_worker() -> None:
        (pid, *_) = worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        time.sleep(0.5)  # the pool sees its worker die before the page reaches it

    feed, entries = serve_story_with(httpserver, kill_a_worker)
    settings = load_settings(write_config(feeds=[{"url": feed}], extract={"workers": 2}), environ={})
    first, second = refresh_twice(settings, lambda: entries.append("later"))
    assert killed and killed[0] not in worker_pids()
    assert first[0].ok and first[0].new_articles == 1, first
    assert second[0].ok and second[0].new_articles == 1, second
    articles = stored(settings)
    assert sorted(articles) == ["later", "story"]
    # The story's extraction failed with the worker that died, and ran again in the new pool.
    assert all(a.extraction == "page" and "General Khalifa Haftar" in a.text for a in articles.values())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_stuck_worker_is_killed_and_the_pool_carries_on(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    stopped: list[int] = []

    def stop_the_worker() -> None:
        # Stopped, it cannot take its own alarm: as stuck as a worker in C code gets.
        (pid,) = worker_pids()
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    feed, entries = serve_story_with(httpserver, stop_the_worker)
    config = write_config(feeds=[{"url": feed}], extract={"workers": 1, "timeout": "500ms"})
    settings = load_settings(config, environ={})
    timeouts = ("aggregator_extractions_total", (("result", "timeout"),))
    before = metrics.snapshot().get(timeouts, 0)
    started = time.monotonic()
    try:
        first, second = refresh_twice(settings, lambda: entries.append("later"))
    finally:
        for pid in set(stopped) & set(worker_pids()):
            os.kill(pid, signal.SIGKILL)  # left stopped by a failure: not for the next tests
    assert time.monotonic() - started < 30
    assert stopped and stopped[0] not in worker_pids()  # killed, not left stopped
    assert first[0].ok and first[0].new_articles == 1, first
    assert second[0].ok and second[0].new_articles == 1, second
    articles = stored(settings)
    assert articles["story"].extraction == "feed"  # the stuck page: the feed's own text
    assert articles["later"].extraction == "page"  # extracted by the worker that replaced it
    assert metrics.snapshot().get(timeouts, 0) == before + 1  # for /metrics
