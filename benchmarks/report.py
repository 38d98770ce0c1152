"""Helpers that write benchmark results into docs/PERFORMANCE.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata

from benchmarks.measure import find_tool

LIBRARIES = (
    "feedparser",
    "httpx",
    "httpcore",
    "lxml",
    "trafilatura",
    "SQLAlchemy",
    "nh3",
    "matplotlib",
    "py-spy",
)


def machine_summary(command: str) -> str:
    """Return a Markdown block describing this machine and run."""
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
            memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = ", ".join(f"{name} {_version(name)}" for name in LIBRARIES)
    peers = []
    for binary, flag in (("newsboat", "-v"), ("r2e", "--version")):
        path = find_tool(binary)
        if path:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
            peers.append((out.stdout or out.stderr).strip().splitlines()[0][:60])
    return (
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- Command: `{command}`\n"
        f"- Machine: {os.cpu_count()} cores, {memory} memory, {platform.machine()}, "
        f"{platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()}; {versions}\n"
        f"- Peers found: {', '.join(peers) or 'none'}\n"
    )


def replace_block(text: str, name: str, body: str) -> str:
    """Replace (or append) the block between `<!-- name:begin -->` and `<!-- name:end -->`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"
