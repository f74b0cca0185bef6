"""Fault points: named places where a test can make the daemon die on the spot, to prove that it is crash-safe
there rather than hope so (the model: etcd's gofail, FreeBSD's fail points).

A fault point is a call `faults.point("effect.pod-network")` at a boundary that matters: an effect journalled but
not yet made, an external program (runc, conmon, a CNI plugin) about to run or just finished, a mount, a database
commit, a layer renamed into place. Two environment variables, read once at start-up, turn them on; an operator's
daemon has neither and a point then costs one comparison.

- ``CRIPY_FAULT=NAME`` (or ``NAME#N``): the daemon sends itself SIGKILL the first (N-th) time it reaches NAME. No
  clean-up runs, exactly as with a power cut or an OOM kill of the daemon.
- ``CRIPY_FAULT_CONTROL=FILE``: the same, armed while the daemon runs: FILE holds ``NAME`` or ``NAME#N`` (and is
  looked at again whenever it changes), so that a test can set up a pod, arm a point and make the call without
  a restart in between.
- ``CRIPY_FAULT_TRACE=FILE``: every point reached is appended to FILE, one name per line, so that a test can learn
  the points a call passes and then walk them one by one.
"""

from __future__ import annotations

import os
import signal
import threading

FAULT_ENV = "CRIPY_FAULT"
CONTROL_ENV = "CRIPY_FAULT_CONTROL"
TRACE_ENV = "CRIPY_FAULT_TRACE"


class _Faults:
    def __init__(self, spec: str, control_path: str, trace_path: str) -> None:
        self.arm(spec)
        self.control_path = control_path
        self.control_stamp: tuple[int, int] | None = None
        self.trace_fd = os.open(trace_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if trace_path else -1
        self.enabled = bool(self.armed) or bool(control_path) or self.trace_fd >= 0
        self.lock = threading.Lock()  # points are reached from the event loop and from worker threads

    def arm(self, spec: str) -> None:
        name, _, nth = spec.strip().partition("#")
        self.armed = name.strip()
        self.remaining = int(nth) if nth.strip().isdigit() and int(nth) > 0 else 1

    def _read_control(self) -> None:
        try:
            st = os.stat(self.control_path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self.control_stamp:
            self.control_stamp = stamp
            try:
                with open(self.control_path) as handle:
                    self.arm(handle.read())
            except FileNotFoundError:
                self.arm("")

    def reach(self, name: str) -> None:
        with self.lock:
            if self.trace_fd >= 0:
                os.write(self.trace_fd, f"{name}\n".encode())
            if self.control_path:
                self._read_control()
            if name != self.armed:
                return
            self.remaining -= 1
            if self.remaining > 0:
                return
        os.kill(os.getpid(), signal.SIGKILL)


_faults = _Faults(os.environ.get(FAULT_ENV, ""), os.environ.get(CONTROL_ENV, ""), os.environ.get(TRACE_ENV, ""))


def point(name: str) -> None:
    """A place where the daemon may be made to die (see the module's docstring)."""
    if _faults.enabled:
        _faults.reach(name)
