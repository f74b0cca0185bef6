"""Pods in user namespaces through the CRI API (the kubelet's hostUsers: false): the pod's containers share one
user namespace with the kubelet's mappings, the image's root-owned files are the pod root's (id-mapped layers, no
copy), what the container writes lands on the node with the mapped ids, and root in the pod cannot do what the
node's root can. Requests are shaped as the kubelet and critest send them."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.conftest_leaks import session_cgroup_parent
from tests.integration.podlib import PodEnv, mounts_under, rpc_error, short_tempdir

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
# As the kubelet picks them: a 65536-long range per pod, above the node's own ids.
HOST_BASE = 65536 * (7 + secrets.randbelow(100))
LENGTH = 65536


def mapping(container_id: int = 0, host_id: int = HOST_BASE, length: int = LENGTH) -> api_pb2.IDMapping:
    return api_pb2.IDMapping(container_id=container_id, host_id=host_id, length=length)


def userns(mode: int = api_pb2.POD, uids: list | None = None, gids: list | None = None) -> api_pb2.UserNamespace:
    if mode == api_pb2.POD:
        uids = [mapping()] if uids is None else uids
        gids = [mapping()] if gids is None else gids
    return api_pb2.UserNamespace(mode=mode, uids=uids or [], gids=gids or [])


def namespace_options(user: api_pb2.UserNamespace, pid: int = api_pb2.CONTAINER) -> api_pb2.NamespaceOption:
    return api_pb2.NamespaceOption(network=api_pb2.POD, pid=pid, ipc=api_pb2.POD, userns_options=user)


@pytest.fixture(scope="module")
def env(pod_image_dir: Path) -> Iterator[PodEnv]:
    workdir = short_tempdir("u")
    workdir.chmod(0o711)  # the pods' root, nobody on the node, walks through it to reach its rootfs
    environment = PodEnv(workdir, pod_image_dir, cgroup_parent=session_cgroup_parent())
    yield environment
    environment.close()


def userns_pod(env: PodEnv, name: str, user: api_pb2.UserNamespace | None = None,
               pid: int = api_pb2.CONTAINER) -> tuple[str, api_pb2.PodSandboxConfig]:
    linux = api_pb2.LinuxPodSandboxConfig()
    config = env.pod_config(name, pid=pid, linux=linux)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(user or userns())
    return env.run_pod(config)


def run_in(env: PodEnv, pod: tuple[str, api_pb2.PodSandboxConfig], name: str, command: list[str],
           **kwargs) -> str:
    pod_id, config = pod
    options = config.linux.security_context.namespace_options
    linux = kwargs.pop("linux", api_pb2.LinuxContainerConfig())
    linux.security_context.namespace_options.CopyFrom(options)
    return env.run(pod_id, config, name, command, linux=linux, **kwargs)


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A hostPath volume as the node's root prepares it: root-owned, with a 0600 secret only root may read."""
    directory = tmp_path / "hostpath"
    directory.mkdir()
    directory.chmod(0o777)
    secret = directory / "root-only"
    secret.write_text("node root's secret\n")
    secret.chmod(0o600)
    return directory


def test_status_offers_user_namespaces(env: PodEnv) -> None:
    status = env.rt.Status(api_pb2.StatusRequest(), timeout=10)
    offered = {handler.name: handler.features.user_namespaces for handler in status.runtime_handlers}
    assert offered == {"": True, "runc": True}


def test_container_root_is_the_kubelets_host_range(env: PodEnv) -> None:
    pod = userns_pod(env, "userns-map", pid=api_pb2.POD)
    ctr = run_in(env, pod, "mapped", SLEEP)
    assert env.sh(ctr, "cat /proc/self/uid_map").split() == ["0", str(HOST_BASE), str(LENGTH)]
    assert env.sh(ctr, "cat /proc/self/gid_map").split() == ["0", str(HOST_BASE), str(LENGTH)]
    assert env.sh(ctr, "id -u").strip() == "0"
    verbose = env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    host_pid = json.loads(verbose.info["info"])["pid"]
    assert os.stat(f"/proc/{host_pid}").st_uid == HOST_BASE  # the node sees the process as the mapped uid
    # Every container of the pod, and its infra process, share the pod's one user namespace.
    other = run_in(env, pod, "second", SLEEP)
    assert env.sh(ctr, "readlink /proc/self/ns/user") == env.sh(other, "readlink /proc/self/ns/user")
    assert env.sh(ctr, "readlink /proc/1/ns/user") == env.sh(ctr, "readlink /proc/self/ns/user")  # pause, pid 1
    # The image's files are root's inside (its layers are id-mapped, not copied): ls shows root, not nobody.
    assert env.sh(ctr, "stat -c %u:%g /bin/busybox /etc/passwd").split() == ["0:0", "0:0"]
    reported = env.pod_status(pod[0]).status.linux.namespaces.options.userns_options
    assert reported.mode == api_pb2.POD and reported.uids[0].host_id == HOST_BASE


def test_writes_land_on_the_node_with_the_mapped_ids(env: PodEnv, host_dir: Path) -> None:
    pod = userns_pod(env, "userns-writes")
    ctr = run_in(env, pod, "writer", SLEEP,
                 mounts=[api_pb2.Mount(container_path="/vol", host_path=str(host_dir))])
    env.sh(ctr, "echo hi > /vol/by-container && echo hi > /rootfs-file && mkdir /newdir && chown 1000:1000 /newdir")
    written = host_dir / "by-container"
    assert (written.stat().st_uid, written.stat().st_gid) == (HOST_BASE, HOST_BASE)
    upper = env.daemon.root / "containers" / ctr / "upper"
    assert (upper / "rootfs-file").stat().st_uid == HOST_BASE
    assert (upper / "newdir").stat().st_uid == HOST_BASE + 1000
    # The layers on disk are untouched (still root's): the mapping is in the mount, not in the files.
    layers = env.daemon.root / "layers"
    busybox = next(layers.glob("*/diff/bin/busybox"))
    assert busybox.stat().st_uid == 0


def test_pod_root_cannot_act_as_the_nodes_root(env: PodEnv, host_dir: Path) -> None:
    pod = userns_pod(env, "userns-root")
    ctr = run_in(env, pod, "intruder", SLEEP,
                 mounts=[api_pb2.Mount(container_path="/vol", host_path=str(host_dir), readonly=True)])
    assert env.sh(ctr, "stat -c %u /vol/root-only").strip() == "65534"  # the node's root is nobody here
    denied = env.exec(ctr, ["cat", "/vol/root-only"])
    assert denied.exit_code != 0 and b"Permission denied" in denied.stderr
    # Capabilities are the pod's: CAP_SYS_ADMIN in the pod's namespace does not mount over the node's files,
    # and the kernel's own knobs stay out of reach.
    assert env.exec(ctr, ["sh", "-c", "echo 1 > /proc/sys/kernel/panic"]).exit_code != 0
    assert env.exec(ctr, ["busybox", "mknod", "/tmp/sda", "b", "8", "0"]).exit_code != 0


def test_id_mapped_volume_shows_the_nodes_ids(env: PodEnv, host_dir: Path) -> None:
    """A volume the kubelet sends with the pod's mappings is id-mapped: the node's root-owned files are the
    container root's, and what it writes is the node root's on disk."""
    pod = userns_pod(env, "userns-idmapped-volume")
    volume = api_pb2.Mount(container_path="/vol", host_path=str(host_dir), uidMappings=[mapping()],
                           gidMappings=[mapping()])
    ctr = run_in(env, pod, "reader", SLEEP, mounts=[volume])
    assert env.sh(ctr, "stat -c %u /vol/root-only; cat /vol/root-only").split("\n")[:2] == ["0", "node root's secret"]
    env.sh(ctr, "echo x > /vol/written")
    assert (host_dir / "written").stat().st_uid == 0
    env.remove(ctr)
    env.wait_for("the id-mapped view unmounted", lambda: not mounts_under(env.daemon.runroot / "idmap"))
    assert (host_dir / "root-only").exists()  # removing the container never reaches into the host path


def test_refused_requests(env: PodEnv) -> None:
    cases = {
        "two-mappings": userns(uids=[mapping(), mapping(host_id=HOST_BASE + LENGTH)],
                               gids=[mapping(), mapping(host_id=HOST_BASE + LENGTH)]),
        "root-unmapped": userns(uids=[mapping(container_id=1)], gids=[mapping(container_id=1)]),
        "node-root-mapped": userns(uids=[mapping(host_id=0)], gids=[mapping(host_id=0)]),
        "container-mode": userns(mode=api_pb2.CONTAINER),
        "target-mode": userns(mode=api_pb2.TARGET),
    }
    for name, user in cases.items():
        error = rpc_error(lambda: userns_pod(env, f"refused-{name}", user))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert "userns_options" in error.details()
    host_network = env.pod_config("refused-hostnet", network=api_pb2.NODE)
    host_network.linux.security_context.namespace_options.userns_options.CopyFrom(userns())
    error = rpc_error(lambda: env.run_pod(host_network))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "network namespace" in error.details()
    assert not [pod for pod in env.list_pods() if pod.metadata.name.startswith("refused-")]


def test_node_mode_is_the_nodes_user_namespace(env: PodEnv) -> None:
    pod = userns_pod(env, "userns-node", userns(mode=api_pb2.NODE))
    ctr = run_in(env, pod, "node-ids", SLEEP)
    assert env.sh(ctr, "cat /proc/self/uid_map").split() == ["0", "0", "4294967295"]


def test_teardown_leaves_nothing(env: PodEnv) -> None:
    pod = userns_pod(env, "userns-teardown", pid=api_pb2.POD)
    ctr = run_in(env, pod, "short", SLEEP)
    run = env.daemon.runroot
    assert (run / "rootfs" / ctr).is_dir() and os.path.ismount(run / "rootfs" / ctr)
    env.stop_pod(pod[0])
    env.remove_pod(pod[0])
    assert not mounts_under(run / "pods" / pod[0]) and not (run / "pods" / pod[0]).exists()
    assert not (run / "idmap" / ctr).exists() and not (run / "rootfs" / ctr).exists()
    assert not (env.daemon.root / "containers" / ctr).exists()


@pytest.mark.parametrize("mapped", [False, True], ids=["plain", "idmapped"])
def test_image_volume_in_a_user_namespace(env: PodEnv, mapped: bool) -> None:
    """An image volume (KEP-4639) in a userns pod: readable, read-only, and the image's root-owned files are the
    pod root's when the kubelet asks for the pod's mappings on the mount."""
    from tests.integration.podlib import BUSYBOX

    pod = userns_pod(env, f"userns-imgvol-{int(mapped)}")
    volume = api_pb2.Mount(container_path="/imgvol", readonly=True, image=api_pb2.ImageSpec(image=BUSYBOX))
    if mapped:
        volume.uidMappings.append(mapping())
        volume.gidMappings.append(mapping())
    ctr = run_in(env, pod, "reader", SLEEP, mounts=[volume])
    assert "busybox" in env.sh(ctr, "ls /imgvol/bin")
    assert env.exec(ctr, ["touch", "/imgvol/x"]).exit_code != 0
    owner = env.sh(ctr, "stat -c %u /imgvol/bin/busybox").strip()
    assert owner == ("0" if mapped else "65534"), owner
    # Removed, it leaves neither its id-mapped views (the image volume's among them) nor a journal entry.
    env.stop(ctr)
    env.remove(ctr)
    views = env.daemon.runroot / "idmap" / ctr
    deadline = time.monotonic() + 30
    while views.exists() or _effects_of(env, ctr):
        assert time.monotonic() < deadline, f"left behind: {views.exists() and os.listdir(views)}, {_effects_of(env, ctr)}"
        time.sleep(0.05)


def _effects_of(env: PodEnv, owner: str) -> list[str]:
    with sqlite3.connect(env.daemon.root / "cripy.db") as conn:
        return [row[0] for row in conn.execute("SELECT kind FROM effects WHERE owner = ?", (owner,))]
