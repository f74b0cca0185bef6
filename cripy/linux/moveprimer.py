"""Starting the wait of a cgroup move before the OCI runtime makes its own.

Every move of a process between cgroups (a pid written to a cgroup.procs) takes one lock of the kernel's,
cgroup_threadgroup_rwsem, for writing. Since Linux 6.0 that lock is a per-CPU rwsem again: its first writer after a
quiet spell waits for an RCU grace period, and writers that follow within about a grace period do not. `runc create`
and `runc exec` move their process into the container's cgroups some 10 ms after they start, and wait there for that
grace period; measured on this project's test machine, that wait was the largest single part of StartContainer and
ExecSync after runc's own start (docs/benchmarks-analysis.md has the figures).

The primer makes a move that moves nothing, the daemon's own pid written to the cgroup.procs of the cgroup it is
already in, from a thread of its own, as the runtime is launched: the grace period then runs while conmon and runc
start, not after. A move cannot be made cheaper from user space; only when it waits can be changed.

Nodes that do not make moves wait need no primer: cgroup hierarchies mounted with `favordynmods` (or booted with
cgroup_favordynmods=y) keep the lock in its slow mode, which never waits for a grace period. There, and where the
write is refused (a daemon without write access to its cgroup), the primer does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cripy.linux import cgroups
from cripy.linux.mount import MountInfo, read_mountinfo

log = logging.getLogger(__name__)

FAVOR_DYNMODS = "favordynmods"


def own_cgroup_procs(proc_cgroup: str, v1_roots: dict[str, Path], v2_root: Path | None) -> Path | None:
    """The cgroup.procs file of a cgroup this process is in, from /proc/self/cgroup's text: in the first v1
    hierarchy that is mounted, else in the unified one when it is mounted (`v2_root`); None if none is."""
    unified: Path | None = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        relative = path.strip().lstrip("/")
        if not controllers:
            unified = v2_root / relative / "cgroup.procs" if v2_root is not None else None
            continue
        for controller in controllers.split(","):
            if controller in v1_roots:
                return v1_roots[controller] / relative / "cgroup.procs"
    return unified


def favor_dynmods(mounts: Iterable[MountInfo]) -> bool:
    """True when a cgroup hierarchy is mounted with favordynmods: the kernel then keeps the lock in the mode whose
    writers never wait (one root with the option is enough, the lock being shared by all)."""
    return any(FAVOR_DYNMODS in m.super_options.split(",") for m in mounts if m.fs_type in ("cgroup", "cgroup2"))


def moves_wait() -> bool:
    """Whether a cgroup move on this node waits for a grace period after a quiet spell."""
    return not favor_dynmods(read_mountinfo())


def _find_own_procs_file() -> Path | None:
    v2_root = cgroups.CGROUP_ROOT if cgroups.mode() is cgroups.CgroupMode.V2 else None
    return own_cgroup_procs(Path("/proc/self/cgroup").read_text(), cgroups.hierarchy_roots(), v2_root)


class MovePrimer:
    """Starts the grace period of a cgroup move on a thread of its own; `prime` never blocks.

    Calls that come while a move is under way ask for one more after it, not one each: a move that ends extends
    the window in which the next ones pass at once by about a grace period."""

    def __init__(self, *, enabled: bool = True,
                 find_procs_file: Callable[[], Path | None] = _find_own_procs_file,
                 needed: Callable[[], bool] = moves_wait) -> None:
        self._enabled = enabled
        self._find_procs_file = find_procs_file
        self._needed = needed
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._given_up = False
        self.moves = 0  # made so far (tests and the curious read it)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        """Turned on or off by a configuration reload, which says so."""
        if value != self._enabled:
            log.info("cgroup moves are %s", "primed from now on" if value else "no longer primed")
        self._enabled = value

    def prime(self) -> None:
        if not self._enabled or self._given_up:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cgroup-move-primer", daemon=True)
            self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        try:
            if not self._needed():
                return self._give_up(f"a cgroup hierarchy is mounted with {FAVOR_DYNMODS}, so moves do not wait "
                                     "for an RCU grace period")
        except OSError as err:
            return self._give_up(f"cannot read the mount table: {err}")
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self._move_nothing()
            except OSError as err:
                return self._give_up(str(err))

    def _give_up(self, reason: str) -> None:
        log.info("cgroup moves are not primed: %s", reason)
        self._given_up = True

    def _move_nothing(self) -> None:
        # Looked up each time: were the daemon moved to another cgroup meanwhile, an old path would move it back.
        procs = self._find_procs_file()
        if procs is None:
            raise OSError("the daemon's cgroup is in no mounted hierarchy")
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as err:
            raise OSError(f"writing the daemon's pid to {procs}: {err.strerror or err}") from err
        self.moves += 1
