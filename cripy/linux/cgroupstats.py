"""What one cgroup uses and may use, v1 or v2, read in one pass for the stats and metrics calls.

The parsers of the kernel's text formats are pure functions; `read(relpath)` opens each file once and turns the
texts into a `CgroupReading`. A counter the node does not offer (a controller that is not mounted, a file of a
newer kernel) is None, never a made-up 0. Pressure (PSI) lives in the unified hierarchy: /sys/fs/cgroup on a v2
node, and on a hybrid v1 node the cgroup2 mount beside the v1 hierarchies, where runc places containers too.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from cripy.errors import NotFound
from cripy.linux import cgroups
from cripy.linux.cgroups import CGROUP_ROOT, CgroupMode, parse_flat_keyed, parse_procs
from cripy.linux.mount import read_mountinfo

# v1 reports "no limit" as the largest page-aligned counter; anything this large is no limit (as cAdvisor reads it).
UNLIMITED_THRESHOLD = 1 << 62
# cpuacct.stat counts USER_HZ ticks; Linux fixes USER_HZ at 100 for user space.
_USER_HZ = 100
PRESSURE_RESOURCES = ("cpu", "memory", "io")


@dataclass(frozen=True)
class CpuUsage:
    total_ns: int
    user_ns: int | None = None
    system_ns: int | None = None
    periods: int | None = None  # CFS enforcement periods elapsed (only counted while a quota is set)
    throttled_periods: int | None = None
    throttled_ns: int | None = None


@dataclass(frozen=True)
class MemoryStats:
    usage: int
    working_set: int
    rss: int
    page_faults: int  # the cgroup and its descendants
    major_page_faults: int
    oom_kills: int
    cache: int = 0
    mapped_file: int = 0
    own_page_faults: int = 0  # the cgroup alone (v2 has no separate count: the same as page_faults)
    own_major_page_faults: int = 0
    swap: int | None = None
    kernel: int | None = None
    failcnt: int | None = None  # times the limit was hit
    max_usage: int | None = None


@dataclass(frozen=True)
class CgroupLimits:
    cpu_period_us: int | None = None
    cpu_quota_us: int | None = None  # None: no quota
    cpu_shares: int | None = None
    memory_bytes: int | None = None  # None: unlimited
    memory_reservation_bytes: int | None = None
    memory_swap_bytes: int | None = None  # memory + swap, as the OCI spec and v1 count it
    pids: int | None = None


@dataclass(frozen=True)
class BlockDeviceIO:
    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0
    device: str = ""  # "/dev/vda", or "" when the node does not name it


@dataclass(frozen=True)
class Stall:
    total_us: int  # cumulative
    avg10: float = 0.0  # percent of the last 10, 60 and 300 seconds
    avg60: float = 0.0
    avg300: float = 0.0


@dataclass(frozen=True)
class Pressure:
    """Stall time: "some" task waiting, and "full": all tasks stalled at once."""

    some: Stall
    full: Stall


@dataclass(frozen=True)
class HugetlbUsage:
    usage: int
    max_usage: int | None


@dataclass(frozen=True)
class CgroupReading:
    cpu: CpuUsage
    memory: MemoryStats
    limits: CgroupLimits
    pids: list[int]  # the processes in the cgroup and below (host PIDs)
    threads: int | None  # tasks, as the pids controller counts them (None: a stats reading, not counted)
    block_io: list[BlockDeviceIO] = field(default_factory=list)
    pressure: dict[str, Pressure] = field(default_factory=dict)  # "cpu" / "memory" / "io"
    hugetlb: dict[str, HugetlbUsage] = field(default_factory=dict)  # page size ("2MB") -> usage


# ---------------------------------------------------------------------------------------------------- parsers


def memory_stats_v1(usage: int, stat: dict[str, int], oom_control: dict[str, int], *, failcnt: int | None = None,
                    max_usage: int | None = None, kernel: int | None = None,
                    memsw_usage: int | None = None) -> MemoryStats:
    """v1: hierarchical (total_*) counters; working set = usage - total_inactive_file (as the kubelet computes it);
    swap = memsw usage - usage when the node accounts swap."""
    inactive_file = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return MemoryStats(
        usage=usage,
        working_set=max(0, usage - inactive_file),
        rss=stat.get("total_rss", stat.get("rss", 0)),
        page_faults=stat.get("total_pgfault", stat.get("pgfault", 0)),
        major_page_faults=stat.get("total_pgmajfault", stat.get("pgmajfault", 0)),
        oom_kills=oom_control.get("oom_kill", 0),
        cache=stat.get("total_cache", stat.get("cache", 0)),
        mapped_file=stat.get("total_mapped_file", stat.get("mapped_file", 0)),
        own_page_faults=stat.get("pgfault", 0),
        own_major_page_faults=stat.get("pgmajfault", 0),
        swap=None if memsw_usage is None else max(0, memsw_usage - usage),
        kernel=kernel,
        failcnt=failcnt,
        max_usage=max_usage,
    )


def memory_stats_v2(usage: int, stat: dict[str, int], events: dict[str, int], *, peak: int | None = None,
                    swap: int | None = None) -> MemoryStats:
    """v2: memory.current, memory.stat (anon is the rss counterpart), memory.events (max: the limit was hit)."""
    kernel = stat.get("kernel")
    if kernel is None and "slab" in stat:  # kernels before 5.18 have no single "kernel" line
        kernel = stat.get("kernel_stack", 0) + stat.get("pagetables", 0) + stat["slab"] + stat.get("sock", 0)
    return MemoryStats(
        usage=usage,
        working_set=max(0, usage - stat.get("inactive_file", 0)),
        rss=stat.get("anon", 0),
        page_faults=stat.get("pgfault", 0),
        major_page_faults=stat.get("pgmajfault", 0),
        oom_kills=events.get("oom_kill", 0),
        cache=stat.get("file", 0),
        mapped_file=stat.get("file_mapped", 0),
        own_page_faults=stat.get("pgfault", 0),
        own_major_page_faults=stat.get("pgmajfault", 0),
        swap=swap,
        kernel=kernel,
        failcnt=events.get("max"),
        max_usage=peak,
    )


def cpu_usage_v1(usage_ns: int, cpu_stat: dict[str, int], *, user_ns: int | None = None,
                 system_ns: int | None = None, stat_ticks: dict[str, int] | None = None) -> CpuUsage:
    """v1: cpuacct.usage, cpuacct.usage_user/usage_sys (ns) or else cpuacct.stat (ticks), cpu.stat throttling."""
    if user_ns is None and stat_ticks and "user" in stat_ticks:
        user_ns = stat_ticks["user"] * (1_000_000_000 // _USER_HZ)
    if system_ns is None and stat_ticks and "system" in stat_ticks:
        system_ns = stat_ticks["system"] * (1_000_000_000 // _USER_HZ)
    return CpuUsage(
        total_ns=usage_ns,
        user_ns=user_ns,
        system_ns=system_ns,
        periods=cpu_stat.get("nr_periods"),
        throttled_periods=cpu_stat.get("nr_throttled"),
        throttled_ns=cpu_stat.get("throttled_time"),
    )


def cpu_usage_v2(cpu_stat: dict[str, int]) -> CpuUsage:
    def ns(key: str) -> int | None:
        return None if key not in cpu_stat else cpu_stat[key] * 1000

    return CpuUsage(
        total_ns=cpu_stat.get("usage_usec", 0) * 1000,
        user_ns=ns("user_usec"),
        system_ns=ns("system_usec"),
        periods=cpu_stat.get("nr_periods"),
        throttled_periods=cpu_stat.get("nr_throttled"),
        throttled_ns=ns("throttled_usec"),
    )


def parse_limit(text: str | None) -> int | None:
    """A limit file's value: None for "max", "-1" or v1's near-2^63 "no limit" (and for a missing file)."""
    if text is None:
        return None
    value = text.strip()
    if value in ("max", "-1", ""):
        return None
    number = int(value)
    return None if number >= UNLIMITED_THRESHOLD or number < 0 else number


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """v2 cpu.max: "<quota|max> <period>" -> (quota or None, period), in microseconds."""
    quota, _, period = text.strip().partition(" ")
    return (None if quota == "max" else int(quota)), int(period or 100000)


def weight_to_shares(weight: int) -> int:
    """v2 cpu.weight back to v1 shares: the inverse of the mapping runc and the kubelet use (shares 2..262144 to
    weight 1..10000)."""
    return 2 + ((weight - 1) * 262142) // 9999


def parse_blkio_v1(service_bytes: str, serviced: str) -> list[BlockDeviceIO]:
    """v1 blkio.throttle.io_service_bytes(_recursive) and io_serviced(_recursive): "<maj>:<min> <Op> <n>" lines."""
    devices: dict[tuple[int, int], dict[str, int]] = {}
    for text, suffix in ((service_bytes, "_bytes"), (serviced, "s")):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or ":" not in parts[0] or parts[1] not in ("Read", "Write"):
                continue
            major, _, minor = parts[0].partition(":")
            counts = devices.setdefault((int(major), int(minor)), {})
            key = ("read" if parts[1] == "Read" else "write") + suffix
            counts[key] = counts.get(key, 0) + int(parts[2])
    return [BlockDeviceIO(number[0], number[1], counts.get("read_bytes", 0), counts.get("write_bytes", 0),
                          counts.get("reads", 0), counts.get("writes", 0))
            for number, counts in sorted(devices.items())]


def parse_io_stat(text: str) -> list[BlockDeviceIO]:
    """v2 io.stat: "<maj>:<min> rbytes=.. wbytes=.. rios=.. wios=.. ..." lines."""
    devices = []
    for line in text.splitlines():
        device, *pairs = line.split()
        if ":" not in device:
            continue
        values = {key: int(value) for key, _, value in (pair.partition("=") for pair in pairs) if value.isdigit()}
        major, _, minor = device.partition(":")
        devices.append(BlockDeviceIO(int(major), int(minor), read_bytes=values.get("rbytes", 0),
                                     write_bytes=values.get("wbytes", 0), reads=values.get("rios", 0),
                                     writes=values.get("wios", 0)))
    return devices


def parse_pressure(text: str) -> Pressure:
    """A *.pressure file: "some avg10=0.00 avg60=0.00 avg300=0.00 total=<us>" and the same for "full"."""
    stalls = {"some": Stall(0), "full": Stall(0)}
    for line in text.splitlines():
        kind, *pairs = line.split()
        if kind not in stalls:
            continue
        values = dict(pair.partition("=")[::2] for pair in pairs)
        stalls[kind] = Stall(total_us=int(values.get("total", 0)), avg10=float(values.get("avg10", 0)),
                             avg60=float(values.get("avg60", 0)), avg300=float(values.get("avg300", 0)))
    return Pressure(some=stalls["some"], full=stalls["full"])


# ---------------------------------------------------------------------------------------------------- host


@functools.cache
def unified_root() -> Path | None:
    """Where the cgroup2 hierarchy is mounted: /sys/fs/cgroup (v2) or beside the v1 hierarchies (hybrid)."""
    if cgroups.mode() is CgroupMode.V2:
        return CGROUP_ROOT
    root = str(CGROUP_ROOT)
    for mount in read_mountinfo():
        if mount.fs_type == "cgroup2" and mount.mount_point.startswith(root + "/"):
            return Path(mount.mount_point)
    return None


@functools.cache
def has_pressure() -> bool:
    """Whether the kernel accounts pressure stall information and a unified hierarchy carries it per cgroup."""
    return unified_root() is not None and Path("/proc/pressure/cpu").exists()


@functools.cache
def hugepage_sizes() -> tuple[str, ...]:
    """The hugetlb controller's page sizes ("2MB", "1GB"), or none when the controller is not there."""
    base = cgroups.hierarchy_root("hugetlb")
    if base is None:
        return ()
    suffix = ".max" if cgroups.mode() is CgroupMode.V2 else ".limit_in_bytes"
    return tuple(sorted(name.split(".")[1] for name in os.listdir(base)
                        if name.startswith("hugetlb.") and name.endswith(suffix) and name.count(".") == 2))


@functools.lru_cache(maxsize=256)
def device_name(major: int, minor: int) -> str:
    """The block device's node ("/dev/vda") from sysfs, or "" when sysfs does not name it."""
    text = _text(f"/sys/dev/block/{major}:{minor}/uevent") or ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return f"/dev/{value}"
    return ""


# ---------------------------------------------------------------------------------------------------- reading


def read(relpath: str, *, full: bool = True) -> CgroupReading:
    """What the stats calls (full=False) or the metrics calls (full) report about the cgroup. Raises OSError
    (FileNotFoundError) when the cgroup went away while being read.

    The stats reading takes a handful of files (cpu, memory, pressure, the processes, the memory limits): the
    kubelet asks for it for every container every few seconds. The metrics reading adds throttling, user/system
    time, failures, block I/O, huge pages and every limit, some thirty files per container."""
    if cgroups.mode() is CgroupMode.V2:
        return _read_v2(relpath, full)
    return _read_v1(relpath) if full else _read_v1_stats(relpath)


def read_limits(relpath: str) -> CgroupLimits:
    """The limits written to the cgroup (by runc, or by the kubelet for its pod cgroups); what is missing is None."""
    if cgroups.mode() is CgroupMode.V2:
        return _limits_v2(_Dir.of("memory", relpath))
    return _limits_v1(*(_Dir.of(name, relpath) for name in ("cpu", "memory", "pids")))


def _text(path: str) -> str | None:
    """A kernel file's text, None if missing. os.read, not open(): a buffered text file costs several times more,
    and a metrics call reads some thirty of these per container."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


class _Dir:
    """One cgroup directory (of one v1 hierarchy, or the v2 one) and its files; paths stay strings because
    pathlib's joins cost more than the reads here."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def of(cls, controller: str, relpath: str) -> _Dir | None:
        """The cgroup's directory for the controller; None when the node does not mount the controller."""
        try:
            return cls(str(cgroups.controller_path(controller, relpath)))
        except NotFound:
            return None

    def text(self, name: str) -> str | None:
        return _text(f"{self.path}/{name}")

    def int(self, name: str) -> int | None:
        text = self.text(name)
        return None if text is None else int(text.strip())

    def required_int(self, name: str) -> builtins.int:
        value = self.int(name)
        if value is None:
            raise FileNotFoundError(f"{self.path}/{name} is missing")
        return value

    def keyed(self, name: str) -> dict[str, builtins.int]:
        text = self.text(name)
        return {} if text is None else parse_flat_keyed(text)

    def limit(self, name: str) -> builtins.int | None:
        return parse_limit(self.text(name))

    def procs_below(self) -> list[builtins.int]:
        """cgroup.procs of this cgroup and every cgroup below it (a container may make its own sub-cgroups)."""
        pids = parse_procs(self.text("cgroup.procs") or "")
        with os.scandir(self.path) as entries:
            children = [_Dir(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)]
        for child in children:
            pids += child.procs_below()
        return pids


def _read_v1(relpath: str) -> CgroupReading:
    cpuacct, cpu, memory, pids, blkio = (_Dir.of(name, relpath) for name in ("cpuacct", "cpu", "memory", "pids",
                                                                               "blkio"))
    if cpuacct is None or memory is None:
        raise FileNotFoundError(f"cgroup {relpath}: the cpuacct and memory controllers are needed for stats")
    usage = memory.required_int("memory.usage_in_bytes")
    reading_memory = memory_stats_v1(
        usage, memory.keyed("memory.stat"), memory.keyed("memory.oom_control"),
        failcnt=memory.int("memory.failcnt"), max_usage=memory.int("memory.max_usage_in_bytes"),
        kernel=memory.int("memory.kmem.usage_in_bytes"), memsw_usage=memory.int("memory.memsw.usage_in_bytes"),
    )
    reading_cpu = cpu_usage_v1(
        cpuacct.required_int("cpuacct.usage"), cpu.keyed("cpu.stat") if cpu else {},
        user_ns=cpuacct.int("cpuacct.usage_user"), system_ns=cpuacct.int("cpuacct.usage_sys"),
        stat_ticks=cpuacct.keyed("cpuacct.stat"),
    )
    procs = (pids or memory).procs_below()
    threads = pids.int("pids.current") if pids else None
    block_io = parse_blkio_v1(blkio.text("blkio.throttle.io_service_bytes_recursive") or "",
                              blkio.text("blkio.throttle.io_serviced_recursive") or "") if blkio else []
    return CgroupReading(
        cpu=reading_cpu, memory=reading_memory, limits=_limits_v1(cpu, memory, pids), pids=procs,
        threads=threads if threads is not None else _count_threads(procs),
        block_io=_named(block_io), pressure=_read_pressure(relpath), hugetlb=_read_hugetlb_v1(relpath),
    )


def _read_v1_stats(relpath: str) -> CgroupReading:
    cpuacct, memory = _Dir.of("cpuacct", relpath), _Dir.of("memory", relpath)
    if cpuacct is None or memory is None:
        raise FileNotFoundError(f"cgroup {relpath}: the cpuacct and memory controllers are needed for stats")
    usage = memory.required_int("memory.usage_in_bytes")
    return CgroupReading(
        cpu=CpuUsage(total_ns=cpuacct.required_int("cpuacct.usage")),
        memory=memory_stats_v1(usage, memory.keyed("memory.stat"), {},
                               memsw_usage=memory.int("memory.memsw.usage_in_bytes")),
        limits=CgroupLimits(memory_bytes=memory.limit("memory.limit_in_bytes"),
                            memory_swap_bytes=memory.limit("memory.memsw.limit_in_bytes")),
        pids=(_Dir.of("pids", relpath) or memory).procs_below(), threads=None, pressure=_read_pressure(relpath),
    )


def _read_v2(relpath: str, full: bool) -> CgroupReading:
    base = _Dir(str(cgroups.controller_path("memory", relpath)))
    procs = base.procs_below()
    memory = memory_stats_v2(base.required_int("memory.current"), base.keyed("memory.stat"),
                             base.keyed("memory.events") if full else {}, peak=base.int("memory.peak") if full else None,
                             swap=base.int("memory.swap.current"))
    if not full:
        swap_max, memory_max = base.limit("memory.swap.max"), base.limit("memory.max")
        return CgroupReading(
            cpu=cpu_usage_v2(base.keyed("cpu.stat")), memory=memory, pids=procs, threads=None,
            limits=CgroupLimits(memory_bytes=memory_max, memory_swap_bytes=None if memory_max is None or
                                swap_max is None else memory_max + swap_max),
            pressure=_read_pressure(relpath),
        )
    threads = base.int("pids.current")
    return CgroupReading(
        cpu=cpu_usage_v2(base.keyed("cpu.stat")), memory=memory,
        limits=_limits_v2(base), pids=procs, threads=threads if threads is not None else _count_threads(procs),
        block_io=_named(parse_io_stat(base.text("io.stat") or "")),
        pressure=_read_pressure(relpath),
        hugetlb={size: HugetlbUsage(base.int(f"hugetlb.{size}.current") or 0, None) for size in hugepage_sizes()},
    )


def _limits_v1(cpu: _Dir | None, memory: _Dir | None, pids: _Dir | None) -> CgroupLimits:
    quota = cpu.int("cpu.cfs_quota_us") if cpu else None
    return CgroupLimits(
        cpu_period_us=cpu.int("cpu.cfs_period_us") if cpu else None,
        cpu_quota_us=quota if quota is not None and quota > 0 else None,
        cpu_shares=cpu.int("cpu.shares") if cpu else None,
        memory_bytes=memory.limit("memory.limit_in_bytes") if memory else None,
        memory_reservation_bytes=memory.limit("memory.soft_limit_in_bytes") if memory else None,
        memory_swap_bytes=memory.limit("memory.memsw.limit_in_bytes") if memory else None,
        pids=pids.limit("pids.max") if pids else None,
    )


def _limits_v2(base: _Dir | None) -> CgroupLimits:
    if base is None:
        return CgroupLimits()
    cpu_max = base.text("cpu.max")
    quota, period = parse_cpu_max(cpu_max) if cpu_max else (None, None)
    weight = base.int("cpu.weight")
    memory_max = base.limit("memory.max")
    swap_max = base.limit("memory.swap.max")
    return CgroupLimits(
        cpu_period_us=period, cpu_quota_us=quota,
        cpu_shares=None if weight is None else weight_to_shares(weight),
        memory_bytes=memory_max,
        memory_reservation_bytes=base.limit("memory.low") or None,
        memory_swap_bytes=None if memory_max is None or swap_max is None else memory_max + swap_max,
        pids=base.limit("pids.max"),
    )


def _named(devices: list[BlockDeviceIO]) -> list[BlockDeviceIO]:
    return [dataclasses.replace(io, device=device_name(io.major, io.minor)) for io in devices]


def _read_pressure(relpath: str) -> dict[str, Pressure]:
    root = unified_root()
    if root is None or not has_pressure():
        return {}
    directory = _Dir(f"{root}/{relpath.strip('/')}")
    found = {}
    for resource in PRESSURE_RESOURCES:
        text = directory.text(f"{resource}.pressure")
        if text is not None:
            found[resource] = parse_pressure(text)
    return found


def _read_hugetlb_v1(relpath: str) -> dict[str, HugetlbUsage]:
    sizes = hugepage_sizes()
    directory = _Dir.of("hugetlb", relpath) if sizes else None
    if directory is None:
        return {}
    return {size: HugetlbUsage(directory.int(f"hugetlb.{size}.usage_in_bytes") or 0,
                               directory.int(f"hugetlb.{size}.max_usage_in_bytes"))
            for size in sizes}


def _count_threads(pids: list[int]) -> int:
    count = 0
    for pid in pids:
        try:
            count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue  # exited meanwhile
    return count
