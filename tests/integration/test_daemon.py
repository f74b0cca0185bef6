"""The daemon as an operator meets it: the socket, start-up refusals, SIGHUP reloads, Status and RuntimeConfig."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from cri_api.v1 import api_pb2

from tests.integration.daemon import REPO_ROOT, CripyDaemon
from tests.integration.test_images_common import unique
from tests.support.images import busybox_image, write_oci_layout


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    """Polls until `predicate` holds; the timeout only stops a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_socket_is_root_only_and_basic_calls_answer(cripy_factory) -> None:
    daemon: CripyDaemon = cripy_factory()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    version = daemon.runtime.Version(api_pb2.VersionRequest(), timeout=10)
    assert (version.runtime_name, version.runtime_api_version) == ("cripy", "v1")
    config = daemon.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=10)
    assert config.linux.cgroup_driver == api_pb2.CGROUPFS
    conditions = {c.type: c for c in daemon.runtime.Status(api_pb2.StatusRequest(), timeout=10).status.conditions}
    assert conditions["RuntimeReady"].status
    # The daemon's CNI directory is empty: the network is not ready, and the reason says why.
    assert not conditions["NetworkReady"].status
    assert conditions["NetworkReady"].reason == "NetworkPluginNotReady"
    assert str(daemon.cni_dir) in conditions["NetworkReady"].message



def test_descriptors_the_daemon_inherits_are_kept_from_the_programs_it_runs(tmp_path: Path) -> None:
    """runc's verbs are spawned with posix_spawn (cripy/linux/child.py), which passes on every descriptor not
    marked close-on-exec: the daemon marks those its parent left it."""
    daemon = CripyDaemon(tmp_path / "cripy")
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    daemon.pass_fds = (read_end,)
    try:
        daemon.start()
        flags = next(line for line in Path(f"/proc/{daemon.pid}/fdinfo/{read_end}").read_text().splitlines()
                     if line.startswith("flags:"))
        assert int(flags.split()[1], 8) & os.O_CLOEXEC
        assert "1 descriptors inherited from the daemon's parent are kept from the programs it runs" in \
            daemon.log_text()
    finally:
        daemon.stop()
        os.close(read_end)
        os.close(write_end)


def test_the_serving_daemon_has_not_loaded_grpcio(cripy_factory) -> None:
    """cripy serves gRPC itself (cripy/rpc); grpcio, which only the CLI and the tests use as a client, would add
    10 MiB to the daemon at rest. An import of it anywhere on the daemon's path (cri_api's package __init__ is one)
    shows as its compiled core among the daemon's mappings."""
    daemon: CripyDaemon = cripy_factory()
    daemon.runtime.Version(api_pb2.VersionRequest(), timeout=10)
    maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    assert "/google/_upb/" in maps  # compiled modules do show there: protobuf's, which the daemon loads
    assert "/grpc/_cython/" not in maps

def test_an_unknown_key_stops_start_up_naming_the_key_and_the_file(tmp_path: Path) -> None:
    daemon = CripyDaemon(tmp_path / "d")
    dropin_dir = daemon.workdir / "cripy.d"
    dropin_dir.mkdir()
    (dropin_dir / "10-typo.toml").write_text("[images]\nmax_parallel_layer = 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "cripy.cli", "--config", str(daemon.config_path), "--config-dir", str(dropin_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "images.max_parallel_layer" in result.stderr and "10-typo.toml" in result.stderr
    assert not daemon.socket.exists()


def test_sighup_applies_pinned_images_and_keeps_the_config_when_a_reload_is_bad(cripy_factory, tmp_path) -> None:
    daemon: CripyDaemon = cripy_factory()
    layout = tmp_path / "layout"
    name = f"localhost/{unique('pinned')}:v1"
    write_oci_layout(layout, busybox_image())
    subprocess.run([sys.executable, "-m", "cripy.cli", "image", "import", str(layout), "--name", name,
                    "-r", str(daemon.socket)], cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
    assert not daemon.image_status(name).image.pinned

    dropin_dir = daemon.workdir / "cripy.d"
    dropin_dir.mkdir(exist_ok=True)
    (dropin_dir / "20-pin.toml").write_text(f'[images]\npinned_images = ["{name}"]\n')
    assert daemon.pid is not None
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: daemon.image_status(name).image.pinned, "the reload to pin the image")

    (dropin_dir / "30-broken.toml").write_text("[images\n")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: "configuration reload failed" in daemon.log_text(), "the failed reload to be logged")
    assert daemon.image_status(name).image.pinned  # the running configuration stayed
    assert daemon.runtime.Version(api_pb2.VersionRequest(), timeout=10).runtime_name == "cripy"


def loop_thread_cpu_seconds(pid: int) -> float:
    """CPU time of the daemon's main thread (its event loop), in ns precision (schedstat's first field)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def test_sighup_applies_busy_polling(cripy_factory) -> None:
    """After each answer, the loop polls for busy_poll_us: with 10 ms it spends most of every 10 ms after a call on
    the CPU, with 0 it sleeps; a reload changes it."""
    daemon: CripyDaemon = cripy_factory()
    dropin_dir = daemon.workdir / "cripy.d"
    dropin_dir.mkdir(exist_ok=True)
    assert daemon.pid is not None

    def reload_with(microseconds: int) -> None:
        (dropin_dir / "20-poll.toml").write_text(f"[cripy]\nbusy_poll_us = {microseconds}\n")
        reloads = daemon.log_text().count("configuration reloaded")
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(lambda: daemon.log_text().count("configuration reloaded") > reloads, "the reload")

    def cpu_over_calls(calls: int = 20) -> float:
        before = loop_thread_cpu_seconds(daemon.pid)
        for _ in range(calls):
            daemon.runtime.Version(api_pb2.VersionRequest(), timeout=10)
            time.sleep(0.03)
        return loop_thread_cpu_seconds(daemon.pid) - before

    reload_with(10_000)
    polling = cpu_over_calls()
    reload_with(0)
    sleeping = cpu_over_calls()
    assert polling > 0.1, f"20 calls with 10 ms of polling after each took only {polling:.3f} s of CPU"
    assert sleeping < polling / 2, f"without polling: {sleeping:.3f} s of CPU, with: {polling:.3f} s"


def test_sighup_turns_cgroup_move_priming_off_and_on(cripy_factory) -> None:
    """cripy.prime_cgroup_moves reaches the running primer at a reload, which says so."""
    daemon: CripyDaemon = cripy_factory()
    dropin_dir = daemon.workdir / "cripy.d"
    dropin_dir.mkdir(exist_ok=True)
    assert daemon.pid is not None

    def reload_with(value: str, said: str) -> None:
        (dropin_dir / "20-prime.toml").write_text(f"[cripy]\nprime_cgroup_moves = {value}\n")
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(lambda: said in daemon.log_text(), f"the reload to say {said!r}")

    reload_with("false", "cgroup moves are no longer primed")
    reload_with("true", "cgroup moves are primed from now on")
