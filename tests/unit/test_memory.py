"""glibc's malloc as cripy.linux.memory sets it, each in a fresh interpreter: the arenas, capped by limit_arenas
(counted with glibc's own malloc_stats while threads contend for the heap: ctypes calls run without the GIL), and
the mmap threshold that fix_mmap_threshold keeps from sliding (read from a large block's chunk header)."""

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



LARGE_BLOCK_AFTER_A_FREE = textwrap.dedent("""
    import ctypes, sys
    from cripy.linux import memory
    if sys.argv[1] == "fix":
        memory.fix_mmap_threshold()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(1 << 20))  # freeing a mapped block is what slides glibc's threshold up
    block = libc.malloc(1 << 20)
    IS_MMAPPED = 2  # the flag in the size word of a chunk's header (glibc's malloc.c)
    print(bool(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & IS_MMAPPED))
""")


def next_large_block_is_mapped(mode: str, env: dict[str, str] | None = None) -> bool:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", LARGE_BLOCK_AFTER_A_FREE, mode], capture_output=True, text=True,
                            timeout=60, env=dict(environment, **(env or {})), check=True)
    return result.stdout.strip() == "True"


def test_large_blocks_stay_mapped_once_the_threshold_is_fixed() -> None:
    assert not next_large_block_is_mapped("free")  # glibc's sliding threshold: the heap serves it, amid small ones
    assert next_large_block_is_mapped("fix")


def test_an_operators_mmap_threshold_stands() -> None:
    assert not next_large_block_is_mapped("fix", {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)})
