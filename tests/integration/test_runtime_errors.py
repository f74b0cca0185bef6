"""Bad input gets a clear gRPC error and leaves nothing behind: unknown ids, a container in a stopped pod, a mount of
a host path that does not exist, an image that is not present, names already held; and kubelet's retry of a
RunPodSandbox / CreateContainer that arrives while the first call is in flight gets the first call's id."""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import PodEnv, concurrently, mounts_under, rpc_error

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


def container_dirs(env: PodEnv) -> set[str]:
    found = set()
    for base in (env.daemon.root / "containers", env.daemon.runroot / "containers"):
        if base.is_dir():
            found.update(os.listdir(base))
    return found


def test_unknown_ids_are_not_found(pod_env: PodEnv) -> None:
    unknown = secrets.token_hex(32)
    pod_id, config = pod_env.run_pod("unknown-ids")
    calls = {
        "PodSandboxStatus": lambda: pod_env.pod_status(unknown),
        "ContainerStatus": lambda: pod_env.status(unknown),
        "StartContainer": lambda: pod_env.start(unknown),
        "ExecSync": lambda: pod_env.exec(unknown, ["true"]),
        "ContainerStats": lambda: pod_env.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=unknown),
                                                            timeout=10),
        "PodSandboxStats": lambda: pod_env.rt.PodSandboxStats(
            api_pb2.PodSandboxStatsRequest(pod_sandbox_id=unknown), timeout=10),
        "UpdateContainerResources": lambda: pod_env.rt.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
            container_id=unknown, linux=api_pb2.LinuxContainerResources(cpu_shares=2)), timeout=10),
        "ReopenContainerLog": lambda: pod_env.rt.ReopenContainerLog(
            api_pb2.ReopenContainerLogRequest(container_id=unknown), timeout=10),
        "CreateContainer": lambda: pod_env.create(unknown, config, pod_env.container_config("orphan", SLEEP)),
    }
    for name, call in calls.items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, f"{name}: {error.code()} {error.details()}"
        assert unknown in error.details(), f"{name}: the message does not name the id: {error.details()}"
    assert pod_env.list_containers(pod_sandbox_id=pod_id) == []


def test_stop_and_remove_of_unknown_ids_succeed(pod_env: PodEnv) -> None:
    """The CRI says stop and remove are idempotent, and critest's Idempotence specs call them with ids that never
    existed: they succeed, and change nothing."""
    unknown = secrets.token_hex(32)
    pod_id, _ = pod_env.run_pod("idempotent-unknown")
    before = (pod_env.list_pods(), pod_env.list_containers())
    pod_env.stop(unknown)
    pod_env.remove(unknown)
    pod_env.stop_pod(unknown)
    pod_env.remove_pod(unknown)
    pod_env.stop(str(uuid.uuid4()))  # critest's ids are UUIDs, not hex
    assert (pod_env.list_pods(), pod_env.list_containers()) == before
    assert pod_env.pod_status(pod_id).status.state == api_pb2.SANDBOX_READY


def test_container_in_a_stopped_pod_is_refused(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("stopped-pod")
    pod_env.stop_pod(pod_id)
    before = container_dirs(pod_env)
    error = rpc_error(lambda: pod_env.create(pod_id, config, pod_env.container_config("late", SLEEP)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert pod_id in error.details()
    assert pod_env.list_containers(pod_sandbox_id=pod_id) == []
    assert container_dirs(pod_env) == before


def test_start_of_an_exited_container_is_refused(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("restart-exited")
    ctr = pod_env.run(pod_id, config, "once", ["true"])
    pod_env.wait_state(ctr)
    error = rpc_error(lambda: pod_env.start(ctr))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    error = rpc_error(lambda: pod_env.exec(ctr, ["true"]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()


def test_mount_of_a_missing_host_path_is_invalid_and_leaves_nothing(pod_env: PodEnv, tmp_path: Path) -> None:
    pod_id, config = pod_env.run_pod("missing-mount")
    missing = tmp_path / "does-not-exist"
    before_dirs, before_mounts = container_dirs(pod_env), mounts_under(pod_env.daemon.root)
    ctr_config = pod_env.container_config("mounts", SLEEP, mounts=[
        api_pb2.Mount(container_path="/data", host_path=str(missing))])
    error = rpc_error(lambda: pod_env.create(pod_id, config, ctr_config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert str(missing) in error.details() and "/data" in error.details()
    assert pod_env.list_containers(pod_sandbox_id=pod_id) == []
    assert container_dirs(pod_env) == before_dirs
    assert mounts_under(pod_env.daemon.root) == before_mounts
    # The name is free again: the same container with an existing path is created.
    missing.mkdir()
    (missing / "file").write_text("content\n")
    ctr = pod_env.create(pod_id, config, ctr_config)
    pod_env.start(ctr)
    assert pod_env.sh(ctr, "cat /data/file") == "content\n"


def test_image_that_is_not_present_is_not_found(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("missing-image")
    before = container_dirs(pod_env)
    image = "localhost/cripytest/not-pulled:latest"
    error = rpc_error(lambda: pod_env.create(pod_id, config, pod_env.container_config("c", SLEEP, image=image)))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert "not-pulled" in error.details()
    assert pod_env.list_containers(pod_sandbox_id=pod_id) == [] and container_dirs(pod_env) == before


def test_pod_name_already_held_names_the_holder(pod_env: PodEnv) -> None:
    config = pod_env.pod_config("held-pod")
    pod_id, _ = pod_env.run_pod(config)
    error = rpc_error(lambda: pod_env.run_pod(config))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
    assert pod_id in error.details()
    # A new attempt is a new name.
    config.metadata.attempt = 1
    second, _ = pod_env.run_pod(config)
    assert second != pod_id


def test_container_name_already_held_names_the_holder(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("held-ctr")
    ctr_config = pod_env.container_config("twice", SLEEP)
    ctr = pod_env.create(pod_id, config, ctr_config)
    error = rpc_error(lambda: pod_env.create(pod_id, config, ctr_config))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
    assert ctr in error.details()
    assert [c.id for c in pod_env.list_containers(pod_sandbox_id=pod_id)] == [ctr]
    pod_env.remove(ctr)
    assert pod_env.create(pod_id, config, ctr_config) != ctr, "the name was not freed by RemoveContainer"


def test_concurrent_run_pod_sandbox_retry_gets_the_same_id(pod_env: PodEnv) -> None:
    config = pod_env.pod_config("retried-pod")
    request = api_pb2.RunPodSandboxRequest(config=config)
    results = concurrently(*[lambda: pod_env.rt.RunPodSandbox(request, timeout=60).pod_sandbox_id] * 3)
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1, results
    assert [p.id for p in pod_env.list_pods() if p.metadata.uid == config.metadata.uid] == [results[0]]


def test_concurrent_create_container_retry_gets_the_same_id(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("retried-ctr")
    request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=pod_env.container_config("c", SLEEP),
                                             sandbox_config=config)
    results = concurrently(*[lambda: pod_env.rt.CreateContainer(request, timeout=60).container_id] * 3)
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1, results
    assert [c.id for c in pod_env.list_containers(pod_sandbox_id=pod_id)] == [results[0]]


def test_stop_and_remove_container_twice(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("twice")
    ctr = pod_env.run(pod_id, config, "c", SLEEP)
    pod_env.stop(ctr, timeout=1)
    pod_env.stop(ctr, timeout=1)
    assert pod_env.status(ctr).state == api_pb2.CONTAINER_EXITED
    pod_env.remove(ctr)
    pod_env.remove(ctr)
    assert pod_env.list_containers(id=ctr) == []


def test_invalid_requests_are_invalid_argument(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("invalid")
    no_name = api_pb2.ContainerConfig(image=api_pb2.ImageSpec(image="x"))
    assert rpc_error(lambda: pod_env.create(pod_id, config, no_name)).code() == grpc.StatusCode.INVALID_ARGUMENT
    no_metadata = api_pb2.PodSandboxConfig()
    error = rpc_error(lambda: pod_env.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=no_metadata), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    relative = pod_env.container_config("relative", SLEEP, mounts=[
        api_pb2.Mount(container_path="/data", host_path="relative/path")])
    assert rpc_error(lambda: pod_env.create(pod_id, config, relative)).code() == grpc.StatusCode.INVALID_ARGUMENT
    exec_empty = rpc_error(lambda: pod_env.exec(pod_env.run(pod_id, config, "c", SLEEP), []))
    assert exec_empty.code() == grpc.StatusCode.INVALID_ARGUMENT
