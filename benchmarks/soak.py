"""Soak: `aggregator run` for N minutes against the loopback farm with churning feeds (every
feed gets a fresh set of items every `--churn` seconds, pages included, full text on), sampling
the RSS and the open file descriptors of the whole process tree. Target (issue 7): at the end
within 10 % of the 2-minute mark.

    python -m benchmarks.soak [--minutes 15] [--feeds 50] [--churn 120]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.farm import start_farm
from benchmarks.measure import _tree_rss_kb


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _open_files(root: int) -> int:
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def run(minutes: float, feeds: int, churn: float) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    with start_farm(feeds, 20, churn_seconds=churn) as base, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        entries = [{"url": f"{base}/feed/{i}.xml", "interval": "30s"} for i in range(feeds)]
        (folder / "feeds.yaml").write_text(yaml.safe_dump({"feeds": entries}))
        config = {
            "database_url": f"sqlite:///{folder / 'soak.db'}",
            "fetch": {"allow_private_networks": True, "min_interval": "10s", "per_host": 8},
            "service": {"check_every": "5s", "heartbeat_file": str(folder / "hb")},
        }
        (folder / "aggregator.yaml").write_text(yaml.safe_dump(config))
        # Logs to a file: a pipe nobody reads fills up and stalls the service.
        log_file = (folder / "service.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run", "--config", str(folder / "aggregator.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
        )
        started = time.monotonic()
        try:
            while time.monotonic() - started < minutes * 60:
                time.sleep(10)
                if process.poll() is not None:
                    tail = (folder / "service.log").read_text()[-2000:]
                    raise RuntimeError(f"the service exited: {tail}")
                samples.append(
                    {
                        "minute": (time.monotonic() - started) / 60,
                        "rss_mb": _tree_rss_kb(process.pid) / 1024,
                        "open_files": _open_files(process.pid),
                    }
                )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log_file.close()
        stored = subprocess.run(
            [
                sys.executable,
                "-m",
                "aggregator",
                "feeds",
                "--json",
                "--config",
                str(folder / "aggregator.yaml"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        articles = sum(json.loads(line)["article_count"] for line in stored.splitlines())
    mark = min(samples, key=lambda s: abs(s["minute"] - 2))
    end = samples[-1]
    return {
        "minutes": minutes,
        "feeds": feeds,
        "churn_s": churn,
        "articles": articles,
        "at_2_min": mark,
        "at_end": end,
        "rss_growth": end["rss_mb"] / mark["rss_mb"] - 1,
        "files_growth": end["open_files"] / mark["open_files"] - 1,
        "exit_code": process.returncode,
    }


def table(result: dict[str, Any]) -> str:
    a, b = result["at_2_min"], result["at_end"]
    return (
        f"{result['feeds']} feeds, new items every {result['churn_s']:.0f} s, full text on, "
        f"{result['minutes']:.0f} minutes, {result['articles']:,} articles stored; the service "
        f"exited with {result['exit_code']} on SIGTERM.\n\n"
        "| | at 2 min | at the end | change | target |\n|---|---:|---:|---:|---:|\n"
        f"| RSS of the process tree (MB) | {a['rss_mb']:.0f} | {b['rss_mb']:.0f} | "
        f"{100 * result['rss_growth']:+.0f} % | within ±10 % |\n"
        f"| open files of the process tree | {a['open_files']:.0f} | {b['open_files']:.0f} | "
        f"{100 * result['files_growth']:+.0f} % | within ±10 % |\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--feeds", type=int, default=50)
    parser.add_argument("--churn", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.minutes, args.feeds, args.churn)
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
