"""Image volumes (KEP-4639) through the CRI API: an image already pulled, mounted read-only into a container, whole
or from a sub-path, reported in ContainerStatus and held (RemoveImage refused) while a container mounts it; the
mount gone with the container, also after a daemon restart; a failed create leaves nothing behind.

Pods and containers are shaped as critest makes them (no hostname, long names with capitals); the volumes as the
kubelet sends them: read-only, the image by the reference PullImage answered, the user's name beside it."""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2
from google.protobuf import unknown_fields

from cripy.containers.model import ContainerRequest, Mount
from cripy.linux import mount
from cripy.storage import serde
from tests.integration.podlib import (
    BUSYBOX,
    PodEnv,
    concurrently,
    import_image,
    mounts_under,
    rpc_error,
    short_tempdir,
)
from tests.integration.shapes import critest_container_config, critest_pod_config
from tests.support.images import volume_data_image, write_oci_layout

pytestmark = pytest.mark.integration

DATA = "localhost/cripytest/volume-data:1"
TOP = ["sh", "-c", "top"]


def add_image(env: PodEnv, name: str, marker: str = "") -> str:
    """Import a data image under `name` (the kubelet pulls an image volume's image first); its id."""
    layout = short_tempdir("vol")
    try:
        write_oci_layout(layout, volume_data_image(marker))
        import_image(env.daemon, layout, name)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    return env.daemon.image_status(name).image.id


@pytest.fixture(scope="module")
def data_image(pod_env: PodEnv) -> Iterator[str]:
    yield add_image(pod_env, DATA)


def volume(path: str, image: str, sub_path: str = "", user_image: str = "", readonly: bool = True) -> api_pb2.Mount:
    return api_pb2.Mount(container_path=path, readonly=readonly, image_sub_path=sub_path,
                         image=api_pb2.ImageSpec(image=image, user_specified_image=user_image or image))


def with_volumes(prefix: str, *mounts: api_pb2.Mount, command: list[str] = TOP) -> api_pb2.ContainerConfig:
    config = critest_container_config(prefix, command)
    config.mounts.extend(mounts)
    return config


def new_pod(env: PodEnv) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = critest_pod_config(env, "create-PodSandbox-for-image-volume-")
    return env.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id, config


def image_ref_of(spec: api_pb2.ImageSpec) -> str:
    """ImageSpec.image_ref (field 20, newer than our CRI bindings) as a client with newer bindings reads it."""
    fields = [f.data for f in unknown_fields.UnknownFieldSet(spec) if f.field_number == 20]
    return fields[0].decode() if fields else ""


def volumes_on_host(env: PodEnv, ctr_id: str) -> list[str]:
    return mounts_under(env.daemon.root / "containers" / ctr_id / "image-volumes")


def fails(env: PodEnv, ctr_id: str, script: str) -> str:
    reply = env.exec(ctr_id, ["sh", "-c", script])
    assert reply.exit_code != 0, f"`{script}` succeeded"
    return reply.stderr.decode()


def node_state(env: PodEnv) -> set[str]:
    """Container directories and mounts under the daemon's root (and the bundles under its run root)."""
    found: set[str] = set()
    for base in (env.daemon.root / "containers", env.daemon.runroot / "containers"):
        if base.exists():
            found.update(str(d) for d in base.iterdir())
            found.update(mounts_under(base))
    return found


def assert_fails_leaving_nothing(env: PodEnv, create: Callable[[], str]) -> grpc.RpcError:
    """The create fails, and nothing appears on the node for it (what other tests left may still be going, in
    the background: it may vanish meanwhile, and is no concern of this create)."""
    before = node_state(env)
    error = rpc_error(create)
    assert node_state(env) - before == set()
    return error


def leftovers(env: PodEnv) -> tuple[list[str], list[str]]:
    """Container directories and mounts under the daemon's root that no listed container owns."""
    known = {c.id for c in env.list_containers()}
    containers = env.daemon.root / "containers"
    dirs = [d.name for d in containers.iterdir() if d.name not in known] if containers.exists() else []
    mounts = [m for m in mounts_under(containers) if not any(f"/{ctr}/" in m for ctr in known)]
    return dirs, mounts


# ---- the mount -------------------------------------------------------------------------------------------------


def test_image_volume_shows_the_images_files_read_only(pod_env: PodEnv, data_image: str) -> None:
    pod_id, pod = new_pod(pod_env)
    busybox_id = pod_env.daemon.image_status(BUSYBOX).image.id
    config = with_volumes("image-volume-mount-test-", volume("/mnt/data", data_image, user_image=DATA),
                          volume("/mnt/image-volume", busybox_id, user_image=BUSYBOX))
    ctr = pod_env.create(pod_id, pod, config)
    pod_env.start(ctr)

    # Two layers merged (the whiteout hides /data/old); a one-layer image (busybox, as critest mounts it) too.
    assert pod_env.sh(ctr, "cat /mnt/data/data/a /mnt/data/data/b /mnt/data/conf/settings") == "a\nb\nx=1\n"
    fails(pod_env, ctr, "test -e /mnt/data/data/old")
    assert pod_env.sh(ctr, "ls -A /mnt/image-volume/bin/sh && echo found").endswith("found\n")
    # Not noexec: a binary of the image volume runs.
    assert "data" in pod_env.sh(ctr, "/mnt/image-volume/bin/ls /mnt/data")
    for path in ("/mnt/data/new", "/mnt/data/data/a", "/mnt/image-volume/test-write"):
        assert "Read-only file system" in fails(pod_env, ctr, f"touch {path}")
    assert "Read-only file system" in fails(pod_env, ctr, "rm /mnt/data/data/a")
    assert pod_env.sh(ctr, "cat /mnt/data/data/a") == "a\n"

    # On the node: one read-only overlay per volume, nothing writable.
    host = mount.mounts_under(pod_env.daemon.root / "containers" / ctr / "image-volumes")
    assert sorted(m.mount_point.rsplit("/", 1)[1] for m in host) == ["0", "1"]
    assert all(m.fs_type == "overlay" and m.read_only for m in host)

    status = pod_env.status(ctr)
    mounts = {m.container_path: m for m in status.mounts}
    assert mounts["/mnt/data"].image.image == data_image and mounts["/mnt/data"].readonly
    assert mounts["/mnt/data"].image.user_specified_image == data_image  # the volume named the image by its id
    assert mounts["/mnt/data"].host_path == ""
    assert image_ref_of(mounts["/mnt/data"].image) == data_image
    assert image_ref_of(mounts["/mnt/image-volume"].image) == busybox_id
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)
    assert volumes_on_host(pod_env, ctr) == []


def test_image_volume_by_tag_reports_the_id_it_mounted(pod_env: PodEnv, data_image: str) -> None:
    pod_id, pod = new_pod(pod_env)
    ctr = pod_env.create(pod_id, pod, with_volumes("image-volume-digest-test-", volume("/mnt/image-volume", DATA)))
    (reported,) = [m for m in pod_env.status(ctr).mounts if m.container_path == "/mnt/image-volume"]
    # The id, as the kubelet's image garbage collection matches it; the name asked for beside it.
    assert (reported.image.image, image_ref_of(reported.image)) == (data_image, data_image)
    assert reported.image.user_specified_image == DATA
    pod_env.remove(ctr)
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


# ---- sub-paths -------------------------------------------------------------------------------------------------


def test_sub_paths_resolve_inside_the_image(pod_env: PodEnv, data_image: str) -> None:
    pod_id, pod = new_pod(pod_env)
    config = with_volumes(
        "image-volume-subpath-test-",
        volume("/mnt/dir", data_image, "data"),
        volume("/etc/app.conf", data_image, "conf/settings"),  # a file onto a file
        volume("/mnt/linked", data_image, "abs-link"),  # /data of the image, not of the node
    )
    ctr = pod_env.create(pod_id, pod, config)
    pod_env.start(ctr)
    assert pod_env.sh(ctr, "ls /mnt/dir").split() == ["a", "b"]
    fails(pod_env, ctr, "test -e /mnt/dir/data")
    assert pod_env.sh(ctr, "cat /etc/app.conf") == "x=1\n"
    assert pod_env.sh(ctr, "ls /mnt/linked").split() == ["a", "b"]
    assert "Read-only file system" in fails(pod_env, ctr, "touch /mnt/dir/c")
    status = {m.container_path: m for m in pod_env.status(ctr).mounts}
    assert status["/mnt/dir"].image_sub_path == "data"
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


@pytest.mark.parametrize("sub_path", ["not-existing", "escape", "data/a/below-a-file"])
def test_missing_sub_path_fails_create_and_leaves_nothing(pod_env: PodEnv, data_image: str, sub_path: str) -> None:
    """The first volume is mounted by the time the second one fails: the failed create undoes it."""
    pod_id, pod = new_pod(pod_env)
    config = with_volumes("image-volume-subpath-fail-test-", volume("/mnt/whole", data_image),
                          volume("/mnt/image-volume", data_image, sub_path))
    error = assert_fails_leaving_nothing(pod_env, lambda: pod_env.create(pod_id, pod, config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"image_sub_path {sub_path!r} does not exist in the image" in error.details()
    assert pod_env.list_containers(pod_sandbox_id=pod_id) == []
    # The name is free again: the same container with a sub-path that exists is created.
    fixed = with_volumes("image-volume-subpath-fail-test-", volume("/mnt/image-volume", data_image, "conf"))
    fixed.metadata.name = config.metadata.name
    pod_env.create(pod_id, pod, fixed)
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


# ---- refused requests ------------------------------------------------------------------------------------------


def test_read_write_image_volume_is_refused(pod_env: PodEnv, data_image: str) -> None:
    pod_id, pod = new_pod(pod_env)
    config = with_volumes("image-volume-readonly-test-", volume("/mnt/image-volume", data_image, readonly=False))
    error = assert_fails_leaving_nothing(pod_env, lambda: pod_env.create(pod_id, pod, config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be read-only" in error.details()
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


def test_image_not_pulled_is_not_found(pod_env: PodEnv) -> None:
    pod_id, pod = new_pod(pod_env)
    absent = "localhost/cripytest/never-pulled:1"
    config = with_volumes("image-volume-absent-", volume("/mnt/image-volume", absent))
    error = assert_fails_leaving_nothing(pod_env, lambda: pod_env.create(pod_id, pod, config))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert absent in error.details() and "pull it first" in error.details()
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


# ---- the image is held -----------------------------------------------------------------------------------------


def test_remove_image_is_refused_while_a_container_mounts_it(pod_env: PodEnv) -> None:
    name = f"localhost/cripytest/volume-held:{secrets.token_hex(3)}"
    image_id = add_image(pod_env, name, marker=secrets.token_hex(8))
    pod_id, pod = new_pod(pod_env)
    created = pod_env.create(pod_id, pod, with_volumes("image-volume-held-", volume("/mnt/v", image_id)))
    for ref in (image_id, name):
        error = rpc_error(lambda: pod_env.daemon.remove_image(ref))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert created in error.details() and "image volume" in error.details()
    assert pod_env.daemon.image_status(name).image.id == image_id

    pod_env.remove(created)
    pod_env.wait_for("the volume unmounted after RemoveContainer", lambda: volumes_on_host(pod_env, created) == [])
    pod_env.daemon.remove_image(name)
    assert not pod_env.daemon.image_status(image_id).HasField("image")
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


def test_create_and_remove_image_racing_agree(pod_env: PodEnv) -> None:
    """RemoveImage at the moment a container mounting the image is created: either the container was recorded
    first (it runs with the image; the removal is refused) or the removal was (the create fails, leaving nothing)."""
    pod_id, pod = new_pod(pod_env)
    outcomes = set()
    for attempt, delay in enumerate((0.0, 0.005, 0.01, 0.02, 0.04)):  # the removal later and later
        name = f"localhost/cripytest/volume-race:{secrets.token_hex(3)}"
        image_id = add_image(pod_env, name, marker=secrets.token_hex(8))
        config = with_volumes(f"image-volume-race-{attempt}-", volume("/mnt/v", image_id))

        def remove_after_a_while() -> None:
            time.sleep(delay)
            pod_env.daemon.remove_image(image_id)

        created, removed = concurrently(lambda: pod_env.create(pod_id, pod, config), remove_after_a_while)
        if isinstance(created, str):
            assert isinstance(removed, grpc.RpcError) and removed.code() == grpc.StatusCode.FAILED_PRECONDITION
            pod_env.start(created)
            assert pod_env.sh(created, "cat /mnt/v/data/a") == "a\n"
            pod_env.remove(created)
            outcomes.add("container first")
        else:
            assert removed is None, removed
            assert isinstance(created, grpc.RpcError) and created.code() == grpc.StatusCode.NOT_FOUND, created
            outcomes.add("removal first")
        pod_env.wait_for("no leftovers", lambda: leftovers(pod_env) == ([], []))
    assert outcomes  # which one won is up to the scheduler; each outcome is consistent
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)


# ---- restarts --------------------------------------------------------------------------------------------------


def test_image_volume_across_a_daemon_restart(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    image_id = add_image(env, DATA)
    pod_id, pod = new_pod(env)
    ctr = env.create(pod_id, pod, with_volumes("image-volume-restart-", volume("/mnt/v", image_id, "data")))
    env.start(ctr)
    assert len(volumes_on_host(env, ctr)) == 1
    env.daemon.restart()

    assert env.sh(ctr, "cat /mnt/v/b") == "b\n"
    (reported,) = [m for m in env.status(ctr).mounts if m.container_path == "/mnt/v"]
    assert image_ref_of(reported.image) == image_id
    error = rpc_error(lambda: env.daemon.remove_image(image_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and ctr in error.details()

    env.remove(ctr)
    # Undone in the background, newest first: the volume's mount, then the container's directories.
    env.wait_for("the volume unmounted and the directories gone after RemoveContainer",
                 lambda: volumes_on_host(env, ctr) == [] and not (env.daemon.root / "containers" / ctr).exists())
    env.daemon.remove_image(image_id)
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)


def test_half_made_container_with_image_volumes_is_undone_at_start(pod_env_factory: Callable[..., PodEnv]) -> None:
    """A daemon killed while CreateContainer was mounting image volumes: its journal says where; recovery
    unmounts them and removes the directories."""
    env = pod_env_factory()
    pod_id, pod = new_pod(env)
    env.daemon.stop()
    half = secrets.token_hex(32)
    ctr_dir = env.daemon.root / "containers" / half
    volumes = ctr_dir / "image-volumes"
    lower = [ctr_dir / "l0", ctr_dir / "l1"]
    for directory in (*lower, volumes / "0"):
        directory.mkdir(parents=True)
    (lower[0] / "file").write_text("x\n")
    mount.mount_overlay(lower, None, None, volumes / "0", flags=mount.MS_RDONLY)
    try:
        request = ContainerRequest(name="half-volumes", image=BUSYBOX,
                                   mounts=[Mount("/v", "", readonly=True, image=BUSYBOX)])
        with sqlite3.connect(env.daemon.root / "cripy.db") as db:
            image_id = db.execute("SELECT image_id FROM image_names WHERE name = ?", (BUSYBOX,)).fetchone()[0]
            db.execute("INSERT INTO containers (id, pod_id, name, state, created_at, image_id, image_name, request,"
                       " log_path) VALUES (?, ?, ?, 'creating', ?, ?, ?, ?, ?)",
                       (half, pod_id, f"half-volumes_{pod.metadata.name}_{pod.metadata.namespace}_{pod.metadata.uid}_0",
                        time.time_ns(), image_id, BUSYBOX, serde.dumps(request), str(env.workdir / "half.log")))
            db.execute("INSERT INTO effects (owner, kind, data) VALUES (?, 'ctr-dirs', ?)",
                       (half, json.dumps({"paths": [str(ctr_dir)]})))
            db.execute("INSERT INTO effects (owner, kind, data) VALUES (?, 'ctr-image-volumes', ?)",
                       (half, json.dumps({"path": str(volumes)})))
        env.daemon.start()
        assert mounts_under(ctr_dir) == []
        assert not ctr_dir.exists()
        assert env.list_containers() == []
    finally:
        if ctr_dir.exists():
            mount.unmount_all_under(ctr_dir)
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)


def test_image_volume_after_a_power_cut_goes_with_its_container(
    pod_env_factory: Callable[..., PodEnv],
) -> None:
    env = pod_env_factory()
    image_id = add_image(env, DATA)
    pod_id, pod = new_pod(env)
    ctr = env.create(pod_id, pod, with_volumes("image-volume-kill-", volume("/mnt/v", image_id)))
    env.daemon.kill()  # a power cut: the created container's volume stays mounted, its record and journal too
    assert len(volumes_on_host(env, ctr)) == 1
    env.daemon.start()
    env.remove(ctr)
    env.wait_for("the volume unmounted after RemoveContainer", lambda: volumes_on_host(env, ctr) == [])
    env.daemon.remove_image(image_id)
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)
