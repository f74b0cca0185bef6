"""Pure parsers of cripy.linux: mountinfo, cgroup files, capability names and masks, namespace setup scripts."""

from __future__ import annotations

import subprocess

import pytest

from cripy.errors import InvalidArgument
from cripy.linux import capabilities as caps
from cripy.linux import cgroups
from cripy.linux import mount as mnt
from cripy.linux import namespaces as ns

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 27 0:50 /sub/dir /run/my\\040pod\\011x ro,nosuid master:3 shared:7 - overlay overlay rw,lowerdir=/a:/b
"""


def test_parse_mountinfo_fields() -> None:
    mounts = mnt.parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 8
    root = mounts[1]
    assert (root.mount_id, root.parent_id, root.major_minor) == (27, 1, "254:0")
    assert (root.root, root.mount_point, root.fs_type, root.source) == ("/", "/", "ext4", "/dev/vda")
    assert root.optional_fields == ("shared:1",)
    assert root.super_options == "rw,discard"
    assert not root.read_only


def test_parse_mountinfo_unescapes_and_keeps_several_optional_fields() -> None:
    pod = mnt.parse_mountinfo(MOUNTINFO)[-1]
    assert pod.mount_point == "/run/my pod\tx"
    assert pod.root == "/sub/dir"
    assert pod.optional_fields == ("master:3", "shared:7")
    assert pod.fs_type == "overlay"
    assert pod.super_options == "rw,lowerdir=/a:/b"
    assert pod.read_only


def test_parse_mountinfo_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="malformed"):
        mnt.parse_mountinfo("1 2 3\n")


def test_parse_real_mountinfo() -> None:
    mounts = mnt.read_mountinfo()
    assert any(m.mount_point == "/" for m in mounts)
    assert any(m.mount_point == "/proc" and m.fs_type == "proc" for m in mounts)


def test_overlay_options_escape_separators() -> None:
    opts = mnt.overlay_options(["/l/a:b", "/l/c,d"], "/u", "/w")
    assert opts == "lowerdir=/l/a\\:b:/l/c\\,d,upperdir=/u,workdir=/w"
    assert mnt.overlay_options(["/a", "/b"], None, None) == "lowerdir=/a:/b"
    with pytest.raises(ValueError):
        mnt.overlay_options([], None, None)


def test_v1_hierarchies_from_mountinfo() -> None:
    hierarchies = cgroups.v1_hierarchies(mnt.parse_mountinfo(MOUNTINFO))
    assert str(hierarchies["memory"]) == "/sys/fs/cgroup/memory"
    assert str(hierarchies["cpu"]) == str(hierarchies["cpuacct"]) == "/sys/fs/cgroup/cpu,cpuacct"
    assert str(hierarchies["name=systemd"]) == "/sys/fs/cgroup/systemd"
    assert "xattr" not in hierarchies and "rw" not in hierarchies
    assert "unified" not in str(hierarchies.values())


def test_cgroup_procs() -> None:
    assert cgroups.parse_procs("12\n345\n\n") == [12, 345]
    assert cgroups.parse_procs("") == []


def test_cgroup_relpath_must_stay_inside() -> None:
    for bad in ("", "/", "a/../b", "./x", "a//b"):
        with pytest.raises(InvalidArgument):
            cgroups.cgroup_paths(bad)


def test_capability_table_and_normalize() -> None:
    assert caps.CAPABILITIES["CAP_CHOWN"] == 0
    assert caps.CAPABILITIES["CAP_NET_ADMIN"] == 12
    assert caps.CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert caps.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert len(caps.CAPABILITIES) == 41
    assert caps.normalize("NET_ADMIN") == caps.normalize("net_admin") == "CAP_NET_ADMIN"
    assert caps.normalize("cap_kill") == "CAP_KILL"
    with pytest.raises(InvalidArgument, match="NET_FLY"):
        caps.normalize("NET_FLY")


def test_known_capabilities_follow_kernel() -> None:
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    known = caps.known_capabilities()
    assert len(known) == min(last, 40) + 1
    assert known[0] == "CAP_CHOWN"
    assert set(caps.DEFAULT_CAPABILITIES) <= set(known)
    assert caps.resolve(["all"]) == caps.grantable_capabilities()  # ALL: what the runtime itself can grant
    assert set(caps.grantable_capabilities()) <= set(known)
    assert caps.resolve(["kill", "CAP_KILL", "chown"]) == ["CAP_KILL", "CAP_CHOWN"]


def test_cap_mask_round_trip() -> None:
    assert caps.parse_cap_mask("0000000000000000") == set()
    assert caps.parse_cap_mask("00000000a80425fb") == {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE",
        "CAP_SETFCAP",
    }  # Docker's classic default set
    assert caps.parse_cap_mask(caps.to_cap_mask(caps.DEFAULT_CAPABILITIES)) == set(caps.DEFAULT_CAPABILITIES)
    assert "CAP_63" in caps.parse_cap_mask("8000000000000000")
    with pytest.raises(InvalidArgument):
        caps.parse_cap_mask("xyz")


def test_sysctl_allow_list() -> None:
    assert ns.sysctl_namespace("net.ipv4.ip_forward") == "net"
    assert ns.sysctl_namespace("kernel.shmmax") == "ipc"
    assert ns.sysctl_namespace("kernel.sem") == "ipc"
    assert ns.sysctl_namespace("fs.mqueue.msg_max") == "ipc"
    for bad in ("kernel.hostname", "vm.swappiness", "net/ipv4/ip_forward", "net.ipv4..x", "net..",
                "net.x;reboot", "net.$(id)", "net.a b", "net.x`id`", "net.'x'", "net." + "x" * 300):
        with pytest.raises(InvalidArgument, match="sysctl"):
            ns.sysctl_namespace(bad)
    with pytest.raises(InvalidArgument, match="ipc namespace"):
        ns.validate_sysctls({"kernel.shmmax": "1"}, ["net"])


def test_setup_script_passes_values_as_arguments(tmp_path) -> None:
    hostile = "$(touch " + str(tmp_path / "pwned") + ")"
    script, args = ns.setup_script("pod-a", {"net.core.somaxconn": hostile})
    assert args == ["pod-a", hostile]
    assert hostile not in script
    assert "/proc/sys/kernel/hostname" in script and "/proc/sys/net/core/somaxconn" in script
    # Run it with the /proc paths redirected to show it writes exactly the given bytes.
    fake = script.replace("/proc/sys/", str(tmp_path) + "/")
    (tmp_path / "kernel").mkdir()
    (tmp_path / "net" / "core").mkdir(parents=True)
    (tmp_path / "net" / "core" / "somaxconn").touch()  # a sysctl exists before it is written
    subprocess.run(["/bin/sh", "-c", fake, "x", *args], check=True)
    assert (tmp_path / "kernel" / "hostname").read_text() == "pod-a"
    assert (tmp_path / "net" / "core" / "somaxconn").read_text() == hostile
    assert not (tmp_path / "pwned").exists()


def test_setup_script_says_which_sysctl_the_kernel_refused(tmp_path) -> None:
    """A sysctl that does not exist, or a value the kernel refuses, ends the script with its own status and a
    message naming the sysctl (pin_namespaces turns it into InvalidArgument)."""
    script, args = ns.setup_script(None, {"net.core.no_such": "1"})
    fake = script.replace("/proc/sys/", str(tmp_path) + "/")
    proc = subprocess.run(["/bin/sh", "-c", fake, "x", *args], capture_output=True, text=True)
    assert proc.returncode == ns._SYSCTL_REFUSED
    assert "net.core.no_such" in proc.stderr
