"""cripy.storage.names: a repeated create joins the one in flight; a held name is refused naming its holder."""

from __future__ import annotations

import asyncio

import pytest

from cripy.errors import AlreadyExists, Internal
from cripy.storage.names import NameReservations


class Creator:
    """A create() that blocks until released, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"id-{self.calls}"


async def nobody_holds(name: str) -> str | None:
    return None


async def test_create_once_answers_the_new_id() -> None:
    names = NameReservations("pod")
    creator = Creator()
    creator.release.set()
    assert await names.create_once("web_default_uid_0", nobody_holds, creator) == "id-1"
    assert creator.calls == 1


async def test_retry_while_the_first_is_in_flight_gets_the_same_id() -> None:
    names = NameReservations("pod")
    creator = Creator()
    holder_calls: list[str] = []

    async def holder(name: str) -> str | None:
        holder_calls.append(name)
        return None

    first = asyncio.create_task(names.create_once("n", holder, creator))
    await creator.started.wait()
    retry = asyncio.create_task(names.create_once("n", holder, creator))
    await asyncio.sleep(0)  # let the retry reach its wait
    assert not retry.done()
    creator.release.set()
    assert await first == "id-1"
    assert await retry == "id-1"
    assert creator.calls == 1
    assert holder_calls == ["n"]  # the joiner does not look the name up


async def test_an_error_in_the_first_call_reaches_the_joiner() -> None:
    names = NameReservations("container")
    creator = Creator()
    creator.error = Internal("runc create failed")
    first = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await creator.started.wait()
    retry = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await asyncio.sleep(0)
    creator.release.set()
    with pytest.raises(Internal, match="runc create failed"):
        await first
    with pytest.raises(Internal, match="runc create failed"):
        await retry
    assert creator.calls == 1


async def test_after_a_failure_the_name_can_be_created_again() -> None:
    names = NameReservations("pod")
    failing = Creator()
    failing.error = Internal("boom")
    failing.release.set()
    with pytest.raises(Internal):
        await names.create_once("n", nobody_holds, failing)
    working = Creator()
    working.release.set()
    assert await names.create_once("n", nobody_holds, working) == "id-1"


async def test_different_names_do_not_wait_for_each_other() -> None:
    names = NameReservations("pod")
    slow = Creator()
    first = asyncio.create_task(names.create_once("a", nobody_holds, slow))
    await slow.started.wait()
    fast = Creator()
    fast.release.set()
    assert await names.create_once("b", nobody_holds, fast) == "id-1"
    assert not first.done()
    slow.release.set()
    await first


async def test_a_held_name_is_refused_naming_the_holder() -> None:
    names = NameReservations("container")
    creator = Creator()
    creator.release.set()

    async def holder(name: str) -> str | None:
        return "c0ffee" if name == "taken" else None

    with pytest.raises(AlreadyExists) as info:
        await names.create_once("taken", holder, creator)
    assert "'taken'" in str(info.value)
    assert "c0ffee" in str(info.value)
    assert "container" in str(info.value)
    assert creator.calls == 0


async def test_joiner_is_not_cancelled_with_the_first_caller() -> None:
    """Cancelling the retry (its client went away) does not cancel the creation it joined."""
    names = NameReservations("pod")
    creator = Creator()
    first = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await creator.started.wait()
    retry = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await asyncio.sleep(0)
    retry.cancel()
    with pytest.raises(asyncio.CancelledError):
        await retry
    creator.release.set()
    assert await first == "id-1"


async def test_joiner_survives_the_cancellation_of_the_first_caller() -> None:
    names = NameReservations("pod")
    creator = Creator()
    first = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await creator.started.wait()
    retry = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    creator.release.set()
    assert await retry == "id-1"
    assert creator.calls == 1  # the retry joined the creation the first caller started


async def test_creation_completes_when_its_only_caller_gives_up() -> None:
    """kubelet's deadline cancels its call; the creation finishes anyway, and the retry finds it in flight."""
    names = NameReservations("pod")
    creator = Creator()
    first = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await creator.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = asyncio.create_task(names.create_once("n", nobody_holds, creator))
    await asyncio.sleep(0)
    creator.release.set()
    assert await retry == "id-1"
    assert creator.calls == 1


async def test_two_first_calls_racing_through_the_holder_lookup_create_once() -> None:
    names = NameReservations("pod")
    creator = Creator()
    creator.release.set()
    lookups = 0
    both_looking = asyncio.Event()

    async def slow_holder(name: str) -> str | None:
        nonlocal lookups
        lookups += 1
        if lookups == 2:
            both_looking.set()
        await both_looking.wait()  # neither has registered its creation yet
        return None

    results = await asyncio.gather(
        names.create_once("n", slow_holder, creator), names.create_once("n", slow_holder, creator)
    )
    assert results == ["id-1", "id-1"]
    assert creator.calls == 1
