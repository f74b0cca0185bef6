"""Running cripy as a node service: the systemd unit shipped in contrib/systemd passes `systemd-analyze verify`, and
a wheel built from the source installs a `cripy` that serves CRI from a fresh environment."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from tests.integration.daemon import REPO_ROOT
from tests.integration.podlib import short_tempdir

UNIT = REPO_ROOT / "contrib" / "systemd" / "cripy.service"
SYSTEM_UNITS = Path("/lib/systemd/system")


def _exec_paths(unit_text: str) -> list[str]:
    """The programs the unit's Exec*= lines run (their first word, without systemd's prefixes)."""
    paths = []
    for line in unit_text.splitlines():
        key, sep, command = line.partition("=")
        if sep and key.strip().startswith("Exec"):
            paths.append(command.strip().lstrip("-@:+!").split()[0])
    return paths


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze checks keys, values and the programs' presence against a root of its own: this node's
    units (for the targets the unit names), the unit, and stand-ins for the programs it runs (cripy is not
    installed system-wide here). Anything it says, even a warning, fails the test."""
    text = UNIT.read_text()
    assert "Type=notify" in text and "KillMode=process" in text and "Delegate=yes" in text
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/cripy.service")
    programs = _exec_paths(text)
    assert "/usr/local/bin/cripy" in programs
    for program in programs:
        stand_in = root / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "cripy.service"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr

    # The check is not blind: a mistake in the unit is reported.
    (root / "etc/systemd/system/cripy.service").write_text(text.replace("KillMode=process", "KillMode=processes"))
    broken = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "cripy.service"],
                            capture_output=True, text=True, timeout=60)
    assert "kill mode" in broken.stderr and "processes" in broken.stderr


def test_a_wheel_installs_a_working_cripy(tmp_path: Path) -> None:
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "cripy", source / "cripy", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(dist), str(source)], check=True, timeout=300)
    (wheel,) = dist.glob("cripy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "cripy/observe/metrics.py" in names and "cripy/ctl/verbs/runtime.py" in names
    assert "cripy = cripy.cli:main" in entry_points
    for requirement in ("grpcio", "grpcio-health-checking", "container-runtime-interface-api", "tqdm"):
        assert f"Requires-Dist: {requirement}" in metadata
    assert "Provides-Extra: metrics" in metadata and "Provides-Extra: tracing" in metadata

    # A fresh environment: the wheel installed, its dependencies lent by the test's own environment.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--quiet",
                    "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    cripy = venv / "bin" / "cripy"
    where = subprocess.run([str(venv / "bin/python"), "-c", "import cripy; print(cripy.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    version = subprocess.run([str(cripy), "version"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("cripy version "), version.stderr

    # It serves CRI, and its `cripy ctl` talks to it.
    work = short_tempdir("whl")
    try:
        config = work / "cripy.toml"
        socket_path = work / "cripy.sock"
        config.write_text(f'[cripy]\nroot = "{work / "root"}"\nrunroot = "{work / "run"}"\nlisten = "{socket_path}"\n'
                          f'[network]\nconf_dir = "{work / "cni"}"\n')
        with open(work / "log", "wb") as log:
            daemon = subprocess.Popen([str(cripy), "--config", str(config), "--config-dir", str(work / "cripy.d")],
                                      cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            answer = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and daemon.poll() is None:
                answer = subprocess.run([str(cripy), "ctl", "-r", str(socket_path), "version"], cwd=tmp_path,
                                        capture_output=True, text=True, timeout=30)
                if answer.returncode == 0:
                    break
                time.sleep(0.2)
            assert answer is not None and answer.returncode == 0, (work / "log").read_text()
            assert "RuntimeName:  cripy" in answer.stdout
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
