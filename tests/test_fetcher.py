from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.config import FetchSettings
from aggregator.errors import BlockedAddressError, FetchError
from aggregator.fetcher import Fetcher, is_public_address
from aggregator.models import FetchResult

from .conftest import free_port


def fetch(settings: FetchSettings, url: str, **kwargs: object) -> FetchResult:
    fetcher_args = {k: kwargs.pop(k) for k in ("resolver", "address_allowed") if k in kwargs}

    async def go() -> FetchResult:
        async with Fetcher(settings, **fetcher_args) as fetcher:  # type: ignore[arg-type]
            return await fetcher.fetch(url, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


LOOPBACK_OK = FetchSettings(allow_private_networks=True, timeout="5s")


def test_conditional_get_round_trip(httpserver: HTTPServer) -> None:
    def conditional(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response("<rss/>", headers={"ETag": '"v1"', "Last-Modified": "Mon, 14 Aug 2017 10:00:00 GMT"})

    httpserver.expect_request("/feed").respond_with_handler(conditional)
    first = fetch(LOOPBACK_OK, httpserver.url_for("/feed"))
    assert (first.status, first.etag, first.body) == (200, '"v1"', b"<rss/>")
    assert first.last_modified == "Mon, 14 Aug 2017 10:00:00 GMT"
    second = fetch(
        LOOPBACK_OK, httpserver.url_for("/feed"), etag=first.etag, last_modified=first.last_modified
    )
    assert second.not_modified and second.body == b""


def test_sends_an_honest_user_agent(httpserver: HTTPServer) -> None:
    settings = FetchSettings(allow_private_networks=True, user_agent="aggregator/test (+ua check)")
    httpserver.expect_request("/ua", headers={"User-Agent": "aggregator/test (+ua check)"}).respond_with_data(
        "ok"
    )
    assert fetch(settings, httpserver.url_for("/ua")).body == b"ok"


def test_loopback_refused_by_default_and_nothing_is_sent(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/feed").respond_with_data("secret")
    with pytest.raises(BlockedAddressError, match="non-public address"):
        fetch(FetchSettings(), httpserver.url_for("/feed"))
    assert httpserver.log == []


def test_name_resolving_to_loopback_is_refused(httpserver: HTTPServer) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    httpserver.expect_request("/feed").respond_with_data("secret")
    url = f"http://feeds.example.test:{httpserver.port}/feed"
    with pytest.raises(BlockedAddressError):
        fetch(FetchSettings(), url, resolver=resolver)
    assert httpserver.log == []
    # allow_private_networks lifts it, and the connection goes to the address we resolved
    result = fetch(LOOPBACK_OK, url, resolver=resolver)
    assert result.body == b"secret"


def test_every_redirect_hop_is_checked(httpserver: HTTPServer) -> None:
    # Only 127.0.0.1 counts as allowed here; the redirect points at 127.0.0.2 (still loopback,
    # so even a broken guard would send nothing off this machine).
    target = f"http://127.0.0.2:{httpserver.port}/internal"
    httpserver.expect_request("/start").respond_with_data("", status=302, headers={"Location": target})
    with pytest.raises(BlockedAddressError):
        fetch(
            FetchSettings(),
            httpserver.url_for("/start"),
            address_allowed=lambda address: address == "127.0.0.1",
        )
    assert [entry[0].path for entry in httpserver.log] == ["/start"]


def test_non_http_schemes_refused() -> None:
    with pytest.raises(BlockedAddressError, match="only http"):
        fetch(LOOPBACK_OK, "file:///etc/passwd")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:93.184.215.14", True),
    ],
)
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_redirects_are_followed_and_capped(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data("", status=301, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", status=308, headers={"Location": "/c"})
    httpserver.expect_request("/c").respond_with_data("done")
    result = fetch(LOOPBACK_OK, httpserver.url_for("/a"))
    assert result.body == b"done" and result.final_url.endswith("/c")
    httpserver.expect_request("/loop").respond_with_data("", status=302, headers={"Location": "/loop"})
    with pytest.raises(FetchError) as caught:
        fetch(LOOPBACK_OK, httpserver.url_for("/loop"))
    assert caught.value.kind == "too_many_redirects"
    assert len(httpserver.log) <= 3 + LOOPBACK_OK.max_redirects + 1


def test_http_errors_are_classified(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    with pytest.raises(FetchError) as caught:
        fetch(LOOPBACK_OK, httpserver.url_for("/gone"))
    assert (caught.value.kind, caught.value.status) == ("http", 404)


def test_body_over_max_bytes_is_refused(httpserver: HTTPServer) -> None:
    settings = FetchSettings(allow_private_networks=True, max_bytes="100KB")
    httpserver.expect_request("/big").respond_with_data(b"x" * 200_000)
    with pytest.raises(FetchError) as caught:
        fetch(settings, httpserver.url_for("/big"))
    assert caught.value.kind == "too_large"


def test_gzip_bomb_is_stopped_after_decompression(httpserver: HTTPServer) -> None:
    settings = FetchSettings(allow_private_networks=True, max_bytes="100KB")
    bomb = gzip.compress(b"\0" * 20_000_000)
    assert len(bomb) < 100_000
    httpserver.expect_request("/bomb").respond_with_data(
        bomb, headers={"Content-Encoding": "gzip"}, content_type="application/xml"
    )
    with pytest.raises(FetchError) as caught:
        fetch(settings, httpserver.url_for("/bomb"))
    assert caught.value.kind == "too_large"


@pytest.fixture
def drip_server(httpserver: HTTPServer) -> Iterator[str]:
    def drip(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(30):  # bounded: 30 bytes over about 3 seconds
                time.sleep(0.1)
                yield b"x"

        return Response(body(), content_type="application/xml")

    httpserver.expect_request("/drip").respond_with_handler(drip)
    yield httpserver.url_for("/drip")


def test_slow_drip_is_cut_off_by_the_total_timeout(drip_server: str) -> None:
    settings = FetchSettings(allow_private_networks=True, timeout="1s")
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch(settings, drip_server)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2.5


def test_dns_failure_and_refused_connection() -> None:
    async def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(FetchError) as caught:
        fetch(LOOPBACK_OK, "http://nowhere.test/feed", resolver=no_such_host)
    assert caught.value.kind == "dns"
    with pytest.raises(FetchError) as caught:
        fetch(LOOPBACK_OK, f"http://127.0.0.1:{free_port()}/feed")
    assert caught.value.kind == "connect"


def test_tls_failure_is_classified(httpserver: HTTPServer) -> None:
    # An https URL on a plain-HTTP server: the TLS handshake fails.
    httpserver.expect_request("/feed").respond_with_data("plain")
    url = httpserver.url_for("/feed").replace("http://", "https://")
    with pytest.raises(FetchError) as caught:
        fetch(LOOPBACK_OK, url)
    assert caught.value.kind == "tls"


def test_failed_fetch_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(FetchError("http", "HTTP 429", 429, "120")))
    assert (error.kind, str(error), error.status, error.retry_after) == ("http", "HTTP 429", 429, "120")
    blocked = pickle.loads(pickle.dumps(BlockedAddressError("no")))
    assert isinstance(blocked, BlockedAddressError) and blocked.kind == "blocked"


def test_https_connections_are_verified_and_reused() -> None:
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    connections: list[object] = []

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, unlike pytest-httpserver's server

        def setup(self) -> None:
            connections.append(self.client_address)
            super().setup()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"<rss/>")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/feed"
    try:
        trusting = ssl.create_default_context()
        authority.configure_trust(trusting)

        async def twice() -> list[FetchResult]:
            settings = FetchSettings(allow_private_networks=True, timeout="5s", concurrency=1)
            async with Fetcher(settings, ssl_context=trusting) as fetcher:
                return [await fetcher.fetch(url) for _ in range(2)]

        assert [r.body for r in asyncio.run(twice())] == [b"<rss/>", b"<rss/>"]
        assert len(connections) == 1  # the second request went over the same TLS connection
        with pytest.raises(FetchError) as refused:  # the system's authorities do not know ours
            fetch(LOOPBACK_OK, url)
        assert refused.value.kind == "tls"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("use_tls", [False, True])
def test_a_kept_alive_connection_the_server_closed_is_not_reused(use_tls: bool) -> None:
    """The server answers as if keeping the connection, then closes it while it sits in the pool:
    the next request must go over a new connection, not fail on the dead one."""
    import ssl

    import trustme

    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    opened: list[int] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n")
        writer.write(b"Content-Length: 6\r\n\r\n<rss/>")
        await writer.drain()
        writer.close()  # no "Connection: close": the client believes it may reuse it

    async def go() -> list[bytes]:
        server = await asyncio.start_server(
            answer_once, "127.0.0.1", 0, ssl=server_context if use_tls else None
        )
        port = server.sockets[0].getsockname()[1]
        url = f"{'https' if use_tls else 'http'}://127.0.0.1:{port}/feed"
        settings = FetchSettings(allow_private_networks=True, timeout="5s", concurrency=1)
        bodies = []
        async with server, Fetcher(settings, ssl_context=client_context) as fetcher:
            for _ in range(3):
                bodies.append((await fetcher.fetch(url)).body)
                await asyncio.sleep(0.05)  # the close reaches the client while the connection idles
        return bodies

    assert asyncio.run(go()) == [b"<rss/>"] * 3
    assert len(opened) == 3


_FIRST_REQUEST = """
import asyncio, concurrent.futures.thread, encodings.idna, sys
from aggregator.config import FetchSettings
from aggregator.fetcher import Fetcher

async def go():
    async with Fetcher(FetchSettings(allow_private_networks=True, timeout="5s")) as fetcher:
        before = set(sys.modules)
        assert (await fetcher.fetch(sys.argv[1])).body == b"ok"
        print(sorted(set(sys.modules) - before))

asyncio.run(go())
"""


def test_the_first_request_imports_nothing(httpserver: HTTPServer) -> None:
    # In a fresh interpreter: what the first request imports, a pass waits for in its middle.
    # Left out: the standard library's own, which any first name resolution imports (asyncio's
    # thread pool, which the pipeline imports before it fetches, and the IDNA codec).
    import subprocess
    import sys

    httpserver.expect_request("/page").respond_with_data("ok")
    run = subprocess.run(
        [sys.executable, "-c", _FIRST_REQUEST, f"http://127.0.0.1:{httpserver.port}/page"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_validators_httpx_cannot_send_are_neither_kept_nor_sent(httpserver: HTTPServer) -> None:
    # A validator that is not printable ASCII would make every later poll fail in httpx
    # (UnicodeEncodeError, or h11's "Illegal header value").
    httpserver.expect_request("/feed").respond_with_data(
        "<rss/>", headers={"ETag": '"caf\xe9"', "Last-Modified": "Mon, 14 Aug 2017 10:00:00 GMT"}
    )
    first = fetch(LOOPBACK_OK, httpserver.url_for("/feed"))
    assert first.etag is None and first.last_modified == "Mon, 14 Aug 2017 10:00:00 GMT"
    again = fetch(LOOPBACK_OK, httpserver.url_for("/feed"), etag='"caf\xe9"', last_modified="Mon,\n 14 Aug")
    assert again.status == 200
    sent = httpserver.log[-1][0].headers
    assert "If-None-Match" not in sent and "If-Modified-Since" not in sent
