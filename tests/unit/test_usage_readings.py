"""The readings behind the stats and metrics calls: parsers of cgroup usage and limit files (cgroupstats),
/proc/net/dev and /proc/<pid>/limits (procfs), with the kernel's formats as v1 hybrid and v2 nodes write them; and
the writable layer's cached usage (containers/usage.py)."""

from __future__ import annotations

import time

from cripy.containers.usage import WritableLayerCache
from cripy.linux import cgroupstats as cs
from cripy.linux import procfs
from cripy.linux.cgroups import parse_flat_keyed

# ---- memory ---------------------------------------------------------------------------------------------------------

MEMORY_STAT_V1 = """\
cache 100
rss 200
mapped_file 7
pgfault 11
pgmajfault 1
inactive_file 5
total_cache 4096
total_rss 8192
total_mapped_file 512
total_pgfault 77
total_pgmajfault 3
total_inactive_file 4000
"""


def test_memory_v1_uses_hierarchical_totals_and_own_faults() -> None:
    stats = cs.memory_stats_v1(10000, parse_flat_keyed(MEMORY_STAT_V1),
                               parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
                               failcnt=4, max_usage=20000, kernel=300, memsw_usage=10500)
    assert stats == cs.MemoryStats(
        usage=10000, working_set=6000, rss=8192, page_faults=77, major_page_faults=3, oom_kills=2, cache=4096,
        mapped_file=512, own_page_faults=11, own_major_page_faults=1, swap=500, kernel=300, failcnt=4,
        max_usage=20000,
    )


def test_memory_v1_without_swap_accounting_has_no_swap_and_working_set_floors_at_zero() -> None:
    stats = cs.memory_stats_v1(100, {"total_inactive_file": 4000}, {})
    assert stats.working_set == 0
    assert stats.swap is None and stats.failcnt is None and stats.kernel is None


def test_memory_v2() -> None:
    stat = parse_flat_keyed("anon 300\nfile 700\nfile_mapped 40\nkernel 90\ninactive_file 250\npgfault 9\n"
                            "pgmajfault 1\n")
    events = parse_flat_keyed("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    stats = cs.memory_stats_v2(1000, stat, events, peak=1500, swap=0)
    assert stats == cs.MemoryStats(
        usage=1000, working_set=750, rss=300, page_faults=9, major_page_faults=1, oom_kills=1, cache=700,
        mapped_file=40, own_page_faults=9, own_major_page_faults=1, swap=0, kernel=90, failcnt=4, max_usage=1500,
    )


def test_memory_v2_kernel_from_parts_on_older_kernels() -> None:
    stat = parse_flat_keyed("kernel_stack 10\npagetables 20\nslab 30\nsock 5\n")
    assert cs.memory_stats_v2(0, stat, {}).kernel == 65
    assert cs.memory_stats_v2(0, {}, {}).kernel is None


# ---- cpu ------------------------------------------------------------------------------------------------------------


def test_cpu_v1_prefers_nanosecond_user_and_system_over_ticks() -> None:
    throttling = parse_flat_keyed("nr_periods 50\nnr_throttled 7\nthrottled_time 3000000000\n")
    usage = cs.cpu_usage_v1(5_000_000_000, throttling, user_ns=4_000_000_000, system_ns=1_000_000_000,
                            stat_ticks={"user": 1, "system": 1})
    assert usage == cs.CpuUsage(total_ns=5_000_000_000, user_ns=4_000_000_000, system_ns=1_000_000_000, periods=50,
                                throttled_periods=7, throttled_ns=3_000_000_000)
    from_ticks = cs.cpu_usage_v1(1, {}, stat_ticks={"user": 250, "system": 3})
    assert (from_ticks.user_ns, from_ticks.system_ns) == (2_500_000_000, 30_000_000)
    assert from_ticks.periods is None


def test_cpu_v2() -> None:
    stat = parse_flat_keyed("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\n"
                            "throttled_usec 20\n")
    assert cs.cpu_usage_v2(stat) == cs.CpuUsage(total_ns=1_500_000, user_ns=1_000_000, system_ns=500_000,
                                                periods=3, throttled_periods=1, throttled_ns=20_000)
    assert cs.cpu_usage_v2({}).user_ns is None


# ---- limits ---------------------------------------------------------------------------------------------------------


def test_limits_unlimited_forms() -> None:
    assert cs.parse_limit("9223372036854771712\n") is None  # v1's "no limit"
    assert cs.parse_limit("max\n") is None
    assert cs.parse_limit("-1") is None
    assert cs.parse_limit(None) is None
    assert cs.parse_limit("67108864\n") == 67108864


def test_cpu_max_and_weight() -> None:
    assert cs.parse_cpu_max("max 100000\n") == (None, 100000)
    assert cs.parse_cpu_max("20000 100000\n") == (20000, 100000)
    assert cs.weight_to_shares(1) == 2
    assert cs.weight_to_shares(10000) == 262144
    assert cs.weight_to_shares(39) == 998  # runc writes 1024 shares as weight 39; the mapping rounds on the way


# ---- block I/O and pressure -----------------------------------------------------------------------------------------

BLKIO_BYTES = """\
8:0 Read 4096
8:0 Write 8192
8:0 Sync 12288
8:0 Async 0
8:0 Discard 0
8:0 Total 12288
253:1 Read 0
253:1 Write 512
Total 12800
"""

BLKIO_OPS = """\
8:0 Read 1
8:0 Write 2
253:1 Write 1
Total 4
"""


def test_blkio_v1_reads_and_writes_per_device() -> None:
    assert cs.parse_blkio_v1(BLKIO_BYTES, BLKIO_OPS) == [
        cs.BlockDeviceIO(8, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),
        cs.BlockDeviceIO(253, 1, read_bytes=0, write_bytes=512, reads=0, writes=1),
    ]
    assert cs.parse_blkio_v1("", "") == []


def test_io_stat_v2() -> None:
    text = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n254:0 rbytes=1 wbytes=0 rios=1 wios=0\n"
    assert cs.parse_io_stat(text) == [
        cs.BlockDeviceIO(8, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),
        cs.BlockDeviceIO(254, 0, read_bytes=1, write_bytes=0, reads=1, writes=0),
    ]


def test_pressure() -> None:
    text = "some avg10=1.50 avg60=0.04 avg300=0.03 total=218485\nfull avg10=0.00 avg60=0.04 avg300=0.02 total=202179\n"
    assert cs.parse_pressure(text) == cs.Pressure(some=cs.Stall(218485, 1.5, 0.04, 0.03),
                                                  full=cs.Stall(202179, 0.0, 0.04, 0.02))
    # cpu.pressure of kernels before 5.13 has no "full" line.
    assert cs.parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").full == cs.Stall(0)


# ---- /proc ----------------------------------------------------------------------------------------------------------

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   12345      10    0    0    0     0          0         0    12345      10    0    0    0     0       0          0
  eth0: 1048576    800    3    1    0     0          0         2   524288     400    7    9    0     0       0          0
veth-a1b2:100 2 0 0 0 0 0 0 200 4 5 0 0 0 0 0
"""


def test_net_dev_counters_per_interface_without_loopback() -> None:
    assert procfs.parse_net_dev(NET_DEV) == {
        "eth0": procfs.InterfaceCounters(1048576, 800, 3, 1, 524288, 400, 7, 9),
        "veth-a1b2": procfs.InterfaceCounters(100, 2, 0, 0, 200, 4, 5, 0),
    }


def test_net_dev_skips_headers_and_short_lines() -> None:
    assert procfs.parse_net_dev("") == {}
    assert procfs.parse_net_dev("\n".join(NET_DEV.splitlines()[:2]) + "\n") == {}
    assert procfs.parse_net_dev(NET_DEV + "  bad: 1 2 3\n") == procfs.parse_net_dev(NET_DEV)


LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 1048576              files     
Max processes             63457                63457                processes 
Max realtime timeout      unlimited            unlimited            us        
"""


def test_soft_limits_with_names_as_labels() -> None:
    assert procfs.parse_soft_limits(LIMITS) == {
        "max_cpu_time": None, "max_open_files": 1024, "max_processes": 63457, "max_realtime_timeout": None,
    }


# ---- the writable layer's usage, cached ----------------------------------------------------------------------------


def test_writable_layer_cache_hands_out_the_last_walk_and_refreshes_it_in_the_background(tmp_path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "f").write_bytes(b"x" * 10000)
    cache = WritableLayerCache(max_age=3600)
    first = cache.get("c1", upper)
    assert first.inodes_used == 2 and first.used_bytes >= 10000 and first.collected_at_ns > 0

    (upper / "g").write_bytes(b"y" * 50000)
    assert cache.get("c1", upper) == first  # young enough: no walk

    cache.max_age = 0
    assert cache.get("c1", upper) == first  # stale: handed out while a background walk refreshes it
    deadline = time.monotonic() + 20
    while (fresh := cache.get("c1", upper)).inodes_used != 3:
        assert time.monotonic() < deadline, "the background walk never refreshed the entry"
        time.sleep(0.01)
    assert fresh.used_bytes >= 60000 and fresh.collected_at_ns >= first.collected_at_ns

    cache.forget("c1")
    cache.max_age = 3600
    assert cache.get("c1", upper).inodes_used == 3  # walked again, inline
    gone = cache.get("other", tmp_path / "missing")
    assert (gone.used_bytes, gone.inodes_used) == (0, 0)  # a layer that is gone uses nothing
