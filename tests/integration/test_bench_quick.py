"""Smoke test of the benchmark suite: `python -m bench.run --quick` completes against cripy and containerd and
writes its markdown table. No timing is asserted: CI machines are too noisy for that."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("docker-registry") is None,
                                reason="the bench needs containerd and docker-registry (make bench installs them)")


def test_quick_bench_runs_and_writes_its_table(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--output", str(output)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"bench failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    text = output.read_text()
    assert "| figure | unit | cripy median" in text
    for row in ("RunPodSandbox", "RemovePodSandbox", "pod ready", "ExecSync round trip", "ListContainers",
                "cold: throughput", "daemon RSS", "RSS per pod", "CPU over"):
        assert row in text, f"the report lacks a {row!r} row:\n{text}"
    for section in ("## Machine", "## Versions", "containerd: 1.6", "runc:", "conmon:"):
        assert section in text
    assert "RunPodSandbox" in result.stdout  # the terminal table
