"""glibc's arenas, capped by cripy.linux.memory.limit_arenas: counted in a fresh interpreter whose threads contend
for the heap (ctypes calls run without the GIL), with glibc's own malloc_stats."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from cripy.linux import memory

CONTENDING_THREADS = textwrap.dedent("""
    import ctypes, sys, threading
    from cripy.linux import memory
    if sys.argv[1] == "limit":
        memory.limit_arenas()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def churn():
        for _ in range(20000):
            libc.free(libc.malloc(4096))

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc.malloc_stats()
""")

pytestmark = pytest.mark.skipif(memory._libc() is None, reason="not glibc")


def arenas(mode: str, env: dict[str, str] | None = None) -> int:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", CONTENDING_THREADS, mode], capture_output=True, text=True,
                            timeout=60, env=dict(environment, **(env or {})), check=True)
    return len(re.findall(r"^Arena \d+:", result.stderr, re.MULTILINE))


def test_threads_that_contend_get_arenas_of_their_own_unless_capped() -> None:
    assert arenas("free") > memory.ARENA_MAX  # what the cap is for: without it, glibc makes more
    assert arenas("limit") <= memory.ARENA_MAX


def test_an_operators_malloc_arena_max_stands() -> None:
    assert arenas("limit", {"MALLOC_ARENA_MAX": "4"}) > memory.ARENA_MAX
