"""A disk that fills up under the daemon: its root on a small tmpfs of the test's own. A pull that runs out of room,
and a database write on a full disk, answer RESOURCE_EXHAUSTED naming the cause, leave nothing half-written (no
partial layer, no record, nothing mounted), and once there is room again the same calls succeed."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from cripy.linux import mount
from tests.integration.conftest_leaks import session_cgroup_parent
from tests.integration.daemon import CripyDaemon
from tests.integration.podlib import short_tempdir
from tests.integration.test_images_common import (assert_store_consistent, insecure_conf, layer_dir_names, rpc_error,
                                                   unique)
from tests.support.images import LayerBuilder, build_image, busybox_layer

pytestmark = pytest.mark.integration

SMALL = 24 * 1024 * 1024


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_tempdir("df")  # short: conmon's attach socket path must fit sun_path
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def small_root(workdir: Path) -> Iterator[Path]:
    """A tmpfs of SMALL bytes for the daemon's root (database, layers, containers)."""
    root = workdir / "root"
    root.mkdir()
    mount.mount_tmpfs(root, SMALL)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture
def daemon(workdir: Path, small_root: Path, plain_registry) -> Iterator[CripyDaemon]:
    # The session's cgroup parent, not cripy's default: its pods' cgroups are then the leak check's to see and remove.
    d = CripyDaemon(workdir / "d", registries_conf=insecure_conf(plain_registry.host),
                    extra_toml=f'[runtime]\ncgroup_parent = "{session_cgroup_parent()}"\n')
    d.root = small_root
    d.write_config()
    d.start()
    yield d
    d.stop()


def resize(root: Path, size: int) -> None:
    mount.mount("tmpfs", root, "tmpfs", mount.MS_REMOUNT, f"size={size}")


def big_image(size: int):
    """busybox plus a layer of `size` random (incompressible) bytes."""
    layer = LayerBuilder().add_file("blob.bin", secrets.token_bytes(size)).layer()
    return build_image([busybox_layer(), layer])


def test_a_pull_that_fills_the_disk_stores_nothing_and_works_once_there_is_room(daemon, small_root, plain_registry):
    ref = plain_registry.push_image(unique("diskfull/big"), "v1", big_image(SMALL))
    before = layer_dir_names(daemon)

    details = rpc_error(lambda: daemon.pull(ref), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "no space left" in details.lower(), details
    assert daemon.list_images() == []
    assert layer_dir_names(daemon) == before
    assert_store_consistent(daemon)

    resize(small_root, 4 * SMALL)
    assert daemon.pull(ref).startswith("sha256:")
    assert_store_consistent(daemon)


def test_a_database_write_on_a_full_disk_is_refused_cleanly(daemon, small_root):
    filler = small_root / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass  # full
    # Let SQLite's last free pages go too: a few small files until nothing fits.
    for i in range(4096):
        try:
            (small_root / f"f{i}").write_bytes(b"x" * 4096)
        except OSError:
            break
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="full", uid=secrets.token_hex(8), namespace="diskfull"),
        linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE))))  # no CNI network in this test
    error = None
    try:
        daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60)
    except grpc.RpcError as e:
        error = e
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "no space left" in error.details().lower() or "disk is full" in error.details().lower()
    assert daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items == []
    assert mount.mounts_under(daemon.runroot) == []

    for path in small_root.glob("f[0-9]*"):
        path.unlink()
    filler.unlink()
    pod_id = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    # The database took no harm.
    result = subprocess.run(["sqlite3", str(small_root / "cripy.db"), "PRAGMA integrity_check"],
                            capture_output=True, text=True)
    if result.returncode == 0:
        assert result.stdout.strip() == "ok"
