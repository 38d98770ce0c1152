"""Fetch benchmark: `aggregator fetch` against the loopback farm, full text off.

For each size and latency: a full pass (every entry parsed and stored) and a conditional pass
(every feed answers 304), wall time, feeds/s and the peak RSS of the process tree; and in the
same run, the peers that are installed: the bare httpx + feedparser loop, newsboat
(`-x reload`, 32 reload threads) and rss2email (`r2e run --no-send`).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.farm import start_farm
from benchmarks.measure import Measurement, find_tool, run_measured


def _check(m: Measurement, what: str) -> Measurement:
    if m.returncode != 0:
        raise RuntimeError(f"{what} failed ({m.returncode}): {m.stderr[-2000:]}")
    return m


def ours(base: str, feeds: int, folder: Path) -> dict[str, Any]:
    urls = [{"url": f"{base}/feed/{i}.xml"} for i in range(feeds)]
    (folder / "feeds.yaml").write_text(yaml.safe_dump({"feeds": urls}))
    config = {
        "database_url": f"sqlite:///{folder / 'bench.db'}",
        "fetch": {"allow_private_networks": True, "timeout": "120s", "concurrency": 32, "per_host": 32},
        "extract": {"enabled": False},
    }
    (folder / "aggregator.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "aggregator", "fetch", "--config", str(folder / "aggregator.yaml")]
    full = _check(run_measured(command), "aggregator fetch (full)")
    conditional = _check(run_measured(command), "aggregator fetch (conditional)")
    return {
        "full_s": full.seconds,
        "conditional_s": conditional.seconds,
        "full_pass_s": _pass_seconds(full.stdout),
        "conditional_pass_s": _pass_seconds(conditional.stdout),
        "full_cpu_s": full.cpu_s,
        "conditional_cpu_s": conditional.cpu_s,
        "full_rss_mb": full.peak_rss_mb,
        "conditional_rss_mb": conditional.peak_rss_mb,
        "summary": full.stdout.strip().splitlines()[-1] if full.stdout.strip() else "",
    }


def _pass_seconds(stdout: str) -> float | None:
    """The pass itself, from `aggregator fetch`'s summary line (no interpreter start-up)."""
    match = re.search(r"fetched [\d,]+ feeds in ([\d.]+)s", stdout)
    return float(match.group(1)) if match else None


def bare(base: str, feeds: int) -> dict[str, Any]:
    m = _check(run_measured([sys.executable, "-m", "benchmarks.bare_loop", base, str(feeds)]), "bare loop")
    result = json.loads(m.stdout.strip().splitlines()[-1])
    return {"full_s": result["full"], "conditional_s": result["conditional"], "rss_mb": m.peak_rss_mb}


def newsboat(base: str, feeds: int, folder: Path) -> dict[str, Any] | None:
    binary = find_tool("newsboat")
    if binary is None:
        return None
    (folder / "urls").write_text("".join(f"{base}/feed/{i}.xml\n" for i in range(feeds)))
    (folder / "config").write_text("reload-threads 32\n")
    command = [
        binary,
        "-u",
        str(folder / "urls"),
        "-c",
        str(folder / "cache.db"),
        "-C",
        str(folder / "config"),
        "-x",
        "reload",
    ]
    env = {"HOME": str(folder)}
    full = _check(run_measured(command, env=env), "newsboat (full)")
    conditional = _check(run_measured(command, env=env), "newsboat (conditional)")
    return {
        "full_s": full.seconds,
        "conditional_s": conditional.seconds,
        "rss_mb": max(full.peak_rss_mb, conditional.peak_rss_mb),
    }


def rss2email(base: str, feeds: int, folder: Path) -> dict[str, Any] | None:
    binary = find_tool("r2e")
    if binary is None:
        return None
    config, data = folder / "r2e.cfg", folder / "r2e.json"
    base_args = [binary, "-c", str(config), "-d", str(data)]
    _check(run_measured([*base_args, "new", "bench@example.com"]), "r2e new")
    # Adding feeds one command each would dominate the run: write the feed list into the config.
    text = config.read_text()
    text += "".join(f"\n[feed.f{i}]\nurl = {base}/feed/{i}.xml\n" for i in range(feeds))
    config.write_text(text)
    full = _check(run_measured([*base_args, "run", "--no-send"]), "r2e run (full)")
    conditional = _check(run_measured([*base_args, "run", "--no-send"]), "r2e run (conditional)")
    return {
        "full_s": full.seconds,
        "conditional_s": conditional.seconds,
        "rss_mb": max(full.peak_rss_mb, conditional.peak_rss_mb),
    }


def run(
    sizes: list[int],
    latencies: list[int],
    peers: bool = True,
    rss2email_max: int = 1000,
    newsboat_max: int = 1000,
) -> list[dict[str, Any]]:
    """Return one row per (feeds, latency) with our figures and the peers'."""
    rows = []
    for feeds in sizes:
        for latency in latencies:
            row: dict[str, Any] = {"feeds": feeds, "latency_ms": latency}
            with start_farm(feeds, latency) as base:
                with tempfile.TemporaryDirectory() as tmp:
                    row["ours"] = ours(base, feeds, Path(tmp))
                if peers:
                    row["bare"] = bare(base, feeds)
                    if feeds <= newsboat_max:
                        with tempfile.TemporaryDirectory() as tmp:
                            row["newsboat"] = newsboat(base, feeds, Path(tmp))
                    if feeds <= rss2email_max:
                        with tempfile.TemporaryDirectory() as tmp:
                            row["rss2email"] = rss2email(base, feeds, Path(tmp))
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Return the fetch results as a Markdown table, with ratios against the peers."""

    def seconds(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    def ratio(ours_s: float, peer: dict[str, Any] | None, key: str) -> str:
        if not peer:
            return "–"
        return f"{ours_s / peer[key]:.2f}"

    lines = [
        "| feeds | latency | pass | ours: command (s) | ours: in-pass (s) | ours: peak RSS (MB) "
        "| bare loop (s) | newsboat (s) | rss2email (s) | ours / bare | ours / newsboat |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ours_row = row["ours"]
        for kind in ("full", "conditional"):
            ours_s = ours_row[f"{kind}_s"]
            in_pass = ours_row.get(f"{kind}_pass_s")
            bare_row, newsboat_row, r2e_row = row.get("bare"), row.get("newsboat"), row.get("rss2email")
            lines.append(
                f"| {row['feeds']:,} | {row['latency_ms']} ms | {kind} | {seconds(ours_s)} "
                f"| {seconds(in_pass)} | {ours_row[f'{kind}_rss_mb']:.0f} "
                f"| {seconds(bare_row[f'{kind}_s']) if bare_row else '–'} "
                f"| {seconds(newsboat_row[f'{kind}_s']) if newsboat_row else '–'} "
                f"| {seconds(r2e_row[f'{kind}_s']) if r2e_row else '–'} "
                f"| {ratio(in_pass or ours_s, bare_row, f'{kind}_s')} "
                f"| {ratio(ours_s, newsboat_row, f'{kind}_s')} |"
            )
    return "\n".join(lines) + "\n"
