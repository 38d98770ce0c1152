"""A catalogue of hostile and broken feed servers, all on 127.0.0.1.

Each case ends with the error (or warning) recorded on its feed, and the good feeds fetched.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.cli import main
from aggregator.config import Settings, load_settings
from aggregator.models import FeedStatus, RefreshOutcome
from aggregator.storage import Store

from .conftest import ConfigWriter
from .conftest import refresh as refresh_all

GOOD_ITEMS = "".join(
    f"<item><title>Good {i}</title><link>{{base}}/good/{i}</link><guid>good-{i}</guid>"
    f"<pubDate>Tue, 15 Aug 2017 0{i}:00:00 GMT</pubDate><description>Story {i}.</description></item>"
    for i in range(3)
)
RSS = (
    '<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel><title>{title}</title>'
    "<link>{{base}}/</link>{items}</channel></rss>"
)
BOMB = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    + ']><rss version="2.0"><channel><title>&lol9;</title><item><title>x</title></item>'
    "</channel></rss>"
)
JSON_FEED = {
    "version": "https://jsonfeed.org/version/1.1",
    "title": "JSON Site",
    "home_page_url": "/",
    "items": [
        {
            "id": "j1",
            "url": "/json/1",
            "title": "JSON one",
            "content_text": "Plain text.",
            "date_published": "2017-08-15T10:00:00Z",
            "authors": [{"name": "J. Son"}],
        },
        {"id": 2, "url": "/json/2", "title": "JSON two", "content_html": "<p>HTML</p>"},
    ],
}


def many_items(count: int) -> str:
    return "".join(
        f"<item><title>Item {i}</title><link>{{base}}/many/{i}</link><guid>many-{i}</guid></item>"
        for i in range(count)
    )


@pytest.fixture
def hostile(httpserver: HTTPServer) -> dict[str, str]:
    base = httpserver.url_for("/").rstrip("/")

    def xml(path: str, body: str, content_type: str = "application/rss+xml") -> None:
        httpserver.expect_request(path).respond_with_data(
            body.replace("{base}", base), content_type=content_type
        )

    xml("/good", RSS.format(encoding="utf-8", title="Good", items=GOOD_ITEMS))
    xml(
        "/malformed",
        RSS.format(encoding="utf-8", title="Malformed", items=GOOD_ITEMS).replace(
            "</channel></rss>", "<item><title>Unclosed & broken</title>"
        ),
    )
    httpserver.expect_request("/encoding").respond_with_data(
        RSS.format(
            encoding="utf-8",
            title="Caf\xe9",
            items="<item><title>Cr\xe8me</title><link>{base}/enc/1</link></item>",
        )
        .replace("{base}", base)
        .encode("latin-1"),
        content_type="application/rss+xml; charset=utf-8",
    )
    xml(
        "/page",
        '<html><head><link rel="alternate" type="application/rss+xml" '
        'href="/discovered.xml"></head><body>Blog home</body></html>',
        "text/html",
    )
    xml(
        "/discovered.xml",
        RSS.format(
            encoding="utf-8",
            title="Discovered",
            items=("<item><title>Found me</title><link>{base}/found/1</link><guid>f1</guid></item>"),
        ),
    )
    xml("/empty", "")
    xml("/json", json.dumps(JSON_FEED), "application/feed+json")

    def huge(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            chunk = b"<!--" + b"x" * (1024 * 1024 - 7) + b"-->"
            for _ in range(100):  # 100 MB at most, produced lazily
                yield chunk

        return Response(body(), content_type="application/rss+xml")

    httpserver.expect_request("/huge").respond_with_handler(huge)
    httpserver.expect_request("/gzip-bomb").respond_with_data(
        gzip.compress(b" " * 30_000_000),
        headers={"Content-Encoding": "gzip"},
        content_type="application/rss+xml",
    )

    def drip(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(40):  # at most 40 bytes over about 4 s
                time.sleep(0.1)
                yield b" "

        return Response(body(), content_type="application/rss+xml")

    httpserver.expect_request("/drip").respond_with_handler(drip)
    httpserver.expect_request("/loop").respond_with_data("", status=302, headers={"Location": "/loop"})
    httpserver.expect_request("/moved").respond_with_data("", status=301, headers={"Location": "/gone"})
    httpserver.expect_request("/gone").respond_with_data("Gone", status=410)
    httpserver.expect_request("/limited").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7200"}
    )
    xml("/bomb", BOMB)
    httpserver.expect_request("/to-private").respond_with_data(
        "", status=302, headers={"Location": f"http://127.0.0.2:{httpserver.port}/good"}
    )
    xml(
        "/same-guid",
        RSS.format(
            encoding="utf-8",
            title="Same GUID",
            items="".join(
                f"<item><title>Post {i}</title><link>{{base}}/same/{i}</link><guid>always-the-same</guid>"
                "</item>"
                for i in range(5)
            ),
        ),
    )

    def changing(request: Request) -> Response:
        items = "".join(
            f"<item><title>Post {i}</title><link>{base}/changing/{i}</link><guid>{uuid.uuid4()}</guid></item>"
            for i in range(3)
        )
        return Response(
            RSS.format(encoding="utf-8", title="Changing", items=items), content_type="application/rss+xml"
        )

    httpserver.expect_request("/changing-guids").respond_with_handler(changing)
    xml("/ten-thousand", RSS.format(encoding="utf-8", title="Huge list", items=many_items(10_000)))
    names = [
        "good",
        "malformed",
        "encoding",
        "page",
        "empty",
        "json",
        "huge",
        "gzip-bomb",
        "drip",
        "loop",
        "moved",
        "limited",
        "bomb",
        "to-private",
        "same-guid",
        "changing-guids",
        "ten-thousand",
    ]
    return {name: httpserver.url_for(f"/{name}") for name in names}


def catalogue_settings(write_config: ConfigWriter, feeds: dict[str, str]) -> Settings:
    config = write_config(
        feeds=[{"url": url, "name": name} for name, url in feeds.items()],
        fetch={"timeout": "2s", "max_bytes": "2MB", "max_entries": 1000},
        extract={"enabled": False},
    )
    return load_settings(config, environ={})


def refresh(settings: Settings, **fetcher_args: object) -> dict[str, RefreshOutcome]:
    return {o.feed_url: o for o in refresh_all(settings, **fetcher_args)}


def statuses(settings: Settings) -> dict[str, FeedStatus]:
    store = Store.open(settings.database_url)
    try:
        return {s.url: s for s in store.feed_statuses([(f.url, f.url) for f in settings.feeds])}
    finally:
        store.close()


def test_catalogue_of_hostile_servers(hostile: dict[str, str], write_config: ConfigWriter) -> None:
    settings = catalogue_settings(write_config, hostile)
    # Only 127.0.0.1 counts as a public address here, so the redirect to 127.0.0.2 is refused.
    only_127_0_0_1 = {"address_allowed": lambda address: address == "127.0.0.1"}
    started = time.monotonic()
    outcomes = refresh(settings, **only_127_0_0_1)
    assert time.monotonic() - started < 30
    out = {name: outcomes[url] for name, url in hostile.items()}
    state = statuses(settings)
    now = datetime.now(UTC)

    def failed(name: str, kind: str) -> None:
        assert not out[name].ok and out[name].error_kind == kind, (name, out[name])
        assert state[hostile[name]].consecutive_failures == 1
        assert state[hostile[name]].last_error

    assert out["good"].ok and out["good"].new_articles == 3
    assert out["malformed"].ok and out["malformed"].new_articles >= 3
    assert state[hostile["malformed"]].last_warning
    assert out["encoding"].ok and out["encoding"].new_articles == 1
    assert out["page"].ok and out["page"].new_articles == 1
    assert state[hostile["page"]].fetch_url == hostile["page"].replace("/page", "/discovered.xml")
    failed("empty", "parse")
    assert out["json"].ok and out["json"].new_articles == 2
    failed("huge", "too_large")
    failed("gzip-bomb", "too_large")
    failed("drip", "timeout")
    failed("loop", "too_many_redirects")
    assert out["moved"].error_kind == "gone" and state[hostile["moved"]].gone
    failed("limited", "http")
    assert state[hostile["limited"]].next_fetch >= now + timedelta(seconds=7000)  # type: ignore[operator]
    failed("bomb", "parse")
    failed("to-private", "blocked")
    assert out["same-guid"].new_articles == 5
    assert out["changing-guids"].new_articles == 3
    assert out["ten-thousand"].ok and out["ten-thousand"].new_articles == 1000

    # A second pass: gone is not polled, changing GUIDs and one shared GUID do not flood.
    store = Store.open(settings.database_url)
    try:
        due = store.due_feeds([f.url for f in settings.feeds], now + timedelta(days=2))
    finally:
        store.close()
    assert hostile["moved"] not in due
    again = refresh(settings, **only_127_0_0_1)
    assert again[hostile["changing-guids"]].new_articles == 0
    assert again[hostile["same-guid"]].new_articles == 0
    assert again[hostile["good"]].new_articles == 0


def test_resolver_mapping_to_a_private_address_is_refused_before_connecting(
    write_config: ConfigWriter,
) -> None:
    attempts: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        attempts.append(host)
        return ["10.0.0.1"]  # never connected to: the guard refuses it first

    config = write_config(
        feeds=[{"url": "http://intranet.example.test/feed"}], fetch={"allow_private_networks": False}
    )
    settings = load_settings(config, environ={})
    outcome = refresh(settings, resolver=resolver)["http://intranet.example.test/feed"]
    assert outcome.error_kind == "blocked" and "10.0.0.1" in (outcome.error or "")
    assert attempts == ["intranet.example.test"]


def test_service_survives_the_catalogue(
    hostile: dict[str, str],
    write_config: ConfigWriter,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    start_service: Any,
) -> None:
    config = write_config(
        feeds=[{"url": url, "name": name} for name, url in hostile.items()],
        fetch={"timeout": "2s", "max_bytes": "2MB"},
        extract={"enabled": False},
        service={"check_every": "1s"},
    )
    service = start_service(config)
    deadline = time.monotonic() + 40
    records: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        time.sleep(1)
        assert service.alive()
        if main(["feeds", "--json", "--config", str(config)]) != 0:
            err = capsys.readouterr().err  # the service has not created the database yet
            assert "no database" in err or "no aggregator tables" in err, err
            continue
        records = {r["url"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
        if all(r["last_fetch"] for r in records.values()):
            break
    assert all(r["last_fetch"] for r in records.values()), records
    assert records[hostile["good"]]["article_count"] == 3
    assert records[hostile["json"]]["article_count"] == 2
    assert records[hostile["drip"]]["error_kind"] == "timeout"
    assert records[hostile["bomb"]]["error_kind"] == "parse"
    assert service.alive()  # still running after all of it
    code, err = service.stop()
    assert code == 0, err
    assert "Traceback" not in err
