"""StopContainer waits for the stopped container's clean-up (`runc delete`, its rootfs unmounted), but not forever:
a `runc delete` that hangs holds the answer for RELEASE_WAIT_SECONDS, then the call succeeds, says so in the log,
and the clean-up finishes in the background once runc returns. Stopping a container that exited by itself waits
for that exit's clean-up too, and StopPodSandbox for its containers' (after its own steps, which run beside
them). The runtime is this machine's runc behind a wrapper whose `delete` waits while a file exists."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from cripy.containers.manager import RELEASE_WAIT_SECONDS
from tests.integration.conftest_leaks import session_cgroup_parent
from tests.integration.podlib import PodEnv, short_tempdir

pytestmark = pytest.mark.integration

RUNC = shutil.which("runc") or "/usr/bin/runc"
HANDLER = "slow-delete"
_WRAPPER = """#!/bin/sh
case " $* " in
    *" delete "*) while [ -e "{hold}" ]; do sleep 0.05; done ;;
esac
exec {runc} "$@"
"""


@pytest.fixture(scope="module")
def hold(pod_image_dir: Path) -> Iterator[tuple[PodEnv, Path]]:
    directory = short_tempdir("sd")
    hold_file = directory / "hold-delete"
    wrapper = directory / "runc-slow-delete"
    wrapper.write_text(_WRAPPER.format(hold=hold_file, runc=RUNC))
    wrapper.chmod(0o755)
    env = PodEnv(short_tempdir("s"), pod_image_dir, cgroup_parent=session_cgroup_parent(),
                 extra_toml=f'\n[runtime.handlers.{HANDLER}]\nruntime_path = "{wrapper}"\n')
    try:
        yield env, hold_file
    finally:
        hold_file.unlink(missing_ok=True)
        env.close()
        shutil.rmtree(directory, ignore_errors=True)


def run_pod(env: PodEnv, name: str) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = env.pod_config(name)
    return env.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config, runtime_handler=HANDLER),
                                timeout=60).pod_sandbox_id, config


def test_stop_pod_answers_once_its_containers_are_released(hold: tuple[PodEnv, Path]) -> None:
    env, hold_file = hold
    pod_id, config = run_pod(env, "released-pod")
    ctrs = [env.run(pod_id, config, f"released-{i}", ["sleep", "3600"]) for i in range(2)]
    runc_root = env.daemon.runroot / "runtimes" / HANDLER
    hold_file.touch()
    letting_go = threading.Timer(2.0, hold_file.unlink)
    letting_go.start()
    try:
        env.stop_pod(pod_id)
    finally:
        letting_go.join()
    for ctr in ctrs:
        assert not (runc_root / ctr).exists(), "StopPodSandbox answered before runc deleted a container's state"
        assert env.status(ctr).state == api_pb2.CONTAINER_EXITED
    env.remove_pod(pod_id)


def test_stopping_a_container_that_exited_by_itself_waits_for_its_clean_up(hold: tuple[PodEnv, Path]) -> None:
    env, hold_file = hold
    pod_id, config = run_pod(env, "exited-by-itself")
    runc_root = env.daemon.runroot / "runtimes" / HANDLER
    hold_file.touch()
    letting_go = threading.Timer(2.0, hold_file.unlink)
    try:
        ctr = env.run(pod_id, config, "short", ["true"])
        env.wait_state(ctr)
        assert (runc_root / ctr).is_dir(), "runc delete was held: its state should still be there"
        letting_go.start()
        env.stop(ctr, timeout=10)
    finally:
        if letting_go.is_alive():
            letting_go.join()
        hold_file.unlink(missing_ok=True)
    assert not (runc_root / ctr).exists(), "StopContainer answered before the exit's clean-up was done"
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)


def test_a_hung_runc_delete_holds_stop_for_a_bounded_time(hold: tuple[PodEnv, Path]) -> None:
    env, hold_file = hold
    pod_id, config = run_pod(env, "slow-delete")
    ctr = env.run(pod_id, config, "held", ["sleep", "3600"])
    runc_root = env.daemon.runroot / "runtimes" / HANDLER
    hold_file.touch()
    begin = time.monotonic()
    env.stop(ctr, timeout=1)  # sleep as PID 1 ignores SIGTERM: killed after 1 s, not after a long grace
    took = time.monotonic() - begin
    assert took >= RELEASE_WAIT_SECONDS * 0.9, "StopContainer did not wait for the clean-up"
    assert env.status(ctr).state == api_pb2.CONTAINER_EXITED
    assert (runc_root / ctr).is_dir(), "runc delete was held: its state should still be there"
    assert f"container(s) {ctr} stopped, but their clean-up" in env.daemon.log_text()
    hold_file.unlink()
    env.wait_for("runc's state deleted once runc delete returns", lambda: not (runc_root / ctr).exists())
    env.remove(ctr)
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)
