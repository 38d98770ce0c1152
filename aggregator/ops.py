"""Operations endpoints of `aggregator run` (``service.http``): /healthz and /metrics, served by
a minimal asyncio HTTP/1.1 server (GET only, one request per connection)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[], Awaitable[tuple[int, str, str]]]  # -> (status, content type, body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(address: str, routes: dict[str, Handler]) -> asyncio.Server:
    """Start serving ``routes`` on ``host:port``; return the server (close it to stop)."""
    host, _, port = address.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, *_ = head.decode("latin-1").split(" ", 2)
            route = routes.get(path.split("?", 1)[0])
            if method not in ("GET", "HEAD"):
                status, kind, body = 405, "text/plain", "GET only\n"
            elif route is None:
                status, kind, body = 404, "text/plain", "not found\n"
            else:
                status, kind, body = await route()
            data = body.encode("utf-8")
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else data)
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port))
    log.info("operations endpoints on http://%s/healthz and /metrics", address)
    return server


def json_response(status: int, payload: dict[str, object]) -> tuple[int, str, str]:
    return status, "application/json", json.dumps(payload) + "\n"
