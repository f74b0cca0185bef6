"""Runtime handler features through the CRI API: Status reports what each handler's runtime says it supports
(asked at start and again at SIGHUP), recursive read-only mounts work where the handler offers them (a mount below
the volume is read-only too) and are refused, naming the handler and the feature, where it does not; the CRI's
rules for them (read-only, private propagation) hold. Pods are made as critest makes them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from cripy.linux import mount
from tests.integration.conftest_leaks import session_cgroup_parent
from tests.integration.podlib import PodEnv, rpc_error, short_tempdir
from tests.integration.shapes import critest_pod_config

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
RUNC = shutil.which("runc") or "/usr/bin/runc"
# A handler whose runtime is this machine's runc behind a wrapper that cannot answer `features`, as runc before
# 1.1 could not: it runs containers, and offers no optional feature.
NO_FEATURES = "quiet-runc"
_WRAPPER = """#!/bin/sh
if [ "$1" = features ] && [ ! -e "{answer}" ]; then
    echo 'unknown command "features" for "runc"' >&2
    exit 1
fi
exec {runc} "$@"
"""


@pytest.fixture(scope="module")
def wrapper_dir() -> Iterator[Path]:
    directory = short_tempdir("w")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def env(pod_image_dir: Path, wrapper_dir: Path) -> Iterator[PodEnv]:
    wrapper = wrapper_dir / "runc-without-features"
    wrapper.write_text(_WRAPPER.format(answer=wrapper_dir / "answer-features", runc=RUNC))
    wrapper.chmod(0o755)
    handler = f'\n[runtime.handlers.{NO_FEATURES}]\nruntime_path = "{wrapper}"\n'
    environment = PodEnv(short_tempdir("v"), pod_image_dir, cgroup_parent=session_cgroup_parent(),
                         extra_toml=handler)
    yield environment
    environment.close()


@pytest.fixture(scope="module")
def pod(env: PodEnv) -> tuple[str, api_pb2.PodSandboxConfig]:
    return env.run_pod(critest_pod_config(env, "Container-Mount-Readonly-PodSandbox-"))


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted on its `tmpfs` subdirectory, as critest makes it."""
    host = tmp_path / "volume"
    (host / "tmpfs").mkdir(parents=True)
    mount.mount_tmpfs(host / "tmpfs", 1 << 20)
    try:
        yield host
    finally:
        mount.umount(host / "tmpfs", detach=True)


def handler_features(env: PodEnv) -> dict[str, api_pb2.RuntimeHandlerFeatures]:
    status = env.rt.Status(api_pb2.StatusRequest(), timeout=10)
    return {handler.name: handler.features for handler in status.runtime_handlers}


def volume_mount(host: Path, **fields) -> api_pb2.Mount:
    return api_pb2.Mount(container_path="/mnt", host_path=str(host), selinux_relabel=True, **fields)


def mount_options_in(env: PodEnv, ctr: str, mount_point: str) -> set[str]:
    """The per-mount options (ro/rw, ...) of `mount_point` in the container's mount table."""
    for line in env.sh(ctr, "cat /proc/self/mountinfo").splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not a mount point in the container")


# ---- Status ------------------------------------------------------------------------------------------------------


def test_status_reports_what_each_handlers_runtime_says(env: PodEnv) -> None:
    runc_says = json.loads(subprocess.run([RUNC, "features"], capture_output=True, check=True, timeout=30).stdout)
    assert "rro" in runc_says["mountOptions"]  # this machine's runc (1.1.5) lists it
    handlers = handler_features(env)
    assert set(handlers) == {"", "runc", NO_FEATURES}  # "": pods that name no RuntimeClass get the default
    assert handlers[""].recursive_read_only_mounts and handlers["runc"].recursive_read_only_mounts
    assert not handlers[NO_FEATURES].recursive_read_only_mounts
    assert not handlers[NO_FEATURES].user_namespaces  # a runtime that lists no namespaces joins no user namespace
    assert env.rt.Status(api_pb2.StatusRequest(), timeout=10).features.supplemental_groups_policy
    assert f"runtime handler {NO_FEATURES}: recursive read-only mounts no" in env.daemon.log_text()


def test_sighup_asks_the_runtimes_again(env: PodEnv, wrapper_dir: Path) -> None:
    answer = wrapper_dir / "answer-features"
    answer.touch()  # the runtime was "upgraded": it answers `features` now
    try:
        os.kill(env.daemon.pid, signal.SIGHUP)
        env.wait_for("the re-asked handler offering rro",
                     lambda: handler_features(env)[NO_FEATURES].recursive_read_only_mounts)
    finally:
        answer.unlink()
    os.kill(env.daemon.pid, signal.SIGHUP)
    env.wait_for("the handler offering nothing again",
                 lambda: not handler_features(env)[NO_FEATURES].recursive_read_only_mounts)


# ---- recursive read-only mounts ------------------------------------------------------------------------------


def test_recursive_read_only_volume_is_read_only_below_too(env: PodEnv, pod: tuple, volume: Path) -> None:
    pod_id, config = pod
    ctr = env.run(pod_id, config, "test-mount-rro", SLEEP,
                  mounts=[volume_mount(volume, readonly=True, recursive_read_only=True)])
    for path in ("/mnt/foo", "/mnt/tmpfs/foo"):
        reply = env.exec(ctr, ["touch", path])
        assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr, (path, reply)
    assert "ro" in mount_options_in(env, ctr, "/mnt/tmpfs")  # mount_setattr(AT_RECURSIVE) reached the submount
    (reported,) = env.status(ctr).mounts
    assert reported.readonly and reported.recursive_read_only
    assert reported.propagation == api_pb2.PROPAGATION_PRIVATE
    (volume / "tmpfs" / "from-the-host").write_text("the host's own mount stays writable\n")
    assert env.sh(ctr, "cat /mnt/tmpfs/from-the-host") == "the host's own mount stays writable\n"
    env.remove(ctr)


def test_read_only_volume_leaves_its_submounts_writable(env: PodEnv, pod: tuple, volume: Path) -> None:
    pod_id, config = pod
    ctr = env.run(pod_id, config, "test-mount-ro", SLEEP, mounts=[volume_mount(volume, readonly=True)])
    env.sh(ctr, "touch /mnt/tmpfs/file")  # what critest's non-recursive spec checks
    assert (volume / "tmpfs" / "file").exists()
    reply = env.exec(ctr, ["touch", "/mnt/foo"])
    assert reply.exit_code != 0 and b"Read-only file system" in reply.stderr
    assert "rw" in mount_options_in(env, ctr, "/mnt/tmpfs")
    (reported,) = env.status(ctr).mounts
    assert reported.readonly and not reported.recursive_read_only
    env.remove(ctr)


@pytest.mark.parametrize(("fields", "why"), [
    (dict(readonly=True, propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER), "not PROPAGATION_HOST_TO_CONTAINER"),
    (dict(readonly=True, propagation=api_pb2.PROPAGATION_BIDIRECTIONAL), "not PROPAGATION_BIDIRECTIONAL"),
    (dict(readonly=False), "needs readonly=true"),
])
def test_recursive_read_only_rules_of_the_cri(env: PodEnv, pod: tuple, volume: Path, fields: dict, why: str) -> None:
    pod_id, config = pod
    before = len(env.list_containers(pod_sandbox_id=pod_id))
    ctr_config = env.container_config("test-mount-rro-invalid", SLEEP,
                                      mounts=[volume_mount(volume, recursive_read_only=True, **fields)])
    error = rpc_error(lambda: env.create(pod_id, config, ctr_config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mounts[0]: recursive_read_only needs" in error.details() and why in error.details()
    assert len(env.list_containers(pod_sandbox_id=pod_id)) == before


def test_a_handler_that_does_not_offer_it_refuses_at_create(env: PodEnv, volume: Path) -> None:
    config = critest_pod_config(env, "Quiet-Runtime-Handler-PodSandbox-")
    pod_id = env.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config, runtime_handler=NO_FEATURES),
                                  timeout=60).pod_sandbox_id
    ctr_config = env.container_config("test-mount-rro", SLEEP,
                                      mounts=[volume_mount(volume, readonly=True, recursive_read_only=True)])
    error = rpc_error(lambda: env.create(pod_id, config, ctr_config))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith(
        "container 'test-mount-rro': mounts[0] (/mnt) needs recursive read-only mounts, which runtime handler "
        f"'{NO_FEATURES}' does not offer: its runtime does not list the 'rro' mount option"), error.details()
    assert 'features` failed (exit status 1): unknown command "features"' in error.details()
    assert not env.list_containers(pod_sandbox_id=pod_id)
    # The handler itself works: a plain read-only volume runs under it.
    ctr = env.run(pod_id, config, "test-mount-ro", SLEEP, mounts=[volume_mount(volume, readonly=True)])
    assert env.status(ctr).state == api_pb2.CONTAINER_RUNNING
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)
