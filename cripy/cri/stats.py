"""CRI stats calls: ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats (from cgroups)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2

from cripy.containers.container import STATE_CREATING, STATE_RUNNING, Container
from cripy.containers.manager import ContainerManager, ContainerStats
from cripy.cri.errors import grpc_method
from cripy.cri.filters import labels_match
from cripy.linux.namespaces import in_netns
from cripy.pods.manager import PodManager
from cripy.pods.model import STATE_READY, PodSandbox

# Reading a pod's interface counters enters its netns: only in threads reserved for that.
_NETNS_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cripy-netns-stats")


class StatsServicer:
    """Mixed into RuntimeService; `self.pods` and `self.containers` are the managers."""

    pods: PodManager
    containers: ContainerManager

    @grpc_method
    async def ContainerStats(self, request: api_pb2.ContainerStatsRequest, context: grpc.aio.ServicerContext) -> api_pb2.ContainerStatsResponse:
        container = await self.containers.get(request.container_id)
        stats = await self.containers.stats(container)
        return api_pb2.ContainerStatsResponse(stats=_container_stats_pb(container, stats))

    @grpc_method
    async def ListContainerStats(self, request: api_pb2.ListContainerStatsRequest, context: grpc.aio.ServicerContext) -> api_pb2.ListContainerStatsResponse:
        wanted = request.filter
        selected = [
            c for c in await self.containers.list()
            if c.state != STATE_CREATING
            and (not wanted.id or c.id.startswith(wanted.id))
            and (not wanted.pod_sandbox_id or c.pod_id.startswith(wanted.pod_sandbox_id))
            and labels_match(c.request.labels, wanted.label_selector)
        ]
        stats = await asyncio.gather(*(self.containers.stats(c) for c in selected))
        return api_pb2.ListContainerStatsResponse(
            stats=[_container_stats_pb(c, s) for c, s in zip(selected, stats)]
        )

    @grpc_method
    async def PodSandboxStats(self, request: api_pb2.PodSandboxStatsRequest, context: grpc.aio.ServicerContext) -> api_pb2.PodSandboxStatsResponse:
        pod = await self.pods.get(request.pod_sandbox_id)
        return api_pb2.PodSandboxStatsResponse(stats=await self._pod_stats(pod, await self.containers.list(pod.id)))

    @grpc_method
    async def ListPodSandboxStats(self, request: api_pb2.ListPodSandboxStatsRequest, context: grpc.aio.ServicerContext) -> api_pb2.ListPodSandboxStatsResponse:
        wanted = request.filter
        pods = [
            p for p in await self.pods.list()
            if p.state == STATE_READY
            and (not wanted.id or p.id.startswith(wanted.id))
            and labels_match(p.request.labels, wanted.label_selector)
        ]
        # One pass over the containers, not one per pod; the pods are read side by side.
        by_pod: dict[str, list[Container]] = {p.id: [] for p in pods}
        for container in await self.containers.list():
            by_pod.get(container.pod_id, []).append(container)
        stats = await asyncio.gather(*(self._pod_stats(p, by_pod[p.id]) for p in pods))
        return api_pb2.ListPodSandboxStatsResponse(stats=stats)

    async def _pod_stats(self, pod: PodSandbox, containers: list[Container]) -> api_pb2.PodSandboxStats:
        containers = [c for c in containers if c.state != STATE_CREATING]
        stats = await asyncio.gather(*(self.containers.stats(c) for c in containers))
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
        running = [s for c, s in zip(containers, stats) if c.state == STATE_RUNNING]
        linux.cpu.timestamp = now
        linux.cpu.usage_core_nano_seconds.value = sum(s.cpu_usage_ns for s in running)
        linux.memory.timestamp = now
        linux.memory.working_set_bytes.value = sum(s.memory_working_set for s in running)
        linux.memory.usage_bytes.value = sum(s.memory_usage for s in running)
        linux.memory.rss_bytes.value = sum(s.memory_rss for s in running)
        linux.containers.extend(_container_stats_pb(c, s) for c, s in zip(containers, stats))
        if pod.netns is not None and pod.state == STATE_READY:
            counters = await asyncio.get_running_loop().run_in_executor(_NETNS_READERS, _read_net_dev, pod.netns)
            linux.network.timestamp = now
            for name, (rx_bytes, rx_errors, tx_bytes, tx_errors) in counters.items():
                usage = api_pb2.NetworkInterfaceUsage(name=name)
                usage.rx_bytes.value, usage.rx_errors.value = rx_bytes, rx_errors
                usage.tx_bytes.value, usage.tx_errors.value = tx_bytes, tx_errors
                if name == "eth0":
                    linux.network.default_interface.CopyFrom(usage)
                else:
                    linux.network.interfaces.append(usage)
        return result


def _container_stats_pb(container: Container, stats: ContainerStats) -> api_pb2.ContainerStats:
    message = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=container.id,
            metadata=api_pb2.ContainerMetadata(name=container.request.name, attempt=container.request.attempt),
            labels=container.request.labels,
            annotations=container.request.annotations,
        )
    )
    message.cpu.timestamp = stats.timestamp_ns
    message.cpu.usage_core_nano_seconds.value = stats.cpu_usage_ns
    message.memory.timestamp = stats.timestamp_ns
    message.memory.working_set_bytes.value = stats.memory_working_set
    message.memory.usage_bytes.value = stats.memory_usage
    message.memory.rss_bytes.value = stats.memory_rss
    message.memory.page_faults.value = stats.page_faults
    message.memory.major_page_faults.value = stats.major_page_faults
    message.writable_layer.timestamp = stats.timestamp_ns
    message.writable_layer.used_bytes.value = stats.writable_bytes
    message.writable_layer.inodes_used.value = stats.writable_inodes
    return message


def parse_net_dev(text: str) -> dict[str, tuple[int, int, int, int]]:
    """/proc/net/dev -> interface: (rx bytes, rx errors, tx bytes, tx errors); the loopback is left out."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 11:
            continue
        counters[name.strip()] = (int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10]))
    return counters


def _read_net_dev(netns: Path) -> dict[str, tuple[int, int, int, int]]:
    with in_netns(netns):
        # /proc/self/net follows the reading thread's network namespace.
        with open("/proc/thread-self/net/dev") as f:
            return parse_net_dev(f.read())
