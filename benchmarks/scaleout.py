"""Scale-out on PostgreSQL (issue 7): 1, 2 and 3 `aggregator run` processes sharing one
database against the loopback farm serving real pages (full text on: fetch, parse, extract,
store), each process with one worker (`extract.workers: 1`), so the comparison is of processes.

    python -m benchmarks.scaleout --postgres postgresql://postgres@127.0.0.1/bench [--feeds 40]

Each run gets a fresh schema of that database. `aggregator fetch` does not claim feeds (it
refreshes every feed it is given), so the processes are services; the pass is timed from the
first claim of a feed to the moment every feed has its poll recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks.extraction_speed import DEFAULT_DATA
from benchmarks.farm import ITEMS_PER_FEED, start_farm

ENV = "AGGREGATOR_BENCH_POSTGRES_URL"
PASS_LIMIT = 900.0  # seconds: a run that takes longer is abandoned


def _libpq(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql://", url)


def _schema_url(url: str, schema: str) -> str:
    base = "postgresql+psycopg://" + _libpq(url).removeprefix("postgresql://")
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def _counts(connection: Any) -> tuple[int, int, int]:
    """(feeds claimed or polled, feeds with a recorded poll, articles); zeros while the schema
    is being migrated."""
    import psycopg

    try:
        started, polled = connection.execute(
            "SELECT count(*) FILTER (WHERE claimed_by IS NOT NULL OR last_success_at IS NOT NULL),"
            " count(*) FILTER (WHERE last_success_at IS NOT NULL) FROM feeds"
        ).fetchone()
        articles = connection.execute("SELECT count(*) FROM articles").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0, 0, 0
    return int(started), int(polled), int(articles[0])


def one_run(postgres: str, base: str, processes: int, feeds: int, folder: Path) -> dict[str, Any]:
    """Start ``processes`` services on a fresh schema; time the pass over ``feeds`` feeds."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = _libpq(postgres)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    run_dir = folder / f"run-{processes}"
    run_dir.mkdir()
    (run_dir / "feeds.yaml").write_text(
        yaml.safe_dump({"feeds": [{"url": f"{base}/feed/{i}.xml"} for i in range(feeds)]})
    )
    config = {
        "database_url": _schema_url(postgres, schema),
        # A long interval: each feed is polled once during the run.
        "fetch": {
            "allow_private_networks": True,
            "timeout": "60s",
            "per_host": 8,
            "concurrency": 8,
            "interval": "1d",
            "min_interval": "12h",
        },
        "extract": {"enabled": True, "workers": 1},
        "service": {"check_every": "1s", "heartbeat_file": str(run_dir / "hb")},
    }
    (run_dir / "aggregator.yaml").write_text(yaml.safe_dump(config))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    services: list[tuple[subprocess.Popen[bytes], Path]] = []
    first_claim = done = None
    try:
        for index in range(processes):
            log = run_dir / f"service-{index}.log"
            with log.open("wb") as handle:  # a file: an unread pipe fills up and stalls the service
                process = subprocess.Popen(
                    [sys.executable, "-m", "aggregator", "run", "--config", str(run_dir / "aggregator.yaml")],
                    stdout=subprocess.DEVNULL,
                    stderr=handle,
                    start_new_session=True,
                )
            services.append((process, log))
        with psycopg.connect(admin, autocommit=True, options=f"-csearch_path={schema}") as connection:
            while time.monotonic() - started < PASS_LIMIT:
                claimed, polled, articles = _counts(connection)
                now = time.monotonic()
                if claimed and first_claim is None:
                    first_claim = now
                if polled >= feeds:
                    done = now
                    break
                if any(p.poll() is not None for p, _ in services):
                    raise RuntimeError("a service exited early: " + services[0][1].read_text()[-2000:])
                time.sleep(0.1)
            _, _, articles = _counts(connection)
    finally:
        for process, _ in services:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in services:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
    if done is None or first_claim is None:
        raise RuntimeError(f"{processes} processes did not finish {feeds} feeds in {PASS_LIMIT:.0f} s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shares = [
        sum(int(n) for n in re.findall(r"refresh pass feeds=(\d+)", log.read_text(errors="replace")))
        for _, log in services
    ]
    return {
        "processes": processes,
        "feeds": feeds,
        "articles": articles,
        "pass_s": done - first_claim,
        "wall_s": done - started,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "feeds_per_process": shares,
    }


def run(
    postgres: str, feeds: int = 40, counts: tuple[int, ...] = (1, 2, 3), data: Path = DEFAULT_DATA
) -> dict[str, Any]:
    pages = data / "html"
    if not any(pages.glob("*.html")):
        raise SystemExit(f"no pages under {pages}")
    rows = []
    with start_farm(feeds, 0, pages_dir=pages) as base, tempfile.TemporaryDirectory() as tmp:
        for processes in counts:
            rows.append(one_run(postgres, base, processes, feeds, Path(tmp)))
    return {"rows": rows, "cores": os.cpu_count(), "feeds": feeds, "pages": len(list(pages.glob("*.html")))}


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    one = rows[0]["articles"] / rows[0]["pass_s"]
    lines = [
        f"{result['feeds']} feeds × {ITEMS_PER_FEED} new articles, full text on (real pages, "
        f"{result['pages']} in turn), loopback farm without latency; each process with "
        f"`extract.workers: 1`, `fetch.concurrency: 8`; {result['cores']} cores. CPU is that of the "
        "aggregator process trees, start-up included (PostgreSQL's own CPU is not in it); the pass "
        "runs from the first feed claimed to the last poll recorded.",
        "",
        "| processes | articles | pass (s) | articles/s | vs 1 process | command to done (s) | CPU (s) "
        "| CPU ms/article | feeds per process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        rate = row["articles"] / row["pass_s"]
        lines.append(
            f"| {row['processes']} | {row['articles']:,} | {row['pass_s']:.1f} | {rate:.1f} | "
            f"{rate / one:.2f}× | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
            f"{1000 * row['cpu_s'] / row['articles']:.0f} | "
            f"{' / '.join(map(str, row['feeds_per_process']))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", default=os.environ.get(ENV), help=f"a PostgreSQL URL (default: ${ENV})")
    parser.add_argument("--feeds", type=int, default=40)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.postgres:
        parser.error(f"give --postgres or set {ENV}")
    result = run(args.postgres, args.feeds, data=args.data)
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
