"""Integration fixtures: real registries (tests/support) and real cripy daemons on temporary roots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import CripyDaemon
from tests.support.fixtures import *  # noqa: F401,F403  (registry, token server and fault proxy fixtures)

if os.geteuid() != 0:
    pytest.skip("integration tests need root", allow_module_level=True)


@pytest.fixture
def cripy_factory(tmp_path: Path) -> Iterator[Callable[..., CripyDaemon]]:
    """Factory of started daemons, each in its own directory; stopped (and its root removed) after the test."""
    started: list[CripyDaemon] = []

    def make(**kwargs: Any) -> CripyDaemon:
        daemon = CripyDaemon(tmp_path / f"cripy{len(started)}", **kwargs)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()
        shutil.rmtree(daemon.workdir, ignore_errors=True)
