"""A restart of the daemon in the middle of things: SIGTERM and SIGKILL with running containers (still listed,
still running with the same pid, exec and logs still work, stop and remove still work), a container that exits
while the daemon is down (its exit code is recorded after the restart), and half-made pods/containers left in the
database (undone at start, with what their journal says they did)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from cripy.containers.model import ContainerRequest, PodSandboxRequest
from cripy.storage import serde
from tests.integration.podlib import BUSYBOX, PodEnv, log_messages, read_cri_log

pytestmark = pytest.mark.integration

TICKER = ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.05; done"]


def container_pid(env: PodEnv, ctr: str) -> int:
    reply = env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return int(json.loads(reply.info["info"])["pid"])


def ticks(path: Path) -> list[int]:
    return [int(text.split("-")[1]) for text in log_messages(read_cri_log(path), "stdout") if text.startswith("tick-")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_keeps_pods_and_running_containers(pod_env_factory: Callable[..., PodEnv], sig: int) -> None:
    env = pod_env_factory()
    pod_id, config = env.run_pod("survivor", labels={"restart": "yes"})
    running = env.run(pod_id, config, "ticker", TICKER)
    done = env.run(pod_id, config, "done", ["sh", "-c", "exit 4"])
    created = env.create(pod_id, config, env.container_config("created", ["sleep", "3600"]))
    env.wait_state(done)
    pid = container_pid(env, running)
    pod_ip = env.pod_status(pod_id).status.network.ip
    log_path = Path(env.status(running).log_path)
    env.wait_for("ticks logged", lambda: log_path.exists() and ticks(log_path))
    created_before = env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=created, verbose=True),
                                            timeout=10)

    env.daemon.restart(sig)

    pod = env.pod_status(pod_id).status
    assert pod.state == api_pb2.SANDBOX_READY and pod.network.ip == pod_ip
    assert [p.id for p in env.list_pods(label_selector={"restart": "yes"})] == [pod_id]
    assert env.status(running).state == api_pb2.CONTAINER_RUNNING
    assert container_pid(env, running) == pid and Path(f"/proc/{pid}").exists()
    done_status = env.status(done)
    assert (done_status.state, done_status.exit_code, done_status.reason) == (api_pb2.CONTAINER_EXITED, 4, "Error")
    assert env.status(created).state == api_pb2.CONTAINER_CREATED
    # Everything CreateContainer recorded was written, not only kept in memory: the user resolved in the rootfs,
    # the stop signal, the cgroup, the request.
    assert env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=created, verbose=True),
                                  timeout=10) == created_before
    assert env.exec(running, ["cat", "/proc/1/cmdline"]).stdout.startswith(b"sh")
    # conmon kept logging across the restart, and still reopens the log on request.
    seen = max(ticks(log_path))
    env.wait_for("new ticks after the restart", lambda: max(ticks(log_path)) > seen + 2)
    log_path.rename(log_path.with_name("ticker.log.1"))
    env.rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=running), timeout=20)
    env.wait_for("ticks in the reopened log", lambda: log_path.exists() and ticks(log_path))

    env.start(created)
    env.wait_state(created, api_pb2.CONTAINER_RUNNING)
    env.stop(running, timeout=0)
    stopped = env.status(running)
    assert stopped.state == api_pb2.CONTAINER_EXITED and stopped.finished_at > 0
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)
    assert env.list_pods(id=pod_id) == [] and env.list_containers(pod_sandbox_id=pod_id) == []


def test_exit_while_the_daemon_is_down_is_recorded(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    gate = env.workdir / "gate"
    gate.mkdir()
    pod_id, config = env.run_pod("exit-while-down")
    script = "echo waiting; while [ ! -e /gate/go ]; do sleep 0.05; done; echo leaving; exit 42"
    ctr = env.create(pod_id, config, env.container_config(
        "waiter", ["sh", "-c", script], mounts=[api_pb2.Mount(container_path="/gate", host_path=str(gate))]))
    env.start(ctr)
    other = env.run(pod_id, config, "other", ["sleep", "3600"])
    pid = container_pid(env, ctr)

    env.daemon.kill()
    (gate / "go").touch()
    exit_file = env.daemon.runroot / "exits" / ctr
    deadline = time.monotonic() + 30
    while not exit_file.exists():  # conmon records the exit while nobody listens
        assert time.monotonic() < deadline, "conmon wrote no exit file"
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    env.daemon.start()

    status = env.wait_state(ctr)
    assert (status.exit_code, status.reason) == (42, "Error")
    assert status.finished_at >= status.started_at > 0
    assert "leaving" in log_messages(read_cri_log(Path(status.log_path)), "stdout")
    assert env.status(other).state == api_pb2.CONTAINER_RUNNING
    env.remove(ctr)
    env.stop_pod(pod_id)  # stops `other`, and CNI DEL works from the cache written before the restart
    assert env.status(other).state == api_pb2.CONTAINER_EXITED
    assert not (env.daemon.root / "cni-cache" / f"{pod_id}.json").exists()
    env.remove_pod(pod_id)


def test_half_made_pod_and_container_are_undone_at_start(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    pod_id, config = env.run_pod("intact")
    keeper = env.run(pod_id, config, "keeper", ["sleep", "3600"])
    env.daemon.stop()

    half_pod = secrets.token_hex(32)
    pod_dir = env.daemon.runroot / "pods" / half_pod
    shm = pod_dir / "shm"
    shm.mkdir(parents=True)
    (pod_dir / "hostname").write_text("half\n")
    half_ctr = secrets.token_hex(32)
    ctr_dir = env.daemon.root / "containers" / half_ctr
    (ctr_dir / "upper").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(shm)], check=True)
    try:
        pod_request = PodSandboxRequest(name="half", uid=secrets.token_hex(8), namespace="cripytest")
        ctr_request = ContainerRequest(name="half-ctr", image=BUSYBOX)
        now = time.time_ns()
        with sqlite3.connect(env.daemon.root / "cripy.db") as db:
            db.execute("INSERT INTO pods (id, name, state, created_at, request, runtime_handler, ips, cgroup_parent,"
                       " run_dir) VALUES (?, ?, 'creating', ?, ?, 'runc', '[]', ?, ?)",
                       (half_pod, f"half_cripytest_{pod_request.uid}_0", now, serde.dumps(pod_request),
                        env.cgroup_parent, str(pod_dir)))
            db.execute("INSERT INTO effects (owner, kind, data) VALUES (?, 'pod-dir', ?)",
                       (half_pod, json.dumps({"path": str(pod_dir)})))
            db.execute("INSERT INTO effects (owner, kind, data) VALUES (?, 'pod-shm', ?)",
                       (half_pod, json.dumps({"path": str(shm)})))
            image_id = db.execute("SELECT image_id FROM containers WHERE id = ?", (keeper,)).fetchone()[0]
            db.execute("INSERT INTO containers (id, pod_id, name, state, created_at, image_id, image_name, request,"
                       " log_path) VALUES (?, ?, ?, 'creating', ?, ?, ?, ?, ?)",
                       (half_ctr, pod_id, f"half-ctr_intact_cripytest_{config.metadata.uid}_0", now, image_id,
                        BUSYBOX, serde.dumps(ctr_request), str(env.workdir / "half.log")))
            db.execute("INSERT INTO effects (owner, kind, data) VALUES (?, 'ctr-dirs', ?)",
                       (half_ctr, json.dumps({"paths": [str(ctr_dir)]})))

        env.daemon.start()

        assert not os.path.ismount(shm), "the half-made pod's shm is still mounted"
        assert not pod_dir.exists() and not ctr_dir.exists()
        assert [p.id for p in env.list_pods()] == [pod_id]
        assert [c.id for c in env.list_containers()] == [keeper]
        with sqlite3.connect(env.daemon.root / "cripy.db") as db:
            owners = {row[0] for row in db.execute("SELECT owner FROM effects")}
            assert not owners & {half_pod, half_ctr}, "journal entries of undone objects are left"
            assert db.execute("SELECT count(*) FROM pods WHERE id = ?", (half_pod,)).fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM containers WHERE id = ?", (half_ctr,)).fetchone()[0] == 0
        assert env.status(keeper).state == api_pb2.CONTAINER_RUNNING
        # The names of the undone objects are free again.
        again = env.create(pod_id, config, env.container_config("half-ctr", ["sleep", "3600"]))
        assert again != half_ctr
    finally:
        if os.path.ismount(shm):
            subprocess.run(["umount", "-l", str(shm)])


def test_an_exec_cut_short_by_a_kill_leaves_nothing_after_the_restart(pod_env_factory: Callable[..., PodEnv]) -> None:
    """ExecSync keeps runc's pid file and log in the run root's exec directory (root's only) while the command
    runs; a daemon killed meanwhile never removes them, so the next start does."""
    env = pod_env_factory()
    pod_id, config = env.run_pod("exec-cut-short")
    ctr = env.run(pod_id, config, "main", ["sleep", "3600"])
    exec_dir = env.daemon.runroot / "exec"
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(env.exec, ctr, ["sleep", "2"])
        deadline = time.monotonic() + 30
        while not (exec_dir.is_dir() and any(name.endswith(".pid") for name in os.listdir(exec_dir))):
            assert time.monotonic() < deadline and not call.done(), "the exec never started"
            time.sleep(0.02)
        env.daemon.kill()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=60)
    assert os.listdir(exec_dir), "the killed daemon left nothing: the test proves nothing"
    assert exec_dir.stat().st_mode & 0o777 == 0o700  # runc's logs name commands and paths: root's only
    env.daemon.start()
    assert os.listdir(exec_dir) == []
    assert env.exec(ctr, ["echo", "again"]).stdout == b"again\n"
    env.stop_pod(pod_id)
    env.remove_pod(pod_id)
