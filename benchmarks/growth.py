"""Growth: fetch time against the number of feeds (should be linear) and duplicate lookup
against the number of stored articles (should be flat), each plotted into a PNG.

    python -m benchmarks.growth [--feeds 100,1000,10000] [--stored 1000,10000,100000]
                                [--databases sqlite] [--latency-ms 50] [--plots docs/]

Fetch: `aggregator fetch` with full text off (benchmarks/fetch.py's ``ours()``), the full pass
and the conditional pass, at each N. Lookup: benchmarks/dedup_scale.py's ``run()`` (p50/p95 of
the near-duplicate lookup of one new article) at each corpus size. Plots need matplotlib (the
``bench`` extra); without it the tables are still written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import dedup_scale, fetch
from benchmarks.farm import start_farm

ROOT = Path(__file__).resolve().parents[1]
FETCH_PNG, DEDUP_PNG = "growth-fetch.png", "growth-dedup.png"


def fetch_growth(sizes: list[int], latency_ms: int) -> list[dict[str, Any]]:
    rows = []
    for feeds in sizes:
        with start_farm(feeds, latency_ms) as base, tempfile.TemporaryDirectory() as tmp:
            rows.append({"feeds": feeds, **fetch.ours(base, feeds, Path(tmp))})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def dedup_growth(
    sizes: list[int], databases: list[str], postgres: str | None, probes: int = 200
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        measured = dedup_scale.run(sizes, databases, postgres, Path(folder), probes, os.cpu_count() or 1)
    return [vars(m) for m in measured]


def _per_feed_ms(row: dict[str, Any], kind: str) -> float:
    seconds = row.get(f"{kind}_pass_s") or row[f"{kind}_s"]
    return 1000 * seconds / row["feeds"]


def fetch_table(rows: list[dict[str, Any]], latency_ms: int) -> str:
    lines = [
        "| feeds | full pass (s) | ms per feed | CPU (s) | conditional pass (s) | ms per feed | CPU (s) "
        "| full: peak RSS (MB) | conditional: peak RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['feeds']:,} | {row['full_pass_s']} | {_per_feed_ms(row, 'full'):.1f} "
            f"| {row['full_cpu_s']:.1f} | {row['conditional_pass_s']} "
            f"| {_per_feed_ms(row, 'conditional'):.1f} | {row['conditional_cpu_s']:.1f} "
            f"| {row['full_rss_mb']:.0f} | {row['conditional_rss_mb']:.0f} |"
        )
    first, last = rows[0], rows[-1]
    growth = ", ".join(
        f"{kind} {_per_feed_ms(last, kind) / _per_feed_ms(first, kind):.2f}×"
        for kind in ("full", "conditional")
    )
    return (
        "\n".join(lines)
        + f"\n\nIn-pass times (`aggregator fetch`'s own summary), {latency_ms} ms latency, full text off; "
        "CPU: user + system seconds of the whole command (start-up included) and its workers. "
        f"Time per feed at {last['feeds']:,} feeds against {first['feeds']:,} (1.00× is linear): {growth}.\n"
    )


def dedup_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| database | stored | lookup p50 (ms) | p95 (ms) | p99 (ms) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['database']} | {row['size']:,} | {row['lookup_p50']:.2f} | {row['lookup_p95']:.2f} "
            f"| {row['lookup_p99']:.2f} |"
        )
    notes = []
    for database in dict.fromkeys(row["database"] for row in rows):
        mine = [row for row in rows if row["database"] == database]
        if len(mine) > 1:
            notes.append(
                f"{database}: p95 at {mine[-1]['size']:,} stored is "
                f"{mine[-1]['lookup_p95'] / mine[0]['lookup_p95']:.2f}× the p95 at {mine[0]['size']:,}"
            )
    return "\n".join(lines) + ("\n\n" + "; ".join(notes) + " (1.00× is flat).\n" if notes else "\n")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        print("no plots: matplotlib is absent (pip install -e '.[bench]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_ticks(axes: Any, xs: list[int], y_log: bool) -> None:
    """Ticks at the measured sizes, written 10,000 rather than 10^4."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes.set_xticks(xs)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    if y_log:
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())


def plot_fetch(rows: list[dict[str, Any]], latency_ms: int, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    feeds = [row["feeds"] for row in rows]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    lines = (("full", "full pass", "tab:blue"), ("conditional", "conditional pass", "tab:orange"))
    for kind, label, colour in lines:
        seconds = [row.get(f"{kind}_pass_s") or row[f"{kind}_s"] for row in rows]
        axes.plot(feeds, seconds, "o-", color=colour, label=label)
        # What linear growth from the smallest N would give.
        linear = [seconds[0] * n / feeds[0] for n in feeds]
        axes.plot(feeds, linear, ":", color=colour, label=f"{label}, linear")
        # CPU seconds move less than wall time on a shared machine.
        cpu = [row[f"{kind}_cpu_s"] for row in rows]
        axes.plot(feeds, cpu, "s--", color=colour, alpha=0.6, label=f"{label}, CPU of the command")
    axes.set_xscale("log")
    axes.set_yscale("log")
    _plain_ticks(axes, feeds, y_log=True)
    axes.set_xlabel("feeds (log scale)")
    axes.set_ylabel("wall time of the pass / CPU time, s (log scale)")
    axes.set_title(f"aggregator fetch: time against feeds ({latency_ms} ms latency, full text off)")
    _save(plt, figure, axes, path)
    return True


def _save(plt: Any, figure: Any, axes: Any, path: Path) -> None:
    """Grid, legend, layout, written to ``path``; the figure's memory freed."""
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_dedup(rows: list[dict[str, Any]], path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for database in dict.fromkeys(row["database"] for row in rows):
        mine = [row for row in rows if row["database"] == database]
        sizes = [row["size"] for row in mine]
        axes.plot(sizes, [row["lookup_p95"] for row in mine], "o-", label=f"{database}, p95")
        axes.plot(sizes, [row["lookup_p50"] for row in mine], "s--", label=f"{database}, p50")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    _plain_ticks(axes, sorted({row["size"] for row in rows}), y_log=False)
    axes.set_xlabel("articles stored (log scale)")
    axes.set_ylabel("near-duplicate lookup, ms")
    axes.set_title("Duplicate lookup against corpus size (flat is the goal)")
    _save(plt, figure, axes, path)
    return True


def run(
    feed_sizes: list[int],
    stored_sizes: list[int],
    databases: list[str],
    postgres: str | None,
    latency_ms: int,
    plots: Path,
    probes: int = 200,
) -> dict[str, str]:
    """Measure both, plot into ``plots``; return the report blocks."""
    fetch_rows = fetch_growth(feed_sizes, latency_ms)
    dedup_rows = dedup_growth(stored_sizes, databases, postgres, probes)
    plots.mkdir(parents=True, exist_ok=True)
    fetch_body = fetch_table(fetch_rows, latency_ms)
    dedup_body = dedup_table(dedup_rows)
    if plot_fetch(fetch_rows, latency_ms, plots / FETCH_PNG):
        fetch_body += f"\n![fetch time against feeds]({FETCH_PNG})\n"
    if plot_dedup(dedup_rows, plots / DEDUP_PNG):
        dedup_body += f"\n![duplicate lookup against corpus size]({DEDUP_PNG})\n"
    return {"growth-fetch": fetch_body, "growth-dedup": dedup_body}


def _sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth", description=__doc__)
    parser.add_argument("--feeds", type=_sizes, default=[100, 1000, 10_000])
    parser.add_argument("--stored", type=_sizes, default=[1000, 10_000, 100_000])
    parser.add_argument("--databases", default="sqlite")
    parser.add_argument("--postgres", default=os.environ.get("AGGREGATOR_TEST_POSTGRES_URL"))
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--plots", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    blocks = run(args.feeds, args.stored, databases, args.postgres, args.latency_ms, args.plots)
    for name, body in blocks.items():
        print(f"{name}:\n{body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
