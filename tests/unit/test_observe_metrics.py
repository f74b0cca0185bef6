"""cripy/observe/metrics.py: the families and their figures, served on a unix socket; and the libraries behind
metrics and traces stay unloaded unless enabled."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cripy import timing
from cripy.containers.manager import ExitCounts
from cripy.images.progress import LayerProgress, ProgressBoard
from cripy.observe.metrics import Metrics
from cripy.storage.effects import EffectCounts
from cripy.timing import step
from tests.support.scrape import scrape


class FakeRecords:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.exits = ExitCounts()

    def count_by_state(self) -> dict[str, int]:
        return self.counts


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[tuple[Metrics, Path]]:
    path = tmp_path / "metrics.sock"
    m = Metrics(f"unix://{path}")
    m.start()
    timing.install(m)
    yield m, path
    timing.install()
    m.stop()


async def test_the_figures_of_calls_steps_records_pulls_and_the_journal(metrics: tuple[Metrics, Path]) -> None:
    m, path = metrics
    pods = FakeRecords({"ready": 2, "notready": 1, "creating": 0})
    containers = FakeRecords({"running": 3, "exited": 1})
    containers.exits.count(0, False)
    containers.exits.count(137, True)
    containers.exits.count(1, False)
    effects = EffectCounts(pending=4, recorded={"pod-network": 2}, undone={"pod-network": 1}, failed={"pod-shm": 1})
    board = ProgressBoard()
    board.pulls.bytes, board.pulls.layers, board.pulls.succeeded = 1000, 2, 1
    board.pulls.failed["not_found"] = 3
    pulling = board.begin("pull", "busybox")
    pulling.set_layers([LayerProgress("sha256:a", 100), LayerProgress("sha256:b", 50)])
    pulling.layers[0].advance(40)
    m.watch(pods=pods, containers=containers, effects=effects, board=board)  # type: ignore[arg-type]

    async def handler() -> None:
        call = timing.begin("runtime.v1.RuntimeService", "RunPodSandbox", None, lambda _: "")
        with step("cni.add"):
            pass
        with pytest.raises(OSError), step("pod.infra"):
            raise OSError("runc failed")
        timing.end(call, "OK")

    await asyncio.create_task(handler())
    m.loop_lag(0.002)
    samples = await asyncio.to_thread(scrape, path)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("cripy_cri_request_duration_seconds_count", method="RunPodSandbox", code="OK") == 1
    assert value("cripy_step_duration_seconds_count", step="cni.add") == 1
    assert value("cripy_step_duration_seconds_count", step="pod.infra") == 1
    assert value("cripy_step_duration_seconds_count", step="layer.download") == 0  # every step, from the start
    assert value("cripy_step_failures_total", step="pod.infra") == 1
    assert value("cripy_pods", state="ready") == 2
    assert value("cripy_containers", state="running") == 3
    assert value("cripy_container_exits_total", code_class="signal") == 1
    assert value("cripy_container_exits_total", code_class="zero") == 1
    assert value("cripy_container_exits_total", code_class="error") == 1
    assert value("cripy_container_oom_kills_total") == 1
    assert value("cripy_image_pulls_total") == 1
    assert value("cripy_image_pull_failures_total", reason="not_found") == 3
    assert value("cripy_image_pull_bytes_total") == 1000
    assert value("cripy_image_pull_layers_total") == 2
    assert value("cripy_image_pulls_in_flight") == 1
    assert value("cripy_image_pull_in_flight_bytes") == 40
    assert value("cripy_effects_pending") == 4
    assert value("cripy_effects_recorded_total", kind="pod-network") == 2
    assert value("cripy_effects_undone_total", kind="pod-network") == 1
    assert value("cripy_effect_undo_failures_total", kind="pod-shm") == 1
    assert value("cripy_event_loop_lag_seconds_count") == 1
    assert value("cripy_process_resident_memory_bytes") > 0
    names = {name for name, _ in samples}
    assert all(name.startswith("cripy_") for name in names)


def test_the_socket_is_private_and_removed_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "m.sock"
    m = Metrics(str(path))
    m.start()
    assert path.stat().st_mode & 0o777 == 0o600
    m.stop()
    assert not path.exists()


def test_a_tcp_address_serves_too(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = Metrics(f"127.0.0.1:{port}")
    m.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
        assert "cripy_cri_request_duration_seconds" in body
    finally:
        m.stop()


def test_metrics_and_tracing_libraries_load_only_when_enabled() -> None:
    """The daemon with its default configuration never imports prometheus_client or OpenTelemetry."""
    code = ("import sys, cripy.cli, cripy.daemon, cripy.cri.admin\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'opentelemetry', 'tqdm')]\n"
            "print(loaded)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_lists_every_step_and_every_metric(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in timing.STEPS:
        assert f"| `{name}` |" in readme, name
    m = Metrics(str(tmp_path / "m.sock"))
    containers = FakeRecords({})
    m.watch(pods=FakeRecords({}), containers=containers, effects=EffectCounts(), board=ProgressBoard())  # type: ignore[arg-type]
    families = {family.name for family in m.registry.collect()}
    assert families, "no metric families"
    for name in families:
        listed = f"`{name}_total`" in readme or f"`{name}`" in readme or name.startswith("cripy_process_")
        assert listed, f"README does not list {name}"
