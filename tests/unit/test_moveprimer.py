"""The cgroup move primer: which cgroup.procs it writes, when it writes, and when it gives up.

The files it writes here are ordinary files standing in for cgroup.procs; tests/integration/test_oci_runtime.py
primes through the real cgroup of the test process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from cripy.linux.mount import MountInfo
from cripy.linux.moveprimer import MovePrimer, favor_dynmods, own_cgroup_procs

V1 = {"name=systemd": Path("/sys/fs/cgroup/systemd"), "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
      "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"), "memory": Path("/sys/fs/cgroup/memory")}


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited 10 s for {what}")
        time.sleep(0.005)


def test_the_first_mounted_v1_hierarchy_is_chosen() -> None:
    text = "12:rdma:/\n9:name=systemd:/system.slice/cripy.service\n4:memory:/kubelet\n0::/ignored\n"
    assert own_cgroup_procs(text, V1, None) == Path("/sys/fs/cgroup/systemd/system.slice/cripy.service/cgroup.procs")


def test_a_hierarchy_of_several_controllers_is_found_by_any_of_them() -> None:
    assert own_cgroup_procs("2:cpu,cpuacct:/a/b\n", V1, None) == Path("/sys/fs/cgroup/cpu,cpuacct/a/b/cgroup.procs")


def test_v2_uses_the_unified_line() -> None:
    assert own_cgroup_procs("0::/system.slice/cripy.service\n", {}, Path("/sys/fs/cgroup")) == \
        Path("/sys/fs/cgroup/system.slice/cripy.service/cgroup.procs")
    assert own_cgroup_procs("0::/\n", {}, Path("/sys/fs/cgroup")) == Path("/sys/fs/cgroup/cgroup.procs")


def test_no_mounted_hierarchy_gives_none() -> None:
    assert own_cgroup_procs("12:rdma:/\n0::/x\n", V1, None) is None
    assert own_cgroup_procs("", V1, Path("/sys/fs/cgroup")) is None


def _mount(fs_type: str, super_options: str) -> MountInfo:
    return MountInfo(mount_id=1, parent_id=0, major_minor="0:1", root="/", mount_point="/sys/fs/cgroup/x",
                     options="rw", optional_fields=(), fs_type=fs_type, source="cgroup", super_options=super_options)


def test_favordynmods_on_any_cgroup_mount_is_seen() -> None:
    assert not favor_dynmods([_mount("cgroup", "rw,cpuset"), _mount("cgroup2", "rw,nsdelegate")])
    assert favor_dynmods([_mount("cgroup", "rw,cpuset"), _mount("cgroup", "rw,favordynmods,memory")])
    assert favor_dynmods([_mount("cgroup2", "rw,nsdelegate,favordynmods")])
    assert not favor_dynmods([_mount("tmpfs", "rw,favordynmods")])  # only cgroup mounts say it


def test_a_prime_writes_the_daemon_pid_to_its_cgroup(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    primer = MovePrimer(find_procs_file=lambda: procs, needed=lambda: True)
    primer.prime()
    _wait_for(lambda: primer.moves == 1, "the move")
    assert procs.read_text() == str(os.getpid())


def test_primes_during_a_move_ask_for_one_more_not_one_each(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    entered, release = threading.Event(), threading.Event()

    def slow_lookup() -> Path:  # holds the first move up, as the kernel's grace period does
        entered.set()
        release.wait(10)
        return procs

    primer = MovePrimer(find_procs_file=slow_lookup, needed=lambda: True)
    primer.prime()
    assert entered.wait(10)
    for _ in range(5):
        primer.prime()
    release.set()
    _wait_for(lambda: primer.moves == 2, "the second move")
    time.sleep(0.05)
    assert primer.moves == 2


def test_a_disabled_primer_writes_nothing_and_starts_no_thread(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    primer = MovePrimer(enabled=False, find_procs_file=lambda: procs, needed=lambda: True)
    primer.prime()
    assert primer._thread is None and not procs.exists()
    primer.enabled = True  # as a reload turns it on
    primer.prime()
    _wait_for(lambda: primer.moves == 1, "the move")


def test_turning_it_on_or_off_is_said_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    primer = MovePrimer(find_procs_file=lambda: None, needed=lambda: True)
    with caplog.at_level(logging.INFO, logger="cripy.linux.moveprimer"):
        primer.enabled = True
        primer.enabled = False
        primer.enabled = False
        primer.enabled = True
    assert [r.getMessage() for r in caplog.records] == ["cgroup moves are no longer primed",
                                                        "cgroup moves are primed from now on"]


def test_a_refused_write_is_said_once_and_priming_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "gone" / "cgroup.procs"
    primer = MovePrimer(find_procs_file=lambda: missing, needed=lambda: True)
    with caplog.at_level(logging.INFO, logger="cripy.linux.moveprimer"):
        primer.prime()
        _wait_for(lambda: not primer._thread.is_alive(), "the primer to give up")
        primer.prime()
    assert primer.moves == 0 and primer._given_up
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and str(missing) in messages[0] and "not primed" in messages[0]


def test_no_cgroup_found_stops_priming(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    primer = MovePrimer(find_procs_file=lambda: None, needed=lambda: True)
    with caplog.at_level(logging.INFO, logger="cripy.linux.moveprimer"):
        primer.prime()
        _wait_for(lambda: primer._given_up, "the primer to give up")
    assert "in no mounted hierarchy" in caplog.text


def test_where_moves_do_not_wait_nothing_is_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    procs = tmp_path / "cgroup.procs"
    primer = MovePrimer(find_procs_file=lambda: procs, needed=lambda: False)
    with caplog.at_level(logging.INFO, logger="cripy.linux.moveprimer"):
        primer.prime()
        _wait_for(lambda: primer._given_up, "the primer to give up")
        primer.prime()
    assert not procs.exists() and primer.moves == 0
    assert "favordynmods" in caplog.text
