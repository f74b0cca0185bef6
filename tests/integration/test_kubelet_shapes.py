"""Pods and containers made the way critest and the kubelet make them, through the CRI API: what our own reading of
the CRI missed once (a pod with no hostname, whose name is no valid host name, failed RunPodSandbox) is checked
here with the ecosystem's request shapes, and so are the defaults critest found: an absent seccomp profile is
unconfined, stop and remove are idempotent, and a timed-out ExecSync leaves nothing running."""

from __future__ import annotations

import json
import os
import stat
import time

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import PodEnv, rpc_error
from tests.integration.shapes import (
    critest_container_config,
    critest_pod_config,
    kubelet_container_config,
    kubelet_pod_cgroup,
    kubelet_pod_config,
)

pytestmark = pytest.mark.integration

TOP = ["sh", "-c", "top"]  # critest's default container command


def run_pod(env: PodEnv, config: api_pb2.PodSandboxConfig) -> str:
    return env.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id


def test_critest_pod_without_hostname_gets_the_nodes(pod_env: PodEnv) -> None:
    config = critest_pod_config(pod_env)
    assert len(config.metadata.name) > 63 and any(c.isupper() for c in config.metadata.name)
    pod_id = run_pod(pod_env, config)
    ctr = pod_env.create(pod_id, config, critest_container_config("container-for-hostname-", TOP))
    pod_env.start(ctr)

    node = os.uname().nodename
    assert pod_env.sh(ctr, "hostname").strip() == node
    assert pod_env.sh(ctr, "cat /etc/hostname").strip() == node
    assert node in pod_env.sh(ctr, "cat /etc/hosts")
    assert f"HOSTNAME={node}" in pod_env.sh(ctr, "env")
    # Still the pod's own UTS namespace: a hostname set inside does not reach the node.
    assert pod_env.status(ctr).state == api_pb2.CONTAINER_RUNNING
    info = json.loads(pod_env.pod_status(pod_id, verbose=True).info["info"])
    assert "uts" in info["namespaces"]


def test_critest_container_without_seccomp_runs_unconfined(pod_env: PodEnv) -> None:
    config = critest_pod_config(pod_env)
    pod_id = run_pod(pod_env, config)
    unset = pod_env.create(pod_id, config, critest_container_config("container-seccomp-nil-", TOP))
    runtime_default = critest_container_config("container-seccomp-default-", TOP)
    runtime_default.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    confined = pod_env.create(pod_id, config, runtime_default)
    for ctr in (unset, confined):
        pod_env.start(ctr)

    assert "Seccomp:\t0" in pod_env.sh(unset, "grep Seccomp: /proc/self/status")
    assert "Seccomp:\t2" in pod_env.sh(confined, "grep Seccomp: /proc/self/status")


def test_execsync_timeout_kills_what_it_started(pod_env: PodEnv) -> None:
    """critest's execSync-with-timeout spec: after the timeout, `pgrep sleep` in the container finds nothing (no
    process, and no zombie either); a command's own children go with it."""
    config = critest_pod_config(pod_env)
    pod_id = run_pod(pod_env, config)
    ctr = pod_env.create(pod_id, config, critest_container_config("container-for-execSync-timeout-test-", TOP))
    pod_env.start(ctr)

    for cmd in (["sleep", "4321"], ["sh", "-c", "sleep 4322 & sleep 4323"]):
        started = time.monotonic()
        error = rpc_error(lambda: pod_env.rt.ExecSync(
            api_pb2.ExecSyncRequest(container_id=ctr, cmd=cmd, timeout=1), timeout=30))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
        assert time.monotonic() - started < 10
        # `pgrep sleep` as critest runs it (this image has no pgrep): process and zombie names from /proc
        reply = pod_env.exec(ctr, ["sh", "-c", "cat /proc/[0-9]*/comm | grep sleep || true"])
        assert (reply.stdout.strip(), reply.stderr) == (b"", b""), f"{cmd}: left running: {reply.stdout!r}"


def test_kubelet_shaped_pod_and_container(pod_env: PodEnv) -> None:
    name = "web-7d4b9c8f6d-x2x9k"
    config = kubelet_pod_config(pod_env, name)
    with kubelet_pod_cgroup(config):
        check_kubelet_shaped_pod(pod_env, config)


def check_kubelet_shaped_pod(pod_env: PodEnv, config: api_pb2.PodSandboxConfig) -> None:
    name = config.metadata.name
    pod_id = run_pod(pod_env, config)
    status = pod_env.pod_status(pod_id).status
    assert status.state == api_pb2.SANDBOX_READY
    assert dict(status.labels) == dict(config.labels)
    assert dict(status.annotations) == dict(config.annotations)

    termination_log = pod_env.workdir / f"termination-{config.metadata.uid}"
    termination_log.write_text("")
    ctr_config = kubelet_container_config(config, "web", ["sh", "-c", "echo ready; exec top"],
                                          termination_log=termination_log)
    ctr = pod_env.create(pod_id, config, ctr_config)
    pod_env.start(ctr)

    assert pod_env.sh(ctr, "hostname").strip() == name
    assert "nameserver 10.96.0.10" in pod_env.sh(ctr, "cat /etc/resolv.conf")
    assert "KUBERNETES_SERVICE_HOST=10.96.0.1" in pod_env.sh(ctr, "env")
    # The bundle's spec carries the environment (kubelet puts secrets there): root may read it, nobody else.
    spec = pod_env.daemon.runroot / "containers" / ctr / "config.json"
    assert stat.S_IMODE(spec.stat().st_mode) == 0o600
    assert "Seccomp:\t2" in pod_env.sh(ctr, "grep Seccomp: /proc/self/status")
    pod_env.sh(ctr, "echo 'terminated: done' > /dev/termination-log")
    assert termination_log.read_text() == "terminated: done\n"
    log_file = os.path.join(config.log_directory, "web", "0.log")
    pod_env.wait_for("the container's log in kubelet's layout", lambda: os.path.exists(log_file)
                     and " stdout F ready" in open(log_file).read())

    status = pod_env.status(ctr)
    assert status.log_path == log_file
    assert dict(status.labels) == dict(ctr_config.labels)
    assert dict(status.annotations) == dict(ctr_config.annotations)
    assert [m.container_path for m in status.mounts] == ["/dev/termination-log"]
    cgroup = pod_env.sh(ctr, "cat /proc/self/cgroup")
    assert f"kubepods/besteffort/pod{config.metadata.uid}" in cgroup

    pod_env.stop_pod(pod_id)
    assert pod_env.status(ctr).state == api_pb2.CONTAINER_EXITED
    pod_env.remove_pod(pod_id)
    assert pod_env.list_containers(pod_sandbox_id=pod_id) == []
