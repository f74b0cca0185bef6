"""Where cripy's StartContainer and StopPodSandbox spend their time, step by step: a cripy of its own with its
Prometheus metrics on runs pods through their life, and the mean of each step (cripy/timing.py's STEPS: conmon and
`runc create`, `runc start`, CNI ADD and DEL, the rootfs, ...) is read from `cripy_step_duration_seconds` before and
after. containerd has no such breakdown; its rows stay empty.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from bench.scenarios import MS, Driver, Plan, Results

SECTION = "Where the lifecycle's time goes (cripy's steps)"
# The steps of the calls the issue asks about, in the order they run.
STEPS_OF = {
    "RunPodSandbox": ("pod.files", "pod.namespaces", "pod.shm", "cni.add", "pod.infra"),
    "CreateContainer": ("ctr.rootfs", "ctr.spec", "ctr.bundle"),
    "StartContainer": ("runtime.create", "runtime.start"),
    "StopPodSandbox": ("runtime.kill", "ctr.wait_exit", "ctr.release", "cni.del"),
}
_SAMPLE = re.compile(r'^cripy_step_duration_seconds_(sum|count)\{[^}]*step="([^"]+)"[^}]*\} ([0-9.e+-]+)$')


def scrape(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def step_totals(text: str) -> dict[str, tuple[float, float]]:
    """step -> (seconds, count), summed over the other labels (the call, the outcome)."""
    totals: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            kind, step, value = match.groups()
            entry = totals.setdefault(step, [0.0, 0.0])
            entry[0 if kind == "sum" else 1] += float(value)
    return {step: (v[0], v[1]) for step, v in totals.items()}


def step_breakdown(driver: Driver, metrics_socket: Path, plan: Plan, results: Results) -> None:
    """plan.lifecycle_iterations pods through run, create, start, stop and remove; the mean of each step."""
    before = step_totals(scrape(metrics_socket))
    for iteration in range(plan.lifecycle_iterations):
        pod_id, _ = driver.pod_ready(f"steps-{iteration}")
        driver.teardown_pods([pod_id])
    time.sleep(0.5)  # the background clean-up's steps land too
    after = step_totals(scrape(metrics_socket))
    for call, steps in STEPS_OF.items():
        for step in steps:
            seconds, count = after.get(step, (0.0, 0.0))
            seconds -= before.get(step, (0.0, 0.0))[0]
            count -= before.get(step, (0.0, 0.0))[1]
            if count > 0:
                results.add(SECTION, f"{call}: {step} (mean of {count:.0f})", MS, driver.name, seconds / count * 1000)

