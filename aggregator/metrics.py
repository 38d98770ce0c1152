"""The service's counters, exposed at /metrics in Prometheus' text format. In-process only:
each `aggregator run` process counts its own work (Prometheus sums them)."""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

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


def count(name: str, value: float = 1, **labels: str) -> None:
    """Add ``value`` to the counter ``name`` with ``labels``."""
    with _lock:
        _counters[(name, tuple(sorted(labels.items())))] += value


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with _lock:
        return dict(_counters)


def render(gauges: dict[str, tuple[str, float]]) -> str:
    """Return every counter, and ``gauges`` ({name: (help, value)}), as Prometheus text."""
    lines: list[str] = []
    by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    for (name, labels), value in sorted(snapshot().items()):
        by_name.setdefault(name, []).append((labels, value))
    for name, series in by_name.items():
        lines.append(f"# HELP {name} {HELP.get(name, name)}")
        lines.append(f"# TYPE {name} counter")
        for labels, value in series:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
    for name, (help_text, value) in gauges.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
