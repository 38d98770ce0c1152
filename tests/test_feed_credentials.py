"""Per-feed secrets (``auth:`` and ``headers:`` in feeds.yaml): sent with the feed's own
requests to its origin only, read from the environment or a file, never shown."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer

from aggregator.cli import main
from aggregator.config import FeedConfig, FetchSettings, Settings, load_settings
from aggregator.errors import ConfigError
from aggregator.fetcher import Fetcher

from .conftest import ConfigWriter, refresh

PASSWORD = "pw-s3cret-0451"
TOKEN = "tok-s3cret-9817"
BASIC = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, TOKEN, BASIC.split()[1])
ENVIRON = {"FEED_PW": PASSWORD, "FEED_TOKEN": TOKEN}

FEED = "feed #1 (https://private.example.org/feed): "  # how a config error names the feed


def rss(base: str, *links: str) -> str:
    items = "".join(
        f"<item><title>Story {i}</title><link>{base}{link}</link><guid>g{i}</guid>"
        f"<description>Text {i}.</description></item>"
        for i, link in enumerate(links)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Private</title>{items}</channel></rss>'


def private_feed(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "auth": {"username": "alice", "password_env": "FEED_PW"},
        "headers": {"X-Api-Key": {"env": "FEED_TOKEN"}, "X-Client": "aggregator-test"},
        **extra,
    }


def secret_headers(request: Any) -> dict[str, str | None]:
    return {name: request.headers.get(name) for name in ("Authorization", "X-Api-Key", "X-Client")}


SENT = {"Authorization": BASIC, "X-Api-Key": TOKEN, "X-Client": "aggregator-test"}
NOT_SENT = {"Authorization": None, "X-Api-Key": None, "X-Client": None}


@pytest.fixture
def other_origin() -> Iterator[HTTPServer]:
    """A second server on 127.0.0.1: another port is another origin."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


def test_the_feed_request_carries_them_and_its_article_pages_do_not(
    httpserver: HTTPServer, write_config: ConfigWriter, database_url: str
) -> None:
    base = httpserver.url_for("").rstrip("/")
    httpserver.expect_request("/feed").respond_with_data(
        rss(base, "/story/1", "/story/2"), content_type="application/rss+xml"
    )
    page = (
        "<html><body><article><h1>Story</h1><p>"
        + "Words of the story. " * 40
        + "</p></article></body></html>"
    )
    httpserver.expect_request("/story/1").respond_with_data(page, content_type="text/html")
    httpserver.expect_request("/story/2").respond_with_data(page, content_type="text/html")
    config = write_config(
        feeds=[private_feed(f"{base}/feed", full_text=True)],
        database_url=database_url,
        extract={"enabled": True},
    )
    [outcome] = refresh(load_settings(config, environ=ENVIRON))
    assert outcome.ok and outcome.new_articles == 2, outcome
    seen = {request.path: secret_headers(request) for request, _ in httpserver.log}
    assert seen == {"/feed": SENT, "/story/1": NOT_SENT, "/story/2": NOT_SENT}


def test_the_autodiscovered_feed_on_the_same_origin_carries_them(
    httpserver: HTTPServer, write_config: ConfigWriter
) -> None:
    base = httpserver.url_for("").rstrip("/")
    httpserver.expect_request("/blog").respond_with_data(
        '<html><head><link rel="alternate" type="application/rss+xml" href="/blog/feed.xml"></head></html>',
        content_type="text/html",
    )
    httpserver.expect_request("/blog/feed.xml").respond_with_data(
        rss(base, "/story/1"), content_type="application/rss+xml"
    )
    config = write_config(feeds=[private_feed(f"{base}/blog")], extract={"enabled": False})
    [outcome] = refresh(load_settings(config, environ=ENVIRON))
    assert outcome.ok and outcome.new_articles == 1, outcome
    assert [(r.path, secret_headers(r)) for r, _ in httpserver.log] == [
        ("/blog", SENT),
        ("/blog/feed.xml", SENT),
    ]


def fetch_with(feed: FeedConfig, url: str | None = None) -> None:
    async def go() -> None:
        settings = FetchSettings(allow_private_networks=True, timeout="5s")
        async with Fetcher(settings) as fetcher:
            await fetcher.fetch(url or feed.url, credentials=feed.credentials)

    asyncio.run(go())


def feed_config(url: str, **extra: Any) -> FeedConfig:
    return FeedConfig.model_validate(private_feed(url, **extra), context={"environ": ENVIRON})


def test_a_redirect_to_another_origin_drops_them_for_good(
    httpserver: HTTPServer, other_origin: HTTPServer
) -> None:
    # same origin (relative) -> another port -> back to the first origin
    httpserver.expect_request("/old").respond_with_data("", status=301, headers={"Location": "/feed"})
    httpserver.expect_request("/feed").respond_with_data(
        "", status=302, headers={"Location": other_origin.url_for("/mirror")}
    )
    other_origin.expect_request("/mirror").respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/back")}
    )
    httpserver.expect_request("/back").respond_with_data("<rss/>")
    fetch_with(feed_config(httpserver.url_for("/old")))
    assert [(r.path, secret_headers(r)) for r, _ in httpserver.log] == [
        ("/old", SENT),
        ("/feed", SENT),
        ("/back", NOT_SENT),
    ]
    assert [(r.path, secret_headers(r)) for r, _ in other_origin.log] == [("/mirror", NOT_SENT)]


def test_a_url_that_is_not_on_the_feeds_origin_gets_none(
    httpserver: HTTPServer, other_origin: HTTPServer
) -> None:
    # An adopted or discovered URL elsewhere: the secrets are the configured origin's only.
    other_origin.expect_request("/feed").respond_with_data("<rss/>")
    fetch_with(feed_config(httpserver.url_for("/feed")), other_origin.url_for("/feed"))
    assert [(r.path, secret_headers(r)) for r, _ in other_origin.log] == [("/feed", NOT_SENT)]


def test_a_url_with_user_and_password_keeps_working_and_is_not_forwarded(
    httpserver: HTTPServer, other_origin: HTTPServer
) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        "", status=302, headers={"Location": other_origin.url_for("/feed")}
    )
    other_origin.expect_request("/feed").respond_with_data("<rss/>")
    url = httpserver.url_for("/feed").replace("http://", f"http://alice:{PASSWORD}@")
    fetch_with(FeedConfig(url=url))
    [(first, _)] = httpserver.log
    assert first.headers.get("Authorization") == BASIC
    [(second, _)] = other_origin.log
    assert second.headers.get("Authorization") is None


def test_secrets_from_files(httpserver: HTTPServer, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
    (tmp_path / "token").write_text(TOKEN + "\n", encoding="utf-8")
    httpserver.expect_request("/feed").respond_with_data("<rss/>")
    feed = FeedConfig.model_validate(
        {
            "url": httpserver.url_for("/feed"),
            "auth": {"username": "alice", "password_file": str(tmp_path / "pw")},
            "headers": {"X-Api-Key": {"file": str(tmp_path / "token")}, "X-Client": "aggregator-test"},
        },
        context={"environ": {}},
    )
    fetch_with(feed)
    [(request, _)] = httpserver.log
    assert secret_headers(request) == SENT


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"auth": {"username": "alice", "password_env": "FEED_PW"}},
            FEED + "auth: password_env: the environment variable FEED_PW is not set or empty",
        ),
        (
            {"auth": {"username": "alice", "password_file": "/nonexistent/pw"}},
            FEED + "auth: password_file: cannot read /nonexistent/pw: No such file or directory",
        ),
        (
            {"auth": {"username": "alice", "password_env": "A", "password_file": "/x"}},
            FEED + "auth: give exactly one of password_env and password_file",
        ),
        (
            {"auth": {"username": "alice"}},
            FEED + "auth: give exactly one of password_env and password_file",
        ),
        (
            {"auth": {"username": "al:ice", "password_env": "A"}},
            FEED + "auth.username: a username has no ':'",
        ),
        (
            {"headers": {"X-Api-Key": {"env": "FEED_TOKEN"}}},
            FEED + "headers.X-Api-Key: env: the environment variable FEED_TOKEN is not set or empty",
        ),
        (
            {"headers": {"Host": "example.org"}},
            FEED + "headers: Host cannot be set for a feed",
        ),
        ({"headers": {"transfer-encoding": "chunked"}}, "transfer-encoding cannot be set for a feed"),
        (
            {"headers": {"Bad Name": "x"}},
            FEED + "headers: 'Bad Name' is not a header name",
        ),
        (
            {"headers": {"X-A": "x", "x-a": "y"}},
            FEED + "headers: x-a is given twice",
        ),
        (
            {"headers": {"X-A": "one\r\nX-Injected: two"}},
            FEED + "headers.X-A: the value is empty or has",
        ),
        ({"headers": {"X-A": {"env": "FEED_TOKEN", "file": "/x"}}}, "give exactly one of env and file"),
        (
            {"auth": {"username": "a", "password_env": "P"}, "headers": {"Authorization": "Bearer x"}},
            FEED + "give auth or an Authorization header, not both",
        ),
    ],
)
def test_config_errors_name_the_feed_and_the_key(
    write_config: ConfigWriter, entry: dict[str, Any], message: str
) -> None:
    config = write_config(feeds=[{"url": "https://private.example.org/feed", **entry}])
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"P": "p"})
    assert message in str(caught.value)
    assert "feed #1 (https://private.example.org/feed)" in str(caught.value)


def test_a_header_secret_that_cannot_be_sent_is_refused_without_showing_it(
    write_config: ConfigWriter,
) -> None:
    config = write_config(
        feeds=[{"url": "https://private.example.org/feed", "headers": {"X-Api-Key": {"env": "FEED_TOKEN"}}}]
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"FEED_TOKEN": TOKEN + "\nX-Injected: 1"})
    assert "X-Api-Key: the value from FEED_TOKEN is empty or has characters" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_auth_and_a_password_in_the_url_are_not_both_given(write_config: ConfigWriter) -> None:
    config = write_config(
        feeds=[
            {"url": "https://bob:pw@private.example.org/feed", "auth": {"username": "a", "password_env": "P"}}
        ]
    )
    with pytest.raises(ConfigError, match="give auth or a user:password@ in the url, not both"):
        load_settings(config, environ={"P": "p"})


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_secrets_are_never_shown(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = httpserver.url_for("").rstrip("/")
    httpserver.expect_request("/feed").respond_with_data(
        rss(base, "/story/1"), content_type="application/rss+xml"
    )
    httpserver.expect_request("/denied").respond_with_data("no", status=401)
    config = write_config(
        feeds=[private_feed(f"{base}/feed"), private_feed(f"{base}/denied")], extract={"enabled": False}
    )
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    assert main(["check-config", "--config", str(config), "--log-level", "debug"]) == 0
    assert main(["fetch", "--config", str(config), "--log-level", "debug"]) == 0
    assert main(["feeds", "--config", str(config)]) == 0
    assert main(["feeds", "--json", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert "HTTP 401" in out + err  # the failure is reported, without what was sent
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r["url"]: r["error_kind"] for r in records} == {f"{base}/feed": None, f"{base}/denied": "http"}
    settings = load_settings(config)
    shown = "\n".join(
        [
            out,
            err,
            caplog.text,
            repr(settings),
            repr(settings.feeds),
            str(settings.feeds),
            repr(settings.feeds[0].credentials),
        ]
    )
    shown += yaml.safe_dump(json.loads(json.dumps([f.model_dump(mode="json") for f in settings.feeds])))
    assert_no_secret(shown)
    assert [secret_headers(r)["Authorization"] for r, _ in httpserver.log] == [BASIC, BASIC]


def test_settings_keep_them_out_of_their_dumps(write_config: ConfigWriter) -> None:
    config = write_config(feeds=[private_feed("https://private.example.org/feed")])
    settings: Settings = load_settings(config, environ=ENVIRON)
    [feed] = settings.feeds
    assert feed.credentials is not None and dict(feed.credentials.headers) == SENT
    assert_no_secret(repr(feed) + str(feed.model_dump()) + feed.model_dump_json() + repr(feed.credentials))
