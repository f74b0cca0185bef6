"""The watchdog: once a second it looks at the calls in flight and logs, once, every step that has lasted longer
than `[cripy] stuck_step_seconds`, naming the call, its object and the step (so a hung runc, CNI plugin or
registry is in the log before anyone asks); and it measures how late its own timer fired, which is the event
loop's lag, for the metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from cripy import timing

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class Watchdog:
    def __init__(self, stuck_after: float, lag: Callable[[float], None] | None = None) -> None:
        self.stuck_after = stuck_after  # 0: never report
        self._lag = lag
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            if self._lag is not None:
                self._lag(max(0.0, time.monotonic() - due))
            self.check()

    def check(self) -> None:
        """Log each step that has just passed the limit (and only once)."""
        if self.stuck_after <= 0:
            return
        for call in timing.inflight():
            for step in call.current_steps():
                if not step.reported and step.seconds >= self.stuck_after:
                    step.reported = True
                    log.warning("%s", timing.describe_stuck(step))
