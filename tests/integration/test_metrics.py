"""CRI metrics and the rest of the runtime surface through a real daemon: ListMetricDescriptors and
ListPodSandboxMetrics as critest and a kubelet with PodAndContainerStatsFromCRI use them, the stats fields they
share readings with, UpdatePodSandboxResources, Status's verbose info, and an answer for every CRI call."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.daemon import REPO_ROOT
from tests.integration.podlib import PodEnv, rpc_error
from tests.integration.shapes import (
    critest_container_config,
    critest_pod_config,
    kubelet_pod_cgroup,
    kubelet_pod_config,
)

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
MIB = 1024 * 1024


def descriptors(env: PodEnv) -> dict[str, api_pb2.MetricDescriptor]:
    reply = env.rt.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest(), timeout=10)
    return {d.name: d for d in reply.descriptors}


def pod_metrics(env: PodEnv, pod_id: str) -> api_pb2.PodSandboxMetrics | None:
    reply = env.rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(), timeout=30)
    return next((m for m in reply.pod_metrics if m.pod_sandbox_id == pod_id), None)


def values(metrics: list[api_pb2.Metric], name: str) -> dict[tuple[str, ...], int]:
    return {tuple(m.label_values): m.value.value for m in metrics if m.name == name}


def run_critest_shaped(env: PodEnv, command: list[str], resources: api_pb2.LinuxContainerResources | None = None
                       ) -> tuple[str, str, api_pb2.PodSandboxConfig]:
    """A pod and a running container made as critest's metrics spec makes them: no hostname, a long name with
    capitals, the container with cpu and memory limits."""
    config = critest_pod_config(env, "PodSandbox-for-Metrics-Test-")
    pod_id, _ = env.run_pod(config)
    container = critest_container_config("container-for-metrics-", command)
    if resources is not None:
        container.linux.resources.CopyFrom(resources)
    ctr_id = env.create(pod_id, config, container)
    env.start(ctr_id)
    return pod_id, ctr_id, config


def test_descriptors_have_help_label_keys_and_the_cadvisor_names(pod_env: PodEnv) -> None:
    found = descriptors(pod_env)
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_network_receive_bytes_total", "container_fs_usage_bytes", "container_processes",
                 "container_spec_memory_limit_bytes", "container_oom_events_total"):
        assert name in found, name
    for d in found.values():
        assert d.help and list(d.label_keys[:3]) == ["id", "name", "image"], d
    # The CRI asks for a list fixed at start: a second call gives the same.
    assert descriptors(pod_env) == found


def test_pod_sandbox_metrics_of_a_critest_shaped_pod(pod_env: PodEnv) -> None:
    limits = api_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=20000, cpu_shares=1024,
                                             memory_limit_in_bytes=64 * MIB, memory_swap_limit_in_bytes=64 * MIB)
    pod_id, ctr_id, config = run_critest_shaped(pod_env, SLEEP, limits)
    pod_env.sh(ctr_id, "mkdir -p /var/lib/mydisktest && for i in $(seq 1 10); do "
                       "head -c 100000 /dev/urandom > /var/lib/mydisktest/f$i; done; sync")
    pod_env.exec(ctr_id, ["nc", "-w", "2", pod_env.network.gateway, "1"])  # some traffic on eth0
    found = descriptors(pod_env)
    pod = pod_metrics(pod_env, pod_id)
    assert pod is not None

    # Every metric names a descriptor and carries a value for each of its label keys.
    all_metrics = list(pod.metrics) + [m for c in pod.container_metrics for m in c.metrics]
    for metric in all_metrics:
        assert metric.name in found, metric.name
        assert len(metric.label_values) == len(found[metric.name].label_keys), metric
        assert metric.metric_type in (api_pb2.COUNTER, api_pb2.GAUGE)

    pod_name = f"{config.metadata.name}_{config.metadata.namespace}_{config.metadata.uid}_0"
    rx = values(list(pod.metrics), "container_network_receive_bytes_total")
    assert rx[(pod_id, pod_name, "", "eth0")] > 0
    assert values(list(pod.metrics), "container_network_transmit_packets_total")[(pod_id, pod_name, "", "eth0")] > 0

    [container] = pod.container_metrics
    assert container.container_id == ctr_id
    metrics = list(container.metrics)
    [base] = {tuple(m.label_values[:3]) for m in metrics}
    assert base[0] == ctr_id and base[1].startswith("container-for-metrics-") and base[2].endswith("busybox:latest")
    assert values(metrics, "container_spec_memory_limit_bytes") == {base: 64 * MIB}
    assert values(metrics, "container_spec_cpu_quota") == {base: 20000}
    assert values(metrics, "container_spec_cpu_period") == {base: 100000}
    assert values(metrics, "container_spec_cpu_shares") == {base: 1024}
    assert values(metrics, "container_processes")[base] >= 1
    assert values(metrics, "container_memory_working_set_bytes")[base] > 0
    assert values(metrics, "container_fs_usage_bytes")[base] >= 1_000_000
    assert values(metrics, "container_fs_inodes_total")[base] > values(metrics, "container_fs_inodes_free")[base]
    assert values(metrics, "container_file_descriptors")[base] >= 1
    assert set(values(metrics, "container_cpu_usage_seconds_total")) == {(*base, "total")}
    assert values(metrics, "container_start_time_seconds")[base] <= time.time()
    assert abs(values(metrics, "container_last_seen")[base] - time.time()) < 60
    # Live values have no timestamp; the writable layer's usage, measured by a walk and cached, has its time.
    assert {m.timestamp for m in metrics if m.name != "container_fs_usage_bytes"} == {0}
    [fs_usage] = [m for m in metrics if m.name == "container_fs_usage_bytes"]
    assert 0 < fs_usage.timestamp <= time.time_ns()

    # The stats calls answer from the same readings.
    stats = pod_env.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=ctr_id), timeout=10).stats
    assert stats.memory.available_bytes.value == 64 * MIB - stats.memory.working_set_bytes.value
    assert stats.writable_layer.used_bytes.value == values(metrics, "container_fs_usage_bytes")[base]
    pod_stats = pod_env.rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=10).stats
    assert pod_stats.linux.process.process_count.value == values(metrics, "container_processes")[base]

    # A stopped pod (and its containers) drops out.
    pod_env.stop_pod(pod_id)
    assert pod_metrics(pod_env, pod_id) is None


def test_host_network_pod_has_no_pod_level_network_metrics(pod_env: PodEnv) -> None:
    config = critest_pod_config(pod_env, "HostNetwork-Metrics-")
    config.linux.security_context.namespace_options.network = api_pb2.NODE
    pod_id, _ = pod_env.run_pod(config)
    ctr_id = pod_env.create(pod_id, config, critest_container_config("host-net-", SLEEP))
    pod_env.start(ctr_id)
    pod = pod_metrics(pod_env, pod_id)
    assert pod is not None and list(pod.metrics) == []  # the node's interfaces are not the pod's
    assert [c.container_id for c in pod.container_metrics] == [ctr_id]


def test_a_created_container_has_no_metrics_until_it_runs(pod_env: PodEnv) -> None:
    config = critest_pod_config(pod_env, "Created-Only-")
    pod_id, _ = pod_env.run_pod(config)
    pod_env.create(pod_id, config, critest_container_config("never-started-", SLEEP))
    pod = pod_metrics(pod_env, pod_id)
    assert pod is not None and list(pod.container_metrics) == []


# ---- UpdatePodSandboxResources ----------------------------------------------------------------------------------


def update_pod(env: PodEnv, pod_id: str, **fields: api_pb2.LinuxContainerResources) -> None:
    env.rt.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod_id, **fields),
                                     timeout=10)


def pod_verbose(env: PodEnv, pod_id: str) -> dict:
    return json.loads(env.pod_status(pod_id, verbose=True).info["info"])


def test_update_pod_sandbox_resources_records_what_the_kubelet_resized(pod_env: PodEnv) -> None:
    """The kubelet writes the pod cgroup first, then tells the runtime; cripy records it beside what the pod's
    cgroup holds."""
    config = kubelet_pod_config(pod_env, f"resize-{secrets.token_hex(3)}")
    with kubelet_pod_cgroup(config):
        pod_id, _ = pod_env.run_pod(config)
        try:
            assert pod_verbose(pod_env, pod_id)["resources"]["resources"]["cpu_shares"] == 2
            memory_dir = Path("/sys/fs/cgroup/memory") / config.linux.cgroup_parent.strip("/")
            (memory_dir / "memory.limit_in_bytes").write_text(str(256 * MIB))  # the kubelet's resize
            update_pod(pod_env, pod_id,
                       overhead=api_pb2.LinuxContainerResources(cpu_shares=10, memory_limit_in_bytes=16 * MIB),
                       resources=api_pb2.LinuxContainerResources(cpu_shares=512, cpu_period=100000,
                                                                 cpu_quota=50000, memory_limit_in_bytes=256 * MIB))
            recorded = pod_verbose(pod_env, pod_id)["resources"]
            assert recorded["overhead"]["memory_limit_in_bytes"] == 16 * MIB
            assert recorded["resources"]["cpu_quota"] == 50000
            assert recorded["podCgroupLimits"]["memory_bytes"] == 256 * MIB

            # An unset field keeps what was recorded; the record survives a restart.
            update_pod(pod_env, pod_id, resources=api_pb2.LinuxContainerResources(cpu_shares=256))
            pod_env.daemon.restart()
            recorded = pod_verbose(pod_env, pod_id)["resources"]
            assert recorded["resources"]["cpu_shares"] == 256
            assert recorded["overhead"]["memory_limit_in_bytes"] == 16 * MIB
        finally:
            pod_env.stop_pod(pod_id)
            pod_env.remove_pod(pod_id)


def test_update_pod_sandbox_resources_refusals(pod_env: PodEnv) -> None:
    pod_id, _ = pod_env.run_pod(critest_pod_config(pod_env, "Resize-Refusals-"))
    error = rpc_error(lambda: update_pod(pod_env, pod_id, resources=api_pb2.LinuxContainerResources(cpu_quota=-5)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "cpu_quota" in error.details()
    assert pod_verbose(pod_env, pod_id)["resources"]["resources"] is None  # nothing recorded

    unknown = secrets.token_hex(32)
    error = rpc_error(lambda: update_pod(pod_env, unknown, resources=api_pb2.LinuxContainerResources(cpu_shares=2)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and unknown in error.details()

    pod_env.stop_pod(pod_id)
    error = rpc_error(lambda: update_pod(pod_env, pod_id, resources=api_pb2.LinuxContainerResources(cpu_shares=2)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not ready" in error.details()


# ---- Status verbose info ------------------------------------------------------------------------------------------


def status_info(env: PodEnv) -> dict:
    reply = env.rt.Status(api_pb2.StatusRequest(verbose=True), timeout=10)
    return {key: json.loads(value) for key, value in reply.info.items()}


def test_status_verbose_info_tells_config_files_handlers_and_network(pod_env: PodEnv) -> None:
    info = status_info(pod_env)
    assert info["configFiles"] == {"applied": [str(pod_env.daemon.config_path)]}
    assert info["config"]["cripy"]["listen"] == str(pod_env.daemon.socket)
    assert list(info["runtimes"]) == ["runc"]
    runc = info["runtimes"]["runc"]
    assert runc["default"] and runc["runtimeFound"]
    # What the handler offers, or why not, as probed (runc 1.1.5 here lists rro and the user namespace; the node
    # check of id-mapped layers passes on this kernel).
    assert runc["features"]["recursive read-only mounts"] == "offered"
    assert runc["features"]["user namespaces"] == "offered"
    # crictl shows only object values, and prints the response's own status and runtime handlers under these names.
    assert all(isinstance(value, dict) for value in info.values())
    assert not {"status", "runtimeHandlers"} & set(info)
    network = info["network"]
    assert network["ready"] and network["confDir"] == str(pod_env.daemon.cni_dir)
    assert network["inUse"]["name"] == pod_env.network.name
    assert network["inUse"]["file"] == str(pod_env.daemon.cni_dir / "10-cripytest.conflist")
    assert "bridge" in network["inUse"]["plugins"]
    assert pod_env.rt.Status(api_pb2.StatusRequest(), timeout=10).info == {}  # only when asked


def test_status_info_follows_a_reload_and_ctl_info_prints_it(cripy_factory, tmp_path: Path) -> None:
    daemon = cripy_factory()
    dropins = daemon.workdir / "cripy.d"
    dropins.mkdir(exist_ok=True)
    (dropins / "50-quiet.toml").write_text('[cripy]\nlog_level = "warning"\n')
    os.kill(daemon.pid, signal.SIGHUP)  # re-read the configuration

    def info() -> dict:
        reply = daemon.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=10)
        return {key: json.loads(value) for key, value in reply.info.items()}

    deadline = time.monotonic() + 20
    while info()["config"]["cripy"]["log_level"] != "warning":
        assert time.monotonic() < deadline, "the reload did not show in Status"
        time.sleep(0.05)
    assert info()["configFiles"]["applied"] == [str(daemon.config_path), str(dropins / "50-quiet.toml")]
    assert info()["network"]["inUse"] is None and not info()["network"]["ready"]  # no CNI config in this daemon

    result = subprocess.run([sys.executable, "-m", "cripy.cli", "ctl", "-r", f"unix://{daemon.socket}", "info"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["configFiles"]["applied"][-1].endswith("50-quiet.toml")
    assert printed["network"]["confDir"] == str(daemon.cni_dir)
    assert printed["status"]["conditions"] and printed["runtimeHandlers"]


# ---- the whole surface ------------------------------------------------------------------------------------------


def test_every_cri_call_answers(pod_env: PodEnv) -> None:
    """Each RuntimeService and ImageService method of the CRI v1 API is served: an empty request gets an answer or
    a clear error, never gRPC's "method not found". Only CheckpointContainer is Unimplemented, saying why."""
    channel = pod_env.daemon.channel
    for service_name in ("RuntimeService", "ImageService"):
        service = api_pb2.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            request = getattr(api_pb2, method.input_type.name)()
            response = getattr(api_pb2, method.output_type.name)
            path = f"/{service.full_name}/{method.name}"
            if method.server_streaming:
                call = channel.unary_stream(path, request_serializer=type(request).SerializeToString,
                                            response_deserializer=response.FromString)
                stream = call(request, timeout=1)
                with pytest.raises(grpc.RpcError) as raised:
                    next(iter(stream))  # an event stream stays open: its deadline ends it
                code = raised.value.code()
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (method.name, code, raised.value.details())
                continue
            call = channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                       response_deserializer=response.FromString)
            try:
                call(request, timeout=30)
                continue
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
            if method.name == "CheckpointContainer":
                assert code == grpc.StatusCode.UNIMPLEMENTED and "CRIU" in details and "vdso" in details
                continue
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.FAILED_PRECONDITION), (method.name, code, details)
            assert details, method.name
