"""runc kill of a container that exits meanwhile: `kill --all` freezes the cgroup, which goes with the last process,
and runc fails on the missing freezer files. Stopped is what StopContainer wanted: the kill succeeds if runc then
reports the container stopped (or gone), and fails otherwise. A stand-in runtime plays runc's part."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cripy.errors import Internal
from cripy.oci.runtime import OCIRuntime, RuntimeHandler
from cripy.storage.layout import Layout

FREEZER_ERROR = "openat2 /sys/fs/cgroup/freezer/cripy/x/freezer.state: no such file or directory"


def fake_runtime(tmp_path: Path, status: str) -> OCIRuntime:
    script = tmp_path / "runc"
    script.write_text(f"""#!/bin/sh
for arg; do
  case "$arg" in
    kill) echo '{FREEZER_ERROR}' >&2; exit 1;;
    state) echo '{{"id": "x", "status": "{status}", "pid": 0}}'; exit 0;;
  esac
done
exit 2
""")
    script.chmod(0o755)
    handler = RuntimeHandler(runtime_path=str(script), runtime_root=tmp_path / "root")
    return OCIRuntime(handler, layout=Layout(tmp_path / "root", tmp_path / "run"))


def test_kill_of_a_container_that_stopped_meanwhile_succeeds(tmp_path: Path) -> None:
    asyncio.run(fake_runtime(tmp_path, "stopped").kill("x", 9, all_processes=True))


def test_kill_that_fails_on_a_running_container_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Internal, match="runc kill 9 failed: openat2"):
        asyncio.run(fake_runtime(tmp_path, "running").kill("x", 9, all_processes=True))
