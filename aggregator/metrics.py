"""The service's counters, exposed at /metrics by prometheus_client (its exposition format, exact
values, and the process's own CPU, memory and file-descriptor metrics). In-process only: each
`aggregator run` process counts its own work (Prometheus sums them)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "HELP", "count", "render", "snapshot"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A `_created` series beside each counter doubles the output for a timestamp nobody graphs.
disable_created_metrics()  # type: ignore[no-untyped-call]

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
_LABELS = {
    "aggregator_fetches_total": ("outcome",),
    "aggregator_extractions_total": ("result",),
    "aggregator_digest_deliveries_total": ("result",),
}

_registry = CollectorRegistry()
ProcessCollector(registry=_registry)
PlatformCollector(registry=_registry)
_counters = {
    name: Counter(name.removesuffix("_total"), text, _LABELS.get(name, ()), registry=_registry)
    for name, text in HELP.items()
}
_gauges: dict[str, Gauge] = {}


def count(name: str, value: float = 1, **labels: str) -> None:
    """Add ``value`` to the counter ``name`` (one of HELP) with ``labels``."""
    counter = _counters[name]
    (counter.labels(**labels) if labels else counter).inc(value)


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter's value, by (name, sorted labels)."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for counter in _counters.values():
        for family in counter.collect():
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def render(gauges: dict[str, tuple[str, float]]) -> str:
    """Return every counter, the process's metrics, and ``gauges`` ({name: (help, value)}), in
    Prometheus' text format."""
    for name, (help_text, value) in gauges.items():
        gauge = _gauges.get(name)
        if gauge is None:
            gauge = _gauges[name] = Gauge(name, help_text, registry=_registry)
        gauge.set(value)
    return generate_latest(_registry).decode("utf-8")
