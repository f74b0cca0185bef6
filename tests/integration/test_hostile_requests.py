"""Hostile CRI requests, as a new user's probes sent them: each one is refused at the call that carries it, with
InvalidArgument and a short message, before anything is made for it; none stalls a worker, grows the daemon or
writes where it was not asked to.

- a Localhost seccomp profile that is a FIFO, a device or a huge file;
- resource values only runc or the kernel would refuse (cpuset syntax and size, cpu period and shares, a memory
  limit too small to start anything, unified on cgroup v1, NUL bytes in env or the cgroup parent);
- a device host path that is a directory outside /dev (host_path "/");
- log paths that leave the pod's log directory, absolute log paths, relative log directories;
- NUL bytes in names, paths, env and exec commands, a 1 MB exec argument, a sysctl value the kernel refuses.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from cripy.linux import cgroups
from tests.integration.podlib import PodEnv, rpc_error

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
MAX_DETAILS = 1024  # no error message echoes a request's huge value back


def _invalid(call: Callable[[], Any], timeout_note: str = "") -> str:
    error = rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{timeout_note}{error.code().name}: {error.details()}"
    assert len(error.details()) <= MAX_DETAILS, f"the message is {len(error.details())} characters long"
    return error.details()


def _daemon_rss(env: PodEnv) -> int:
    for line in Path(f"/proc/{env.daemon.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _create(env: PodEnv, pod_id: str, config: api_pb2.PodSandboxConfig, ctr: api_pb2.ContainerConfig,
            timeout: float = 20) -> str:
    return env.create(pod_id, config, ctr, timeout=timeout)


def _no_containers(env: PodEnv, pod_id: str) -> None:
    assert env.list_containers(pod_sandbox_id=pod_id) == []


# ---------------------------------------------------------------------------------------------------- seccomp


def _localhost(path: str) -> api_pb2.LinuxContainerConfig:
    return api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=path)))


def test_a_localhost_seccomp_profile_that_is_not_a_regular_file_is_refused(pod_env: PodEnv) -> None:
    """A FIFO would block a worker thread forever (six of them and RunPodSandbox times out); /dev/zero never ends."""
    pod_id, config = pod_env.run_pod("seccomp-fifo")
    fifo = pod_env.workdir / "profile.fifo"
    os.mkfifo(fifo)
    try:
        for path in (str(fifo), "/dev/zero", str(pod_env.workdir)):
            started = time.monotonic()
            details = _invalid(lambda: _create(pod_env, pod_id, config, pod_env.container_config(
                "fifo", SLEEP, linux=_localhost(path)), timeout=10))
            assert path in details and "regular file" in details, details
            assert time.monotonic() - started < 5
        _no_containers(pod_env, pod_id)
    finally:
        _release_fifo_reader(fifo)
        fifo.unlink()


def _release_fifo_reader(fifo: Path) -> None:
    """A reader blocked in open() (the daemon before the fix) gets its end of file, so the daemon can stop."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader: nothing is blocked


def test_a_huge_localhost_seccomp_profile_is_refused_without_reading_it(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("seccomp-huge")
    huge = pod_env.workdir / "huge-profile.json"
    with huge.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: costs the disk nothing
    try:
        before = _daemon_rss(pod_env)
        details = _invalid(lambda: _create(pod_env, pod_id, config, pod_env.container_config(
            "huge", SLEEP, linux=_localhost(str(huge)))))
        assert "larger than" in details, details
        assert _daemon_rss(pod_env) - before < 32 * 1024 * 1024
    finally:
        huge.unlink()


# ---------------------------------------------------------------------------------------------------- resources


BAD_RESOURCES = {
    "cpuset-100kB": dict(cpuset_cpus="0," * 50_000 + "0"),
    "cpuset-abc": dict(cpuset_cpus="abc"),
    "cpuset-reversed": dict(cpuset_cpus="3-1"),
    "cpuset-mems-abc": dict(cpuset_mems="x"),
    "cpu-period-1": dict(cpu_period=1),
    "cpu-period-too-long": dict(cpu_period=1_000_001),
    "cpu-quota-tiny": dict(cpu_quota=1),
    "cpu-shares-2^62": dict(cpu_shares=2**62),
    "cpu-shares-1": dict(cpu_shares=1),
    "memory-1": dict(memory_limit_in_bytes=1),
    "swap-below-memory": dict(memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=32 << 20),
}


@pytest.mark.parametrize("case", sorted(BAD_RESOURCES))
def test_resource_values_runc_would_refuse_are_refused_at_create(pod_env: PodEnv, case: str) -> None:
    pod_id, config = pod_env.run_pod(f"res-{case.lower().replace('^', '')}")
    resources = api_pb2.LinuxContainerResources(**BAD_RESOURCES[case])
    details = _invalid(lambda: _create(pod_env, pod_id, config, pod_env.container_config(
        "res", SLEEP, linux=api_pb2.LinuxContainerConfig(resources=resources))))
    assert "linux.resources" in details, details
    _no_containers(pod_env, pod_id)


def test_the_same_values_are_refused_by_update_container_resources(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("res-update")
    ctr_id = pod_env.run(pod_id, config, "res", SLEEP)
    for case in ("cpuset-abc", "cpu-period-1", "memory-1"):
        _invalid(lambda: pod_env.rt.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
            container_id=ctr_id, linux=api_pb2.LinuxContainerResources(**BAD_RESOURCES[case])), timeout=20))
    assert pod_env.status(ctr_id).state == api_pb2.CONTAINER_RUNNING


@pytest.mark.skipif(cgroups.mode() is cgroups.CgroupMode.V2, reason="unified resources are valid on cgroup v2")
def test_unified_resources_on_cgroup_v1_are_refused_at_create(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("res-unified")
    resources = api_pb2.LinuxContainerResources(unified={"memory.high": "100000000"})
    details = _invalid(lambda: _create(pod_env, pod_id, config, pod_env.container_config(
        "res", SLEEP, linux=api_pb2.LinuxContainerConfig(resources=resources))))
    assert "unified" in details and "cgroup v1" in details, details
    _no_containers(pod_env, pod_id)


def test_nul_bytes_in_env_and_cgroup_parent_are_refused(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("nul-env")
    for envs in ([api_pb2.KeyValue(key="A", value="x\0y")], [api_pb2.KeyValue(key="A\0B", value="x")]):
        details = _invalid(lambda: _create(pod_env, pod_id, config, pod_env.container_config("env", SLEEP, envs=envs)))
        assert "NUL" in details, details
    _no_containers(pod_env, pod_id)
    bad = pod_env.pod_config("nul-cgroup", linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent="/a\0b"))
    assert "cgroup_parent" in _invalid(lambda: pod_env.run_pod(bad))
    assert not [p for p in pod_env.list_pods() if p.metadata.name == "nul-cgroup"]


# ---------------------------------------------------------------------------------------------------- devices


def test_a_device_directory_outside_dev_is_refused_without_walking_it(pod_env: PodEnv) -> None:
    """host_path "/" made cripy walk the whole host, /proc included, and fail with INTERNAL."""
    pod_id, config = pod_env.run_pod("dev-root")
    for host_path in ("/", "/proc", str(pod_env.workdir)):
        started = time.monotonic()
        device = api_pb2.Device(container_path="/dev/x", host_path=host_path, permissions="rwm")
        details = _invalid(lambda: _create(pod_env, pod_id, config, pod_env.container_config(
            "dev", SLEEP, devices=[device])))
        assert host_path in details and "/dev" in details, details
        assert time.monotonic() - started < 5
    _no_containers(pod_env, pod_id)


def test_a_device_directory_under_dev_still_works(pod_env: PodEnv) -> None:
    """What kubelet's device plugins hand over: a directory of devices (here /dev/net, the tun device)."""
    if not any(stat.S_ISCHR(os.stat(p).st_mode) for p in Path("/dev/net").glob("*")):
        pytest.skip("no /dev/net devices on this host")
    pod_id, config = pod_env.run_pod("dev-dir")
    device = api_pb2.Device(container_path="/dev/net", host_path="/dev/net", permissions="rwm")
    ctr_id = pod_env.run(pod_id, config, "dev", SLEEP, devices=[device])
    assert "tun" in pod_env.sh(ctr_id, "ls /dev/net")


# ---------------------------------------------------------------------------------------------------- log paths


def test_log_paths_never_leave_the_pod_log_directory(pod_env: PodEnv) -> None:
    canary = pod_env.workdir / "canary"
    canary.mkdir()
    pod_id, config = pod_env.run_pod("log-escape")
    log_directory = Path(config.log_directory)
    escape = os.path.relpath(canary / "x", log_directory)
    for log_path in (escape, str(canary / "y"), "a/../../" + os.path.relpath(canary / "z", log_directory.parent)):
        ctr = pod_env.container_config("logs", SLEEP)
        ctr.log_path = log_path
        details = _invalid(lambda: _create(pod_env, pod_id, config, ctr))
        assert "log_path" in details, details
    _no_containers(pod_env, pod_id)
    assert list(canary.iterdir()) == []


def test_a_relative_log_directory_is_refused(pod_env: PodEnv) -> None:
    config = pod_env.pod_config("log-relative")
    config.log_directory = "relative/logs"
    assert "log_directory" in _invalid(lambda: pod_env.run_pod(config))
    assert not (Path.cwd() / "relative").exists()


# ---------------------------------------------------------------------------------------------------- client mistakes


def test_nul_bytes_in_names_and_paths_are_invalid_argument(pod_env: PodEnv) -> None:
    assert "NUL" in _invalid(lambda: pod_env.run_pod(pod_env.pod_config("nul\0name")))
    config = pod_env.pod_config("nul-host")
    config.hostname = "a\0b"
    _invalid(lambda: pod_env.run_pod(config))
    pod_id, config = pod_env.run_pod("nul-paths")
    cases = {
        "name": pod_env.container_config("a\0b", SLEEP),
        "command": pod_env.container_config("cmd", ["sleep\0", "1"]),
        "working_dir": pod_env.container_config("wd", SLEEP, working_dir="/a\0b"),
        "mount": pod_env.container_config("mnt", SLEEP, mounts=[api_pb2.Mount(
            container_path="/m\0", host_path=str(pod_env.workdir))]),
        "host_path": pod_env.container_config("mnt2", SLEEP, mounts=[api_pb2.Mount(
            container_path="/m", host_path=f"{pod_env.workdir}\0")]),
        "image": pod_env.container_config("img", SLEEP, image="busybox\0:latest"),
    }
    for case, ctr in cases.items():
        details = _invalid(lambda: _create(pod_env, pod_id, config, ctr), f"{case}: ")
        assert "NUL" in details, f"{case}: {details}"
    _no_containers(pod_env, pod_id)


def test_exec_commands_the_kernel_would_refuse_are_invalid_argument(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("exec-bad")
    ctr_id = pod_env.run(pod_id, config, "sh", SLEEP)
    for cmd in (["echo", "a\0b"], ["echo", "x" * (1 << 20)], ["echo"] + ["y" * 100_000] * 40):
        _invalid(lambda: pod_env.exec(ctr_id, cmd))
        _invalid(lambda: pod_env.rt.Exec(api_pb2.ExecRequest(container_id=ctr_id, cmd=cmd, stdout=True), timeout=10))
    assert pod_env.sh(ctr_id, "echo ok") == "ok\n"


def test_a_sysctl_the_kernel_refuses_is_invalid_argument(pod_env: PodEnv) -> None:
    for name, value in (("net.core.somaxconn", "99999999999999999999"), ("net.ipv4.no_such_knob", "1"),
                        ("net.ipv4.ip_forward", "x" * 100_000)):
        linux = api_pb2.LinuxPodSandboxConfig(sysctls={name: value})
        details = _invalid(lambda: pod_env.run_pod(pod_env.pod_config("sysctl-bad", linux=linux)))
        assert name in details, details
    assert not [p for p in pod_env.list_pods() if p.metadata.name == "sysctl-bad"]
