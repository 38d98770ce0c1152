"""Run the benchmarks and rewrite their tables in docs/PERFORMANCE.md.

    python -m benchmarks run            # the full suite (several minutes)
    python -m benchmarks run --quick    # tiny sizes, to check that the suite still works
    python -m benchmarks run --only e2e,profile   # some of them (names below)
    python -m benchmarks run --postgres URL   # also scale-out: 1, 2, 3 services on PostgreSQL
    python -m benchmarks run --dedup-scale-max 1000000   # near-duplicate lookup up to 1M articles

Each benchmark owns a block of docs/PERFORMANCE.md between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`; the text around the blocks is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks import (
    dedup_quality,
    dedup_scale,
    digest_render,
    e2e,
    extraction_quality,
    extraction_speed,
    fetch,
    growth,
    profile,
    scaleout,
    soak,
)
from benchmarks.report import machine_summary, replace_block

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("fetch", "extraction", "dedup", "digest", "e2e", "profile", "growth", "scaleout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks and update the report")
    run.add_argument("--quick", action="store_true", help="tiny sizes; checks the suite runs")
    run.add_argument("--no-peers", action="store_true", help="skip the peer programs")
    run.add_argument(
        "--soak", action="store_true", help="also the 15-minute soak of `aggregator run` (benchmarks/soak.py)"
    )
    run.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(NAMES),
        help=f"comma-separated, from: {', '.join(NAMES)} (default: all; --soak adds the soak)",
    )
    run.add_argument(
        "--postgres",
        default=os.environ.get(scaleout.ENV),
        metavar="URL",
        help=f"a PostgreSQL database for the scale-out benchmark (default: ${scaleout.ENV}); "
        "skipped without one",
    )
    run.add_argument(
        "--dedup-scale-max",
        type=int,
        default=None,
        help="largest store for the near-duplicate lookup benchmark (default: 100000; --quick: 300 "
        "on SQLite only; 1000000 takes tens of minutes)",
    )
    run.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "PERFORMANCE.md",
        help="the report to update (default: docs/PERFORMANCE.md)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark: {', '.join(sorted(unknown))}")
    only = set(args.only)
    command = "python -m benchmarks run" + (" --quick" if args.quick else "")
    if only != set(NAMES):
        command += f" --only {','.join(args.only)}"
    if args.dedup_scale_max:
        command += f" --dedup-scale-max {args.dedup_scale_max}"
    blocks = {"machine": machine_summary(command)}
    if "fetch" in only:
        if args.quick:
            rows = fetch.run([50], [0], peers=not args.no_peers, rss2email_max=50)
        else:
            rows = fetch.run([1000], [0, 50], peers=not args.no_peers)
            # At 10,000 feeds rss2email and newsboat take many minutes: the bare loop only.
            rows += fetch.run([10_000], [50], peers=not args.no_peers, rss2email_max=0, newsboat_max=0)
        blocks["fetch"] = fetch.table(rows)
    data = extraction_quality.DEFAULT_DATA
    if not data.is_dir() and only & {"extraction", "e2e", "profile"}:
        print(f"skipped the extraction, end-to-end and profile benchmarks: {data} is absent", file=sys.stderr)
    elif "extraction" in only:
        quality = extraction_quality.evaluate(data, limit=5 if args.quick else None)
        blocks["extraction-quality"] = extraction_quality.table(quality)
        if not args.quick:
            blocks["extraction-speed"] = extraction_speed.table(extraction_speed.run(data))
    if "e2e" in only and data.is_dir():
        # The workload: 200 feeds × 20 new articles = 4,000 pages at 50 ms latency.
        result = e2e.run(data, feeds=2 if args.quick else 200, latency_ms=50)
        if result is not None:
            blocks["e2e"] = e2e.table(result)
    if "profile" in only and data.is_dir():
        # A quarter of the end-to-end workload: enough samples, a quarter of the time.
        profiled = profile.run(data, feeds=1 if args.quick else 50, latency_ms=50)
        if profiled is not None:
            blocks["profile"] = profile.table(profiled)
    if "dedup" in only:
        blocks["dedup-quality"] = dedup_quality.table(dedup_quality.evaluate())
        if args.quick and not args.dedup_scale_max:
            blocks["dedup-scale"] = dedup_scale.report(300, probes=10, databases=("sqlite",))
        else:
            blocks["dedup-scale"] = dedup_scale.report(args.dedup_scale_max or 100_000)
    if "digest" in only:
        blocks["digest"] = digest_render.table([100] if args.quick else [1000, 10_000])
    if "growth" in only:
        blocks.update(
            growth.run(
                [3, 6] if args.quick else [100, 1000, 10_000],
                [100, 200] if args.quick else [1000, 10_000, 100_000],
                ["sqlite"],
                None,
                latency_ms=50,
                # The plots go beside the report, so that a --quick run into a scratch report
                # leaves docs/ alone.
                plots=args.output.parent,
                probes=20 if args.quick else 200,
            )
        )
    if "scaleout" in only:
        if args.postgres and data.is_dir():
            feeds, counts = (4, (1, 2)) if args.quick else (40, (1, 2, 3))
            blocks["scaleout"] = scaleout.table(scaleout.run(args.postgres, feeds, counts, data))
        else:
            print(f"skipped the scale-out benchmark: give --postgres or set {scaleout.ENV}", file=sys.stderr)
    if args.soak:
        blocks["soak"] = soak.table(soak.run(0.5 if args.quick else 15, 50, 120))
    report = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    for name, body in blocks.items():
        report = replace_block(report, name, body)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(f"updated {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
