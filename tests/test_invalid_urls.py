"""URLs httpx or urllib refuse, from feeds.yaml, an entry's link, a redirect or the command line,
end as a FetchError of kind ``invalid_url``: never a traceback, never another exception.

No traffic leaves loopback: the resolver answers 127.0.0.1 for the test server's port only (any
other port does not resolve), and the audit hook of ``socket_audit`` refuses the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer

from aggregator.cli import main
from aggregator.config import FetchSettings, load_settings
from aggregator.errors import FetchError
from aggregator.fetcher import Fetcher, Resolver
from aggregator.models import FetchResult

from .conftest import ConfigWriter, refresh, stored_articles
from .socket_audit import connections

SETTINGS = FetchSettings(allow_private_networks=True, timeout="5s", max_redirects=2)


def loopback_only(port: int) -> Resolver:
    """A resolver: every name (and IP literal) on ``port`` is 127.0.0.1; nothing else resolves."""

    async def resolve(host: str, asked_port: int) -> list[str]:
        if asked_port != port:
            raise socket.gaierror(socket.EAI_NONAME, "not the test server")
        return ["127.0.0.1"]

    return resolve


@contextlib.contextmanager
def fetcher_on(port: int) -> Iterator[tuple[asyncio.AbstractEventLoop, Fetcher]]:
    """One Fetcher on its own event loop for many examples (the loop runs one fetch at a time)."""
    loop = asyncio.new_event_loop()
    fetcher = Fetcher(SETTINGS, resolver=loopback_only(port))
    try:
        yield loop, fetcher
    finally:
        loop.run_until_complete(fetcher.aclose())
        loop.close()


def fetch_or_error(loop: asyncio.AbstractEventLoop, fetcher: Fetcher, url: str) -> FetchResult | FetchError:
    try:
        return loop.run_until_complete(asyncio.wait_for(fetcher.fetch(url), 10))
    except FetchError as exc:
        return exc


REFUSED = [
    "http://[::1/x",  # urllib: Invalid IPv6 URL; httpx: invalid port
    "http://0177.0.0.1/x",  # an octal IPv4 address
    "http://[fe80::1%25eth0/x",
    "http://[:::1]/x",
    "http://example.test:99999/",  # httpx takes it, asyncio would raise OverflowError
    "http://example.test:0/",
    "http://example.test:-1/",
    "http://example.test:8o/",
    "http://example.test/a\x00b",
    "http://exam\tple.test/",
    "http://\u2603.test/",  # IDNA 2008 refuses a snowman
    "http://ex\u200dample.test/",  # a zero-width joiner
    "http://xn--a.test/",  # punycode that does not decode
    "http://\ud800.test/",  # a lone surrogate
    "http://a" + "b" * 70_000 + ".test/",  # longer than httpx takes
    "http:///no-host",
    "http://:80/no-host",
    "example.test/feed",
    "//example.test/feed",
    "",
]


@pytest.mark.parametrize("url", REFUSED, ids=lambda u: repr(u[:40]))
def test_urls_httpx_or_urllib_refuse_are_invalid_url_errors(url: str) -> None:
    with connections() as attempts, fetcher_on(0) as (loop, fetcher):
        outcome = fetch_or_error(loop, fetcher, url)
    assert isinstance(outcome, FetchError) and outcome.kind == "invalid_url", outcome
    assert str(outcome).startswith("not a valid URL: ")
    assert "\n" not in str(outcome) and len(str(outcome)) < 1000
    assert attempts == []


url_text = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https", "HTTP", "hTTps", "ftp", "file", "", "http:", "javascript"]),
        st.one_of(
            st.text(max_size=30),
            st.ip_addresses().map(str),
            st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
            st.from_regex(r"\[[0-9a-fA-F:.%]{0,20}\]?", fullmatch=True),
            st.from_regex(
                r"(0x[0-9a-f]{1,3}|0[0-7]{1,4}|[0-9]{1,4})(\.(0x[0-9a-f]{1,3}|0[0-7]{1,4}|[0-9]{1,4})){0,4}",
                fullmatch=True,
            ),
            st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z0-9-]{0,10}){0,3}\.?", fullmatch=True),
            st.sampled_from(["user:pass@127.0.0.1", "@", "a@b@c", "[::1]]", "xn--", "%41.test", "."]),
        ),
        st.one_of(
            st.just(""),
            st.integers(-5, 200_000).map(lambda p: f":{p}"),
            st.text(max_size=6).map(lambda t: ":" + t),
        ),
        st.one_of(st.just("/"), st.text(max_size=30).map(lambda t: "/" + t), st.text(max_size=10)),
    ),
)


def test_any_url_text_gives_a_result_or_a_fetch_error(httpserver: HTTPServer) -> None:
    httpserver.expect_request(re.compile(".*")).respond_with_data("ok")

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(url_text)
    def check(url: str) -> None:
        outcome = fetch_or_error(loop, fetcher, url)
        assert isinstance(outcome, FetchResult | FetchError)

    with connections() as attempts, fetcher_on(httpserver.port) as (loop, fetcher):
        check()
    assert set(attempts) <= {"127.0.0.1"}


class _Redirector(socketserver.ThreadingTCPServer):
    """Answers every request with a 302 whose Location is ``location``, raw bytes as given."""

    daemon_threads = True
    allow_reuse_address = True
    location = b"/"


class _Redirect(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.settimeout(5)
        with contextlib.suppress(OSError):
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            location = self.server.location  # type: ignore[attr-defined]
            self.wfile.write(
                b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )


@pytest.fixture
def redirector() -> Iterator[_Redirector]:
    server = _Redirector(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "location",
    [
        b"http://[::1/x",
        b"http://0177.0.0.1/x",
        b"http://example.test:99999/",
        b"http://xn--/",
    ],
)
def test_an_invalid_redirect_is_an_invalid_url_error(redirector: _Redirector, location: bytes) -> None:
    redirector.location = location
    port = redirector.server_address[1]
    with connections() as attempts, fetcher_on(port) as (loop, fetcher):
        outcome = fetch_or_error(loop, fetcher, f"http://127.0.0.1:{port}/start")
    assert isinstance(outcome, FetchError) and outcome.kind == "invalid_url", outcome
    assert f"a redirect from http://127.0.0.1:{port}/start" in str(outcome)
    assert attempts == ["127.0.0.1"]


location_bytes = st.one_of(
    st.binary(max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b),
    url_text.map(lambda t: t.encode("utf-8", "surrogatepass")).filter(
        lambda b: b"\r" not in b and b"\n" not in b
    ),
)


def test_any_location_gives_a_result_or_a_fetch_error(redirector: _Redirector) -> None:
    port = redirector.server_address[1]

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(location_bytes)
    def check(location: bytes) -> None:
        redirector.location = location
        outcome = fetch_or_error(loop, fetcher, f"http://127.0.0.1:{port}/start")
        assert isinstance(outcome, FetchResult | FetchError)

    with connections() as attempts, fetcher_on(port) as (loop, fetcher):
        check()
    assert set(attempts) == {"127.0.0.1"}


def test_extract_of_an_invalid_url_is_a_one_line_error(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config()
    assert main(["extract", "--config", str(config), "http://[::1/x"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "== http://[::1/x" and lines[2:] == [""], lines
    assert lines[1].startswith("error: invalid_url: not a valid URL: 'http://[::1/x': ")
    assert "Traceback" not in err and err == ""
    assert main(["extract", "--json", "--config", str(config), "http://0177.0.0.1/x"]) == 1
    out, err = capsys.readouterr()
    assert '"error": "invalid_url: not a valid URL: ' in out and len(out.splitlines()) == 1
    assert err == ""


def test_an_entry_link_httpx_refuses_keeps_the_feeds_text(
    httpserver: HTTPServer,
    write_config: ConfigWriter,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Odd links</title>'
        "<item><title>Octal host</title><link>http://0177.0.0.1/x</link><guid>octal</guid>"
        "<description>The feed's own text of the story.</description></item></channel></rss>"
    )
    httpserver.expect_request("/feed").respond_with_data(feed, content_type="application/rss+xml")
    url = httpserver.url_for("/feed")
    config = write_config(
        feeds=[{"url": url, "full_text": True}], database_url=database_url, extract={"enabled": True}
    )
    settings_ = load_settings(config, environ={})
    caplog.set_level(logging.DEBUG)
    with connections() as attempts:
        [outcome] = refresh(settings_)
    assert outcome.ok and outcome.new_articles == 1, outcome
    [article] = stored_articles(settings_)
    assert "The feed's own text of the story." in article.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert "Traceback" not in caplog.text
    # the page, refused before any connection
    assert any(getattr(r, "fields", {}).get("kind") == "invalid_url" for r in caplog.records)
    assert set(attempts) == {"127.0.0.1"}
    assert [entry[0].path for entry in httpserver.log] == ["/feed"]
