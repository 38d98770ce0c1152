"""Two versions of the code in one run: the end-to-end pass (full text, then a conditional pass)
and the near-duplicate lookup, alternating between a base commit and the working tree, so that
the machine's speed, which moves through a day, moves both alike.

    python -m benchmarks.ab BASE [--rounds 3] [--feeds 50] [--dedup-max 10000]

BASE is any git revision; it is checked out in a temporary worktree and run from there with its
own benchmark code (``python -m benchmarks.e2e --json`` and ``benchmarks.dedup_scale --json``).
Rounds go A B, then B A, and so on. Prints a Markdown table of the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.extraction_speed import DEFAULT_DATA

ROOT = Path(__file__).resolve().parents[1]

# name -> how to read it from a round's figures, and its unit
METRICS: dict[str, tuple[Callable[[dict[str, Any]], float], str]] = {
    "full pass, command wall": (lambda r: r["e2e"]["ours"]["full"]["wall_s"], "s"),
    "full pass, CPU of the process tree": (lambda r: r["e2e"]["ours"]["full"]["cpu_s"], "s"),
    "full pass, peak RSS": (lambda r: r["e2e"]["ours"]["full"]["rss_mb"], "MB"),
    "conditional pass, command wall": (lambda r: r["e2e"]["ours"]["conditional"]["wall_s"], "s"),
    "conditional pass, CPU": (lambda r: r["e2e"]["ours"]["conditional"]["cpu_s"], "s"),
    "near-duplicate lookup p50 (largest size, SQLite)": (lambda r: r["dedup"][-1]["lookup_p50"], "ms"),
    "store_refresh, per article (largest size, SQLite)": (
        lambda r: r["dedup"][-1]["insert_ms_per_article"],
        "ms",
    ),
}


def _run_json(tree: Path, module: str, *args: str) -> Any:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--json"],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measure(tree: Path, feeds: int, latency_ms: int, dedup_max: int) -> dict[str, Any]:
    """One round of ``tree``'s own benchmarks."""
    return {
        "e2e": _run_json(
            tree,
            "benchmarks.e2e",
            "--feeds",
            str(feeds),
            "--latency-ms",
            str(latency_ms),
            "--data",
            str(DEFAULT_DATA),
        ),
        "dedup": _run_json(
            tree,
            "benchmarks.dedup_scale",
            "--max",
            str(dedup_max),
            "--databases",
            "sqlite",
            "--probes",
            "200",
        ),
    }


def _figure(rounds: list[dict[str, Any]], read: Callable[[dict[str, Any]], float]) -> float | None:
    values = []
    for figures in rounds:
        try:
            values.append(float(read(figures)))
        except (KeyError, IndexError, TypeError):
            continue
    return statistics.median(values) if values else None


def table(base: str, rounds: dict[str, list[dict[str, Any]]], feeds: int) -> str:
    heading = f"{len(rounds['head'])} rounds, alternating; {feeds} feeds × 20 pages"
    lines = [f"| {heading} | {base} | this tree | this / {base} |", "|---|---|---|---|"]
    for name, (read, unit) in METRICS.items():
        before, after = _figure(rounds["base"], read), _figure(rounds["head"], read)
        if before is None or after is None:
            continue
        ratio = f"{after / before:.2f}" if before else "-"
        lines.append(f"| {name} | {before:.2f} {unit} | {after:.2f} {unit} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("base", help="the git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--feeds", type=int, default=50, help="end-to-end feeds of 20 new pages each")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--dedup-max", type=int, default=10_000, help="stored articles for the lookup")
    args = parser.parse_args(argv)
    if not DEFAULT_DATA.is_dir():
        print(f"the extraction pages are absent ({DEFAULT_DATA}): nothing to measure", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="aggregator-ab-") as folder:
        checkout = Path(folder) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(checkout), args.base], cwd=ROOT, check=True
        )
        try:
            trees = {"base": checkout, "head": ROOT}
            rounds: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
            for number in range(args.rounds):
                order = ("base", "head") if number % 2 == 0 else ("head", "base")
                for name in order:
                    print(f"round {number + 1}: {name}", file=sys.stderr)
                    rounds[name].append(measure(trees[name], args.feeds, args.latency_ms, args.dedup_max))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, check=False)
    print(table(args.base, rounds, args.feeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
