"""The daemon learns of its children's exits through pidfds (cripy.daemon.watch_children_with_pidfds), not with
a waiting thread per child: checked in a fresh interpreter, since the child watcher is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SPAWN_AND_COUNT_THREADS = textwrap.dedent("""
    import asyncio, sys, threading
    from cripy import daemon
    if sys.argv[1] == "pidfd":
        daemon.watch_children_with_pidfds()

    async def main():
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(0.3); exit(3)")
        await asyncio.sleep(0.1)
        waiting = [t.name for t in threading.enumerate() if "waitpid" in t.name]
        print(len(waiting), await proc.wait())

    asyncio.run(main())
""")


def spawn(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", SPAWN_AND_COUNT_THREADS, mode], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    return int(out[0]), int(out[1])


def test_children_are_watched_without_a_thread_each() -> None:
    assert spawn("pidfd") == (0, 3)


def test_the_default_watcher_would_start_a_thread() -> None:
    """What the daemon avoids (and what makes the test above able to fail)."""
    if sys.version_info >= (3, 12):
        return  # pidfds are already the default there
    assert spawn("default") == (1, 3)
