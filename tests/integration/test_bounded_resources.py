"""Bounded resources: a container that writes a gigabyte of logs leaves its log file at the configured size, in the
CRI format, and the daemon unaffected (it answers at once, its memory does not follow the log)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import PodEnv, read_cri_log

pytestmark = pytest.mark.integration

LOG_SIZE_MAX = 1 << 20
GIGABYTE = 1 << 30


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_gigabyte_of_logs_stays_within_the_log_size_limit(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory(extra_toml=f"container_log_size_max = {LOG_SIZE_MAX}\n")
    pod_id, config = env.run_pod("loud")
    rss_before = _rss(env.daemon.pid)  # type: ignore[arg-type]
    # The gigabyte ends mid-line; the `echo` ends that line, so that "last-line" is a line of its own however
    # conmon's reads happen to split the output (one read could otherwise join the two).
    script = f"yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c {GIGABYTE}; " \
             "echo; echo last-line"
    ctr_id = env.run(pod_id, config, "loud", ["sh", "-c", script])
    log_path = Path(env.status(ctr_id).log_path)
    largest = 0
    deadline = time.monotonic() + 600
    while env.status(ctr_id).state != api_pb2.CONTAINER_EXITED:
        assert time.monotonic() < deadline, "the container did not finish writing its gigabyte"
        started = time.monotonic()
        env.rt.Version(api_pb2.VersionRequest(), timeout=5)
        assert time.monotonic() - started < 2, "the daemon was slow to answer while the container logged"
        if log_path.exists():
            largest = max(largest, log_path.stat().st_size)
        time.sleep(0.2)
    assert env.status(ctr_id).exit_code == 0
    size = log_path.stat().st_size
    assert size <= LOG_SIZE_MAX + 64 * 1024 and largest <= LOG_SIZE_MAX + 64 * 1024, (size, largest)
    lines = read_cri_log(log_path)
    assert lines and all(line.stream == "stdout" and line.tag in ("P", "F") for line in lines)
    assert lines[-1].text == "last-line"
    assert _rss(env.daemon.pid) - rss_before < 32 * 1024 * 1024  # type: ignore[arg-type]
