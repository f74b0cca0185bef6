"""Giving memory back to the kernel.

A pull moves hundreds of megabytes through the daemon in 1 MB chunks; glibc keeps the freed chunks in its arenas,
so the daemon's RSS would stay at its peak long after the pull. malloc_trim(0) returns them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
