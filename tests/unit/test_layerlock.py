"""The layer lock (cripy/images/layerlock.py): the audit compares layer directories with rows only when no layer
is being written or removed, and a writer waits while the audit holds it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cripy.images.layerlock import RETRY_SECONDS, LayerLock, LayerLockTimeout


def test_the_audit_does_not_get_the_lock_while_a_layer_is_written(tmp_path: Path) -> None:
    lock = LayerLock(tmp_path / "layers.lock")

    async def scenario() -> list[bool]:
        seen = []
        async with lock.writing():
            async with LayerLock(lock.path).writing():  # writers share it
                with lock.auditing() as alone:
                    seen.append(alone)
            with lock.auditing() as alone:
                seen.append(alone)
        with lock.auditing() as alone:
            seen.append(alone)
        return seen

    assert asyncio.run(scenario()) == [False, False, True]


def test_a_writer_waits_for_the_audit_without_blocking_the_loop(tmp_path: Path) -> None:
    lock = LayerLock(tmp_path / "layers.lock")

    async def scenario() -> tuple[bool, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        with lock.auditing() as alone:
            writer = asyncio.create_task(_write(lock))
            await asyncio.sleep(RETRY_SECONDS * 4)
            waiting = not writer.done()
        await asyncio.wait_for(writer, 5)
        ticker.cancel()
        return alone and waiting, ticks

    held_up, ticks = asyncio.run(scenario())
    assert held_up
    assert ticks > 10  # the loop kept running while the writer waited


async def _write(lock: LayerLock) -> None:
    async with lock.writing():
        pass


def test_a_writer_gives_up_on_an_audit_that_holds_the_lock_too_long(tmp_path: Path) -> None:
    lock = LayerLock(tmp_path / "layers.lock")

    async def scenario() -> None:
        async with lock.writing(wait=RETRY_SECONDS * 3):
            pass

    with lock.auditing() as alone:
        assert alone
        with pytest.raises(LayerLockTimeout, match="held by an audit"):
            asyncio.run(scenario())
