"""Kubelet-scale scenarios: a node filled to the kubelet's default max-pods (110 pods of two containers, started ten
at a time as the kubelet's pod workers would), the kubelet's polling of that node, and churn (a tenth of the pods
replaced every round) with the polling running, watching what must stay flat: the daemon's RSS, open fds, threads
and metadata database.

Each runtime runs the whole sequence on its own (fill, poll, churn, teardown), one after the other, so that one
runtime's 220 containers do not load the other's figures.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from cri_api.v1 import api_pb2

from bench.scenarios import CALL_TIMEOUT, KUBELET_LIST_CONTAINERS, MIB, MS, Driver, Plan, Results

SECTION_FILL = "Kubelet scale: filling a node"
SECTION_POLL = "Kubelet scale: the kubelet's polling"
SECTION_CHURN = "Kubelet scale: churn"
CONTAINERS_PER_POD = ("app", "sidecar")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Node:
    """The pods one runtime holds during the scale scenarios: (pod id, name), oldest first."""

    driver: Driver
    pods: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    made: int = 0

    def add(self) -> float:
        """Make one pod ready with its two containers; its latency in ms."""
        with self.lock:
            name = f"scale-{self.made}"
            self.made += 1
        begin = time.perf_counter()
        config = self.driver.pod_config(name)
        pod_id = self.driver.run_pod(config)
        with self.lock:
            self.pods.append((pod_id, name))
        ctr_ids = [self.driver.create(pod_id, config, ctr) for ctr in CONTAINERS_PER_POD]
        for ctr_id in ctr_ids:
            self.driver.start(ctr_id)
        return (time.perf_counter() - begin) * 1000

    def replace_oldest(self) -> float:
        """Stop and remove the oldest pod, make a new one ready; the latency of both in ms."""
        with self.lock:
            pod_id, _ = self.pods.pop(0)
        begin = time.perf_counter()
        self.driver.stop_pod(pod_id)
        self.driver.remove_pod(pod_id)
        self.add()
        return (time.perf_counter() - begin) * 1000

    def snapshot(self) -> list[str]:
        with self.lock:
            return [pod_id for pod_id, _ in self.pods]

    def teardown(self) -> None:
        self.driver.teardown_pods(self.snapshot())
        self.pods.clear()


# ---------------------------------------------------------------------------------------------------- polling


class Poller:
    """What the kubelet asks every second (PLEG relist, the stats provider, pod status per pod), in a thread."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cycles: list[float] = []  # ms per poll cycle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stats_supported = True
        self.errors: list[BaseException] = []
        # Cycles a call of which failed (containerd 1.6's ListPodSandboxStats answers NotFound for a pod that is
        # being removed): the kubelet logs those and polls again, and so does this.
        self.failed: list[str] = []

    def cycle(self) -> None:
        runtime = self.node.driver.peer.runtime
        # The requests as the kubelet makes them: its relist asks for every pod with no filter and for every
        # container with an empty one; its stats with an empty filter.
        runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
        runtime.ListContainers(KUBELET_LIST_CONTAINERS, timeout=CALL_TIMEOUT)
        if self._stats_supported:
            try:
                runtime.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter()),
                                            timeout=CALL_TIMEOUT)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._stats_supported = False
        for pod_id in self.node.snapshot():
            try:
                runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                         timeout=CALL_TIMEOUT)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:  # replaced by the churn meanwhile
                    raise

    def _run(self) -> None:
        while not self._stop.is_set():
            begin = time.perf_counter()
            try:
                self.cycle()
            except grpc.RpcError as e:
                self.failed.append(f"{e.code().name}: {e.details()}")
            except BaseException as e:  # reported on exit
                self.errors.append(e)
                return
            elapsed = time.perf_counter() - begin
            self.cycles.append(elapsed * 1000)
            self._stop.wait(max(0.0, 1.0 - elapsed))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.errors and not exc[0]:
            raise RuntimeError(f"{self.node.driver.name}: polling failed: {self.errors[0]!r}")


# ---------------------------------------------------------------------------------------------------- scenarios


def kubelet_scale(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    for driver in drivers:
        node = Node(driver)
        try:
            fill(node, plan, results)
            poll(node, plan, results)
            churn(node, plan, results)
        finally:
            node.teardown()


def fill(node: Node, plan: Plan, results: Results) -> None:
    driver = node.driver
    n, parallel = plan.scale_pods, plan.scale_parallel
    label = f"{n} pods x {len(CONTAINERS_PER_POD)} containers, {parallel} at a time"
    before = driver.peer.processes()
    begin = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        latencies = list(pool.map(lambda _: node.add(), range(n)))
    total = time.perf_counter() - begin
    after = driver.peer.processes()
    results.add(SECTION_FILL, f"{label}: total", "s", driver.name, total)
    for latency in latencies:
        results.add(SECTION_FILL, f"{label}: per pod (run + create and start of both)", MS, driver.name, latency)
    results.add(SECTION_FILL, f"{label}: pods per second", "pods/s", driver.name, n / total, higher_is_better=True)
    results.add(SECTION_FILL, "daemon CPU while filling", "s", driver.name,
                (after.daemon.cpu_ticks - before.daemon.cpu_ticks) / CLK_TCK if after.daemon and before.daemon else 0)
    # The daemon's own figure counts the runtime calls it makes itself: cripy runs `runc start`, containerd leaves
    # it to its shims. With the helpers and pause processes (none of which ends during a fill) both count the same.
    results.add(SECTION_FILL, "CPU while filling: daemon, helpers and pauses", "s", driver.name,
                (after.cpu_ticks - before.cpu_ticks) / CLK_TCK)
    results.add(SECTION_FILL, f"daemon RSS with {n} pods", "MiB", driver.name,
                after.daemon.rss_bytes / MIB if after.daemon else 0)


def poll(node: Node, plan: Plan, results: Results) -> None:
    """Polling alone, at 1 Hz for plan.poll_seconds: the cost of one cycle and the daemon CPU it takes."""
    driver = node.driver
    n = len(node.snapshot())
    before = driver.peer.processes()
    with Poller(node) as poller:
        time.sleep(plan.poll_seconds)
    after = driver.peer.processes()
    cycles = poller.cycles
    results.add(SECTION_POLL, "poll cycles that failed", "cycles", driver.name, len(poller.failed))
    for cycle in cycles:
        results.add(SECTION_POLL, f"one poll cycle with {n} pods (3 lists + {n} x PodSandboxStatus)", MS,
                    driver.name, cycle)
    if before.daemon and after.daemon and cycles:
        cpu_ms = (after.daemon.cpu_ticks - before.daemon.cpu_ticks) / CLK_TCK * 1000
        results.add(SECTION_POLL, "daemon CPU per poll cycle", MS, driver.name, cpu_ms / len(cycles))
        results.add(SECTION_POLL, "daemon CPU share while polled at 1 Hz", "%", driver.name,
                    cpu_ms / 10 / plan.poll_seconds)


def churn(node: Node, plan: Plan, results: Results) -> None:
    """Every round replaces a tenth of the pods (oldest first), plan.scale_parallel at a time, polled meanwhile."""
    driver = node.driver
    per_round = max(1, plan.scale_pods // 10)
    start = _resources(driver)
    replaced = 0
    begin = time.perf_counter()
    with Poller(node) as poller, ThreadPoolExecutor(plan.scale_parallel) as pool:
        for _ in range(plan.churn_rounds):
            round_begin = time.perf_counter()
            for latency in pool.map(lambda _: node.replace_oldest(), range(per_round)):
                results.add(SECTION_CHURN, "pod replaced (stop + remove + ready with 2 containers)", MS,
                            driver.name, latency)
            replaced += per_round
            results.add(SECTION_CHURN, "pods replaced per second", "pods/s", driver.name,
                        per_round / (time.perf_counter() - round_begin), higher_is_better=True)
    elapsed = time.perf_counter() - begin
    end = _resources(driver)
    for cycle in poller.cycles:
        results.add(SECTION_CHURN, "poll cycle during churn", MS, driver.name, cycle)
    results.add(SECTION_CHURN, "poll cycles that failed during churn", "cycles", driver.name, len(poller.failed))
    label = f"{plan.churn_rounds} rounds, {replaced} pods replaced in {elapsed:.0f} s"
    for key, unit, scale in (("rss", "MiB", MIB), ("fds", "fds", 1), ("threads", "threads", 1),
                             ("state", "KiB", 1024)):
        results.add(SECTION_CHURN, f"daemon {key} before churn", unit, driver.name, start[key] / scale)
        results.add(SECTION_CHURN, f"daemon {key} after churn ({label})", unit, driver.name, end[key] / scale)


def _resources(driver: Driver) -> dict[str, float]:
    procs = driver.peer.processes()
    found = dict(driver.peer.daemon_resources())
    found["rss"] = procs.daemon.rss_bytes if procs.daemon else 0
    found["state"] = driver.peer.state_bytes()
    return found

