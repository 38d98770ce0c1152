"""httpx and anyio internals for the fetcher.

- httpx's transport takes no network backend: ``transport_with_backend`` builds its connection
  pool (httpcore's, public) with ours and puts it where httpx keeps it (``_pool``).
- anyio imports its asyncio backend on first use, which is inside the first request:
  ``import_asyncio_backend`` imports it ahead (a private module; should anyio move it, the first
  request imports it as before).
"""

from __future__ import annotations

import contextlib
import ssl

import httpcore
import httpx

__all__ = ["import_asyncio_backend", "transport_with_backend"]


def transport_with_backend(
    ssl_context: ssl.SSLContext, size: int, backend: httpcore.AsyncNetworkBackend
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose pool of ``size`` connections connects through ``backend``."""
    # verify=ssl_context: otherwise the transport loads the CA bundle again, for a pool that is
    # replaced at once.
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=size,
        max_keepalive_connections=size,
        network_backend=backend,
    )
    return transport


def import_asyncio_backend() -> None:
    """Import anyio's asyncio backend now (httpcore's locks are anyio's)."""
    with contextlib.suppress(ImportError):
        import anyio._backends._asyncio  # noqa: F401
