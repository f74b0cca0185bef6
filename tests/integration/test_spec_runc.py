"""runc accepts and runs what build_spec produces: default security, RuntimeDefault seccomp, fresh namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from cripy.containers.model import ContainerRequest, ContainerSecurity, ImageRuntimeConfig, Mount, SecurityProfile
from cripy.containers.hostfacts import read_host_facts
from cripy.containers.spec import PodContext, SpecSettings, build_spec
from cripy.containers.users import resolve_user
from cripy.linux import capabilities

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture
def busybox_rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    for d in ("proc", "sys", "dev", "tmp"):
        (rootfs / d).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    # Inside a chroot, so the applet links point at /bin/busybox of the rootfs rather than the host path.
    subprocess.run(["chroot", str(rootfs), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/home/nobody:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return rootfs


@pytest.fixture
def cgroup_parent():
    """A test-owned cgroup parent, removed from every hierarchy afterwards (runc removes only its leaf)."""
    name = f"cripy-spec-test-{uuid.uuid4().hex[:8]}"
    yield f"/{name}"
    for hierarchy in CGROUP_ROOT.iterdir():
        leftover = hierarchy / name
        if leftover.is_dir():
            for child in sorted(leftover.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if child.is_dir():
                    child.rmdir()
            leftover.rmdir()


@pytest.fixture
def runc_root(tmp_path: Path):
    root = tmp_path / "runc-root"
    root.mkdir()
    created: list[str] = []
    yield root, created
    for ctr_id in created:
        subprocess.run(["runc", "--root", str(root), "delete", "--force", ctr_id], capture_output=True)


def run_container(runc_root, bundle: Path, ctr_id: str) -> subprocess.CompletedProcess:
    root, created = runc_root
    created.append(ctr_id)
    return subprocess.run(
        ["runc", "--root", str(root), "run", "--bundle", str(bundle), ctr_id],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def write_bundle(tmp_path: Path, spec: dict) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def test_runc_runs_default_spec_with_runtime_default_seccomp(tmp_path, busybox_rootfs, cgroup_parent, runc_root):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from the host\n")
    req = ContainerRequest(
        name="spec-test",
        image="busybox",
        command=["sh", "-c"],
        args=["cat /proc/self/status; ls /; cat /data/hello; id; echo ok"],
        mounts=[Mount(container_path="/data", host_path=str(shared), readonly=True)],
        security=ContainerSecurity(no_new_privs=True),
    )
    user = resolve_user(busybox_rootfs, run_as_user=None, run_as_group=None, run_as_username="", image_user="",
                        supplemental_groups=[])
    ctr_id = uuid.uuid4().hex
    built = build_spec(
        req, ImageRuntimeConfig(), ctr_id=ctr_id, rootfs=busybox_rootfs, user=user,
        pod=PodContext(pod_id="pod-test", hostname="spec-test-host", cgroup_parent=cgroup_parent),
        settings=SpecSettings(), host=read_host_facts(req), volumes_dir=tmp_path / "volumes",
    )
    assert "seccomp" in built.spec["linux"]
    result = run_container(runc_root, write_bundle(tmp_path, built.spec), ctr_id)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert capabilities.parse_cap_mask(status["CapEff"]) == set(capabilities.DEFAULT_CAPABILITIES)
    assert capabilities.parse_cap_mask(status["CapBnd"]) == set(capabilities.DEFAULT_CAPABILITIES)
    assert status["Seccomp"].strip() == "2"
    assert status["NoNewPrivs"].strip() == "1"
    assert "from the host" in lines
    assert "uid=0(root) gid=0(root)" in result.stdout


def test_runc_seccomp_denies_what_default_caps_do_not_allow(tmp_path, busybox_rootfs, cgroup_parent, runc_root):
    """Without CAP_SYS_ADMIN, unshare(CLONE_NEWNS) fails; a non-root user with a new UTS namespace sees the pod
    hostname."""
    req = ContainerRequest(
        name="seccomp-deny", image="busybox",
        command=["sh", "-c", "unshare -m true && echo allowed || echo denied; hostname"],
    )
    user = resolve_user(busybox_rootfs, run_as_user=1000, run_as_group=None, run_as_username="", image_user="",
                        supplemental_groups=[])
    ctr_id = uuid.uuid4().hex
    built = build_spec(
        req, ImageRuntimeConfig(), ctr_id=ctr_id, rootfs=busybox_rootfs, user=user,
        pod=PodContext(pod_id="pod-test", hostname="seccomp-host", cgroup_parent=cgroup_parent),
        settings=SpecSettings(), host=read_host_facts(req), volumes_dir=tmp_path / "volumes",
    )
    result = run_container(runc_root, write_bundle(tmp_path, built.spec), ctr_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["denied", "seccomp-host"]


def own_capabilities() -> set[str]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return capabilities.parse_cap_mask(line.split(":", 1)[1])
    return set()


def test_runc_runs_privileged_spec_as_named_user(tmp_path, busybox_rootfs, cgroup_parent, runc_root):
    """Privileged: every capability, host devices, rw sysfs, no seccomp; user picked by name from the image."""
    req = ContainerRequest(
        name="privileged", image="busybox",
        command=["sh", "-c", "grep -E '^(CapBnd|Seccomp):' /proc/self/status; id -u; id -g; echo $HOME; "
                             "test -c /dev/null && echo devnull; grep ' /sys ' /proc/mounts"],
        security=ContainerSecurity(privileged=True),
    )
    user = resolve_user(busybox_rootfs, run_as_user=None, run_as_group=None, run_as_username="",
                        image_user="nobody", supplemental_groups=[])
    ctr_id = uuid.uuid4().hex
    built = build_spec(
        req, ImageRuntimeConfig(), ctr_id=ctr_id, rootfs=busybox_rootfs, user=user,
        pod=PodContext(pod_id="pod-test", hostname="priv", cgroup_parent=cgroup_parent),
        settings=SpecSettings(), host=read_host_facts(req), volumes_dir=tmp_path / "volumes",
    )
    # Privileged means every capability the runtime itself holds (a restricted sandbox lacks some).
    assert set(built.spec["process"]["capabilities"]["bounding"]) == \
        set(capabilities.known_capabilities()) & own_capabilities()
    result = run_container(runc_root, write_bundle(tmp_path, built.spec), ctr_id)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert capabilities.parse_cap_mask(lines[0].split(":", 1)[1]) == set(capabilities.grantable_capabilities())
    assert lines[1].split() == ["Seccomp:", "0"]
    assert lines[2:6] == ["65534", "65534", "/home/nobody", "devnull"]
    assert " rw," in lines[6] or lines[6].split()[3].startswith("rw")


def test_runc_busybox_servers_work_under_runtime_default(tmp_path, busybox_rootfs, cgroup_parent, runc_root):
    """httpd, wget, nc, sleep, stty and friends need nothing the RuntimeDefault profile denies.

    A private network namespace whose loopback is brought up by `ip` (CAP_NET_ADMIN added) keeps the traffic
    off the host.
    """
    (busybox_rootfs / "www").mkdir()
    (busybox_rootfs / "www" / "index.html").write_text("served\n")
    script = (
        "ip link set lo up; "
        "httpd -p 127.0.0.1:8080 -h /www; "
        "for i in $(seq 1 200); do wget -q -O- http://127.0.0.1:8080/index.html && break; sleep 0.05; done; "
        "(nc -l -p 9090 > /tmp/got &) ; "
        "for i in $(seq 1 200); do echo ping | nc 127.0.0.1 9090 && break; sleep 0.05; done; "
        "for i in $(seq 1 200); do test -s /tmp/got && break; sleep 0.05; done; cat /tmp/got; "
        "stty -a < /dev/null > /dev/null 2>&1; ps > /dev/null; date > /dev/null; "
        "mkdir /tmp/d && touch /tmp/d/f && chmod 600 /tmp/d/f && chown 1:1 /tmp/d/f && rm -r /tmp/d; "
        "echo done"
    )
    req = ContainerRequest(name="servers", image="busybox", command=["sh", "-c", script],
                           security=ContainerSecurity(capabilities_add=["NET_ADMIN"]))
    user = resolve_user(busybox_rootfs, run_as_user=0, run_as_group=None, run_as_username="", image_user="",
                        supplemental_groups=[])
    ctr_id = uuid.uuid4().hex
    built = build_spec(
        req, ImageRuntimeConfig(), ctr_id=ctr_id, rootfs=busybox_rootfs, user=user,
        pod=PodContext(pod_id="pod-test", hostname="servers", cgroup_parent=cgroup_parent),
        settings=SpecSettings(), host=read_host_facts(req), volumes_dir=tmp_path / "volumes",
    )
    result = run_container(runc_root, write_bundle(tmp_path, built.spec), ctr_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["served", "ping", "done"], result.stderr


def test_runc_applies_localhost_profile(tmp_path, busybox_rootfs, cgroup_parent, runc_root):
    """A Localhost profile (Docker form, with a caps condition) is what the kernel enforces: mkdir gets EACCES."""
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chown", "fchownat"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        ],
    }))
    req = ContainerRequest(
        name="localhost", image="busybox",
        command=["sh", "-c", "mkdir /tmp/x 2>&1; touch /tmp/f && chown 1 /tmp/f && echo chowned"],
        security=ContainerSecurity(seccomp=SecurityProfile("localhost", str(profile))),
    )
    user = resolve_user(busybox_rootfs, run_as_user=None, run_as_group=None, run_as_username="", image_user="",
                        supplemental_groups=[])
    ctr_id = uuid.uuid4().hex
    built = build_spec(
        req, ImageRuntimeConfig(), ctr_id=ctr_id, rootfs=busybox_rootfs, user=user,
        pod=PodContext(pod_id="pod-test", hostname="lh", cgroup_parent=cgroup_parent),
        settings=SpecSettings(), host=read_host_facts(req), volumes_dir=tmp_path / "volumes",
    )
    result = run_container(runc_root, write_bundle(tmp_path, built.spec), ctr_id)
    assert result.returncode == 0, result.stderr
    assert "Permission denied" in result.stdout.splitlines()[0]
    assert result.stdout.splitlines()[1] == "chowned"  # the CAP_SYS_ADMIN-only rule was left out
