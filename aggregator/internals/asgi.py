"""uvicorn inside a program that has its own signal handlers: ``Server.serve`` replaces the
process's SIGINT and SIGTERM handlers for as long as it runs (``capture_signals``), which would
take the service's clean stop away from it. ``QuietServer`` leaves them alone; the service stops
the server itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

__all__ = ["QuietServer"]


class QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
