"""Bounded pools for blocking work that a client can make slow.

asyncio.to_thread shares one small executor (a few threads per core) among all the daemon's blocking work: a
request that names a path on a hung network mount, or anything else that never returns, would hold one of those
threads for good, and a handful of such requests would stall every pod and container call behind them. Work that
touches what a request names (host paths of mounts and devices, Localhost seccomp profiles) runs instead in a pool
of its own, with a deadline: the caller gets DeadlineExceeded when the work overruns it, and Unavailable at once
when every thread of the pool is still held by earlier overruns. The daemon's own work is never queued behind it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

from cripy.errors import DeadlineExceeded, Unavailable

T = TypeVar("T")


class BoundedPool:
    """A fixed number of threads; each call has a deadline, its wait for a thread included. Calls queue while the
    threads are busy; only threads held by calls that overran their deadline (work that may never return) count
    against the pool, and when all of them are, a call is refused at once instead of queueing behind them."""

    def __init__(self, name: str, threads: int, deadline: float) -> None:
        self.name = name
        self.threads = threads
        self.deadline = deadline
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"cripy-{name}")
        self._lock = threading.Lock()
        self._overrun = 0  # threads still held by calls whose callers gave up on them

    async def run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._overrun >= self.threads:
                raise Unavailable(f"{what}: every {self.name} worker is busy with earlier calls that overran their "
                                  f"{self.deadline:g}s deadline; try again later")
        state = _CallState()

        def call() -> T:
            with self._lock:
                if state.abandoned:
                    raise concurrent.futures.CancelledError()  # its caller gave up while it queued
                state.started = True
            try:
                return fn(*args)
            finally:
                with self._lock:
                    state.finished = True
                    if state.abandoned:
                        self._overrun -= 1

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.deadline)
        except TimeoutError:
            with self._lock:
                state.abandoned = True
                if state.started and not state.finished:
                    self._overrun += 1
            future.add_done_callback(_consume)  # the late outcome is nobody's: do not log it as unretrieved
            raise DeadlineExceeded(f"{what} did not finish within {self.deadline:g}s (a hung mount?)") from None


class _CallState:
    __slots__ = ("started", "finished", "abandoned")

    def __init__(self) -> None:
        self.started = self.finished = self.abandoned = False


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


# Stats, realpaths and reads of paths a request names (mount and device host paths, seccomp profiles).
HOST_PATHS = BoundedPool("host-path", threads=4, deadline=30.0)
