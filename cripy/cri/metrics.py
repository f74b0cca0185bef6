"""CRI metrics: cAdvisor's container_* metrics, as a kubelet with PodAndContainerStatsFromCRI serves them on
/metrics/cadvisor, computed from the readings the stats calls take (containers/usage.py, linux/procfs.py).

Every metric carries the labels `id`, `name` and `image` first (a container: its id, its name as cripy reserves it
"<name>_<pod>_<namespace>_<uid>_<attempt>", its image as requested; a pod: its id, its reserved name, no image),
then its own (`interface`, `cpu`, `device`, ...). The kubelet adds `namespace`, `pod` and `container` itself, so
they are not repeated here. Pod-level metrics are the pod's network interfaces; everything else is per container.

The CRI carries values as unsigned integers, so seconds are whole seconds (as CRI-O and containerd send them), and
"no limit" is 0 (as cAdvisor reports it). A value read live has timestamp 0; a cached one (the writable layer's
usage) the time it was measured, as the CRI asks. Descriptors are fixed when the daemon starts: the pressure and
hugetlb metrics are described only on nodes that account them.
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass

from cripy.containers.usage import ContainerUsage
from cripy.linux import cgroupstats
from cripy.linux.procfs import InterfaceCounters

BASE_LABELS = ("id", "name", "image")
NS_PER_S = 1_000_000_000


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...] = ()  # after BASE_LABELS

    @property
    def label_keys(self) -> tuple[str, ...]:
        return BASE_LABELS + self.labels


@dataclass(frozen=True)
class Sample:
    name: str
    value: int
    labels: tuple[str, ...]  # values for the descriptor's label_keys, in order
    timestamp_ns: int = 0  # 0: read live


C, G = Kind.COUNTER, Kind.GAUGE
_NET = ("interface",)
_DEVICE = ("device",)

_ALWAYS = [
    Descriptor("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", C, ("cpu",)),
    Descriptor("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", C),
    Descriptor("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", C),
    Descriptor("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", C),
    Descriptor("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", C),
    Descriptor("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.",
               C),
    Descriptor("container_memory_cache", "Number of bytes of page cache memory.", G),
    Descriptor("container_memory_rss", "Size of RSS in bytes.", G),
    Descriptor("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", G),
    Descriptor("container_memory_mapped_file", "Size of memory mapped files in bytes.", G),
    Descriptor("container_memory_swap", "Container swap usage in bytes.", G),
    Descriptor("container_memory_failcnt", "Number of memory usage hits limits.", C),
    Descriptor("container_memory_usage_bytes",
               "Current memory usage in bytes, including all memory regardless of when it was accessed.", G),
    Descriptor("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", G),
    Descriptor("container_memory_working_set_bytes", "Current working set in bytes.", G),
    Descriptor("container_memory_failures_total", "Cumulative count of memory allocation failures.", C,
               ("failure_type", "scope")),
    Descriptor("container_oom_events_total", "Count of out of memory events observed for the container.", C),
    Descriptor("container_network_receive_bytes_total", "Cumulative count of bytes received.", C, _NET),
    Descriptor("container_network_receive_packets_total", "Cumulative count of packets received.", C, _NET),
    Descriptor("container_network_receive_packets_dropped_total",
               "Cumulative count of packets dropped while receiving.", C, _NET),
    Descriptor("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.",
               C, _NET),
    Descriptor("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", C, _NET),
    Descriptor("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", C, _NET),
    Descriptor("container_network_transmit_packets_dropped_total",
               "Cumulative count of packets dropped while transmitting.", C, _NET),
    Descriptor("container_network_transmit_errors_total",
               "Cumulative count of errors encountered while transmitting.", C, _NET),
    Descriptor("container_fs_usage_bytes", "Number of bytes the container's writable layer uses.", G),
    Descriptor("container_fs_limit_bytes", "Number of bytes the filesystem of the writable layer can hold.", G),
    Descriptor("container_fs_inodes_total", "Number of inodes of the filesystem of the writable layer.", G),
    Descriptor("container_fs_inodes_free", "Number of free inodes of the filesystem of the writable layer.", G),
    Descriptor("container_fs_reads_bytes_total", "Cumulative count of bytes read.", C, _DEVICE),
    Descriptor("container_fs_reads_total", "Cumulative count of reads completed.", C, _DEVICE),
    Descriptor("container_fs_writes_bytes_total", "Cumulative count of bytes written.", C, _DEVICE),
    Descriptor("container_fs_writes_total", "Cumulative count of writes completed.", C, _DEVICE),
    Descriptor("container_blkio_device_usage_total", "Block I/O device usage in bytes.", C,
               ("device", "major", "minor", "operation")),
    Descriptor("container_processes", "Number of processes running inside the container.", G),
    Descriptor("container_threads", "Number of threads running inside the container.", G),
    Descriptor("container_threads_max",
               "Maximum number of threads allowed inside the container, infinity if value is zero.", G),
    Descriptor("container_file_descriptors", "Number of open file descriptors for the container.", G),
    Descriptor("container_sockets", "Number of open sockets for the container.", G),
    Descriptor("container_ulimits_soft",
               "Soft ulimit values of the container's first process (limits without a bound are left out).", G,
               ("ulimit",)),
    Descriptor("container_spec_cpu_period", "CPU period of the container.", G),
    Descriptor("container_spec_cpu_quota", "CPU quota of the container (only when one is set).", G),
    Descriptor("container_spec_cpu_shares", "CPU share of the container.", G),
    Descriptor("container_spec_memory_limit_bytes", "Memory limit for the container (0: none).", G),
    Descriptor("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container (0: none).",
               G),
    Descriptor("container_spec_memory_swap_limit_bytes", "Memory plus swap limit for the container (0: none).", G),
    Descriptor("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", G),
    Descriptor("container_last_seen", "Last time a container was seen by the exporter.", G),
]

_PRESSURE = [
    Descriptor(f"container_pressure_{resource}_{what}_seconds_total", f"Total time duration {text} {label}.", C)
    for resource, label in (("cpu", "on CPU"), ("memory", "on memory"), ("io", "on I/O"))
    for what, text in (("waiting", "tasks in the container have waited"),
                       ("stalled", "all tasks in the container have been stalled"))
]

_HUGETLB = [
    Descriptor("container_hugetlb_usage_bytes", "Current hugepage usage in bytes.", G, ("pagesize",)),
    Descriptor("container_hugetlb_max_usage_bytes", "Maximum hugepage usage recorded in bytes.", G, ("pagesize",)),
]


@functools.cache
def descriptors() -> tuple[Descriptor, ...]:
    """The metrics this node can report, fixed for the daemon's life (the CRI asks for a static list)."""
    found = list(_ALWAYS)
    if cgroupstats.has_pressure():
        found += _PRESSURE
    if cgroupstats.hugepage_sizes():
        found += _HUGETLB
    return tuple(found)


@functools.cache
def _kinds() -> dict[str, Kind]:
    return {d.name: d.kind for d in (*_ALWAYS, *_PRESSURE, *_HUGETLB)}


def kind_of(name: str) -> Kind:
    return _kinds()[name]


# ---------------------------------------------------------------------------------------------------- samples


class _Samples:
    """Samples of one object under construction: its base labels, then each metric's own."""

    def __init__(self, base: tuple[str, str, str]) -> None:
        self.base = base
        self.items: list[Sample] = []

    def add(self, name: str, value: int | None, *labels: str, timestamp_ns: int = 0) -> None:
        """A value of None is one the node does not offer: no sample rather than a made-up one."""
        if value is not None:
            self.items.append(Sample(name, max(0, int(value)), (*self.base, *labels), timestamp_ns))


def pod_samples(base: tuple[str, str, str], interfaces: dict[str, InterfaceCounters]) -> list[Sample]:
    """The pod's own metrics: its network interfaces' counters (containers share the pod's network namespace)."""
    samples = _Samples(base)
    for name, c in sorted(interfaces.items()):
        for metric, value in (
            ("receive_bytes", c.rx_bytes), ("receive_packets", c.rx_packets),
            ("receive_packets_dropped", c.rx_dropped), ("receive_errors", c.rx_errors),
            ("transmit_bytes", c.tx_bytes), ("transmit_packets", c.tx_packets),
            ("transmit_packets_dropped", c.tx_dropped), ("transmit_errors", c.tx_errors),
        ):
            samples.add(f"container_network_{metric}_total", value, name)
    return samples.items


def container_samples(base: tuple[str, str, str], usage: ContainerUsage, *, started_at_ns: int,
                      now_ns: int | None = None) -> list[Sample]:
    """A running container's metrics from one reading."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    samples = _Samples(base)
    samples.add("container_start_time_seconds", started_at_ns // NS_PER_S)
    samples.add("container_last_seen", now_ns // NS_PER_S)
    layer = usage.writable_layer
    samples.add("container_fs_usage_bytes", layer.used_bytes, timestamp_ns=layer.collected_at_ns)
    if usage.filesystem is not None:
        samples.add("container_fs_limit_bytes", usage.filesystem.capacity_bytes)
        samples.add("container_fs_inodes_total", usage.filesystem.inodes_total)
        samples.add("container_fs_inodes_free", usage.filesystem.inodes_free)
    for ulimit, soft in sorted(usage.soft_limits.items()):
        samples.add("container_ulimits_soft", soft, ulimit)
    if usage.open_files is not None:
        samples.add("container_file_descriptors", usage.open_files.descriptors)
        samples.add("container_sockets", usage.open_files.sockets)
    reading = usage.cgroup
    if reading is not None:
        _cpu(samples, reading.cpu)
        _memory(samples, reading.memory)
        _processes_and_spec(samples, reading)
        _block_io(samples, reading.block_io)
        for resource, pressure in sorted(reading.pressure.items()):
            samples.add(f"container_pressure_{resource}_waiting_seconds_total", pressure.some.total_us // 1_000_000)
            samples.add(f"container_pressure_{resource}_stalled_seconds_total", pressure.full.total_us // 1_000_000)
        for size, hugetlb in sorted(reading.hugetlb.items()):
            samples.add("container_hugetlb_usage_bytes", hugetlb.usage, size)
            samples.add("container_hugetlb_max_usage_bytes", hugetlb.max_usage, size)
    return samples.items


def _seconds(ns: int | None) -> int | None:
    return None if ns is None else ns // NS_PER_S


def _cpu(samples: _Samples, cpu: cgroupstats.CpuUsage) -> None:
    samples.add("container_cpu_usage_seconds_total", _seconds(cpu.total_ns), "total")
    samples.add("container_cpu_user_seconds_total", _seconds(cpu.user_ns))
    samples.add("container_cpu_system_seconds_total", _seconds(cpu.system_ns))
    samples.add("container_cpu_cfs_periods_total", cpu.periods)
    samples.add("container_cpu_cfs_throttled_periods_total", cpu.throttled_periods)
    samples.add("container_cpu_cfs_throttled_seconds_total", _seconds(cpu.throttled_ns))


def _memory(samples: _Samples, memory: cgroupstats.MemoryStats) -> None:
    samples.add("container_memory_cache", memory.cache)
    samples.add("container_memory_rss", memory.rss)
    samples.add("container_memory_kernel_usage", memory.kernel)
    samples.add("container_memory_mapped_file", memory.mapped_file)
    samples.add("container_memory_swap", memory.swap)
    samples.add("container_memory_failcnt", memory.failcnt)
    samples.add("container_memory_usage_bytes", memory.usage)
    samples.add("container_memory_max_usage_bytes", memory.max_usage)
    samples.add("container_memory_working_set_bytes", memory.working_set)
    samples.add("container_memory_failures_total", memory.own_page_faults, "pgfault", "container")
    samples.add("container_memory_failures_total", memory.own_major_page_faults, "pgmajfault", "container")
    samples.add("container_memory_failures_total", memory.page_faults, "pgfault", "hierarchy")
    samples.add("container_memory_failures_total", memory.major_page_faults, "pgmajfault", "hierarchy")
    samples.add("container_oom_events_total", memory.oom_kills)


def _processes_and_spec(samples: _Samples, reading: cgroupstats.CgroupReading) -> None:
    limits = reading.limits
    samples.add("container_processes", len(reading.pids))
    samples.add("container_threads", reading.threads)
    samples.add("container_threads_max", limits.pids or 0)
    samples.add("container_spec_cpu_period", limits.cpu_period_us)
    samples.add("container_spec_cpu_quota", limits.cpu_quota_us)
    samples.add("container_spec_cpu_shares", limits.cpu_shares)
    samples.add("container_spec_memory_limit_bytes", limits.memory_bytes or 0)
    samples.add("container_spec_memory_reservation_limit_bytes", limits.memory_reservation_bytes or 0)
    samples.add("container_spec_memory_swap_limit_bytes", limits.memory_swap_bytes or 0)


def _block_io(samples: _Samples, devices: list[cgroupstats.BlockDeviceIO]) -> None:
    for io in devices:
        device = io.device or f"{io.major}:{io.minor}"
        samples.add("container_fs_reads_bytes_total", io.read_bytes, device)
        samples.add("container_fs_reads_total", io.reads, device)
        samples.add("container_fs_writes_bytes_total", io.write_bytes, device)
        samples.add("container_fs_writes_total", io.writes, device)
        major, minor = str(io.major), str(io.minor)
        samples.add("container_blkio_device_usage_total", io.read_bytes, device, major, minor, "Read")
        samples.add("container_blkio_device_usage_total", io.write_bytes, device, major, minor, "Write")
