"""Bounded pools: work that overruns its deadline answers DeadlineExceeded, a pool held by overruns refuses at once
(Unavailable), and neither holds up the event loop's own executor."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cripy.blocking import BoundedPool
from cripy.errors import DeadlineExceeded, Unavailable


async def test_overruns_answer_deadline_exceeded_then_a_full_pool_refuses() -> None:
    pool = BoundedPool("test", threads=2, deadline=0.2)
    release = threading.Event()
    for _ in range(2):
        with pytest.raises(DeadlineExceeded, match="within 0.2s"):
            await pool.run("stat /hung", release.wait)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="busy"):
        await pool.run("stat /other", time.sleep, 0)
    assert time.monotonic() - started < 0.1
    assert await asyncio.to_thread(lambda: "the default executor still serves") == "the default executor still serves"
    release.set()  # the hung calls end: their threads come back
    for _ in range(50):
        try:
            assert await pool.run("stat /ok", lambda: 42) == 42
            break
        except Unavailable:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the pool never got its threads back")


async def test_busy_threads_make_calls_wait_not_fail() -> None:
    """More calls than threads, none overrunning (ten CreateContainers at once): they queue and all succeed."""
    pool = BoundedPool("test", threads=2, deadline=5.0)
    results = await asyncio.gather(*(pool.run("build a spec", lambda i=i: (time.sleep(0.05), i)[1])
                                     for i in range(10)))
    assert results == list(range(10))


async def test_a_call_that_only_queued_past_its_deadline_never_runs() -> None:
    pool = BoundedPool("test", threads=1, deadline=0.3)
    ran: list[str] = []
    slow = asyncio.create_task(pool.run("stat /slow", lambda: (time.sleep(0.5), ran.append("slow"))))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await pool.run("stat /queued", lambda: ran.append("queued"))  # waits behind the slow one, then gives up
    with pytest.raises(DeadlineExceeded):
        await slow
    await asyncio.sleep(0.4)
    assert ran == ["slow"]  # the queued call was dropped, not run for nobody
    assert await pool.run("stat /ok", lambda: "back") == "back"
