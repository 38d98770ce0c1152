"""Profile of the end-to-end full pass: where the CPU goes, across the command and its workers.

    python -m benchmarks.profile [--feeds 50] [--latency-ms 50] [--data DIR] [--top 15]
                                 [--tool auto|py-spy|cProfile]

Runs `aggregator fetch` with full text on (as benchmarks/e2e.py does, on fewer feeds) under
``py-spy record --subprocesses --nonblocking --format raw`` and adds up the samples by the
function on top of the stack (its own time, not its callees'), over every process of the tree.
py-spy does not record idle samples by default, so the counts are CPU time, not waiting.
Functions in ``aggregator/`` are ours; the rest are libraries or the standard library.

When py-spy is absent or cannot attach (no ptrace), each process is profiled with cProfile
instead, started from a ``sitecustomize`` module put on PYTHONPATH (the main process and the
spawned workers alike), and the own times of the functions are added up over the processes.
"""

from __future__ import annotations

import argparse
import collections
import json
import marshal
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import e2e
from benchmarks.extraction_speed import DEFAULT_DATA
from benchmarks.farm import ITEMS_PER_FEED, start_farm
from benchmarks.measure import find_tool

RATE = 50  # samples per second: enough for a top-15 of a minute's pass, cheap to take
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PROCESS = re.compile(r'^(?:process \d+:"[^"]*";?)+')
_SITECUSTOMIZE = """\
import atexit, cProfile, os, time
# CPU time, not wall time: a process waiting on its sockets or queues costs nothing.
_profile = cProfile.Profile(time.process_time)
_profile.enable()

def _dump():
    _profile.disable()
    _profile.dump_stats(os.path.join(os.environ["BENCH_CPROFILE_DIR"], f"{os.getpid()}.prof"))

atexit.register(_dump)
"""


def where(file: str) -> tuple[str, bool]:
    """Return the module a frame's file belongs to, and whether it is ours (``aggregator/``)."""
    path = file.replace("\\", "/")
    if "/site-packages/" in path:
        rest = path.split("/site-packages/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py"), False
    marker = path.rfind("/aggregator/")
    if marker >= 0 or path.startswith("aggregator/"):
        rest = path[marker + 1 :] if marker >= 0 else path
        return rest.removesuffix(".py").replace("/", "."), True
    if path == "~":  # cProfile's name for functions written in C
        return "built-in (C)", False
    if path.startswith("<frozen"):
        return "stdlib importlib", False
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib " + rest.removesuffix(".py").removesuffix("/__init__").replace("/", "."), False
    return path.rsplit("/", 1)[-1] or path, False


def aggregate_raw(text: str) -> tuple[collections.Counter[tuple[str, str]], int]:
    """Own samples per (function, file) from py-spy's raw (collapsed stacks) output."""
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # --subprocesses puts the processes (parent, then child; a command line may hold ";")
        # as the first frames.
        frames = _PROCESS.sub("", stack)
        if not frames:
            function, file = "(no Python frame: native code or start-up)", "?"
        else:
            leaf = frames.rsplit(";", 1)[-1]
            match = _FRAME.match(leaf)
            function, file = (match["function"], match["file"]) if match else (leaf, "?")
        own[(function, file)] += int(count)
        total += int(count)
    return own, total


def aggregate_cprofile(folder: Path) -> tuple[collections.Counter[tuple[str, str]], int]:
    """Own CPU time (in ms) per (function, file), summed over the processes' cProfile dumps."""
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    for dump in folder.glob("*.prof"):
        stats = marshal.loads(dump.read_bytes())
        for (file, _, function), (_, _, own_time, _, _) in stats.items():
            own[(function, file)] += round(1000 * own_time)
    return own, sum(own.values())


def _py_spy_works(py_spy: str) -> bool:
    probe = [sys.executable, "-c", "sum(range(10**7))"]
    done = subprocess.run(
        [py_spy, "record", "--nonblocking", "-r", "20", "-o", os.devnull, "--format", "raw", "--", *probe],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode == 0


def run(
    data: Path = DEFAULT_DATA, feeds: int = 50, latency_ms: int = 50, tool: str = "auto"
) -> dict[str, Any] | None:
    """Profile one full pass; return the own samples per function, or None without the pages."""
    if not e2e.pages_of(data):
        print(f"skipped the profile: no pages under {data}/html", file=sys.stderr)
        return None
    py_spy = find_tool("py-spy")
    if tool == "auto":
        tool = "py-spy" if py_spy and _py_spy_works(py_spy) else "cProfile"
    with (
        start_farm(feeds, latency_ms, pages_dir=data / "html") as base,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        command = e2e.fetch_command(e2e.write_config(folder, base, feeds))
        env, raw, dumps = dict(os.environ), folder / "profile.raw", folder / "prof"
        if tool == "py-spy":
            assert py_spy is not None
            spy = [py_spy, "record", "--subprocesses", "--nonblocking", "--full-filenames"]
            command = [*spy, "-r", str(RATE), "--format", "raw", "-o", str(raw), "--", *command]
        else:
            hook = folder / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
            dumps.mkdir()
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
            env["BENCH_CPROFILE_DIR"] = str(dumps)
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"profiled fetch failed ({done.returncode}): {done.stderr[-2000:]}")
        own, total = aggregate_raw(raw.read_text()) if tool == "py-spy" else aggregate_cprofile(dumps)
    # py-spy prints its own lines into the same stdout: keep the command's summary.
    summary = next((line for line in reversed(done.stdout.splitlines()) if line.startswith("fetched ")), "")
    return {
        "tool": tool,
        "feeds": feeds,
        "pages": feeds * ITEMS_PER_FEED,
        "latency_ms": latency_ms,
        "total": total,
        "own": [[function, file, count] for (function, file), count in own.most_common()],
        "summary": summary,
    }


def table(result: dict[str, Any], top: int = 15) -> str:
    total = result["total"] or 1
    unit = "samples" if result["tool"] == "py-spy" else "ms"
    lines = [
        f"| # | function | module | ours? | own CPU ({unit}) | share |",
        "|---:|---|---|---|---:|---:|",
    ]
    by_module: collections.Counter[str] = collections.Counter()
    ours_total = 0
    for _, file, count in result["own"]:
        module, is_ours = where(file)
        by_module[module] += count
        ours_total += count if is_ours else 0
    for rank, (function, file, count) in enumerate(result["own"][:top], 1):
        module, is_ours = where(file)
        lines.append(
            f"| {rank} | `{function}` | {module} | {'**ours**' if is_ours else 'library'} "
            f"| {count:,} | {100 * count / total:.1f} % |"
        )
    ours_top = [row for row in result["own"] if where(row[1])[1]][:5]
    ours_line = "; ".join(
        f"`{where(file)[0]}.{function}` {100 * count / total:.1f} %" for function, file, count in ours_top
    )
    modules = ", ".join(f"{name} {100 * count / total:.0f} %" for name, count in by_module.most_common(8))
    how = (
        f"`py-spy record --subprocesses --nonblocking -r {RATE} --format raw`"
        if result["tool"] == "py-spy"
        else "cProfile in every process (py-spy absent or unable to attach here)"
    )
    return (
        "\n".join(lines)
        + "\n\n"
        + f"Full pass of `aggregator fetch`, full text on, {result['feeds']} feeds × {ITEMS_PER_FEED} = "
        f"{result['pages']:,} pages at {result['latency_ms']} ms latency, profiled with {how}; "
        f"{result['total']:,} {unit} of CPU over the command and its workers. "
        f"Own time (the function on top of the stack). Ours (`aggregator/`) in all: "
        f"{100 * ours_total / total:.1f} %; our top five: {ours_line or 'none'}. "
        f"By module: {modules}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--feeds", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--tool", choices=("auto", "py-spy", "cProfile"), default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.data, args.feeds, args.latency_ms, args.tool)
    if result is None:
        return 1
    print(json.dumps(result, indent=1) if args.json else table(result, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
