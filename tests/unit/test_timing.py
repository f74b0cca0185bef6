"""cripy/timing.py: calls and steps, the in-flight table (nesting, concurrency, holds, joins), the sinks, the
watchdog's stuck-step log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from cripy import timing
from cripy.observe.watchdog import Watchdog
from cripy.timing import step


class Recorder:
    """A sink that writes down what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def call_started(self, call: timing.Call, context: Any) -> None:
        self.events.append(("call", call.method, context))

    def call_ended(self, call: timing.Call, code: str, seconds: float) -> None:
        self.events.append(("end", call.method, code))

    def step_started(self, s: timing.Step) -> None:
        self.events.append(("step", s.name, s.call.method if s.call else None, s.parent.name if s.parent else None))

    def step_ended(self, s: timing.Step, seconds: float, failed: bool) -> None:
        self.events.append(("step-end", s.name, failed))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    sink = Recorder()
    timing.install(sink)
    yield sink
    timing.install()


def begin(method: str, subject: str = "") -> timing.Call:
    return timing.begin("test.Service", method, subject, lambda request: request, context="ctx")


def listed() -> list[tuple[str, int]]:
    return [(call.method, call.joined) for call in timing.inflight()]


async def test_a_call_is_listed_until_it_ends_and_its_steps_reach_the_sinks(recorder: Recorder) -> None:
    async def handler() -> None:
        call = begin("RunPodSandbox", "web in default")
        with step("pod.files"):
            assert [s.name for s in call.current_steps()] == ["pod.files"]
            assert listed() == [("RunPodSandbox", 0)]
        with pytest.raises(RuntimeError), step("cni.add"):
            raise RuntimeError("plugin failed")
        timing.end(call, "INTERNAL")

    await asyncio.create_task(handler())  # grpc runs each call in its own task: its own context
    assert listed() == []
    assert recorder.events == [
        ("call", "RunPodSandbox", "ctx"),
        ("step", "pod.files", "RunPodSandbox", None),
        ("step-end", "pod.files", False),
        ("step", "cni.add", "RunPodSandbox", None),
        ("step-end", "cni.add", True),
        ("end", "RunPodSandbox", "INTERNAL"),
    ]


def test_a_call_answered_at_once_reaches_the_sinks_but_is_never_current_or_listed(recorder: Recorder) -> None:
    timing.instant("test.Service", "ListContainers", "", lambda request: request, context="ctx")
    assert recorder.events == [("call", "ListContainers", "ctx"), ("end", "ListContainers", "OK")]
    assert listed() == [] and timing.current() is None


async def test_the_current_steps_are_the_innermost_of_those_running_side_by_side() -> None:
    async def handler() -> list[str]:
        call = begin("PullImage")
        seen: list[str] = []
        entered = asyncio.Event()
        release = asyncio.Event()

        async def layer(digest: str) -> None:
            with step("layer.download", digest):
                entered.set()
                await release.wait()

        with step("image.pull"):
            tasks = [asyncio.create_task(layer(d)) for d in ("sha256:a", "sha256:b")]
            await entered.wait()
            await asyncio.sleep(0)
            seen = sorted(f"{s.name} {s.detail}" for s in call.current_steps())
            parents = {s.parent.name for s in call.current_steps() if s.parent is not None}
            assert parents == {"image.pull"}
            release.set()
            await asyncio.gather(*tasks)
            assert [s.name for s in call.current_steps()] == ["image.pull"]
        timing.end(call, "OK")
        return seen

    assert await asyncio.create_task(handler()) == ["layer.download sha256:a", "layer.download sha256:b"]


async def test_steps_taken_in_a_worker_thread_belong_to_the_call(recorder: Recorder) -> None:
    def work() -> None:
        with step("ctr.spec"):
            pass

    async def handler() -> None:
        call = begin("CreateContainer")
        await asyncio.to_thread(work)
        timing.end(call, "OK")

    await asyncio.create_task(handler())
    assert ("step", "ctr.spec", "CreateContainer", None) in recorder.events


async def test_work_that_holds_its_call_keeps_it_listed_and_a_joining_retry_is_counted_on_it() -> None:
    release = asyncio.Event()
    owner: list[timing.Call] = []

    async def work() -> None:
        with timing.hold(), step("cni.add"):
            await release.wait()

    async def first() -> asyncio.Task[None]:
        owner.append(begin("RunPodSandbox", "web"))
        task = asyncio.create_task(work())  # a task of its own, as NameReservations makes
        await asyncio.sleep(0)
        timing.end(owner[0], "CANCELLED")  # the client gave up; the work goes on
        return task

    task = await asyncio.create_task(first())
    assert listed() == [("RunPodSandbox", 0)]

    async def retry() -> None:
        call = begin("RunPodSandbox", "web")
        timing.join(owner[0])
        assert listed() == [("RunPodSandbox", 1)]  # one row: the work, with the retry counted on it
        await task
        timing.end(call, "OK")

    retrying = asyncio.create_task(retry())
    await asyncio.sleep(0)
    assert [s.name for s in timing.inflight()[0].current_steps()] == ["cni.add"]
    release.set()
    await retrying
    assert listed() == []


def test_an_undeclared_step_is_refused() -> None:
    with pytest.raises(ValueError, match="undeclared step 'cni.made-up'"):
        step("cni.made-up")


def test_a_step_outside_any_call_still_reaches_the_sinks(recorder: Recorder) -> None:
    with step("cni.del"):
        pass
    assert recorder.events == [("step", "cni.del", None, None), ("step-end", "cni.del", False)]


async def test_the_watchdog_logs_a_stuck_step_once_with_its_call_and_object(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = Watchdog(stuck_after=0.05)
    caplog.set_level(logging.INFO)

    async def handler() -> None:
        call = begin("RunPodSandbox", "web in default")
        with step("cni.add"):
            await asyncio.sleep(0.1)
            watchdog.check()
            watchdog.check()
        timing.end(call, "OK")

    await asyncio.create_task(handler())
    stuck = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(stuck) == 1
    assert "RunPodSandbox" in stuck[0] and "(web in default)" in stuck[0] and "step cni.add" in stuck[0]
    assert any("step cni.add finished after" in r.getMessage() for r in caplog.records)


async def test_at_debug_level_a_call_logs_its_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cripy.timing")

    async def handler() -> None:
        call = begin("StartContainer")
        with step("runtime.create"):
            pass
        with step("runtime.start"):
            pass
        timing.end(call, "OK")

    await asyncio.create_task(handler())
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("StartContainer took")]
    assert "runtime.create=" in line and "runtime.start=" in line
