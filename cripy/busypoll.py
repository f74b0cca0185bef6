"""Busy polling: the daemon's event loop keeps polling its sockets for a short window after it has answered the
last call in flight, instead of going to sleep in epoll_wait at once.

Why: waking a thread that sleeps on an idle (virtual) CPU costs 0.2-1 ms here, several times what cripy spends on
a small call. The kubelet calls in bursts (a relist is ListPodSandbox then ListContainers, a stop is StopContainer
then RemoveContainer, a status sweep one call per pod), so the next request usually arrives within a few hundred
microseconds of an answer; polling for that long catches it awake. Go's scheduler, which serves containerd, spins
an idle thread the same way before it parks it.

What it costs: at most `window` of one CPU per arming (the server arms it when its last call in flight ends), and
nothing while the daemon is idle. The loop does not spin while work it handed to a thread is outstanding: it holds
the GIL between its polls, and that thread would wait for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import time
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Spin:
    """What the loop and its selector share: until when to spin, and how many thread jobs are outstanding."""

    __slots__ = ("until", "in_threads")

    def __init__(self) -> None:
        self.until = 0.0
        self.in_threads = 0


class _SpinningSelector(selectors.EpollSelector):
    def __init__(self, spin: _Spin) -> None:
        super().__init__()
        self._spin = spin

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        spin = self._spin
        if (timeout is not None and timeout <= 0) or spin.in_threads or not spin.until:
            return super().select(timeout)
        begin = time.monotonic()
        end = spin.until if timeout is None else min(spin.until, begin + timeout)
        now = begin
        while now < end:
            ready = super().select(0)
            if ready:
                return ready
            now = time.monotonic()
        if now >= spin.until:
            spin.until = 0.0  # spun the whole window: sleep until something happens
        if timeout is None:
            return super().select(None)
        return super().select(max(0.0, timeout - (now - begin)))


class BusyPollingLoop(asyncio.SelectorEventLoop):
    """A selector event loop that polls for `window` seconds after arm() before it sleeps (0: never)."""

    def __init__(self, window: float) -> None:
        self._spin = _Spin()
        super().__init__(_SpinningSelector(self._spin))
        self.window = window

    def arm(self) -> None:
        if self.window > 0:
            self._spin.until = time.monotonic() + self.window

    def run_in_executor(self, executor: concurrent.futures.Executor | None, func: Callable[[Unpack[Ts]], T],
                        *args: Unpack[Ts]) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self._spin.in_threads += 1
        future.add_done_callback(self._thread_job_done)
        return future

    def _thread_job_done(self, _: asyncio.Future[Any]) -> None:
        self._spin.in_threads -= 1


def arm() -> None:
    """Keep the running loop polling for its window, when it is a BusyPollingLoop (a no-op on any other)."""
    if (loop := _running_busy_loop()) is not None:
        loop.arm()


def set_window(seconds: float) -> None:
    """The running loop's window from now on (a configuration reload), when it is a BusyPollingLoop."""
    if (loop := _running_busy_loop()) is not None:
        loop.window = seconds


def _running_busy_loop() -> BusyPollingLoop | None:
    loop = asyncio.get_running_loop()
    return loop if isinstance(loop, BusyPollingLoop) else None
