"""Phase timings of a CRI call, logged at debug level: where the time of a RunPodSandbox or CreateContainer goes
(our own Python, runc, conmon, CNI, the disk) without a profiler."""

from __future__ import annotations

import logging
import time


class Phases:
    def __init__(self, what: str, logger: logging.Logger) -> None:
        self._what = what
        self._log = logger
        self._start = self._last = time.perf_counter()
        self._phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self._phases.append((phase, now - self._last))
        self._last = now

    def done(self) -> float:
        total = time.perf_counter() - self._start
        if self._log.isEnabledFor(logging.DEBUG):
            detail = " ".join(f"{name}={seconds * 1000:.1f}ms" for name, seconds in self._phases)
            self._log.debug("%s took %.1fms: %s", self._what, total * 1000, detail)
        return total
