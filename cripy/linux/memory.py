"""Giving memory back to the kernel.

A pull moves hundreds of megabytes through the daemon in 1 MB chunks; glibc keeps the freed chunks in its arenas,
so the daemon's RSS would stay at its peak long after the pull. malloc_trim(0) returns them. Large CRI requests
(megabytes of annotations, env or exec arguments: gRPC's buffers, the parsed message, its strings) leave the same
behind; `release_soon` returns it once such calls have stopped coming for a moment.

malloc_trim cannot return what is spread over many arenas, though: glibc gives each thread that contends for the
heap an arena of its own (up to eight per core), and a pull's worker threads each left a fragmented one behind:
the daemon's RSS grew by about 8 MiB with every pull of the benchmark's images. Two arenas keep it flat
(`limit_arenas`); the daemon's threads mostly wait on I/O or hold the GIL, so they hardly contend for more.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os

RELEASE_DELAY = 0.5  # seconds after the last large call
ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
_pending: asyncio.TimerHandle | None = None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # not there on non-glibc systems
        return libc
    except (OSError, AttributeError):
        return None


def limit_arenas(count: int = ARENA_MAX) -> None:
    """Cap glibc's malloc arenas; before any thread starts (later threads would get arenas already). An operator's
    MALLOC_ARENA_MAX, which glibc reads itself, stands."""
    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, count)


def release_free_heap() -> None:
    """Return the free parts of the C heap to the kernel (a no-op where libc has no malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def release_soon() -> None:
    """Release the free heap shortly (once, however many calls ask in the meantime), off the event loop."""
    global _pending
    loop = asyncio.get_running_loop()
    if _pending is not None:
        _pending.cancel()

    def release() -> None:
        global _pending
        _pending = None
        loop.run_in_executor(None, release_free_heap)

    _pending = loop.call_later(RELEASE_DELAY, release)
