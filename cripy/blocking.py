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
    """A fixed number of threads; each call has a deadline; a full pool refuses instead of queueing."""

    def __init__(self, name: str, threads: int, deadline: float) -> None:
        self.name = name
        self.deadline = deadline
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"cripy-{name}")
        self._slots = threading.BoundedSemaphore(threads)

    async def run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        if not self._slots.acquire(blocking=False):
            raise Unavailable(f"{what}: every {self.name} worker is busy with earlier calls that overran their "
                              f"{self.deadline:g}s deadline; try again later")

        def call() -> T:
            try:
                return fn(*args)
            finally:
                self._slots.release()  # only when the work itself ends, however long after its caller gave up

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.deadline)
        except TimeoutError:
            raise DeadlineExceeded(f"{what} did not finish within {self.deadline:g}s (a hung mount?)") from None


# Stats, realpaths and reads of paths a request names (mount and device host paths, seccomp profiles).
HOST_PATHS = BoundedPool("host-path", threads=4, deadline=30.0)
