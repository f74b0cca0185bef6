"""cripy/images/progress.py and the admin service's watch: layer states, snapshots, and a watcher that sees an
operation from before it begins to its end."""

from __future__ import annotations

import asyncio

from cripy.cri import admin
from cripy.images import progress
from cripy.images.progress import LayerProgress, ProgressBoard


def test_a_layer_goes_from_waiting_to_done_and_a_present_one_counts_no_bytes() -> None:
    board = ProgressBoard()
    operation = board.begin(progress.PULL, "busybox")
    assert operation.snapshot()["state"] == progress.RESOLVING
    fetched, present = LayerProgress("sha256:a", 1000), LayerProgress("sha256:b", 500)
    operation.set_layers([fetched, present])
    fetched.begin()
    fetched.advance(400)
    present.set_state(progress.PRESENT)
    assert operation.bytes_done == 400
    snapshot = operation.snapshot()
    assert [(layer["state"], layer["done"]) for layer in snapshot["layers"]] == [("downloading", 400), ("present", 500)]
    fetched.set_state(progress.UNPACKING)
    fetched.set_state(progress.DONE)
    board.finish(operation, image_id="sha256:img")
    assert board.in_flight(progress.PULL) == []
    final = operation.snapshot()
    assert final["state"] == progress.SUCCEEDED and final["imageId"] == "sha256:img"
    assert final["layers"][0]["done"] == 1000


async def test_a_watcher_waits_for_the_operation_and_follows_it_to_its_end() -> None:
    board = ProgressBoard()
    seen: list[dict] = []

    async def watching() -> None:
        async for snapshot in admin.watch(board, progress.PULL, "busybox", wait=5):
            seen.append(snapshot)

    watcher = asyncio.create_task(watching())
    await asyncio.sleep(0.3)  # the watcher is early: nothing to see yet
    operation = board.begin(progress.PULL, "busybox")
    layer = LayerProgress("sha256:a", 100)
    operation.set_layers([layer])
    await asyncio.sleep(0.3)
    layer.begin()
    layer.advance(60)
    await asyncio.sleep(0.3)
    board.finish(operation, error=RuntimeError("registry went away"))
    await asyncio.wait_for(watcher, 5)
    assert [s["layers"][0]["done"] if s["layers"] else None for s in seen][-2:] == [60, 60]
    assert seen[-1]["state"] == progress.FAILED and seen[-1]["error"] == "registry went away"
    assert len({s["state"] for s in seen}) >= 2


async def test_a_watcher_gives_up_when_nothing_begins() -> None:
    seen = [s async for s in admin.watch(ProgressBoard(), progress.IMPORT, "never", wait=0.3)]
    assert seen == []
