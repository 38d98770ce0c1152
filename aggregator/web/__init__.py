"""The read-only site `aggregator run` serves with ``service.http``: the digests sent, each
article in a reader view, search, and the operations endpoints (/healthz, /metrics)."""

from aggregator.web.app import WebContext, make_app
from aggregator.web.server import WebServer

__all__ = ["WebContext", "WebServer", "make_app"]
