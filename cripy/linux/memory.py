"""Giving memory back to the kernel.

A pull moves hundreds of megabytes through the daemon in 1 MB chunks; glibc keeps the freed chunks in its arenas,
so the daemon's RSS would stay at its peak long after the pull. malloc_trim(0) returns them. Large CRI requests
(megabytes of annotations, env or exec arguments: gRPC's buffers, the parsed message, its strings) leave the same
behind; `release_soon` returns it once such calls have stopped coming for a moment.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools

RELEASE_DELAY = 0.5  # seconds after the last large call
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
