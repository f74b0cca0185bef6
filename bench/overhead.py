"""`python -m bench.overhead`: what cripy's instrumentation costs one CRI call, in-process, without the noise of a
whole daemon: a call with the steps of a RunPodSandbox (begin, five steps, end), with no sink (metrics off), with
the Prometheus sink (metrics on), and with a scrape of the metrics every 100 calls. Prints microseconds per call;
compare with the call itself (RunPodSandbox takes tens of milliseconds: docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from prometheus_client import generate_latest

from bench.steps import STEPS_OF
from cripy import timing
from cripy.containers.manager import ExitCounts
from cripy.images.progress import ProgressBoard
from cripy.observe.metrics import Metrics
from cripy.storage.effects import EffectCounts
from cripy.timing import step

CALLS = 20000
STEPS = STEPS_OF["RunPodSandbox"]


class _Records:
    exits = ExitCounts()

    def count_by_state(self) -> dict[str, int]:
        return {"ready": 10, "running": 20}


async def _calls(count: int, scrape_every: int = 0, metrics: Metrics | None = None) -> float:
    async def one() -> None:
        call = timing.begin("runtime.v1.RuntimeService", "RunPodSandbox", None, lambda _: "")
        for name in STEPS:
            with step(name):
                pass
        timing.end(call, "OK")

    started = time.perf_counter()
    for i in range(count):
        await asyncio.create_task(one())  # each call in a task of its own, as grpc runs them
        if scrape_every and metrics is not None and i % scrape_every == 0:
            generate_latest(metrics.registry)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    timing.install()
    bare = asyncio.run(_calls(CALLS))
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Metrics(f"unix://{Path(tmp) / 'm.sock'}")
        records = _Records()
        metrics.watch(pods=records, containers=records, effects=EffectCounts(), board=ProgressBoard())  # type: ignore[arg-type]
        timing.install(metrics)
        with_metrics = asyncio.run(_calls(CALLS))
        with_scrapes = asyncio.run(_calls(CALLS, scrape_every=100, metrics=metrics))
        timing.install()
    print(f"per call (begin, {len(STEPS)} steps, end; {CALLS} calls, each in its own task):")
    print(f"  metrics off:                    {bare:7.1f} us")
    print(f"  metrics on:                     {with_metrics:7.1f} us  (+{with_metrics - bare:.1f} us)")
    print(f"  metrics on, a scrape per 100:   {with_scrapes:7.1f} us  (+{with_scrapes - bare:.1f} us)")


if __name__ == "__main__":
    main()
