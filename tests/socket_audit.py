"""Record the socket connections a block of test code tries, and refuse those off loopback.

``sys.addaudithook`` sees every ``socket.connect`` before the system call. Audit hooks cannot
be removed, so the hook is installed once and does nothing outside ``connections()``; a
context variable (inherited by the tasks of an ``asyncio.run`` started inside the block) says
which code is watched, so the test servers' threads are not.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

LOOPBACK = frozenset({"127.0.0.1", "::1"})
_watched: ContextVar[list[str] | None] = ContextVar("_watched", default=None)
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect":
        return
    attempts = _watched.get()
    if attempts is None:
        return
    address = args[1]
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    attempts.append(host)
    if host not in LOOPBACK:
        # Refused before the system call: even a broken guard sends nothing off this machine.
        raise ConnectionRefusedError(f"test: no connection to {host} leaves loopback")


@contextlib.contextmanager
def connections() -> Iterator[list[str]]:
    """Yield the list of hosts connected to (or tried) inside the block."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    attempts: list[str] = []
    token = _watched.set(attempts)
    try:
        yield attempts
    finally:
        _watched.reset(token)
