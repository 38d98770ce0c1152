"""The service's counters, exposed at /metrics in Prometheus' text format by prometheus_client
(its exposition format, exact values, and the process's own CPU, memory and file-descriptor
metrics). In-process only: each `aggregator run` process counts its own work (Prometheus sums
them).

Counting is a dict update under a lock; prometheus_client is imported only to render, by the
service's /metrics: `aggregator fetch` counts too, and its start-up need not import it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["CONTENT_TYPE", "HELP", "count", "render", "snapshot"]

# prometheus_client.CONTENT_TYPE_LATEST, without importing it to know.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HELP = {
    "aggregator_fetches_total": "Feed polls by outcome (ok, not_modified, or the error kind).",
    "aggregator_articles_stored_total": "Articles stored.",
    "aggregator_duplicates_total": "Stored articles found to be copies of another.",
    "aggregator_extraction_seconds_total": "Time spent extracting article pages.",
    "aggregator_extractions_total": (
        "Article pages extracted, by result: page, none (no article text), timeout (stuck past "
        "the backstop: its worker was replaced), crashed (killed its worker twice)."
    ),
    "aggregator_digest_deliveries_total": "Digest deliveries by result (sent, empty, failed).",
}

_lock = threading.Lock()
_counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_gauges: dict[str, tuple[str, float]] = {}
_registry: Any = None


def count(name: str, value: float = 1, **labels: str) -> None:
    """Add ``value`` to the counter ``name`` with ``labels``."""
    key = (name, tuple(sorted(labels.items())))
    with _lock:
        _counters[key] = _counters.get(key, 0.0) + value


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with _lock:
        return dict(_counters)


def render(gauges: dict[str, tuple[str, float]]) -> str:
    """Return every counter, the process's own metrics, and ``gauges`` ({name: (help, value)}),
    in Prometheus' text format."""
    from prometheus_client import generate_latest

    with _lock:
        _gauges.update(gauges)
    return generate_latest(_prometheus()).decode("utf-8")


def _prometheus() -> Any:
    """The registry that renders our counters and gauges, made once."""
    global _registry
    if _registry is None:
        from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(_Ours())
        _registry = registry
    return _registry


class _Ours:
    """A prometheus_client collector reading our counters and gauges at each scrape."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = snapshot()
        with _lock:
            gauges = dict(_gauges)
        by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
        for (name, labels), value in sorted(counters.items()):
            by_name.setdefault(name, []).append((labels, value))
        for name, series in by_name.items():
            names = [key for key, _ in series[0][0]]
            family = CounterMetricFamily(name.removesuffix("_total"), HELP.get(name, name), labels=names)
            for labels, value in series:
                family.add_metric([value for _, value in labels], value)
            yield family
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=value)
