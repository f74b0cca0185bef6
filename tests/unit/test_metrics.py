"""CRI metrics as pure functions over readings (cri/metrics.py): names, types, labels and values the kubelet
turns into /metrics/cadvisor, and the descriptor list critest checks."""

from __future__ import annotations

import pytest

from cripy.containers.usage import ContainerUsage, FilesystemInfo, WritableLayerUsage
from cripy.cri import metrics
from cripy.linux import cgroupstats as cs
from cripy.linux.procfs import InterfaceCounters, OpenFiles

BASE = ("c0ffee", "app_web-Frontend-7d9_default_uid1_0", "registry.k8s.io/pause:3.10")
NOW_NS = 1_700_000_123_456_789_000
LAYER_AT_NS = 1_700_000_120_000_000_000

# The cAdvisor metrics a kubelet with PodAndContainerStatsFromCRI expects (critest's list, less the ones only some
# nodes account: pressure and hugetlb are checked below).
CADVISOR_NAMES = {
    "container_blkio_device_usage_total", "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total", "container_cpu_usage_seconds_total", "container_cpu_user_seconds_total",
    "container_file_descriptors", "container_fs_inodes_free", "container_fs_inodes_total",
    "container_fs_limit_bytes", "container_fs_reads_bytes_total", "container_fs_reads_total",
    "container_fs_usage_bytes", "container_fs_writes_bytes_total", "container_fs_writes_total",
    "container_last_seen", "container_memory_cache", "container_memory_failcnt", "container_memory_failures_total",
    "container_memory_kernel_usage", "container_memory_mapped_file", "container_memory_max_usage_bytes",
    "container_memory_rss", "container_memory_swap", "container_memory_usage_bytes",
    "container_memory_working_set_bytes", "container_network_receive_bytes_total",
    "container_network_receive_errors_total", "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total", "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total", "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total", "container_oom_events_total", "container_processes",
    "container_sockets", "container_spec_cpu_period", "container_spec_cpu_quota", "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes", "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes", "container_start_time_seconds", "container_threads",
    "container_threads_max", "container_ulimits_soft",
}


def reading(**overrides: object) -> cs.CgroupReading:
    values: dict[str, object] = dict(
        cpu=cs.CpuUsage(total_ns=7_900_000_000, user_ns=5_000_000_000, system_ns=2_900_000_000, periods=120,
                        throttled_periods=30, throttled_ns=1_500_000_000),
        memory=cs.MemoryStats(usage=50_000, working_set=40_000, rss=30_000, page_faults=900, major_page_faults=9,
                              oom_kills=1, cache=10_000, mapped_file=2_000, own_page_faults=800,
                              own_major_page_faults=8, swap=0, kernel=3_000, failcnt=2, max_usage=60_000),
        limits=cs.CgroupLimits(cpu_period_us=100000, cpu_quota_us=20000, cpu_shares=1024, memory_bytes=64 << 20,
                               memory_reservation_bytes=None, memory_swap_bytes=None, pids=None),
        pids=[101, 102],
        threads=3,
        block_io=[cs.BlockDeviceIO(254, 0, read_bytes=4096, write_bytes=512, reads=1, writes=2, device="/dev/vda")],
    )
    values.update(overrides)
    return cs.CgroupReading(**values)  # type: ignore[arg-type]


def usage(cgroup: cs.CgroupReading | None = None, **overrides: object) -> ContainerUsage:
    values: dict[str, object] = dict(
        container_id=BASE[0], timestamp_ns=NOW_NS, cgroup=cgroup if cgroup is not None else reading(),
        open_files=OpenFiles(descriptors=12, sockets=3),
        soft_limits={"max_open_files": 1048576, "max_cpu_time": None},
        writable_layer=WritableLayerUsage(used_bytes=409_600, inodes_used=14, collected_at_ns=LAYER_AT_NS),
        filesystem=FilesystemInfo(capacity_bytes=10 << 30, available_bytes=4 << 30, inodes_total=655360,
                                  inodes_free=600000),
    )
    values.update(overrides)
    return ContainerUsage(**values)  # type: ignore[arg-type]


def by_name(samples: list[metrics.Sample]) -> dict[str, list[metrics.Sample]]:
    out: dict[str, list[metrics.Sample]] = {}
    for sample in samples:
        out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: list[metrics.Sample], name: str, *labels: str) -> int:
    matching = [s.value for s in samples if s.name == name and s.labels[len(BASE):] == labels]
    assert len(matching) == 1, f"{name}{labels}: {matching}"
    return matching[0]


def test_descriptors_cover_cadvisor_with_help_and_label_keys() -> None:
    descriptors = {d.name: d for d in metrics.descriptors()}
    assert CADVISOR_NAMES <= set(descriptors)
    for d in descriptors.values():
        assert d.help and d.label_keys[:3] == ("id", "name", "image")
        # the kubelet appends these itself; a second copy would make its descriptor invalid
        assert not {"namespace", "pod", "container"} & set(d.label_keys)
    assert descriptors["container_network_receive_bytes_total"].label_keys == ("id", "name", "image", "interface")
    assert descriptors["container_memory_failures_total"].labels == ("failure_type", "scope")
    assert metrics.kind_of("container_cpu_usage_seconds_total") is metrics.Kind.COUNTER
    assert metrics.kind_of("container_memory_working_set_bytes") is metrics.Kind.GAUGE


def test_every_sample_has_a_descriptor_and_as_many_label_values_as_keys() -> None:
    all_descriptors = {d.name: d for d in (*metrics._ALWAYS, *metrics._PRESSURE, *metrics._HUGETLB)}
    with_extras = reading(pressure={"cpu": cs.Pressure(cs.Stall(3_400_000), cs.Stall(1_200_000))},
                          hugetlb={"2MB": cs.HugetlbUsage(2 << 20, 4 << 20)})
    samples = metrics.container_samples(BASE, usage(with_extras), started_at_ns=NOW_NS - 10**12, now_ns=NOW_NS)
    samples += metrics.pod_samples(BASE, {"eth0": InterfaceCounters(1, 2, 3, 4, 5, 6, 7, 8)})
    for sample in samples:
        assert len(sample.labels) == len(all_descriptors[sample.name].label_keys), sample
        assert sample.value >= 0
    # A running container with network and cgroup readings has every metric critest asks for, but the optional
    # ones (none here: this reading has block I/O).
    assert CADVISOR_NAMES - {s.name for s in samples} == set()


def test_cpu_values_are_whole_seconds_and_usage_is_labelled_total() -> None:
    samples = metrics.container_samples(BASE, usage(), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_cpu_usage_seconds_total", "total") == 7
    assert value(samples, "container_cpu_user_seconds_total") == 5
    assert value(samples, "container_cpu_system_seconds_total") == 2
    assert value(samples, "container_cpu_cfs_periods_total") == 120
    assert value(samples, "container_cpu_cfs_throttled_periods_total") == 30
    assert value(samples, "container_cpu_cfs_throttled_seconds_total") == 1


def test_memory_values_and_failure_scopes() -> None:
    samples = metrics.container_samples(BASE, usage(), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_memory_working_set_bytes") == 40_000
    assert value(samples, "container_memory_usage_bytes") == 50_000
    assert value(samples, "container_memory_cache") == 10_000
    assert value(samples, "container_memory_swap") == 0
    assert value(samples, "container_memory_failures_total", "pgfault", "container") == 800
    assert value(samples, "container_memory_failures_total", "pgmajfault", "hierarchy") == 9
    assert value(samples, "container_oom_events_total") == 1


def test_limits_as_cadvisor_reports_them() -> None:
    samples = metrics.container_samples(BASE, usage(), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_spec_cpu_quota") == 20000
    assert value(samples, "container_spec_memory_limit_bytes") == 64 << 20
    assert value(samples, "container_spec_memory_swap_limit_bytes") == 0  # no limit
    assert value(samples, "container_threads_max") == 0  # no limit
    unlimited = reading(limits=cs.CgroupLimits(cpu_period_us=100000, cpu_shares=2))
    names = {s.name for s in metrics.container_samples(BASE, usage(unlimited), started_at_ns=0, now_ns=NOW_NS)}
    assert "container_spec_cpu_quota" not in names  # cAdvisor reports a quota only when there is one


def test_processes_files_and_ulimits() -> None:
    samples = metrics.container_samples(BASE, usage(), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_processes") == 2
    assert value(samples, "container_threads") == 3
    assert value(samples, "container_file_descriptors") == 12
    assert value(samples, "container_sockets") == 3
    assert value(samples, "container_ulimits_soft", "max_open_files") == 1048576
    assert not [s for s in samples if s.name == "container_ulimits_soft" and "max_cpu_time" in s.labels]


def test_filesystem_and_block_io() -> None:
    samples = metrics.container_samples(BASE, usage(), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_fs_usage_bytes") == 409_600
    assert value(samples, "container_fs_limit_bytes") == 10 << 30
    assert value(samples, "container_fs_inodes_free") == 600000
    assert value(samples, "container_fs_reads_bytes_total", "/dev/vda") == 4096
    assert value(samples, "container_fs_writes_total", "/dev/vda") == 2
    assert value(samples, "container_blkio_device_usage_total", "/dev/vda", "254", "0", "Write") == 512
    unnamed = reading(block_io=[cs.BlockDeviceIO(7, 3, read_bytes=1)])
    samples = metrics.container_samples(BASE, usage(unnamed), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_fs_reads_bytes_total", "7:3") == 1


def test_timestamps_zero_when_live_and_the_measurement_time_when_cached() -> None:
    samples = by_name(metrics.container_samples(BASE, usage(), started_at_ns=0, now_ns=NOW_NS))
    assert [s.timestamp_ns for s in samples["container_fs_usage_bytes"]] == [LAYER_AT_NS]
    assert {s.timestamp_ns for name, group in samples.items() if name != "container_fs_usage_bytes"
            for s in group} == {0}


def test_start_and_last_seen_in_seconds() -> None:
    samples = metrics.container_samples(BASE, usage(), started_at_ns=1_600_000_000_900_000_000, now_ns=NOW_NS)
    assert value(samples, "container_start_time_seconds") == 1_600_000_000
    assert value(samples, "container_last_seen") == NOW_NS // 10**9


def test_a_container_without_cgroup_reading_reports_only_what_was_read() -> None:
    """It exited between listing and reading: no made-up zeros for cpu or memory."""
    gone = ContainerUsage(BASE[0], NOW_NS, cgroup=None, open_files=None, soft_limits={},
                          writable_layer=WritableLayerUsage(0, 0, LAYER_AT_NS), filesystem=None)
    samples = metrics.container_samples(BASE, gone, started_at_ns=0, now_ns=NOW_NS)
    assert {s.name for s in samples} == {"container_start_time_seconds", "container_last_seen",
                                         "container_fs_usage_bytes"}


def test_pressure_in_whole_seconds() -> None:
    with_pressure = reading(pressure={"io": cs.Pressure(cs.Stall(3_400_000), cs.Stall(1_200_000))})
    samples = metrics.container_samples(BASE, usage(with_pressure), started_at_ns=0, now_ns=NOW_NS)
    assert value(samples, "container_pressure_io_waiting_seconds_total") == 3
    assert value(samples, "container_pressure_io_stalled_seconds_total") == 1


def test_pod_network_per_interface() -> None:
    samples = metrics.pod_samples(("p0d", "web_default_uid1_0", ""), {
        "eth0": InterfaceCounters(rx_bytes=1000, rx_packets=10, rx_errors=1, rx_dropped=2, tx_bytes=500,
                                  tx_packets=5, tx_errors=3, tx_dropped=4),
        "net1": InterfaceCounters(1, 1, 0, 0, 1, 1, 0, 0),
    })
    assert len(samples) == 16
    eth0 = {s.name: s.value for s in samples if s.labels == ("p0d", "web_default_uid1_0", "", "eth0")}
    assert eth0["container_network_receive_bytes_total"] == 1000
    assert eth0["container_network_receive_packets_dropped_total"] == 2
    assert eth0["container_network_transmit_errors_total"] == 3
    assert eth0["container_network_transmit_packets_dropped_total"] == 4
    assert metrics.pod_samples(("p0d", "n", ""), {}) == []


@pytest.mark.parametrize("name", sorted(CADVISOR_NAMES))
def test_each_cadvisor_name_is_described_once(name: str) -> None:
    assert [d.name for d in metrics.descriptors()].count(name) == 1
