"""The benchmark suite is not a test, but it must not rot: run it on tiny sizes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, SHARED


def test_quick_benchmark_run_writes_a_report(tmp_path: Path) -> None:
    # The end-to-end, profile and growth benchmarks have their own tests below.
    text, _ = _quick(
        tmp_path,
        "fetch,extraction,dedup,digest",
        "# Notes kept\n\n<!-- fetch:begin -->\nold\n<!-- fetch:end -->\n",
    )
    assert text.startswith("# Notes kept")
    assert "old" not in text
    assert "| 50 | 0 ms | full |" in text and "| 50 | 0 ms | conditional |" in text
    assert "Command: `python -m benchmarks run --quick --only fetch,extraction,dedup,digest`" in text
    assert "<!-- dedup-scale:begin -->" in text and "| sqlite |" in text


def test_the_pass_times_trafilaturas_calls_inside_its_own_workers() -> None:
    import pytest

    from benchmarks.extraction_speed import DEFAULT_DATA, end_to_end

    if not (DEFAULT_DATA / "html").is_dir():
        pytest.skip("../shared/data/extraction/dev is absent")
    result = end_to_end(DEFAULT_DATA, feeds=1)
    assert "20 new articles" in result["summary"]
    split = result["split"]
    workers = split["workers"]
    assert split["worker_count"] >= 1  # each forked worker wrote its record at the pool's shutdown
    # Nested timers: trafilatura's calls inside extract_page, inside the step, inside the worker.
    assert 0 < workers["traf"] < workers["extract_page"] <= workers["extract"] < workers["total"]
    assert workers["ingest"] > 0 and workers["finish"] > 0
    assert split["command"]["total"] + workers["total"] <= result["cpu_s"] * 1.05
    assert 0 < split["command"]["before_pass"] < split["command"]["total"]


DEV_PAGES = SHARED / "data" / "extraction" / "dev" / "html"


def _quick(tmp_path: Path, only: str, report_text: str = "# Kept\n") -> tuple[str, str]:
    """Run ``--quick --only ONLY`` into a scratch report holding ``report_text``; return the
    report and stderr."""
    report = tmp_path / "PERFORMANCE.md"
    report.write_text(report_text)
    command = [sys.executable, "-m", "benchmarks", "run", "--quick", "--no-peers", "--only", only]
    done = subprocess.run(
        [*command, "--output", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = report.read_text()
    assert text.startswith(report_text.split("\n", 1)[0])
    assert f"Command: `python -m benchmarks run --quick --only {only}`" in text
    return text, done.stderr


# A loaded machine makes the `aggregator fetch` start-ups slow; each run stays well under this.
@pytest.mark.timeout(300)
def test_quick_end_to_end(tmp_path: Path) -> None:
    if not any(DEV_PAGES.glob("*.html")):
        text, stderr = _quick(tmp_path, "e2e")
        assert "<!-- e2e:begin -->" not in text and "is absent" in stderr
        pytest.skip("../shared/data/extraction/dev is absent: the end-to-end benchmark is skipped")
    text, _ = _quick(tmp_path, "e2e")
    # 2 feeds × 20 pages: every page fetched, extracted and stored; the peer read the same 40.
    assert "2 feeds × 20 = 40 pages at 50 ms latency; full pass: 40 new articles" in text
    assert "| full pass: peak RSS (MB) |" in text and "Floor: the bare loop needs" in text


@pytest.mark.timeout(300)
def test_quick_profile(tmp_path: Path) -> None:
    if not any(DEV_PAGES.glob("*.html")):
        pytest.skip("../shared/data/extraction/dev is absent: the profile is skipped")
    text, _ = _quick(tmp_path, "profile")
    assert "<!-- profile:begin -->" in text and "| 1 | `" in text
    assert "1 feeds × 20 = 20 pages" in text
    assert "Ours (`aggregator/`) in all: " in text and "our top five: " in text


@pytest.mark.timeout(300)
def test_quick_growth(tmp_path: Path) -> None:
    text, _ = _quick(tmp_path, "growth")
    assert "<!-- growth-fetch:begin -->" in text and "| 3 |" in text and "| 6 |" in text
    assert "<!-- growth-dedup:begin -->" in text and "| sqlite | 200 |" in text
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is absent: tables only")
    for name in ("growth-fetch.png", "growth-dedup.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
        assert f"]({name})" in text


def test_profile_adds_up_own_samples_across_processes() -> None:
    from benchmarks.profile import aggregate_raw, where

    raw = (
        'process 10:"python -m aggregator fetch";run (/v/lib/python3.11/asyncio/runners.py:1);'
        "refresh (/w/aggregator/pipeline.py:5) 3\n"
        'process 10:"python -m aggregator fetch";process 11:"python -c from x import y; y() --fork";'
        "work (/w/aggregator/worker.py:9);extract (/v/lib/python3.11/site-packages/trafilatura/core.py:2) 7\n"
        'process 11:"python -c a; b";extract (/v/lib/python3.11/site-packages/trafilatura/core.py:4) 2\n'
        'process 12:"python" 1\n'
    )
    own, total = aggregate_raw(raw)
    assert total == 13
    assert own[("extract", "/v/lib/python3.11/site-packages/trafilatura/core.py")] == 9
    assert own[("refresh", "/w/aggregator/pipeline.py")] == 3
    assert sum(count for (function, _), count in own.items() if function.startswith("(no Python")) == 1
    assert where("/w/aggregator/pipeline.py") == ("aggregator.pipeline", True)
    assert where("/v/lib/python3.11/site-packages/trafilatura/core.py") == ("trafilatura", False)
    assert where("/v/lib/python3.11/asyncio/runners.py") == ("stdlib asyncio.runners", False)
