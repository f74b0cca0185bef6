"""What a container uses, read once for both the stats calls and the metrics calls: its cgroup (cpu, memory,
block I/O, pids, pressure, limits), its processes' open files and soft limits, and its writable layer.

The writable layer's usage is the one expensive reading (a walk of every file the container wrote), so it is
cached: a reading younger than `max_age` is reused, an older one is handed out while a single background walk
refreshes it, and only a container's first reading walks inline. Its `collected_at` says how old it is, which the
metrics calls pass on as the CRI asks for cached values.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cripy.linux import cgroupstats, procfs
from cripy.linux.cgroupstats import CgroupReading

log = logging.getLogger(__name__)

WRITABLE_LAYER_MAX_AGE_S = 10.0
# A container not asked about for this long is dropped from the cache (it was most likely removed).
_FORGET_AFTER_S = 600.0


@dataclass(frozen=True)
class WritableLayerUsage:
    used_bytes: int
    inodes_used: int
    collected_at_ns: int  # when the walk finished, ns since the epoch


@dataclass(frozen=True)
class FilesystemInfo:
    """The filesystem that holds the writable layer."""

    capacity_bytes: int
    available_bytes: int
    inodes_total: int
    inodes_free: int


@dataclass(frozen=True)
class ContainerUsage:
    container_id: str
    timestamp_ns: int
    cgroup: CgroupReading | None  # None: no process (created, exited) or it exited while being read
    open_files: procfs.OpenFiles | None
    soft_limits: dict[str, int | None]  # of the container's first process
    writable_layer: WritableLayerUsage
    filesystem: FilesystemInfo | None


def disk_usage(path: Path) -> tuple[int, int]:
    """Bytes allocated and inodes used below path (the directory itself not counted)."""
    used = inodes = 0
    for directory, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            used += st.st_blocks * 512
            inodes += 1
    return used, inodes


def filesystem_info(path: Path) -> FilesystemInfo | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return FilesystemInfo(capacity_bytes=st.f_blocks * st.f_frsize, available_bytes=st.f_bavail * st.f_frsize,
                          inodes_total=st.f_files, inodes_free=st.f_ffree)


@dataclass
class _Entry:
    usage: WritableLayerUsage
    measured_at: float  # monotonic
    asked_at: float
    refreshing: bool = False


class WritableLayerCache:
    """Writable-layer usage per container, refreshed in the background once older than `max_age` seconds."""

    def __init__(self, max_age: float = WRITABLE_LAYER_MAX_AGE_S) -> None:
        self.max_age = max_age
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._walker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cripy-disk-usage")

    def get(self, ctr_id: str, upper_dir: Path) -> WritableLayerUsage:
        """Blocking (a first reading walks the layer); call it from a worker thread."""
        now = time.monotonic()
        with self._lock:
            self._forget_idle(now)
            entry = self._entries.get(ctr_id)
            if entry is not None:
                entry.asked_at = now
                if now - entry.measured_at > self.max_age and not entry.refreshing:
                    entry.refreshing = True
                    self._walker.submit(self._refresh, ctr_id, upper_dir)
                return entry.usage
        usage = _measure(upper_dir)
        with self._lock:
            self._entries.setdefault(ctr_id, _Entry(usage, time.monotonic(), now))
        return usage

    def forget(self, ctr_id: str) -> None:
        with self._lock:
            self._entries.pop(ctr_id, None)

    def _refresh(self, ctr_id: str, upper_dir: Path) -> None:
        try:
            usage = _measure(upper_dir)
        except Exception:  # never lose the worker to one odd directory
            log.exception("measuring the writable layer of container %s failed", ctr_id)
            usage = None
        with self._lock:
            entry = self._entries.get(ctr_id)
            if entry is None:
                return  # forgotten meanwhile
            entry.refreshing = False
            if usage is not None:
                entry.usage, entry.measured_at = usage, time.monotonic()

    def _forget_idle(self, now: float) -> None:
        idle = [key for key, entry in self._entries.items() if now - entry.asked_at > _FORGET_AFTER_S]
        for key in idle:
            del self._entries[key]


def _measure(upper_dir: Path) -> WritableLayerUsage:
    used, inodes = disk_usage(upper_dir)
    return WritableLayerUsage(used_bytes=used, inodes_used=inodes, collected_at_ns=time.time_ns())


def read_usage(ctr_id: str, *, cgroup_path: str, pid: int, upper_dir: Path, layers: WritableLayerCache,
               running: bool, full: bool = True) -> ContainerUsage:
    """One container's readings (blocking: run it in a worker thread): what the stats calls need, or (full) all
    the metrics calls report, which adds the processes' open files and limits (cgroupstats.read says more)."""
    reading = None
    if running and cgroup_path:
        try:
            reading = cgroupstats.read(cgroup_path, full=full)
        except OSError:
            reading = None  # the container exited while being read
    open_files = procfs.count_open_files(reading.pids) if reading and full else None
    soft_limits: dict[str, int | None] = {}
    if reading and pid > 0 and full:
        try:
            soft_limits = procfs.read_soft_limits(pid)
        except OSError:
            soft_limits = {}
    return ContainerUsage(
        container_id=ctr_id,
        timestamp_ns=time.time_ns(),
        cgroup=reading,
        open_files=open_files,
        soft_limits=soft_limits,
        writable_layer=layers.get(ctr_id, upper_dir),
        filesystem=filesystem_info(upper_dir),
    )
