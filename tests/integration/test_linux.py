"""cripy.linux against the real kernel: mounts (tmpfs, bind, overlay with long layer lists), pinned namespaces,
setns, cgroups (a test-owned cgroup), capabilities. Everything created is undone in fixture finalizers."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cripy.errors import FailedPrecondition, InvalidArgument
from cripy.linux import capabilities as caps
from cripy.linux import cgroups, cgroupstats
from cripy.linux import mount as mnt
from cripy.linux import namespaces as ns

pytestmark = pytest.mark.integration


@pytest.fixture
def mount_root(tmp_path: Path) -> Iterator[Path]:
    """A directory whose mounts (and pinned namespaces) are all removed after the test, even on failure."""
    root = tmp_path / "mnt"
    root.mkdir()
    yield root
    mnt.unmount_all_under(root)
    assert mnt.mounts_under(root) == []


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------------------------------- mounts


def test_tmpfs_bind_remount_and_unmount_all(mount_root: Path) -> None:
    outer = mount_root / "outer"
    outer.mkdir()
    mnt.mount_tmpfs(outer, 4 * 1024 * 1024, 0o711, mnt.MS_NOSUID | mnt.MS_NODEV)
    assert mnt.is_mountpoint(outer)
    info = [m for m in mnt.mounts_under(mount_root) if m.mount_point == str(outer)][0]
    assert info.fs_type == "tmpfs"
    assert {"nosuid", "nodev"} <= info.option_set
    assert "size=4096k" in info.super_options and "mode=711" in info.super_options

    (outer / "inner").mkdir()
    (outer / "data").mkdir()
    (outer / "data" / "f").write_text("x")
    mnt.mount(outer / "data", outer / "inner", flags=mnt.MS_BIND)
    mnt.mount("", outer / "inner", flags=mnt.MS_REMOUNT | mnt.MS_BIND | mnt.MS_RDONLY)
    with pytest.raises(OSError) as info_err:
        (outer / "inner" / "g").write_text("y")
    assert info_err.value.errno == errno.EROFS
    assert (outer / "inner" / "f").read_text() == "x"
    assert len(mnt.mounts_under(mount_root)) == 2

    # keep the inner mount busy: unmount_all_under must fall back to a lazy unmount
    busy = os.open(outer / "inner" / "f", os.O_RDONLY)
    try:
        mnt.unmount_all_under(mount_root)
    finally:
        os.close(busy)
    assert mnt.mounts_under(mount_root) == []
    assert not mnt.is_mountpoint(outer)


def test_mount_errors_name_the_path(mount_root: Path) -> None:
    missing = mount_root / "does-not-exist"
    with pytest.raises(OSError) as info:
        mnt.mount("tmpfs", missing, "tmpfs")
    assert info.value.errno == errno.ENOENT and str(missing) in str(info.value)
    with pytest.raises(OSError) as info:
        mnt.umount(mount_root)
    assert info.value.errno == errno.EINVAL and str(mount_root) in str(info.value)


def table_says_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(m.mount_point == target for m in mnt.read_mountinfo())


def test_is_mountpoint_agrees_with_the_mount_table(mount_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmpfs, same_fs, plain = mount_root / "tmpfs", mount_root / "same-fs", mount_root / "plain"
    for directory in (tmpfs, same_fs, plain):
        directory.mkdir()
    pinned, unpinned = mount_root / "pinned-net", mount_root / "file"
    pinned.touch()
    unpinned.touch()
    mnt.mount_tmpfs(tmpfs, 1024 * 1024)
    mnt.mount(same_fs, same_fs, flags=mnt.MS_BIND)  # a bind of the same filesystem: same st_dev as its parent
    mnt.mount("/proc/self/ns/net", pinned, flags=mnt.MS_BIND)  # a namespace pinned on a file, as pods pin theirs
    (mount_root / "link").symlink_to(tmpfs)
    cases = {tmpfs: True, same_fs: True, pinned: True, mount_root / "link": True, plain: False, unpinned: False,
             mount_root / "missing": False, unpinned / "below-a-file": False}
    assert {path: mnt.is_mountpoint(path) for path in cases} == cases
    assert {path: table_says_mounted(path) for path in cases} == cases
    # Where statx cannot tell (no statx in libc, a kernel before 5.8), the table answers.
    monkeypatch.setattr(mnt, "_statx", None)
    assert {path: mnt.is_mountpoint(path) for path in cases} == cases


def test_unmount_all_under_needs_no_table_for_stacked_mounts(mount_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs = mount_root / "rootfs"
    rootfs.mkdir()
    mnt.mount_tmpfs(rootfs, 1024 * 1024)
    (rootfs / "written").write_text("x")
    mnt.mount_tmpfs(rootfs, 1024 * 1024)  # stacked on the first
    pinned = mount_root / "pin"
    pinned.touch()
    mnt.mount("/proc/self/ns/net", pinned, flags=mnt.MS_BIND)

    def no_table() -> list[mnt.MountInfo]:
        raise AssertionError("the mount table was read")

    with monkeypatch.context() as patch:
        patch.setattr(mnt, "read_mountinfo", no_table)
        mnt.unmount_all_under(rootfs)
        mnt.unmount_all_under(pinned)
        mnt.unmount_all_under(mount_root / "missing")
    assert not table_says_mounted(rootfs) and not table_says_mounted(pinned)
    assert mnt.mounts_under(mount_root) == []


def test_unmount_all_under_walks_the_table_when_it_must(mount_root: Path) -> None:
    top = mount_root / "top"
    top.mkdir()
    mnt.mount_tmpfs(top, 1024 * 1024)
    (top / "sub").mkdir()
    mnt.mount_tmpfs(top / "sub", 1024 * 1024)  # the top cannot be unmounted first
    beside = mount_root / "not-a-mount"
    (beside / "below").mkdir(parents=True)
    mnt.mount_tmpfs(beside / "below", 1024 * 1024)  # under a directory that is not a mount point itself
    mnt.unmount_all_under(top)
    mnt.unmount_all_under(beside)
    assert mnt.mounts_under(mount_root) == []


def make_layers(base: Path, count: int) -> list[Path]:
    """count layer dirs with long (chain-id-like) names; layer i holds file i and a shared file 'top'."""
    layers = []
    for i in range(count):
        layer = base / "layers" / secrets.token_hex(32) / "diff"
        layer.mkdir(parents=True)
        (layer / f"file{i}").write_text(str(i))
        (layer / "top").write_text(str(i))
        layers.append(layer)
    return layers


@pytest.mark.parametrize("count", [2, 120])
def test_overlay_short_and_long_option_strings(mount_root: Path, count: int) -> None:
    layers = make_layers(mount_root, count)
    upper, work, merged = (mount_root / "c" / name for name in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    long_case = len(mnt.overlay_options([str(p) for p in layers], str(upper), str(work))) > 4095
    assert long_case == (count == 120)

    mnt.mount_overlay(layers, upper, work, merged)
    assert mnt.is_mountpoint(merged)
    assert (merged / "top").read_text() == "0"  # the first lowerdir is the topmost layer
    assert (merged / f"file{count - 1}").read_text() == str(count - 1)
    (merged / "new").write_text("written")
    assert (upper / "new").read_text() == "written"
    mnt.umount(merged)
    assert sorted(p.name for p in merged.parent.iterdir()) == ["merged", "upper", "work"]  # no symlink dir left


def test_read_only_overlay_without_upper(mount_root: Path) -> None:
    layers = make_layers(mount_root, 2)
    merged = mount_root / "ro"
    merged.mkdir()
    mnt.mount_overlay(layers, None, None, merged)
    with pytest.raises(OSError):
        (merged / "x").write_text("no")
    mnt.umount(merged)


# ---------------------------------------------------------------------------------------------------- namespaces


def test_pin_namespaces_with_hostname_and_sysctls(mount_root: Path) -> None:
    pin_dir = mount_root / "ns"
    pins = ns.pin_namespaces(["net", "ipc", "uts"], pin_dir, hostname="pod-host",
                             sysctls={"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmni": "1234"})
    try:
        assert set(pins) == {"net", "ipc", "uts"}
        for kind, path in pins.items():
            assert mnt.is_mountpoint(path)
            assert ns.is_namespace_file(path)
            assert ns.namespace_inode(path) != ns.namespace_inode(f"/proc/self/ns/{kind}")
        assert run("nsenter", f"--uts={pins['uts']}", "hostname").strip() == "pod-host"
        assert run("hostname").strip() != "pod-host"
        links = run("nsenter", f"--net={pins['net']}", "ip", "-o", "link")
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]  # a fresh netns
        assert run("nsenter", f"--net={pins['net']}", "cat",
                   "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "0"
        assert run("nsenter", f"--ipc={pins['ipc']}", "cat", "/proc/sys/kernel/shmmni").strip() == "1234"
        assert Path("/proc/sys/kernel/shmmni").read_text().strip() != "1234"
    finally:
        ns.unpin_namespaces(pin_dir)
    assert mnt.mounts_under(pin_dir) == []
    assert list(pin_dir.iterdir()) == []
    ns.unpin_namespaces(pin_dir)  # idempotent


def test_pin_failure_leaves_nothing(mount_root: Path) -> None:
    pin_dir = mount_root / "ns"
    # A sysctl the kernel does not have is the request's mistake (InvalidArgument), and undone like any failure.
    with pytest.raises(InvalidArgument, match="no_such_knob"):
        ns.pin_namespaces(["net", "uts"], pin_dir, hostname="h", sysctls={"net.core.no_such_knob": "1"})
    assert mnt.mounts_under(mount_root) == []
    assert list(pin_dir.iterdir()) == []


def test_pin_refuses_bad_requests(mount_root: Path) -> None:
    with pytest.raises(InvalidArgument, match="vm.swappiness"):
        ns.pin_namespaces(["net"], mount_root / "ns", sysctls={"vm.swappiness": "1"})
    with pytest.raises(InvalidArgument, match="pid"):
        ns.pin_namespaces(["pid"], mount_root / "ns")
    with pytest.raises(InvalidArgument, match="uts"):
        ns.pin_namespaces(["net"], mount_root / "ns", hostname="h")
    assert mnt.mounts_under(mount_root) == []


def test_in_netns_enters_and_returns(mount_root: Path) -> None:
    pins = ns.pin_namespaces(["net"], mount_root / "ns")
    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    def body() -> None:
        try:
            seen["before"] = ns.namespace_inode("/proc/thread-self/ns/net")
            with ns.in_netns(pins["net"]):
                seen["inside"] = ns.namespace_inode("/proc/thread-self/ns/net")
                seen["ifaces"] = len(os.listdir("/sys/class/net"))  # sysfs mounted for the host netns
            seen["after"] = ns.namespace_inode("/proc/thread-self/ns/net")
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    pinned_inode = ns.namespace_inode(pins["net"])
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    ns.unpin_namespaces(mount_root / "ns")
    assert not errors, errors
    assert seen["inside"] == pinned_inode != seen["before"]
    assert seen["after"] == seen["before"] == ns.namespace_inode("/proc/self/ns/net")
    with pytest.raises(RuntimeError, match="main thread"):
        with ns.in_netns(Path("/proc/self/ns/net")):
            pass


# ---------------------------------------------------------------------------------------------------- cgroups


@pytest.fixture
def test_cgroup() -> Iterator[str]:
    relpath = f"cripy-test-{secrets.token_hex(4)}"
    yield relpath
    for path in cgroups.cgroup_paths(relpath):
        if path.is_dir():
            for pid in cgroups.parse_procs((path / "cgroup.procs").read_text()):
                os.kill(pid, signal.SIGKILL)  # only processes this test put there
    cgroups.remove(relpath)


def test_cgroup_lifecycle_and_readers(test_cgroup: str) -> None:
    root_fs = [m.fs_type for m in mnt.read_mountinfo() if m.mount_point == "/sys/fs/cgroup"][-1]
    assert cgroups.mode() is (cgroups.CgroupMode.V2 if root_fs == "cgroup2" else cgroups.CgroupMode.V1)
    assert not cgroups.exists(test_cgroup)
    paths = cgroups.create(test_cgroup)
    assert paths and all(p.is_dir() for p in paths)
    assert cgroups.exists(test_cgroup)
    assert cgroups.pids_in(test_cgroup) == []

    child = subprocess.Popen(["sh", "-c", "read x"], stdin=subprocess.PIPE)  # waits until stdin closes
    try:
        cgroups.add_process(test_cgroup, child.pid)
        assert cgroups.pids_in(test_cgroup) == [child.pid]
        reading = cgroupstats.read(test_cgroup)
        assert reading.pids == [child.pid] and reading.threads == 1
        assert reading.memory.usage >= reading.memory.working_set >= 0
        assert reading.memory.oom_kills == 0
        assert reading.limits.memory_bytes is None and reading.limits.cpu_quota_us is None

        with pytest.raises(FailedPrecondition, match=str(child.pid)):
            cgroups.remove(test_cgroup)
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait()
    assert cgroups.pids_in(test_cgroup) == []
    cgroups.remove(test_cgroup)
    assert not cgroups.exists(test_cgroup)
    cgroups.remove(test_cgroup)  # missing is fine


def test_cpu_usage_counts_work_done_inside(test_cgroup: str) -> None:
    """The shell moves itself in before spinning, so its CPU time lands in the cgroup."""
    cgroups.create(test_cgroup)
    procs_files = " ".join(str(p / "cgroup.procs") for p in cgroups.cgroup_paths(test_cgroup))
    subprocess.run(["sh", "-c", f"for f in {procs_files}; do echo $$ > $f; done; "
                    "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; head -c 4000000 /dev/zero | wc -c"],
                   check=True, capture_output=True)
    reading = cgroupstats.read(test_cgroup)
    assert reading.cpu.total_ns > 0
    assert reading.memory.page_faults > 0
    assert reading.pids == []  # the shell has exited


def test_negative_oom_score_adj_matches_capabilities() -> None:
    status = Path("/proc/self/status").read_text()
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    expected = "CAP_SYS_RESOURCE" in caps.parse_cap_mask(effective)
    assert cgroups.can_set_negative_oom_score_adj() is expected


def test_last_cap_matches_kernel() -> None:
    assert caps.last_cap() == min(int(Path("/proc/sys/kernel/cap_last_cap").read_text()), 40)
