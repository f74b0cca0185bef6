"""The measured scenarios. Every scenario drives both runtimes through the same CRI client code, alternately
(cripy, containerd, cripy, containerd, ...), and records samples into `Results`.

Pods look like the kubelet's: PID namespace per container, network and IPC per pod, a cgroup parent per pod
under the runtime's own bench cgroup. Containers run busybox `sh` that exits on SIGTERM, so StopContainer
measures the runtime and not a grace period.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2

from bench.images import BenchImages, PulledImage
from bench.peers import Peer, ProcessSet

MS = "ms"
MB = 1_000_000
MIB = 1 << 20
CALL_TIMEOUT = 120
PULL_TIMEOUT = 600
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
# What kubelet sends for a pod that names no profile (without the SeccompDefault feature): both runtimes get the
# same explicit request instead of each one's own default for an absent field.
KUBELET_DEFAULT_SECCOMP = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)
# What kubelet sends for every container whose procMount is Default (securitycontext.ConvertToRuntimeMaskedPaths and
# ...ReadonlyPaths): containerd applies exactly what it is sent, so without them its containers had no masked /proc.
KUBELET_MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                        "/sys/devices/virtual/powercap")
KUBELET_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# What the kubelet's relist (every second) and its container GC send: an empty filter, not none
# (kuberuntime's getKubeletContainers).
KUBELET_LIST_CONTAINERS = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter())
LIFECYCLE_CALLS = ("RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
                   "StopPodSandbox", "RemovePodSandbox")


@dataclass(frozen=True)
class Plan:
    """How much of each scenario to run."""

    quick: bool
    lifecycle_iterations: int
    exec_iterations: int
    list_iterations: int
    list_pods: int
    list_containers_per_pod: int
    concurrent_pods: int
    concurrent_rounds: int
    pull_iterations: int
    memory_pods: int
    cpu_window_seconds: float
    scale_pods: int  # the kubelet's default max-pods
    scale_parallel: int
    poll_seconds: float
    churn_rounds: int

    @classmethod
    def make(cls, quick: bool, iterations: int | None = None) -> Plan:
        if quick:
            n = iterations or 3
            return cls(quick, lifecycle_iterations=n, exec_iterations=n, list_iterations=n, list_pods=2,
                       list_containers_per_pod=5, concurrent_pods=4, concurrent_rounds=1, pull_iterations=1,
                       memory_pods=5, cpu_window_seconds=5.0, scale_pods=12, scale_parallel=4, poll_seconds=3.0,
                       churn_rounds=2)
        n = iterations or 30
        # A list call takes about a millisecond and its time swings by half between calls on this kind of machine:
        # 30 samples left its median to chance, 300 cost a second or two.
        return cls(quick, lifecycle_iterations=n, exec_iterations=max(n, 50), list_iterations=max(n, 300),
                   list_pods=20,
                   list_containers_per_pod=10, concurrent_pods=20, concurrent_rounds=3, pull_iterations=3,
                   memory_pods=50, cpu_window_seconds=60.0, scale_pods=110, scale_parallel=10, poll_seconds=30.0,
                   churn_rounds=10)


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class Figure:
    """One row of the report: samples per runtime in `unit`."""

    section: str
    name: str
    unit: str
    higher_is_better: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)


class Results:
    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.notes: list[str] = []

    def figure(self, section: str, name: str, unit: str, higher_is_better: bool = False) -> Figure:
        for fig in self.figures:
            if fig.section == section and fig.name == name:
                return fig
        fig = Figure(section, name, unit, higher_is_better)
        self.figures.append(fig)
        return fig

    def add(self, section: str, name: str, unit: str, peer: str, value: float,
            higher_is_better: bool = False) -> None:
        self.figure(section, name, unit, higher_is_better).samples.setdefault(peer, []).append(value)


# ---------------------------------------------------------------------------------------------------- CRI driver


class Driver:
    """CRI calls for one runtime, with the configs the scenarios share."""

    def __init__(self, peer: Peer, images: BenchImages, log_root: Path) -> None:
        self.peer = peer
        self.images = images
        self.log_root = log_root

    @property
    def name(self) -> str:
        return self.peer.name

    def pod_config(self, name: str) -> api_pb2.PodSandboxConfig:
        uid = secrets.token_hex(8)
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="bench"),
            hostname=name[:63],
            log_directory=str(self.log_root / self.peer.name / f"{name}-{uid}"),
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.peer.cgroup_parent}/pod{uid}",
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER,
                                                              ipc=api_pb2.POD),
                    seccomp=KUBELET_DEFAULT_SECCOMP),
            ),
        )

    def container_config(self, name: str) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=self.images.busybox.ref),
            command=SLEEPER,
            log_path=f"{name}.log",
            linux=api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER,
                                                          ipc=api_pb2.POD),
                seccomp=KUBELET_DEFAULT_SECCOMP, masked_paths=KUBELET_MASKED_PATHS,
                readonly_paths=KUBELET_READONLY_PATHS)),
        )

    def run_pod(self, config: api_pb2.PodSandboxConfig) -> str:
        return self.peer.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config),
                                               timeout=CALL_TIMEOUT).pod_sandbox_id

    def create(self, pod_id: str, pod_config: api_pb2.PodSandboxConfig, name: str) -> str:
        request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=self.container_config(name),
                                                 sandbox_config=pod_config)
        return self.peer.runtime.CreateContainer(request, timeout=CALL_TIMEOUT).container_id

    def start(self, ctr_id: str) -> None:
        self.peer.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=ctr_id), timeout=CALL_TIMEOUT)

    def stop(self, ctr_id: str) -> None:
        self.peer.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr_id, timeout=10),
                                        timeout=CALL_TIMEOUT)

    def remove(self, ctr_id: str) -> None:
        self.peer.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=ctr_id), timeout=CALL_TIMEOUT)

    def stop_pod(self, pod_id: str) -> None:
        self.peer.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)

    def remove_pod(self, pod_id: str) -> None:
        self.peer.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                           timeout=CALL_TIMEOUT)

    def exec_sync(self, ctr_id: str, cmd: list[str]) -> api_pb2.ExecSyncResponse:
        return self.peer.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=ctr_id, cmd=cmd, timeout=30),
                                          timeout=CALL_TIMEOUT)

    def list_containers(self) -> int:
        return len(self.peer.runtime.ListContainers(KUBELET_LIST_CONTAINERS, timeout=CALL_TIMEOUT).containers)

    def list_pods(self) -> int:
        return len(self.peer.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=CALL_TIMEOUT).items)

    def pull(self, image: PulledImage) -> None:
        self.peer.images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image.ref)),
                                   timeout=PULL_TIMEOUT)

    def remove_image(self, image: PulledImage) -> None:
        try:
            self.peer.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image.ref)),
                                         timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def pod_ready(self, name: str) -> tuple[str, str]:
        """run + create + start; (pod id, container id)."""
        config = self.pod_config(name)
        pod_id = self.run_pod(config)
        ctr_id = self.create(pod_id, config, "c")
        self.start(ctr_id)
        return pod_id, ctr_id

    def teardown_pods(self, pod_ids: Sequence[str]) -> None:
        for pod_id in pod_ids:
            self.stop_pod(pod_id)
            self.remove_pod(pod_id)


def timed(call: Callable[[], object]) -> float:
    """Wall-clock milliseconds of one call."""
    begin = time.perf_counter()
    call()
    return (time.perf_counter() - begin) * 1000


@contextmanager
def pods_torn_down(driver: Driver, pod_ids: list[str]) -> Iterator[list[str]]:
    """Removes the pods collected in `pod_ids` on the way out, also when the scenario failed."""
    try:
        yield pod_ids
    finally:
        driver.teardown_pods(pod_ids)


# ---------------------------------------------------------------------------------------------------- scenarios


def lifecycle(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    """Each lifecycle call of one pod with one container, image present; "pod ready" = run + create + start."""
    section = "Pod and container lifecycle (one at a time)"
    for iteration in range(plan.lifecycle_iterations):
        for driver in drivers:
            config = driver.pod_config(f"life-{iteration}")
            times: dict[str, float] = {}
            pod_ids: list[str] = []
            with pods_torn_down(driver, pod_ids):
                begin = time.perf_counter()
                times["RunPodSandbox"] = timed(lambda: pod_ids.append(driver.run_pod(config)))
                pod_id = pod_ids[0]
                ctr: list[str] = []
                times["CreateContainer"] = timed(lambda: ctr.append(driver.create(pod_id, config, "c")))
                times["StartContainer"] = timed(lambda: driver.start(ctr[0]))
                ready = (time.perf_counter() - begin) * 1000
                times["StopContainer"] = timed(lambda: driver.stop(ctr[0]))
                times["RemoveContainer"] = timed(lambda: driver.remove(ctr[0]))
                times["StopPodSandbox"] = timed(lambda: driver.stop_pod(pod_id))
                times["RemovePodSandbox"] = timed(lambda: driver.remove_pod(pod_id))
                pod_ids.clear()
            for call in LIFECYCLE_CALLS:
                results.add(section, call, MS, driver.name, times[call])
            results.add(section, "pod ready (run + create + start)", MS, driver.name, ready)


def concurrent_start(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    """`concurrent_pods` pods made ready at the same moment (threads released by a barrier)."""
    section = f"{plan.concurrent_pods} pods started at once"
    for round_index in range(plan.concurrent_rounds):
        for driver in drivers:
            latencies: list[float] = [0.0] * plan.concurrent_pods
            made: list[str] = []
            errors: list[BaseException] = []
            lock = threading.Lock()
            barrier = threading.Barrier(plan.concurrent_pods + 1)

            def one(index: int) -> None:
                barrier.wait()
                begin = time.perf_counter()
                try:
                    pod_id, _ = driver.pod_ready(f"conc-{round_index}-{index}")
                    with lock:
                        made.append(pod_id)
                except BaseException as e:  # reported after the join
                    errors.append(e)
                latencies[index] = (time.perf_counter() - begin) * 1000

            threads = [threading.Thread(target=one, args=(i,)) for i in range(plan.concurrent_pods)]
            for thread in threads:
                thread.start()
            with pods_torn_down(driver, made):
                barrier.wait()
                begin = time.perf_counter()
                for thread in threads:
                    thread.join()
                total = (time.perf_counter() - begin) * 1000
                if errors:
                    raise RuntimeError(f"{driver.name}: concurrent pod start failed: {errors[0]!r}")
            results.add(section, "total (all pods ready)", MS, driver.name, total)
            for latency in latencies:
                results.add(section, "per-pod latency (run + create + start)", MS, driver.name, latency)


def exec_sync(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    section = "ExecSync"
    pods: dict[str, tuple[str, str]] = {}
    try:
        for driver in drivers:
            pods[driver.name] = driver.pod_ready("exec")
        for _ in range(plan.exec_iterations):
            for driver in drivers:
                ctr_id = pods[driver.name][1]
                reply: list[api_pb2.ExecSyncResponse] = []
                elapsed = timed(lambda: reply.append(driver.exec_sync(ctr_id, ["echo", "bench"])))
                if reply[0].exit_code != 0 or reply[0].stdout != b"bench\n":
                    raise RuntimeError(f"{driver.name}: ExecSync gave {reply[0]}")
                results.add(section, "ExecSync round trip (echo)", MS, driver.name, elapsed)
    finally:
        for driver in drivers:
            if driver.name in pods:
                driver.teardown_pods([pods[driver.name][0]])


def list_calls(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    """ListContainers and ListPodSandbox with list_pods * list_containers_per_pod running containers."""
    total = plan.list_pods * plan.list_containers_per_pod
    section = f"List calls with {total} containers in {plan.list_pods} pods"
    made: dict[str, list[str]] = {driver.name: [] for driver in drivers}
    try:
        for pod_index in range(plan.list_pods):
            for driver in drivers:
                config = driver.pod_config(f"list-{pod_index}")
                pod_id = driver.run_pod(config)
                made[driver.name].append(pod_id)
                for ctr_index in range(plan.list_containers_per_pod):
                    driver.start(driver.create(pod_id, config, f"c{ctr_index}"))
        for driver in drivers:
            if driver.list_containers() != total:
                raise RuntimeError(f"{driver.name}: expected {total} containers, ListContainers says otherwise")
        for _ in range(plan.list_iterations):
            for driver in drivers:
                results.add(section, "ListContainers", MS, driver.name, timed(driver.list_containers))
                results.add(section, "ListPodSandbox", MS, driver.name, timed(driver.list_pods))
    finally:
        for driver in drivers:
            driver.teardown_pods(made[driver.name])


def image_pulls(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    """Cold pulls (nothing present) and pulls over shared base layers; throughput = compressed bytes fetched / s.
    Must run before anything else pulls busybox: the big and small-file images are built on it."""
    section = "Image pull from the local registry"
    images = drivers[0].images
    pairs = ((images.big, images.big_shared), (images.files, images.files_shared))
    for _ in range(plan.pull_iterations):
        for first, second in pairs:
            label = first.label
            for driver in drivers:
                for image in (first, second):
                    driver.remove_image(image)
                # Write back what the removals dirtied, so that no pull pays for the previous one's deletes.
                os.sync()
                cold = timed(lambda: driver.pull(first)) / 1000
                os.sync()
                shared = timed(lambda: driver.pull(second)) / 1000
                for image in (second, first):
                    driver.remove_image(image)
                cold_mb = first.bytes_missing_after(None) / MB
                shared_mb = second.bytes_missing_after(first) / MB
                results.add(section, f"{label}, cold: time ({cold_mb:.0f} MB)", "s", driver.name, cold)
                results.add(section, f"{label}, cold: throughput", "MB/s", driver.name, cold_mb / cold,
                            higher_is_better=True)
                results.add(section, f"{label}, shared base present: time ({shared_mb:.0f} MB new)", "s",
                            driver.name, shared)
                results.add(section, f"{label}, shared base present: throughput", "MB/s", driver.name,
                            shared_mb / shared, higher_is_better=True)


def record_idle_memory(drivers: Sequence[Driver], results: Results, label: str) -> None:
    for driver in drivers:
        procs = driver.peer.processes()
        rss = procs.daemon.rss_bytes if procs.daemon else 0
        anon = procs.daemon.anon_bytes if procs.daemon else 0
        results.add("Memory and CPU", f"daemon RSS, {label}", "MiB", driver.name, rss / MIB)
        # RSS counts the mapped program and libraries too (file-backed: shared with the page cache and any other
        # process mapping them); the anonymous part is the daemon's own heaps and stacks.
        results.add("Memory and CPU", f"daemon RSS, {label}: anonymous", "MiB", driver.name, anon / MIB)
        results.add("Memory and CPU", f"daemon RSS, {label}: file-backed", "MiB", driver.name, (rss - anon) / MIB)


def memory_and_cpu(drivers: Sequence[Driver], plan: Plan, results: Results) -> None:
    """`memory_pods` running pods (one container each): daemon RSS, per-pod helper processes, idle CPU."""
    section = "Memory and CPU"
    n = plan.memory_pods
    made: dict[str, list[str]] = {driver.name: [] for driver in drivers}
    try:
        for index in range(n):
            for driver in drivers:
                pod_id, _ = driver.pod_ready(f"mem-{index}")
                made[driver.name].append(pod_id)
        time.sleep(2.0)  # let start-up garbage (goroutines, asyncio tasks) settle before measuring
        before: dict[str, ProcessSet] = {d.name: d.peer.processes() for d in drivers}
        time.sleep(plan.cpu_window_seconds)
        after: dict[str, ProcessSet] = {d.name: d.peer.processes() for d in drivers}
        for driver in drivers:
            procs = after[driver.name]
            daemon_rss = procs.daemon.rss_bytes if procs.daemon else 0
            helper_rss = sum(p.rss_bytes for p in procs.helpers)
            helper_pss = sum(p.pss_bytes for p in procs.helpers)
            pause_rss = sum(p.rss_bytes for p in procs.pauses)
            results.add(section, f"daemon RSS, {n} pods running", "MiB", driver.name, daemon_rss / MIB)
            results.add(section, f"helper processes per runtime, {n} pods (count)", "procs", driver.name,
                        len(procs.helpers) + len(procs.pauses))
            results.add(section, f"helpers (conmon / shim) RSS total, {n} pods", "MiB", driver.name,
                        helper_rss / MIB)
            results.add(section, "helpers (conmon / shim) RSS per pod", "MiB", driver.name, helper_rss / MIB / n)
            results.add(section, "helpers (conmon / shim) PSS per pod", "MiB", driver.name, helper_pss / MIB / n)
            results.add(section, "pause processes RSS per pod", "MiB", driver.name, pause_rss / MIB / n)
            results.add(section, "all added processes RSS per pod (helpers + pause)", "MiB", driver.name,
                        (helper_rss + pause_rss) / MIB / n)
            cpu = after[driver.name].cpu_seconds() - before[driver.name].cpu_seconds()
            results.add(section, f"CPU over {plan.cpu_window_seconds:.0f} s idle with {n} pods "
                                 "(daemon + helpers)", "s", driver.name, cpu)
    finally:
        for driver in drivers:
            driver.teardown_pods(made[driver.name])


def pull_warm_images(drivers: Sequence[Driver]) -> None:
    """The pods' images, untimed: busybox for everyone, the pause image for containerd's sandboxes."""
    for driver in drivers:
        driver.pull(driver.images.busybox)
        if driver.name == "containerd":
            driver.pull(driver.images.pause)


SCENARIOS: tuple[tuple[str, Callable[[Sequence[Driver], Plan, Results], None]], ...] = (
    ("lifecycle", lifecycle),
    ("exec", exec_sync),
    ("concurrent", concurrent_start),
    ("list", list_calls),
    ("memory", memory_and_cpu),
)
# bench/scale.py's kubelet-scale scenario is appended by bench/run.py (it builds on Driver and Plan from here).
