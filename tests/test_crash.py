"""`kill -9` in the middle of a refresh, then a restart: nothing lost, nothing stored twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.config import load_settings

from .conftest import ConfigWriter, base_url, stored_articles, wait_for

FEEDS, ENTRIES = 5, 4


def slow_page(request: Request) -> Response:
    time.sleep(0.3)  # bounded: 20 pages in all
    words = " ".join(f"{request.path.strip('/').replace('/', '')}w{i}" for i in range(150))
    return Response(f"<html><body><article><p>{words}.</p></article></body></html>", content_type="text/html")


def serve_farm(httpserver: HTTPServer) -> list[str]:
    base = base_url(httpserver)
    urls = []
    for f in range(FEEDS):
        items = "".join(
            f"<item><title>Feed {f} story {e}</title><link>{base}/p/{f}/{e}</link>"
            f"<guid>f{f}e{e}</guid><description>Short.</description></item>"
            for e in range(ENTRIES)
        )
        httpserver.expect_request(f"/feed{f}").respond_with_data(
            f'<?xml version="1.0"?><rss version="2.0"><channel><title>F{f}</title>'
            f"<link>{base}/</link>{items}</channel></rss>",
            content_type="application/rss+xml",
        )
        urls.append(httpserver.url_for(f"/feed{f}"))
    for f in range(FEEDS):
        for e in range(ENTRIES):
            httpserver.expect_request(f"/p/{f}/{e}").respond_with_handler(slow_page)
    return urls


def start(config: Path, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "AGGREGATOR_SERVICE_HEARTBEAT_FILE": str(tmp_path / "hb")}
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: kill -9 takes the workers too
    )


def test_kill_9_mid_refresh_then_restart(
    httpserver: HTTPServer, write_config: ConfigWriter, tmp_path: Path
) -> None:
    urls = serve_farm(httpserver)
    config = write_config(
        feeds=[{"url": u} for u in urls],
        service={"check_every": "1s"},
        extract={"workers": 1},
        fetch={"per_host": 2},
    )
    settings = load_settings(config, environ={})
    pages_fetched = lambda: sum(1 for e in httpserver.log if e[0].path.startswith("/p/"))  # noqa: E731
    process = start(config, tmp_path)
    try:
        # Some pages fetched, the refresh not finished: kill it the hard way.
        assert wait_for(lambda: pages_fetched() >= 4, 30)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    before = len(stored_articles(settings))
    assert before < FEEDS * ENTRIES  # the kill did interrupt the work
    # The lock of the killed service died with it: a restart is allowed and completes the work.
    process = start(config, tmp_path)
    try:
        assert wait_for(lambda: len(stored_articles(settings)) >= FEEDS * ENTRIES, 60)
        time.sleep(1.5)  # a further pass must add nothing
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err
    articles = stored_articles(settings)
    assert len(articles) == FEEDS * ENTRIES
    assert len({(a.feed_url, a.title) for a in articles}) == FEEDS * ENTRIES
    assert all(a.extraction == "page" for a in articles)
    database = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
