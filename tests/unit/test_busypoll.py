"""cripy/busypoll.py: an armed loop polls rather than sleeps, for its window only, never while a thread job it
handed out is outstanding, and without delaying what it serves: events and timers are handled as they come.

Whether the loop polled is read from the CPU time of its thread (time.thread_time): a loop asleep in epoll_wait
uses almost none, a polling one uses most of the wall-clock time it polls. The bounds are loose on purpose (the
machine may be busy with other tests); each is several times away from what the other behaviour would give.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from cripy import busypoll
from cripy.busypoll import BusyPollingLoop

T = TypeVar("T")


def run_on(loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[T]]) -> T:
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


async def cpu_seconds_of(awaitable: Awaitable[object]) -> float:
    """The loop thread's CPU time while `awaitable` runs."""
    begin = time.thread_time()
    await awaitable
    return time.thread_time() - begin


def test_an_armed_loop_polls_for_its_window_instead_of_sleeping() -> None:
    async def scenario() -> tuple[float, float]:
        idle = await cpu_seconds_of(asyncio.sleep(0.2))
        busypoll.arm()
        armed = await cpu_seconds_of(asyncio.sleep(0.2))
        return idle, armed

    idle, armed = run_on(BusyPollingLoop(window=1.0), scenario)
    assert idle < 0.05, "an unarmed loop sleeps"
    assert armed > 0.08, "an armed loop polls"


def test_polling_ends_with_the_window() -> None:
    async def scenario() -> float:
        busypoll.arm()
        return await cpu_seconds_of(asyncio.sleep(0.5))

    assert run_on(BusyPollingLoop(window=0.05), scenario) < 0.25


def test_no_polling_while_a_thread_job_is_outstanding() -> None:
    async def scenario() -> float:
        busypoll.arm()
        return await cpu_seconds_of(asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.3))

    assert run_on(BusyPollingLoop(window=2.0), scenario) < 0.1


def test_a_window_of_zero_never_polls() -> None:
    async def scenario() -> float:
        busypoll.arm()
        return await cpu_seconds_of(asyncio.sleep(0.2))

    assert run_on(BusyPollingLoop(window=0.0), scenario) < 0.05


def test_set_window_applies_to_the_next_arming() -> None:
    async def scenario() -> tuple[float, float]:
        busypoll.set_window(0.0)
        busypoll.arm()
        off = await cpu_seconds_of(asyncio.sleep(0.2))
        busypoll.set_window(1.0)
        busypoll.arm()
        on = await cpu_seconds_of(asyncio.sleep(0.2))
        return off, on

    off, on = run_on(BusyPollingLoop(window=1.0), scenario)
    assert off < 0.05 and on > 0.08


def test_data_arriving_while_it_polls_is_read_at_once() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)

    async def scenario() -> tuple[bytes, float]:
        busypoll.arm()
        writer = threading.Timer(0.02, right.send, (b"ping",))
        writer.start()
        begin = time.monotonic()
        data = await asyncio.get_running_loop().sock_recv(left, 16)
        writer.join()
        return data, time.monotonic() - begin

    try:
        data, waited = run_on(BusyPollingLoop(window=5.0), scenario)
    finally:
        left.close()
        right.close()
    assert data == b"ping"
    assert waited < 2.0, "the read waited for the window to end"


def test_timers_fire_on_time_while_it_polls() -> None:
    async def scenario() -> float:
        busypoll.arm()
        begin = time.monotonic()
        await asyncio.sleep(0.02)
        return time.monotonic() - begin

    assert run_on(BusyPollingLoop(window=5.0), scenario) < 2.0


def test_arm_and_set_window_do_nothing_on_another_loop() -> None:
    async def scenario() -> float:
        busypoll.set_window(1.0)
        busypoll.arm()
        return await cpu_seconds_of(asyncio.sleep(0.2))

    assert asyncio.run(scenario()) < 0.05


@pytest.mark.parametrize("value", [-1, 10_001])
def test_the_window_is_bounded_in_the_configuration(value: int) -> None:
    from cripy.config import Config, ConfigError, validate

    config = Config()
    config.cripy.busy_poll_us = value
    with pytest.raises(ConfigError, match="busy_poll_us"):
        validate(config)
