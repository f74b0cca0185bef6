"""Fault points (cripy/faults.py) in a child process: inert without the environment, SIGKILL at the armed point
(or its N-th hit), armed at run time through the control file, and every point reached written to the trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cripy import faults\n" + code], cwd=REPO, text=True,
                          capture_output=True, env={**{k: v for k, v in os.environ.items() if not k.startswith(
                              "CRIPY_FAULT")}, **env}, timeout=60)


def test_points_are_inert_without_the_environment() -> None:
    result = run("faults.point('a'); print('through')")
    assert (result.returncode, result.stdout) == (0, "through\n")


def test_the_armed_point_kills_at_its_nth_hit_and_the_trace_names_every_point(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    result = run("for n in ('a', 'b', 'b', 'c'):\n    faults.point(n); print(n, flush=True)",
                 CRIPY_FAULT="b#2", CRIPY_FAULT_TRACE=str(trace))
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["a", "b"]
    assert trace.read_text().split() == ["a", "b", "b"]


def test_the_control_file_arms_a_point_while_running(tmp_path: Path) -> None:
    control = tmp_path / "control"
    code = (f"faults.point('x'); print('x', flush=True)\n"
            f"open({str(control)!r}, 'w').write('x')\n"
            f"faults.point('y'); print('y', flush=True)\n"
            f"faults.point('x'); print('unreached', flush=True)")
    result = run(code, CRIPY_FAULT_CONTROL=str(control))
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["x", "y"]
