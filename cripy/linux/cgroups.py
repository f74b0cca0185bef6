"""Cgroups through the cgroupfs driver: v1 (hybrid, one hierarchy per controller) and v2 (unified).

A cgroup is named by a relative path ("cripy/pod-x"); in v1 it exists once per mounted hierarchy. This module
creates and removes those directories and lists their processes; cgroupstats.py reads their usage. Parsers of the
kernel's text formats are pure functions. Writing limits is runc's job (through the OCI spec), not this module's.
"""

from __future__ import annotations

import enum
import errno
import functools
import os
import subprocess
import time
from pathlib import Path

from cripy.errors import FailedPrecondition, InvalidArgument, NotFound
from cripy.linux.mount import MountInfo, read_mountinfo

CGROUP_ROOT = Path("/sys/fs/cgroup")
_REMOVE_ATTEMPTS = 20
_REMOVE_BACKOFF_S = 0.025


class CgroupMode(enum.Enum):
    V1 = "v1"  # legacy or hybrid: controllers on separate cgroup (v1) hierarchies
    V2 = "v2"  # unified: one cgroup2 hierarchy at /sys/fs/cgroup


# ---------------------------------------------------------------------------------------------------- parsers


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse 'key value' lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_procs(text: str) -> list[int]:
    """Parse cgroup.procs / tasks: one PID per line."""
    return [int(line) for line in text.split() if line.strip()]


def v1_hierarchies(mounts: list[MountInfo]) -> dict[str, Path]:
    """controller (or name=X for named hierarchies) -> mount point, from mountinfo entries of type cgroup."""
    out: dict[str, Path] = {}
    for m in mounts:
        if m.fs_type != "cgroup":
            continue
        for option in m.super_options.split(","):
            if option in ("rw", "ro") or option.startswith(("release_agent=", "clone_children", "noprefix",
                                                                  "xattr", "cpuset_v2_mode")):
                continue
            out.setdefault(option, Path(m.mount_point))
    return out


# ---------------------------------------------------------------------------------------------------- detection


@functools.cache
def mode() -> CgroupMode:
    """v2 when /sys/fs/cgroup itself is a cgroup2 mount, else v1 (legacy or hybrid)."""
    return CgroupMode.V2 if _is_cgroup2_mount(CGROUP_ROOT) else CgroupMode.V1


def _is_cgroup2_mount(path: Path) -> bool:
    # os.statvfs has no f_type; mountinfo tells the filesystem type of the mount at exactly this point.
    target = os.path.realpath(path)
    types = [m.fs_type for m in read_mountinfo() if m.mount_point == target]
    return bool(types) and types[-1] == "cgroup2"


@functools.cache
def _hierarchies() -> dict[str, Path]:
    if mode() is CgroupMode.V2:
        return {}
    mounts = [m for m in read_mountinfo() if _under_cgroup_root(m.mount_point)]
    return v1_hierarchies(mounts)


def _under_cgroup_root(mount_point: str) -> bool:
    root = str(CGROUP_ROOT)
    return mount_point.startswith(root + "/") or mount_point == root


def controllers() -> list[str]:
    """v1: the mounted controllers (and named hierarchies); v2: the controllers enabled at the root."""
    if mode() is CgroupMode.V2:
        return (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    return sorted(_hierarchies())


def _check_relpath(relpath: str) -> str:
    clean = relpath.strip("/")
    if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
        raise InvalidArgument(f"cgroup path {relpath!r} must be a relative path without '.' or '..' parts")
    return clean


def cgroup_paths(relpath: str) -> list[Path]:
    """Every directory that makes up the cgroup: one per v1 hierarchy, or the single v2 directory."""
    clean = _check_relpath(relpath)
    if mode() is CgroupMode.V2:
        return [CGROUP_ROOT / clean]
    return [mount_point / clean for mount_point in dict.fromkeys(_hierarchies().values())]


def hierarchy_roots() -> dict[str, Path]:
    """v1: each mounted controller (and named hierarchy) with the root of its hierarchy; v2: empty (one root)."""
    return dict(_hierarchies())


def hierarchy_root(controller: str) -> Path | None:
    """The root directory of the hierarchy that carries the controller (v2: the unified root), None if unmounted."""
    if mode() is CgroupMode.V2:
        return CGROUP_ROOT if controller in controllers() else None
    return _hierarchies().get(controller)


def controller_path(controller: str, relpath: str) -> Path:
    """The directory of the cgroup for one controller (v2: the unified directory for every controller)."""
    clean = _check_relpath(relpath)
    if mode() is CgroupMode.V2:
        return CGROUP_ROOT / clean
    try:
        return _hierarchies()[controller] / clean
    except KeyError:
        raise NotFound(f"cgroup controller {controller!r} is not mounted under {CGROUP_ROOT}") from None


# ---------------------------------------------------------------------------------------------------- lifecycle


def create(relpath: str) -> list[Path]:
    """Create the cgroup (and its parents) in every hierarchy; existing directories are fine."""
    paths = cgroup_paths(relpath)
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    if mode() is CgroupMode.V1 and "cpuset" in _hierarchies():
        _inherit_cpuset(_hierarchies()["cpuset"], _check_relpath(relpath))
    return paths


def _inherit_cpuset(root: Path, clean: str) -> None:
    """A new v1 cpuset cgroup starts with empty cpus/mems and refuses tasks; copy them down from the parents."""
    current = root
    for part in clean.split("/"):
        parent, current = current, current / part
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (current / name).read_text().strip():
                (current / name).write_text((parent / name).read_text())


def add_process(relpath: str, pid: int) -> None:
    """Move a process into the cgroup in every hierarchy (the cgroup must exist)."""
    for path in cgroup_paths(relpath):
        (path / "cgroup.procs").write_text(str(pid))


def exists(relpath: str) -> bool:
    return any(path.is_dir() for path in cgroup_paths(relpath))


def remove(relpath: str) -> None:
    """Remove the leaf cgroup in every hierarchy. Missing is fine; EBUSY (tasks still exiting) is retried a short
    while, then reported as FailedPrecondition with the PIDs still inside."""
    for path in cgroup_paths(relpath):
        _rmdir_retrying(path)


def _rmdir_retrying(path: Path) -> None:
    for attempt in range(_REMOVE_ATTEMPTS):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            if attempt + 1 == _REMOVE_ATTEMPTS:
                raise FailedPrecondition(f"cgroup {path} is still busy (processes {_pids_at(path)} or child "
                                         "cgroups remain)") from exc
            time.sleep(_REMOVE_BACKOFF_S)


def _pids_at(path: Path) -> list[int]:
    try:
        return parse_procs((path / "cgroup.procs").read_text())
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------------- processes


def pids_in(relpath: str) -> list[int]:
    """PIDs of the processes directly in the cgroup (the pids hierarchy on v1)."""
    controller = "pids" if mode() is CgroupMode.V2 or "pids" in _hierarchies() else "memory"
    return parse_procs((controller_path(controller, relpath) / "cgroup.procs").read_text())


def parse_cpu_list(text: str, max_id: int) -> set[int]:
    """The ids of a kernel cpu/node list ("0-3,8,10-11"); ValueError naming the bad part."""
    ids: set[int] = set()
    for part in text.split(","):
        first_text, dash, last_text = part.strip().partition("-")
        if not first_text.isdigit() or (dash and not last_text.isdigit()):
            raise ValueError(f"{part!r} is neither a number nor a range such as 0-3")
        first = int(first_text)
        last = int(last_text) if dash else first
        if first > last or last > max_id:
            raise ValueError(f"{part!r} is not a range within 0-{max_id}")
        ids.update(range(first, last + 1))
    return ids


def node_cpuset(kind: str) -> str:
    """The CPUs ("cpus") or memory nodes ("mems") a cgroup on this node may be given: the root cpuset's effective
    list, in the kernel's list form ("0-3,8"); "" when there is no cpuset controller."""
    if mode() is CgroupMode.V2:
        path = CGROUP_ROOT / f"cpuset.{kind}.effective"
    else:
        root = _hierarchies().get("cpuset")
        if root is None:
            return ""
        path = root / f"cpuset.effective_{kind}"
        if not path.exists():
            path = root / f"cpuset.{kind}"
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------- privileges


@functools.cache
def can_set_negative_oom_score_adj() -> bool:
    """Whether processes we start may lower their oom_score_adj (needs CAP_SYS_RESOURCE). Asked once, by a child,
    because this process must not change its own score."""
    proc = subprocess.run(["sh", "-c", "echo -1 > /proc/self/oom_score_adj"], capture_output=True)
    return proc.returncode == 0
