"""Extraction throughput: pages/s with 1 and 2 worker processes on the dev pages, and the
end-to-end `aggregator fetch` of 200 new articles (10 feeds × 20) from the loopback farm
serving those real pages, with the share of the pass that is not trafilatura's own time.

    python -m benchmarks.extraction_speed [--data DIR] [--repeats N]

CPU times, not wall times, make the shares (the machine is shared): the pass's is the rusage of
the whole process tree (the command and its workers, reaped); trafilatura's own calls (its page
loader's steps in aggregator.extractor.load_html, bare_extraction, and its metadata steps in
aggregator.page_meta) are timed inside the pass's workers (benchmarks.timed_fetch), so both
terms of a share come from the same processes at the same moment. Only the start-up (the
imports of the command and its workers) is measured apart, in fresh interpreters.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks import timed_fetch
from benchmarks.farm import start_farm
from benchmarks.measure import run_measured

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "extraction" / "dev"


def _extract(html: bytes) -> int:
    from aggregator.extractor import extract_page

    page = extract_page(html, "https://news.example/story")
    return len(page.text) if page else 0


def _warm(_: int) -> int:
    import aggregator.extractor  # noqa: F401 - import cost is not throughput

    return 0


def pages_per_second(pages: list[bytes], workers: int, rounds: int = 2) -> float:
    """Return extraction throughput with ``workers`` spawned processes, imports excluded."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        list(pool.map(_warm, range(workers * 2)))
        started = time.perf_counter()
        for _ in range(rounds):
            list(pool.map(_extract, pages, chunksize=1))
        elapsed = time.perf_counter() - started
    return rounds * len(pages) / elapsed


_TIMED_FETCH = [sys.executable, "-m", "benchmarks.timed_fetch", "fetch"]


def end_to_end(data: Path, feeds: int = 10, latency_ms: int = 50) -> dict[str, Any]:
    """`aggregator fetch` with full text on (through ``benchmarks.timed_fetch``, which times
    trafilatura's calls inside the workers): wall time, CPU time, peak RSS and the split."""
    with start_farm(feeds, latency_ms, pages_dir=data / "html") as base, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "feeds.yaml").write_text(
            yaml.safe_dump({"feeds": [{"url": f"{base}/feed/{i}.xml"} for i in range(feeds)]})
        )
        config = {
            "database_url": f"sqlite:///{folder / 'bench.db'}",
            "fetch": {"allow_private_networks": True, "timeout": "60s", "per_host": 32},
        }
        (folder / "aggregator.yaml").write_text(yaml.safe_dump(config))
        records = folder / "split"
        records.mkdir()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = run_measured(
            [*_TIMED_FETCH, "--config", str(folder / "aggregator.yaml")],
            env={timed_fetch.ENV: str(records)},
            cwd=str(ROOT),
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if m.returncode != 0:
            raise RuntimeError(m.stderr[-2000:])
        split = timed_fetch.read(records)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"in ([\d.]+)s", m.stdout)
    return {
        "wall_s": m.seconds,
        "pass_s": float(match.group(1)) if match else None,
        "cpu_s": cpu,
        "rss_mb": m.peak_rss_mb,
        "summary": m.stdout.strip(),
        "split": split,
    }


def startup_cpu_seconds(workers: int) -> float:
    """CPU time to start the command's interpreter and its worker processes (imports; forked
    workers import only what the command has not)."""

    def cpu(code: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    if sys.platform == "linux":
        # `aggregator fetch` forks its workers (pipeline.start_workers) once it has imported
        # these; each worker then imports the extractor on top of them.
        command = "import aggregator.cli, aggregator.pipeline, courlan, numpy"
        main = cpu(command)
        return main + workers * max(0.0, cpu(command + ", aggregator.extractor") - main)
    main = cpu("import aggregator.cli, aggregator.pipeline, aggregator.storage")
    worker = cpu("import aggregator.worker, aggregator.extractor")
    return main + workers * worker


def run(data: Path = DEFAULT_DATA, repeats: int = 3) -> dict[str, Any]:
    """Throughput, then ``repeats`` rounds of (end-to-end pass with its split, start-up apart).

    Each round gives its own shares, so machine noise that lasts a round moves both terms of a
    share together; the table shows the median round and the range.
    """
    pages = [p.read_bytes() for p in sorted((data / "html").glob("*.html"))]
    if not pages:
        raise SystemExit(f"no pages under {data}/html")
    one = pages_per_second(pages, 1)
    two = pages_per_second(pages, 2)
    workers = os.cpu_count() or 1
    rounds = []
    for _ in range(repeats):
        e2e = end_to_end(data)
        startup = startup_cpu_seconds(workers)
        steady = e2e["cpu_s"] - startup
        workers_cpu = e2e["split"]["workers"]
        trafilatura_own = workers_cpu["traf"]
        # Start-up as the pass itself saw it: all the command did before its pass began (with
        # a new database's migrations) and the workers' import of the extractor.
        before = e2e["split"]["command"]["before_pass"] + workers_cpu["startup"]
        in_pass = e2e["cpu_s"] - before
        rounds.append(
            {
                "end_to_end": e2e,
                "extraction_cpu_s": workers_cpu["extract_page"],
                "trafilatura_cpu_s": trafilatura_own,
                "startup_cpu_s": startup,
                # Where the rest goes: the command's process (its start-up included), the
                # workers outside extract_page (their start-up, parsing, storing, the pool's
                # hand-off) and our code inside it.
                "command_cpu_s": e2e["split"]["command"]["total"],
                "workers_outside_cpu_s": workers_cpu["total"] - workers_cpu["extract_page"],
                "ours_in_extraction_cpu_s": workers_cpu["extract_page"] - trafilatura_own,
                # Everything but extract_page, as a share of the pass's CPU (start-up included).
                "overhead_share": max(0.0, 1 - workers_cpu["extract_page"] / e2e["cpu_s"]),
                # The same without the fixed cost of starting the command and its workers (the
                # service pays it once, not per article).
                "overhead_share_steady": (
                    max(0.0, 1 - workers_cpu["extract_page"] / steady) if steady > 0 else None
                ),
                # Everything but trafilatura's own calls (our extractor code counts as ours too).
                "own_share_steady": max(0.0, 1 - trafilatura_own / steady) if steady > 0 else None,
                "startup_in_pass_cpu_s": before,
                "own_share_in_pass": max(0.0, 1 - trafilatura_own / in_pass) if in_pass > 0 else None,
            }
        )
    rounds.sort(key=lambda r: r["own_share_steady"] if r["own_share_steady"] is not None else 1.0)
    median = rounds[len(rounds) // 2]
    return {
        "pages": len(pages),
        "pages_per_s_1": one,
        "pages_per_s_2": two,
        "speedup": two / one,
        **median,
        "rounds": rounds,
        "peak_rss_mb": max(r["end_to_end"]["rss_mb"] for r in rounds),
        "cores": workers,
    }


def _range(result: dict[str, Any], key: str) -> str:
    values = [100 * r[key] for r in result["rounds"] if r[key] is not None]
    return f"{min(values):.0f}–{max(values):.0f} %" if len(values) > 1 else ""


def table(result: dict[str, Any]) -> str:
    e2e = result["end_to_end"]
    rounds = len(result["rounds"])
    return (
        "| measure | value | range | target |\n|---|---:|---:|---:|\n"
        f"| pages/s, 1 worker ({result['pages']} dev pages) | {result['pages_per_s_1']:.1f} | | |\n"
        f"| pages/s, 2 workers | {result['pages_per_s_2']:.1f} | | |\n"
        f"| speed-up, 2 workers / 1 | {result['speedup']:.2f}× | | ≥ 1.7× |\n"
        f"| `aggregator fetch`, 200 new articles, 50 ms latency (median of {rounds} rounds): command "
        f"| {e2e['wall_s']:.1f} s | | |\n"
        f"| … the pass itself | {e2e['pass_s']} s | | |\n"
        f"| … CPU time of the process tree | {e2e['cpu_s']:.1f} s | | |\n"
        f"| … of which `extract_page`, in the workers | {result['extraction_cpu_s']:.1f} s | | |\n"
        f"| … … of which trafilatura's own calls | {result['trafilatura_cpu_s']:.1f} s | | |\n"
        f"| … … of which our extractor code | {result['ours_in_extraction_cpu_s']:.1f} s | | |\n"
        f"| … the workers outside `extract_page` (start-up, parsing, storing, hand-off) | "
        f"{result['workers_outside_cpu_s']:.1f} s | | |\n"
        f"| … the command's process (start-up, HTTP, the pipeline) | {result['command_cpu_s']:.1f} s | | |\n"
        f"| … start-up of the command and its {result['cores']} workers (imports, measured apart) | "
        f"{result['startup_cpu_s']:.1f} s | | |\n"
        f"| … all but `extract_page`, share of the CPU, start-up included | "
        f"{100 * result['overhead_share']:.0f} % | {_range(result, 'overhead_share')} | |\n"
        f"| … all but `extract_page`, start-up excluded | "
        f"{100 * result['overhead_share_steady']:.0f} % | {_range(result, 'overhead_share_steady')} | |\n"
        f"| … all but trafilatura's own time, start-up (imports, measured apart) excluded | "
        f"{100 * result['own_share_steady']:.0f} % | {_range(result, 'own_share_steady')} | none |\n"
        f"| … all but trafilatura's own time, start-up as the pass saw it "
        f"({result['startup_in_pass_cpu_s']:.1f} s: all before the pass began) excluded | "
        f"{100 * result['own_share_in_pass']:.0f} % | {_range(result, 'own_share_in_pass')} | none |\n"
        f"| … peak RSS (process tree, highest round) | {result['peak_rss_mb']:.0f} MB | | < 400 MB |\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the end-to-end measure")
    args = parser.parse_args()
    result = run(args.data, args.repeats)
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
