"""Prometheus metrics of the daemon, served over HTTP on `[metrics] address` (a unix socket or a TCP address).

Only this module imports prometheus_client, and only the daemon with metrics enabled imports this module: a node
that does not scrape carries neither. What is measured per call (CRI calls, their steps) comes through the
timing sink below, observed into histograms bound once per label set. Everything else is a plain count the
daemon keeps anyway (pull totals, exits, the effect journal, the records by state) and is read when Prometheus
scrapes, so that it costs nothing between scrapes. Label values come from fixed sets (CRI method names, gRPC
codes, step names, effect kinds, states): never an id or an image name.

The CRI's own metrics (ListPodSandboxMetrics: cAdvisor's container_* figures for the kubelet) are another thing;
these describe the runtime itself.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from cripy import timing
from cripy.config import metrics_listener

if TYPE_CHECKING:
    from cripy.containers.manager import ContainerManager
    from cripy.images.progress import ProgressBoard
    from cripy.pods.manager import PodManager
    from cripy.storage.effects import EffectCounts

log = logging.getLogger(__name__)

# Seconds: from a fraction of a millisecond (a list served from memory) to minutes (a pull, a slow CNI plugin).
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The registry, the per-call instruments, the scrape-time collector and the HTTP endpoint."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Histogram(
            "cripy_cri_request_duration_seconds", "Time to answer a CRI call, by method and gRPC status code.",
            ("method", "code"), registry=self.registry, buckets=CALL_BUCKETS)
        self._steps = Histogram(
            "cripy_step_duration_seconds", "Time spent in one step of a CRI call (README: the steps).",
            ("step",), registry=self.registry, buckets=CALL_BUCKETS)
        self._step_failures: dict[str, int] = dict.fromkeys(timing.STEPS, 0)
        self._lag = Histogram(
            "cripy_event_loop_lag_seconds", "How late the event loop ran a timer: time it spent on other work.",
            registry=self.registry, buckets=LAG_BUCKETS)
        self._bound: dict[tuple[str, str], Any] = {}
        # Bound once: a step's observation is a dict look-up and the histogram's own lock.
        self._step_children = {name: self._steps.labels(name) for name in timing.STEPS}
        ProcessCollector(namespace="cripy", registry=self.registry)
        self._server: socketserver.BaseServer | None = None
        self._socket_path: Path | None = None
        self._thread: threading.Thread | None = None

    # ---- the daemon's readings, read at scrape time -------------------------------------------------------

    def watch(self, *, pods: PodManager, containers: ContainerManager, effects: EffectCounts,
              board: ProgressBoard) -> None:
        self.registry.register(_Readings(pods, containers, effects, board, self._step_failures))

    # ---- timing.Sink ---------------------------------------------------------------------------------------

    def call_started(self, call: timing.Call, context: Any) -> None:
        pass

    def call_ended(self, call: timing.Call, code: str, seconds: float) -> None:
        key = (call.method, code)
        child = self._bound.get(key)
        if child is None:
            child = self._bound[key] = self._requests.labels(call.method, code)
        child.observe(seconds)

    def step_started(self, step: timing.Step) -> None:
        pass

    def step_ended(self, step: timing.Step, seconds: float, failed: bool) -> None:
        self._step_children[step.name].observe(seconds)
        if failed:
            self._step_failures[step.name] += 1

    def loop_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)

    # ---- the endpoint ---------------------------------------------------------------------------------------

    def start(self) -> None:
        listener = metrics_listener(self.address)
        handler: Callable[..., Any] = _MetricsHandler.factory(self.registry)
        if isinstance(listener, Path):
            self._socket_path = listener
            self._server = _serve_unix(listener, handler)
        else:
            self._server = _serve_tcp(*listener, handler)
        # One thread serves every scrape, one after the other (Prometheus scrapes a target one at a time), rather
        # than a thread per scrape: fewer threads for glibc to hand malloc arenas to while pulls run.
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("serving Prometheus metrics on %s", self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._socket_path is not None:
            self._socket_path.unlink(missing_ok=True)


class _Readings(Collector):
    """The counts the daemon keeps, as metric families, built at each scrape."""

    def __init__(self, pods: PodManager, containers: ContainerManager, effects: EffectCounts,
                 board: ProgressBoard, step_failures: dict[str, int]) -> None:
        self._pods = pods
        self._containers = containers
        self._effects = effects
        self._board = board
        self._step_failures = step_failures

    def collect(self) -> Iterable[Any]:
        yield from self._calls()
        yield from self._records()
        yield from self._pulls()
        yield from self._journal()

    def describe(self) -> Iterable[Any]:
        return []  # families are built at scrape time; nothing to check at registration

    def _calls(self) -> Iterable[Any]:
        in_flight = GaugeMetricFamily("cripy_cri_requests_in_flight", "CRI calls being served now, by method.",
                                      labels=("method",))
        counts: dict[str, int] = {}
        for call in timing.inflight():
            counts[call.method] = counts.get(call.method, 0) + 1
        for method, count in sorted(counts.items()):
            in_flight.add_metric((method,), count)
        yield in_flight
        yield _counter("cripy_step_failures", "Steps that ended with an error, by step.", "step", self._step_failures)

    def _records(self) -> Iterable[Any]:
        yield _gauge("cripy_pods", "Pod sandboxes by state.", "state", self._pods.count_by_state())
        yield _gauge("cripy_containers", "Containers by state.", "state", self._containers.count_by_state())
        exits = self._containers.exits
        yield _counter("cripy_container_exits", "Container exits seen, by exit code class (zero, error: 1-128, "
                       "signal: 129 and up).", "code_class", exits.by_class)
        oom = CounterMetricFamily("cripy_container_oom_kills", "Containers whose exit was an OOM kill.")
        oom.add_metric((), exits.oom_kills)
        yield oom

    def _pulls(self) -> Iterable[Any]:
        pulls = self._board.pulls
        done = CounterMetricFamily("cripy_image_pulls", "Image pulls that succeeded.")
        done.add_metric((), pulls.succeeded)
        yield done
        yield _counter("cripy_image_pull_failures", "Image pulls that failed, by reason.", "reason", pulls.failed)
        received = CounterMetricFamily("cripy_image_pull_bytes", "Blob bytes received from registries.")
        received.add_metric((), pulls.bytes)
        yield received
        layers = CounterMetricFamily("cripy_image_pull_layers", "Layers downloaded (not those already present).")
        layers.add_metric((), pulls.layers)
        yield layers
        running = self._board.in_flight("pull")
        in_flight = GaugeMetricFamily("cripy_image_pulls_in_flight", "Image pulls in progress.")
        in_flight.add_metric((), len(running))
        yield in_flight
        in_flight_bytes = GaugeMetricFamily("cripy_image_pull_in_flight_bytes",
                                            "Bytes received so far by the pulls in progress.")
        in_flight_bytes.add_metric((), sum(op.bytes_done for op in running))
        yield in_flight_bytes

    def _journal(self) -> Iterable[Any]:
        pending = GaugeMetricFamily("cripy_effects_pending", "Effects in the journal: made (or about to be) and "
                                    "not yet undone.")
        pending.add_metric((), self._effects.pending)
        yield pending
        yield _counter("cripy_effects_recorded", "Effects journalled, by kind.", "kind", self._effects.recorded)
        yield _counter("cripy_effects_undone", "Effects undone, by kind.", "kind", self._effects.undone)
        yield _counter("cripy_effect_undo_failures", "Undo attempts that failed, by kind.", "kind",
                       self._effects.failed)


def _counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=(label,))
    for key, value in sorted(dict(values).items()):
        family.add_metric((key,), value)
    return family


def _gauge(name: str, documentation: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)
    return family


class _MetricsHandler(MetricsHandler):
    timeout = 10  # a client that stops mid-request cannot hold the one serving thread for longer

    def address_string(self) -> str:
        return "unix" if not self.client_address else str(self.client_address[0])


class _UnixServer(socketserver.UnixStreamServer):
    pass


class _TCPServer(socketserver.TCPServer):
    allow_reuse_address = True


def _serve_unix(path: Path, handler: Callable[..., Any]) -> socketserver.BaseServer:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    old_umask = os.umask(0o177)  # born 0600, like the CRI socket: what runs on the node is no one else's business
    try:
        return _UnixServer(str(path), handler)
    finally:
        os.umask(old_umask)


def _serve_tcp(host: str, port: int, handler: Callable[..., Any]) -> socketserver.BaseServer:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(_TCPServer):
        address_family = family

    return Server(cast(tuple[str, int], address[:2]), handler)
