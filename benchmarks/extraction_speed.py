"""Extraction throughput: pages/s with 1 and 2 worker processes on the dev pages, and the
end-to-end `aggregator fetch` of 200 new articles (10 feeds × 20) from the loopback farm
serving those real pages, with the share of the pass that is not trafilatura's own time.

    python -m benchmarks.extraction_speed [--data DIR]
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

from benchmarks.farm import start_farm
from benchmarks.measure import run_measured

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "extraction" / "dev"


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


def extraction_cpu_seconds(pages: list[bytes], count: int) -> float:
    """Return the CPU time trafilatura (our extract_page) takes for ``count`` pages in turn."""
    from aggregator.extractor import extract_page

    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(count):
        extract_page(pages[i % len(pages)], "https://news.example/story")
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(data: Path, feeds: int = 10, latency_ms: int = 50) -> dict[str, Any]:
    """`aggregator fetch` with full text on: wall time, CPU time, peak RSS, overhead share."""
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
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = run_measured(
            [sys.executable, "-m", "aggregator", "fetch", "--config", str(folder / "aggregator.yaml")]
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if m.returncode != 0:
        raise RuntimeError(m.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = re.search(r"in ([\d.]+)s", m.stdout)
    return {
        "wall_s": m.seconds,
        "pass_s": float(match.group(1)) if match else None,
        "cpu_s": cpu,
        "rss_mb": m.peak_rss_mb,
        "summary": m.stdout.strip(),
    }


def startup_cpu_seconds(workers: int) -> float:
    """CPU time to start the command's interpreter and its worker processes (imports)."""

    def cpu(code: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    main = cpu("import aggregator.cli, aggregator.pipeline, aggregator.store")
    worker = cpu("import aggregator.worker, aggregator.extractor")
    return main + workers * worker


def run(data: Path = DEFAULT_DATA) -> dict[str, Any]:
    pages = [p.read_bytes() for p in sorted((data / "html").glob("*.html"))]
    if not pages:
        raise SystemExit(f"no pages under {data}/html")
    one = pages_per_second(pages, 1)
    two = pages_per_second(pages, 2)
    e2e = end_to_end(data)
    trafilatura_cpu = extraction_cpu_seconds(pages, 200)
    startup = startup_cpu_seconds(os.cpu_count() or 1)
    steady = e2e["cpu_s"] - startup
    return {
        "pages": len(pages),
        "pages_per_s_1": one,
        "pages_per_s_2": two,
        "speedup": two / one,
        "end_to_end": e2e,
        "extraction_cpu_s": trafilatura_cpu,
        # What the pass spends on anything but extraction, as a share of its CPU time.
        "overhead_share": max(0.0, 1 - trafilatura_cpu / e2e["cpu_s"]) if e2e["cpu_s"] else None,
        # The same without the fixed cost of starting the command and its workers (the
        # service pays it once, not per article).
        "startup_cpu_s": startup,
        "overhead_share_steady": max(0.0, 1 - trafilatura_cpu / steady) if steady > 0 else None,
        "cores": os.cpu_count(),
    }


def table(result: dict[str, Any]) -> str:
    e2e = result["end_to_end"]
    return (
        "| measure | value | target |\n|---|---:|---:|\n"
        f"| pages/s, 1 worker ({result['pages']} dev pages) | {result['pages_per_s_1']:.1f} | |\n"
        f"| pages/s, 2 workers | {result['pages_per_s_2']:.1f} | |\n"
        f"| speed-up, 2 workers / 1 | {result['speedup']:.2f}× | ≥ 1.7× |\n"
        f"| `aggregator fetch`, 200 new articles, 50 ms latency: command | {e2e['wall_s']:.1f} s | |\n"
        f"| … the pass itself | {e2e['pass_s']} s | |\n"
        f"| … CPU time of the process tree | {e2e['cpu_s']:.1f} s | |\n"
        f"| … of which extraction alone (200 pages, measured apart) | "
        f"{result['extraction_cpu_s']:.1f} s | |\n"
        f"| … pipeline's own share of the CPU, start-up included | "
        f"{100 * result['overhead_share']:.0f} % | |\n"
        f"| … start-up of the command and its {result['cores']} workers (imports) | "
        f"{result['startup_cpu_s']:.1f} s | |\n"
        f"| … pipeline's own share of the CPU, start-up excluded | "
        f"{100 * result['overhead_share_steady']:.0f} % | < 15 % |\n"
        f"| … peak RSS (process tree) | {e2e['rss_mb']:.0f} MB | < 400 MB |\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.data)
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
