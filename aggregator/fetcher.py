"""HTTP fetching: conditional GET with size cap, timeouts, redirects and SSRF protection.

All network access of the product goes through ``Fetcher.fetch``. The connection layer resolves
each host name itself, refuses non-public addresses unless ``allow_private_networks`` is set, and
connects to the very address it checked: a DNS answer cannot change between the check and the
connection (rebinding), and every redirect hop is checked the same way.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx

# Re-exported: the policy was defined here before it had its own module.
from aggregator.addresses import is_public_address as is_public_address
from aggregator.config import FetchSettings
from aggregator.credentials import Credentials
from aggregator.errors import BlockedAddressError, FetchError
from aggregator.internals.network import import_asyncio_backend, transport_with_backend
from aggregator.models import FetchResult

Resolver = Callable[[str, int], Awaitable[list[str]]]

FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5"
)
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
_REDIRECTS = {301, 302, 303, 307, 308}
_SHARD_SIZE = 8  # connections per pool (see Fetcher.__init__)
# What a connection's transport reads ahead of httpcore, which asks for 64 KiB at a time; it
# stops reading at twice this until httpcore catches up. A whole page a read: CPU a request fell
# with it (64 KiB 1.22, 256 KiB 1.17, 1 MiB 1.08 ms, 174 KB pages).
_READ_AHEAD = 2**20


async def system_resolver(host: str, port: int) -> list[str]:
    """Return the addresses ``host`` resolves to, through the operating system."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves with our resolver, vets the addresses, connects only to a vetted one.

    Connections are asyncio streams (``_AsyncioStream``), not httpcore's anyio backend: anyio
    enters a cancel scope, with sniffio's look-up of the running library, for every read and
    write, a fifth of the CPU of fetching a page (1.0 against 0.74 ms a request in httpcore
    alone, 100 KB pages from the loopback farm).
    """

    def __init__(self, resolver: Resolver, allowed: Callable[[str], bool]) -> None:
        self._resolver = resolver
        self._allowed = allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._resolver(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError("dns", f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise FetchError("dns", f"cannot resolve {host}: no addresses")
        allowed = [a for a in addresses if self._allowed(a)]
        if not allowed:
            raise BlockedAddressError(
                f"{host} resolves to {', '.join(addresses)}, a non-public address "
                "(set fetch.allow_private_networks to allow it)"
            )
        last_error: Exception | None = None
        for address in allowed:
            try:
                return await _AsyncioStream.connect(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection as asyncio's stream pair, with httpcore's errors and timeouts.

    It answers "which socket, is it readable?" from its own memory: httpcore asks every idle
    pooled connection whether the server closed it, on every request event.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._socket: socket.socket | None = writer.get_extra_info("socket")

    @classmethod
    async def connect(
        cls,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> _AsyncioStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    address, port, local_addr=(local_address, 0) if local_address else None, limit=_READ_AHEAD
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {address} port {port} in {timeout}s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        stream = cls(reader, writer)
        if stream._socket is not None:
            for option in socket_options or ():
                stream._socket.setsockopt(*option)
        return stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data in {timeout}s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send in {timeout}s") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: the transport is closing
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        # Not waiting for the close: a TLS peer that never answers our close_notify would hold
        # the pool's cleanup (asyncio gives up on it by itself).
        self._writer.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no TLS handshake in {timeout}s") from None
        except OSError as exc:  # ssl.SSLError is one
            self._writer.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        self._socket = self._writer.get_extra_info("socket")
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._socket
        if info == "is_readable":
            # An end of stream the transport has read already, or what the socket holds.
            return self._reader.at_eof() or _readable(self._socket)
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None


def _readable(sock: socket.socket | None) -> bool:
    """Whether ``sock`` has data or EOF waiting (an idle keep-alive connection: the server closed
    it); a closed socket counts as readable, so the pool drops it."""
    if sock is None:
        return False
    if sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Fetcher:
    """One shared, pooled HTTP client with a global and a per-host concurrency limit."""

    def __init__(
        self,
        settings: FetchSettings,
        *,
        resolver: Resolver = system_resolver,
        address_allowed: Callable[[str], bool] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``resolver``, ``address_allowed`` and ``ssl_context`` default to the system's DNS, the
        SSRF policy (public addresses only unless ``allow_private_networks``) and the system's
        certificate authorities; tests pass their own."""
        if address_allowed is None:
            address_allowed = (
                (lambda _address: True) if settings.allow_private_networks else is_public_address
            )
        self.settings = settings
        # httpcore's locks import anyio's asyncio backend on first use: inside the first request,
        # which waited for it (0.1-0.15 s), unless it is imported with the Fetcher.
        import_asyncio_backend()
        timeout = settings.timeout.total_seconds()
        # httpcore scans every pooled connection against every other on each request event
        # (O(n²) in the pool's size): a few small pools, used in turn, cost far less than one
        # large one. Our semaphores bound what is in flight overall and per host.
        shards = max(1, -(-settings.concurrency // _SHARD_SIZE))
        size = -(-settings.concurrency // shards)
        ssl_context = ssl_context or httpx.create_ssl_context()
        backend = _GuardedBackend(resolver, address_allowed)
        self._clients = [
            self._make_client(settings, timeout, size, ssl_context, backend) for _ in range(shards)
        ]
        self._busy = [0] * len(self._clients)  # requests in flight per pool
        self._total = timeout
        self._global = asyncio.Semaphore(settings.concurrency)
        self._hosts: dict[bytes, asyncio.Semaphore] = {}  # by the host as sent (IDNA-encoded)

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    @staticmethod
    def _make_client(
        settings: FetchSettings,
        timeout: float,
        size: int,
        ssl_context: ssl.SSLContext,
        backend: httpcore.AsyncNetworkBackend,
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=transport_with_backend(ssl_context, size, backend),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            headers={"User-Agent": settings.user_agent},
            trust_env=False,
        )

    def _least_busy(self) -> int:
        # Not in turn: a pool given more requests than it has connections queues them, and
        # its scan of queued requests against connections grows with both.
        return min(range(len(self._busy)), key=self._busy.__getitem__)

    async def fetch(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = FEED_ACCEPT,
        credentials: Credentials | None = None,
    ) -> FetchResult:
        """Return the response to a GET of ``url`` (200 or 304); raise FetchError otherwise.

        ``credentials`` go with the requests to their origin only, and no more once a
        redirect has left it.
        """
        headers = {"Accept": accept}
        # Validators are the server's own words: one httpx cannot send (not ASCII, a control
        # character) is left out rather than failing every later poll.
        if etag and _sendable(etag):
            headers["If-None-Match"] = etag
        if last_modified and _sendable(last_modified):
            headers["If-Modified-Since"] = last_modified
        try:
            return await self._follow(url, headers, credentials)
        except TimeoutError:
            raise FetchError("timeout", f"no complete answer within {self._total:g}s") from None
        except httpx.HTTPError as exc:
            raise _classify(exc) from None

    async def _follow(
        self, url: str, headers: dict[str, str], credentials: Credentials | None
    ) -> FetchResult:
        current = url
        permanent = True  # every hop so far was 301/308
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        secrets = dict(credentials.headers) if credentials else {}
        origin = _origin(_parse_url(credentials.origin_url, None)) if credentials else None
        for _ in range(self.settings.max_redirects + 1):
            target = _parse_url(current, url if current != url else None)
            hop_headers = headers
            if origin is not None:
                if _may_carry(origin, target):
                    hop_headers = {**headers, **secrets}
                else:
                    origin = None  # left the feed's origin: no secrets from here on, even back on it
            # Waiting for a slot is not the server's fault: the total timeout starts when the
            # first request does. The host slot is taken first so that requests queued for one
            # busy host do not hold global slots that other hosts could use.
            async with self._host_slot(target.raw_host), self._global:
                if deadline is None:
                    deadline = loop.time() + self._total
                async with asyncio.timeout_at(deadline):
                    result = await self._hop(url, current, target, hop_headers, permanent)
            if isinstance(result, FetchResult):
                return result
            permanent, current = result
        raise FetchError(
            "too_many_redirects", f"more than {self.settings.max_redirects} redirects from {url}"
        )

    async def _hop(
        self, url: str, current: str, target: httpx.URL, headers: dict[str, str], permanent: bool
    ) -> FetchResult | tuple[bool, str]:
        """Do one request: the final result, or (still permanent, next URL) for a redirect."""
        shard = self._least_busy()
        self._busy[shard] += 1
        try:
            return await self._request(self._clients[shard], url, current, target, headers, permanent)
        finally:
            self._busy[shard] -= 1

    async def _request(
        self,
        client: httpx.AsyncClient,
        url: str,
        current: str,
        target: httpx.URL,
        headers: dict[str, str],
        permanent: bool,
    ) -> FetchResult | tuple[bool, str]:
        # httpx reads the Location of any redirect, followed or not: one it cannot parse is a
        # protocol error (its InvalidURL the context), one it cannot join or decode is raised
        # as is (InvalidURL, IDNAError).
        try:
            response = await client.send(client.build_request("GET", target, headers=headers), stream=True)
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise _invalid_location(current, exc) from None
        except httpx.RemoteProtocolError as exc:
            if isinstance(exc.__context__, httpx.InvalidURL):
                raise _invalid_location(current, exc.__context__) from None
            raise
        try:
            return await self._answer(response, url, current, permanent)
        finally:
            await response.aclose()

    async def _answer(
        self, response: httpx.Response, url: str, current: str, permanent: bool
    ) -> FetchResult | tuple[bool, str]:
        location = response.headers.get("location")
        if response.status_code in _REDIRECTS and location:
            await self._drain(response)
            still_permanent = permanent and response.status_code in (301, 308)
            try:
                following = urljoin(current, location.strip())
            except ValueError as exc:
                raise _invalid(location, current, str(exc)) from None
            return still_permanent, following
        if response.status_code >= 400:
            await self._drain(response)
            raise FetchError(
                "http",
                f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                status=response.status_code,
                retry_after=response.headers.get("retry-after"),
            )
        if response.status_code == 304:
            await self._drain(response)
            body = b""
        else:
            body = await self._read(response)
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        return FetchResult(
            url=url,
            final_url=current,
            status=response.status_code,
            body=body,
            content_type=response.headers.get("content-type", ""),
            etag=etag if etag and _sendable(etag) else None,
            last_modified=last_modified if last_modified and _sendable(last_modified) else None,
            fetched_at=datetime.now(UTC),
            cache_control=response.headers.get("cache-control"),
            permanent_redirect=current if permanent and current != url else None,
        )

    def _host_slot(self, host: bytes) -> asyncio.Semaphore:
        slot = self._hosts.get(host)
        if slot is None:
            slot = self._hosts[host] = asyncio.Semaphore(self.settings.per_host)
        return slot

    @staticmethod
    async def _drain(response: httpx.Response) -> None:
        """Read a small unwanted body so the connection goes back to the pool.

        A response closed unread makes the pool drop its connection: a pass of 304s would
        open a new connection for every feed.
        """
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) <= 65536:
            async for _ in response.aiter_raw():
                pass

    async def _read(self, response: httpx.Response) -> bytes:
        # Counted after decompression, so a small gzip bomb cannot expand past the cap.
        limit = self.settings.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError("too_large", f"body of {declared} bytes exceeds max_bytes {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError("too_large", f"body exceeds max_bytes {limit}")
            chunks.append(chunk)
        return b"".join(chunks)


_URL_SHOWN = 200  # characters of a refused URL quoted in its error (it is stored on the feed)


def _parse_url(text: str, redirected_from: str | None) -> httpx.URL:
    """Return ``text`` as the absolute http(s) URL httpx will request; FetchError otherwise.

    httpx and urllib refuse URLs with ValueError, UnicodeError or httpx.InvalidURL (a bad IPv6
    or octal IPv4 literal, a port out of range, a host IDNA cannot encode, control characters,
    more than 64 KiB); all of them become an ``invalid_url`` error here.
    """
    try:
        parsed = httpx.URL(text)
        parsed.host  # noqa: B018 -- decodes an xn-- host, as httpx does later (IDNAError)
    except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError is a ValueError
        raise _invalid(text, redirected_from, str(exc)) from None
    if parsed.scheme not in ("http", "https"):
        if not parsed.scheme:
            raise _invalid(text, redirected_from, "no http:// or https://")
        raise BlockedAddressError(f"refusing to fetch {_shorten(text)!r}: only http(s) URLs")
    if not parsed.raw_host:
        raise _invalid(text, redirected_from, "no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _invalid(text, redirected_from, f"port {parsed.port} is out of range")
    return parsed


def _invalid(text: str, redirected_from: str | None, reason: str) -> FetchError:
    where = f" (a redirect from {_shorten(redirected_from)})" if redirected_from else ""
    return FetchError("invalid_url", f"not a valid URL: {_shorten(text)!r}{where}: {_shorten(reason)}")


def _invalid_location(current: str, exc: Exception) -> FetchError:
    return FetchError(
        "invalid_url",
        f"not a valid URL in the Location of a redirect from {_shorten(current)}: {_shorten(str(exc))}",
    )


def _shorten(text: str) -> str:
    return text if len(text) <= _URL_SHOWN else text[:_URL_SHOWN] + "…"


def _sendable(value: str) -> bool:
    """Whether httpx can send ``value`` as a header: printable ASCII."""
    return value.isascii() and value.isprintable()


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _may_carry(origin: tuple[str, bytes, int | None], target: httpx.URL) -> bool:
    """Whether a request to ``target`` may carry the credentials of ``origin``: the same
    origin, or its https upgrade on the default ports (httpx's rule for ``Authorization``)."""
    there = _origin(target)
    return there == origin or (origin == ("http", there[1], 80) and there == ("https", there[1], 443))


def _classify(exc: httpx.HTTPError) -> FetchError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return FetchError("timeout", f"timed out: {message}")
    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, ssl.SSLError) or "SSL" in message or "CERTIFICATE" in message.upper():
        return FetchError("tls", f"TLS error: {message}")
    if isinstance(exc, httpx.ConnectError):
        return FetchError("connect", f"cannot connect: {message}")
    if isinstance(exc, httpx.TooManyRedirects):
        return FetchError("too_many_redirects", message)
    if isinstance(exc, httpx.DecodingError):
        return FetchError("http", f"undecodable body: {message}")
    return FetchError("connect", f"network error: {message}")
