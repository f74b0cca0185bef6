"""CRI stats and metrics calls: ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
ListMetricDescriptors and ListPodSandboxMetrics. All of them answer from one kind of reading per container
(ContainerManager.usage: cgroup, processes, writable layer) and one per pod (its interfaces' counters); the
metrics' names and labels are cri/metrics.py's."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from cri_api.v1 import api_pb2

from cripy.containers.container import STATE_CREATING, STATE_RUNNING, Container
from cripy.containers.manager import ContainerManager
from cripy.containers.usage import ContainerUsage
from cripy.cri import metrics
from cripy.cri.errors import grpc_method
from cripy.cri.filters import labels_match
from cripy.linux import procfs
from cripy.linux.cgroupstats import Pressure
from cripy.pods.manager import PodManager
from cripy.pods.model import STATE_READY, PodSandbox
from cripy.rpc.server import Context

log = logging.getLogger(__name__)

# Reading a pod's interface counters enters its netns: only in threads reserved for that.
_NETNS_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cripy-netns-stats")
_METRIC_TYPES = {metrics.Kind.COUNTER: api_pb2.COUNTER, metrics.Kind.GAUGE: api_pb2.GAUGE}


class StatsServicer:
    """Mixed into RuntimeService; `self.pods` and `self.containers` are the managers."""

    pods: PodManager
    containers: ContainerManager

    @grpc_method
    async def ContainerStats(self, request: api_pb2.ContainerStatsRequest, context: Context) -> api_pb2.ContainerStatsResponse:
        container = await self.containers.get(request.container_id)
        (usage,) = await self.containers.usage([container])
        return api_pb2.ContainerStatsResponse(stats=_container_stats_pb(container, usage))

    @grpc_method
    async def ListContainerStats(self, request: api_pb2.ListContainerStatsRequest, context: Context) -> api_pb2.ListContainerStatsResponse:
        wanted = request.filter
        selected = [
            c for c in await self.containers.list()
            if c.state != STATE_CREATING
            and (not wanted.id or c.id.startswith(wanted.id))
            and (not wanted.pod_sandbox_id or c.pod_id.startswith(wanted.pod_sandbox_id))
            and labels_match(c.request.labels, wanted.label_selector)
        ]
        usages = await self.containers.usage(selected)
        return api_pb2.ListContainerStatsResponse(
            stats=[_container_stats_pb(c, u) for c, u in zip(selected, usages)]
        )

    @grpc_method
    async def PodSandboxStats(self, request: api_pb2.PodSandboxStatsRequest, context: Context) -> api_pb2.PodSandboxStatsResponse:
        pod = await self.pods.get(request.pod_sandbox_id)
        (stats,) = await self._pods_stats([pod], {pod.id: await self.containers.list(pod.id)})
        return api_pb2.PodSandboxStatsResponse(stats=stats)

    @grpc_method
    async def ListPodSandboxStats(self, request: api_pb2.ListPodSandboxStatsRequest, context: Context) -> api_pb2.ListPodSandboxStatsResponse:
        wanted = request.filter
        pods = [
            p for p in await self.pods.list()
            if p.state == STATE_READY
            and (not wanted.id or p.id.startswith(wanted.id))
            and labels_match(p.request.labels, wanted.label_selector)
        ]
        by_pod = await self._containers_by_pod(pods)
        return api_pb2.ListPodSandboxStatsResponse(stats=await self._pods_stats(pods, by_pod))

    @grpc_method
    async def ListMetricDescriptors(self, request: api_pb2.ListMetricDescriptorsRequest, context: Context) -> api_pb2.ListMetricDescriptorsResponse:
        return api_pb2.ListMetricDescriptorsResponse(descriptors=[
            api_pb2.MetricDescriptor(name=d.name, help=d.help, label_keys=d.label_keys) for d in metrics.descriptors()
        ])

    @grpc_method
    async def ListPodSandboxMetrics(self, request: api_pb2.ListPodSandboxMetricsRequest, context: Context) -> api_pb2.ListPodSandboxMetricsResponse:
        pods = [p for p in await self.pods.list() if p.state == STATE_READY]
        by_pod = await self._containers_by_pod(pods)
        results = await asyncio.gather(*(self._pod_metrics(p, by_pod[p.id]) for p in pods))
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=results)

    async def _containers_by_pod(self, pods: list[PodSandbox]) -> dict[str, list[Container]]:
        """One pass over the containers, not one per pod."""
        by_pod: dict[str, list[Container]] = {p.id: [] for p in pods}
        for container in await self.containers.list():
            by_pod.get(container.pod_id, []).append(container)
        return by_pod

    async def _interfaces(self, pod: PodSandbox) -> dict[str, procfs.InterfaceCounters]:
        if pod.netns is None or pod.state != STATE_READY:
            return {}
        try:
            return await asyncio.get_running_loop().run_in_executor(_NETNS_READERS, procfs.read_net_dev, pod.netns)
        except OSError as e:
            # Most likely stopped while being read: its other readings still answer (a list must not fail).
            log.warning("pod %s: cannot read its interfaces' counters: %s", pod.id, e)
            return {}

    async def _pod_metrics(self, pod: PodSandbox, containers: list[Container]) -> api_pb2.PodSandboxMetrics:
        running = [c for c in containers if c.state == STATE_RUNNING]
        usages, interfaces = await asyncio.gather(
            self.containers.usage(running, full=True), self._interfaces(pod)
        )
        now = time.time_ns()
        return api_pb2.PodSandboxMetrics(
            pod_sandbox_id=pod.id,
            metrics=_metrics_pb(metrics.pod_samples((pod.id, pod.name, ""), interfaces)),
            container_metrics=[
                api_pb2.ContainerMetrics(container_id=c.id, metrics=_metrics_pb(metrics.container_samples(
                    (c.id, c.name, c.image_name), usage, started_at_ns=c.started_at, now_ns=now)))
                for c, usage in zip(running, usages)
            ],
        )

    async def _pods_stats(self, pods: list[PodSandbox],
                          by_pod: dict[str, list[Container]]) -> list[api_pb2.PodSandboxStats]:
        """Every pod's readings in one worker-thread trip for the containers and one for the interfaces (the
        kubelet lists them all every few seconds): a trip per container or pod cost more than its readings."""
        listed = {p.id: [c for c in by_pod[p.id] if c.state != STATE_CREATING] for p in pods}
        everything = [c for containers in listed.values() for c in containers]
        usages, interfaces = await asyncio.gather(self.containers.usage(everything),
                                                  self._interfaces_of(pods, listed))
        by_container = {c.id: u for c, u in zip(everything, usages)}
        return [_pod_stats_pb(p, listed[p.id], [by_container[c.id] for c in listed[p.id]], interfaces[p.id])
                for p in pods]

    async def _interfaces_of(self, pods: list[PodSandbox],
                             listed: dict[str, list[Container]]) -> dict[str, dict[str, procfs.InterfaceCounters]]:
        """Each pod's interface counters: through a process of the pod where there is one (no setns), else by
        entering its network namespace."""
        through = {p.id: (pid, p.netns) for p in pods if p.netns is not None and p.state == STATE_READY
                   and (pid := _a_process_of(p, listed[p.id]))}

        def read_through() -> dict[str, dict[str, procfs.InterfaceCounters] | None]:
            return {pod_id: procfs.read_net_dev_through(pid, netns) for pod_id, (pid, netns) in through.items()}

        found = await asyncio.to_thread(read_through) if through else {}
        missing = [p for p in pods if found.get(p.id) is None]
        entered = await asyncio.gather(*(self._interfaces(p) for p in missing))
        return {**{k: v for k, v in found.items() if v is not None}, **dict(zip((p.id for p in missing), entered))}


def _a_process_of(pod: PodSandbox, containers: list[Container]) -> int:
    if pod.infra_pid:
        return pod.infra_pid
    return next((c.pid for c in containers if c.state == STATE_RUNNING and c.pid > 0), 0)


def _pod_stats_pb(pod: PodSandbox, containers: list[Container], usages: list[ContainerUsage],
                  interfaces: dict[str, procfs.InterfaceCounters]) -> api_pb2.PodSandboxStats:
    now = time.time_ns()
    result = api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=pod.id,
            metadata=api_pb2.PodSandboxMetadata(name=pod.request.name, uid=pod.request.uid,
                                                namespace=pod.request.namespace, attempt=pod.request.attempt),
            labels=pod.request.labels,
            annotations=pod.request.annotations,
        )
    )
    linux = result.linux
    readings = [u.cgroup for u in usages if u.cgroup is not None]
    linux.cpu.timestamp = now
    linux.cpu.usage_core_nano_seconds.value = sum(r.cpu.total_ns for r in readings)
    linux.memory.timestamp = now
    linux.memory.working_set_bytes.value = sum(r.memory.working_set for r in readings)
    linux.memory.usage_bytes.value = sum(r.memory.usage for r in readings)
    linux.memory.rss_bytes.value = sum(r.memory.rss for r in readings)
    linux.memory.page_faults.value = sum(r.memory.page_faults for r in readings)
    linux.memory.major_page_faults.value = sum(r.memory.major_page_faults for r in readings)
    linux.process.timestamp = now
    linux.process.process_count.value = sum(len(r.pids) for r in readings)
    linux.containers.extend(_container_stats_pb(c, u) for c, u in zip(containers, usages))
    if pod.netns is not None and pod.state == STATE_READY:
        linux.network.timestamp = now
        for name, counters in interfaces.items():
            usage = api_pb2.NetworkInterfaceUsage(name=name)
            usage.rx_bytes.value, usage.rx_errors.value = counters.rx_bytes, counters.rx_errors
            usage.tx_bytes.value, usage.tx_errors.value = counters.tx_bytes, counters.tx_errors
            if name == "eth0":
                linux.network.default_interface.CopyFrom(usage)
            else:
                linux.network.interfaces.append(usage)
    return result


def _metrics_pb(samples: list[metrics.Sample]) -> list[api_pb2.Metric]:
    return [
        api_pb2.Metric(name=s.name, timestamp=s.timestamp_ns, metric_type=_METRIC_TYPES[metrics.kind_of(s.name)],
                       label_values=s.labels, value=api_pb2.UInt64Value(value=s.value))
        for s in samples
    ]


def _container_stats_pb(container: Container, usage: ContainerUsage) -> api_pb2.ContainerStats:
    message = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=container.id,
            metadata=api_pb2.ContainerMetadata(name=container.request.name, attempt=container.request.attempt),
            labels=container.request.labels,
            annotations=container.request.annotations,
        )
    )
    now = usage.timestamp_ns
    message.cpu.timestamp = message.memory.timestamp = now
    reading = usage.cgroup
    message.cpu.usage_core_nano_seconds.value = reading.cpu.total_ns if reading else 0
    if reading is not None:
        memory = reading.memory
        message.memory.working_set_bytes.value = memory.working_set
        message.memory.usage_bytes.value = memory.usage
        message.memory.rss_bytes.value = memory.rss
        message.memory.page_faults.value = memory.page_faults
        message.memory.major_page_faults.value = memory.major_page_faults
        if reading.limits.memory_bytes is not None:
            message.memory.available_bytes.value = max(0, reading.limits.memory_bytes - memory.working_set)
        if memory.swap is not None:
            message.swap.timestamp = now
            message.swap.swap_usage_bytes.value = memory.swap
            if reading.limits.memory_swap_bytes is not None and reading.limits.memory_bytes is not None:
                swap_limit = reading.limits.memory_swap_bytes - reading.limits.memory_bytes
                message.swap.swap_available_bytes.value = max(0, swap_limit - memory.swap)
        for resource, target in (("cpu", message.cpu), ("memory", message.memory)):
            if resource in reading.pressure:
                _psi_pb(reading.pressure[resource], target.psi)
        if "io" in reading.pressure:
            message.io.timestamp = now
            _psi_pb(reading.pressure["io"], message.io.psi)
    else:
        for field in ("working_set_bytes", "usage_bytes", "rss_bytes", "page_faults", "major_page_faults"):
            getattr(message.memory, field).value = 0
    layer = usage.writable_layer
    message.writable_layer.timestamp = layer.collected_at_ns
    message.writable_layer.used_bytes.value = layer.used_bytes
    message.writable_layer.inodes_used.value = layer.inodes_used
    return message


def _psi_pb(pressure: Pressure, psi: api_pb2.PsiStats) -> None:
    for stall, data in ((pressure.some, psi.Some), (pressure.full, psi.Full)):
        data.Total = stall.total_us
        data.Avg10, data.Avg60, data.Avg300 = stall.avg10, stall.avg60, stall.avg300
