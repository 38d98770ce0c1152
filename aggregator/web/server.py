"""The site served by uvicorn inside the service's own event loop (no thread, no process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from starlette.applications import Starlette

from aggregator.internals.asgi import QuietServer

__all__ = ["WebServer"]

log = logging.getLogger(__name__)


class WebServer:
    """``start`` serves ``app`` on ``host:port``; ``stop`` ends it, waiting for open requests."""

    def __init__(self, app: Starlette, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        config = uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=int(port),
            log_config=None,  # our logging, not uvicorn's
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve from now on; raise OSError when the address cannot be bound."""
        self._task = asyncio.ensure_future(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # the bind failed: its error, here
                raise OSError(f"cannot serve on {self.address}")
            await asyncio.sleep(0.01)
        log.info("site on http://%s/ (digests, articles, search, /healthz, /metrics)", self.address)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
