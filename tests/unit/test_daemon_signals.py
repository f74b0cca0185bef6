"""The daemon's signal handling while it starts: a SIGHUP must neither end it nor reach a reload half-built."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from cripy.config import Config
from cripy.daemon import Daemon


async def test_a_sighup_while_starting_is_applied_once_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    config.cripy.root, config.cripy.runroot = str(tmp_path / "root"), str(tmp_path / "run")
    daemon = Daemon(config, reload=lambda: config)
    starting, go_on = asyncio.Event(), asyncio.Event()
    reloads: list[bool] = []

    async def slow_start() -> None:
        starting.set()
        await go_on.wait()

    async def stop() -> None:
        pass

    monkeypatch.setattr(daemon, "start", slow_start)
    monkeypatch.setattr(daemon, "stop", stop)
    monkeypatch.setattr(daemon, "reload", lambda: reloads.append(daemon._started))
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(daemon.run())
    try:
        await starting.wait()
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.05)
        assert reloads == [], "a reload while starting would touch what start() has not built"
        go_on.set()
        await asyncio.sleep(0.05)
        assert reloads == [True], "the SIGHUP is applied once started, once"
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.05)
        assert reloads == [True, True]
        daemon.request_stop()
        await asyncio.wait_for(running, 5)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        running.cancel()
