"""The benchmark suite is not a test, but it must not rot: run it on tiny sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_quick_benchmark_run_writes_a_report(tmp_path: Path) -> None:
    report = tmp_path / "PERFORMANCE.md"
    report.write_text("# Notes kept\n\n<!-- fetch:begin -->\nold\n<!-- fetch:end -->\n")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--no-peers", "--output", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = report.read_text()
    assert text.startswith("# Notes kept")
    assert "old" not in text
    assert "| 50 | 0 ms | full |" in text and "| 50 | 0 ms | conditional |" in text
    assert "Command: `python -m benchmarks run --quick`" in text


def test_extraction_cpu_is_split_into_trafilatura_and_ours() -> None:
    import pytest

    from benchmarks.extraction_speed import DEFAULT_DATA, extraction_cpu_seconds

    if not (DEFAULT_DATA / "html").is_dir():
        pytest.skip("../shared/data/extraction/dev is absent")
    extraction, trafilatura_own = extraction_cpu_seconds(DEFAULT_DATA, 3)
    assert 0 < trafilatura_own < extraction
