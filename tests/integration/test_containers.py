"""Containers through CRI on real runc/conmon: logs in the CRI format and their reopening, exit reasons (Completed,
Error, OOMKilled), stop signals and the SIGKILL after the timeout, ExecSync, resource updates, stats, events, and
ListContainers with every filter."""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import STOPSIGNAL_IMAGE, PodEnv, log_messages, mounts_under, read_cri_log, rpc_error

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pod(pod_env: PodEnv) -> tuple[str, api_pb2.PodSandboxConfig]:
    """One pod for the tests of this module that only need somewhere to run containers."""
    return pod_env.run_pod("containers-pod")


def verbose_info(env: PodEnv, ctr_id: str) -> dict:
    reply = env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr_id, verbose=True), timeout=10)
    return json.loads(reply.info["info"])


def container_cgroup(env: PodEnv, ctr_id: str, controller: str) -> Path:
    return Path("/sys/fs/cgroup") / controller / verbose_info(env, ctr_id)["cgroupPath"].lstrip("/")


# ---- logs ----------------------------------------------------------------------------------------------------


def test_output_reaches_the_log_file_in_cri_format(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    script = "echo out-line; echo err-line >&2; printf 'no-newline'; sleep 0.2; printf ' continued\\n'; exit 0"
    ctr = pod_env.run(pod_id, config, "logger", ["sh", "-c", script])
    status = pod_env.wait_state(ctr)
    assert status.log_path == str(Path(config.log_directory) / "logger.log")

    lines = read_cri_log(Path(status.log_path))
    for line in lines:
        assert line.stream in ("stdout", "stderr") and line.tag in ("P", "F"), line
        assert "T" in line.time and (line.time.endswith("Z") or "+" in line.time), line.time
    assert ("stdout", "F", "out-line") in [(line.stream, line.tag, line.text) for line in lines]
    assert ("stderr", "F", "err-line") in [(line.stream, line.tag, line.text) for line in lines]
    assert any(line.tag == "P" and line.text == "no-newline" for line in lines), lines
    assert log_messages(lines, "stdout") == ["out-line", "no-newline continued"]
    assert log_messages(lines, "stderr") == ["err-line"]


def test_reopen_container_log_after_rotation(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    script = "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.05; done"
    ctr = pod_env.run(pod_id, config, "rotated", ["sh", "-c", script])
    log_path = Path(pod_env.status(ctr).log_path)
    pod_env.wait_for("first lines logged", lambda: log_path.exists() and log_path.stat().st_size > 0)

    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)
    pod_env.rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=ctr), timeout=20)
    pod_env.wait_for("lines in the reopened log", lambda: log_path.exists() and len(read_cri_log(log_path)) >= 2)

    old = [int(text.split("-")[1]) for text in log_messages(read_cri_log(rotated), "stdout")]
    new = [int(text.split("-")[1]) for text in log_messages(read_cri_log(log_path), "stdout")]
    assert old and new and old[0] == 0
    assert max(old) < min(new), "the reopened file repeats lines of the rotated one"
    pod_env.stop(ctr)
    error = rpc_error(lambda: pod_env.rt.ReopenContainerLog(
        api_pb2.ReopenContainerLogRequest(container_id=ctr), timeout=20))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---- exits -----------------------------------------------------------------------------------------------------


def test_exit_zero_is_completed_and_non_zero_is_error(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ok = pod_env.run(pod_id, config, "exit-ok", ["true"])
    bad = pod_env.run(pod_id, config, "exit-bad", ["sh", "-c", "exit 3"])
    ok_status = pod_env.wait_state(ok)
    bad_status = pod_env.wait_state(bad)
    assert (ok_status.exit_code, ok_status.reason) == (0, "Completed")
    assert (bad_status.exit_code, bad_status.reason) == (3, "Error")
    for status in (ok_status, bad_status):
        assert 0 < status.created_at <= status.started_at <= status.finished_at


def test_oom_killed_container_reports_oomkilled(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    limit = 16 * MIB
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit)
    ctr = pod_env.create(pod_id, config, pod_env.container_config(
        "oom", ["sh", "-c", "tail /dev/zero"], linux=api_pb2.LinuxContainerConfig(resources=resources)))
    assert pod_env.status(ctr).resources.linux.memory_limit_in_bytes == limit
    pod_env.start(ctr)
    status = pod_env.wait_state(ctr, timeout=60)
    assert status.reason == "OOMKilled", status
    assert status.exit_code == 137


def test_stop_uses_the_image_stop_signal(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    script = "trap 'echo got-usr1; exit 7' USR1; echo ready; while true; do sleep 0.05; done"
    ctr = pod_env.run(pod_id, config, "stopsignal", ["sh", "-c", script], image=STOPSIGNAL_IMAGE)
    log_path = Path(pod_env.status(ctr).log_path)
    pod_env.wait_for("trap installed", lambda: log_path.exists() and "ready" in log_path.read_text())
    pod_env.stop(ctr, timeout=30)
    status = pod_env.status(ctr)
    assert status.state == api_pb2.CONTAINER_EXITED
    assert status.exit_code == 7, status
    assert "got-usr1" in log_messages(read_cri_log(log_path), "stdout")


def test_stop_kills_after_the_timeout_when_the_signal_is_ignored(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    script = "trap 'echo ignoring-term' TERM; echo ready; while true; do sleep 0.05; done"
    ctr = pod_env.run(pod_id, config, "stubborn", ["sh", "-c", script])
    log_path = Path(pod_env.status(ctr).log_path)
    pod_env.wait_for("trap installed", lambda: log_path.exists() and "ready" in log_path.read_text())
    pod_env.stop(ctr, timeout=1)
    status = pod_env.status(ctr)
    assert status.state == api_pb2.CONTAINER_EXITED
    assert status.exit_code == 137, status  # SIGKILL
    assert "ignoring-term" in log_messages(read_cri_log(log_path), "stdout"), "SIGTERM was not sent first"
    pod_env.stop(ctr, timeout=1)  # stopping a stopped container is fine


def test_stop_answers_once_the_runtime_has_let_go_of_the_container(pod_env: PodEnv, pod: tuple) -> None:
    """As containerd's, StopContainer answers after the runtime's state is deleted and the rootfs unmounted, so a
    RemoveContainer right after it does not compete with that clean-up (and nothing of runc's outlives the stop)."""
    pod_id, config = pod
    ctr = pod_env.run(pod_id, config, "released", SLEEP)
    runc_root = pod_env.daemon.runroot / "runtimes" / "runc"
    assert (runc_root / ctr).is_dir()
    assert any(ctr in point for point in mounts_under(pod_env.daemon.root))
    pod_env.stop(ctr, timeout=1)  # sleep as PID 1 ignores SIGTERM: a long grace would only be waited out
    assert not (runc_root / ctr).exists(), "runc's state of the stopped container is still there"
    assert not any(ctr in point for point in mounts_under(pod_env.daemon.root)), "its rootfs is still mounted"
    assert pod_env.status(ctr).state == api_pb2.CONTAINER_EXITED
    pod_env.remove(ctr)


# ---- exec, update, stats ---------------------------------------------------------------------------------------


def test_exec_sync_returns_output_and_exit_code_and_times_out(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ctr = pod_env.run(pod_id, config, "exec-target", SLEEP)
    reply = pod_env.exec(ctr, ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 5"])
    assert (reply.exit_code, reply.stdout, reply.stderr) == (5, b"to-stdout\n", b"to-stderr\n")
    assert pod_env.exec(ctr, ["cat", "/proc/1/cmdline"]).stdout.split(b"\0")[:2] == [b"sleep", b"3600"]

    error = rpc_error(lambda: pod_env.exec(ctr, ["sleep", "30"], timeout=1))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    processes = pod_env.sh(ctr, "ps -o args")
    assert "sleep 30" not in processes, "the timed-out command is still running"



def test_update_container_resources_reaches_the_cgroup(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 * MIB, cpu_shares=512)
    ctr = pod_env.create(pod_id, config, pod_env.container_config(
        "updated", SLEEP, linux=api_pb2.LinuxContainerConfig(resources=resources)))
    pod_env.start(ctr)
    memory = container_cgroup(pod_env, ctr, "memory")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * MIB

    update = api_pb2.LinuxContainerResources(memory_limit_in_bytes=96 * MIB, cpu_shares=256)
    pod_env.rt.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(container_id=ctr, linux=update), timeout=30)
    assert int((memory / "memory.limit_in_bytes").read_text()) == 96 * MIB
    assert int((container_cgroup(pod_env, ctr, "cpu") / "cpu.shares").read_text()) == 256
    # Seen from inside the container too (its cgroup is the root of its /sys/fs/cgroup view).
    assert int(pod_env.sh(ctr, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")) == 96 * MIB
    status = pod_env.status(ctr)
    assert status.resources.linux.memory_limit_in_bytes == 96 * MIB
    assert status.resources.linux.cpu_shares == 256


def test_container_and_pod_stats(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("stats-pod", labels={"stats": "yes"})
    ctr = pod_env.run(pod_id, config, "busy", ["sh", "-c", "head -c 4000000 /dev/zero > /tmp/blob; sleep 3600"],
                      labels={"which": "busy"})
    pod_env.wait_for("blob written", lambda: pod_env.exec(ctr, ["test", "-s", "/tmp/blob"]).exit_code == 0)
    # Some traffic on eth0 (nothing listens on the gateway's port 1: a SYN out, a RST back).
    pod_env.exec(ctr, ["nc", "-w", "2", pod_env.network.gateway, "1"])

    stats = pod_env.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=ctr), timeout=10).stats
    assert stats.attributes.id == ctr and stats.attributes.metadata.name == "busy"
    assert stats.memory.working_set_bytes.value > 0
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.writable_layer.used_bytes.value >= 4_000_000

    listed = pod_env.rt.ListContainerStats(api_pb2.ListContainerStatsRequest(
        filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod_id)), timeout=10).stats
    assert [s.attributes.id for s in listed] == [ctr]
    by_label = pod_env.rt.ListContainerStats(api_pb2.ListContainerStatsRequest(
        filter=api_pb2.ContainerStatsFilter(label_selector={"which": "busy"})), timeout=10).stats
    assert ctr in [s.attributes.id for s in by_label]

    pod_stats = pod_env.rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=10).stats
    assert pod_stats.attributes.id == pod_id
    assert pod_stats.linux.memory.working_set_bytes.value > 0
    eth0 = pod_stats.linux.network.default_interface
    assert eth0.name == "eth0" and eth0.rx_bytes.value > 0 and eth0.tx_bytes.value > 0
    assert [c.attributes.id for c in pod_stats.linux.containers] == [ctr]
    all_pods = pod_env.rt.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest(
        filter=api_pb2.PodSandboxStatsFilter(label_selector={"stats": "yes"})), timeout=10).stats
    assert [s.attributes.id for s in all_pods] == [pod_id]


# ---- events and listing ----------------------------------------------------------------------------------------


def test_container_events_stream_created_started_stopped_deleted(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    events: queue.Queue[api_pb2.ContainerEventResponse] = queue.Queue()
    stream = pod_env.rt.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=120)

    def read() -> None:
        try:
            for event in stream:
                events.put(event)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The stream is live once it delivers something: create throwaway containers until one is seen.
        probe = pod_env.create(pod_id, config, pod_env.container_config(f"probe-{secrets.token_hex(3)}", SLEEP))
        first = events.get(timeout=20)
        assert first.container_id == probe and first.container_event_type == api_pb2.CONTAINER_CREATED_EVENT
        pod_env.remove(probe)

        ctr = pod_env.create(pod_id, config, pod_env.container_config("evented", SLEEP))
        pod_env.start(ctr)
        pod_env.stop(ctr)
        pod_env.remove(ctr)
        seen = []
        while len(seen) < 4:
            event = events.get(timeout=20)
            if event.container_id == ctr:
                seen.append(event)
        assert [e.container_event_type for e in seen] == [
            api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
            api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]
        assert all(e.pod_sandbox_status.id == pod_id and e.created_at > 0 for e in seen)
        started = next(e for e in seen if e.container_event_type == api_pb2.CONTAINER_STARTED_EVENT)
        assert any(s.id == ctr and s.state == api_pb2.CONTAINER_RUNNING for s in started.containers_statuses)
    finally:
        stream.cancel()
        reader.join(10)


def test_list_containers_filters(pod_env: PodEnv) -> None:
    tag = secrets.token_hex(3)
    pod_a, config_a = pod_env.run_pod("listc-a")
    pod_b, config_b = pod_env.run_pod("listc-b")
    running = pod_env.run(pod_a, config_a, "running", SLEEP, labels={"suite": tag, "kind": "run"})
    created = pod_env.create(pod_a, config_a, pod_env.container_config("created", SLEEP,
                                                                       labels={"suite": tag, "kind": "new"}))
    exited = pod_env.run(pod_b, config_b, "exited", ["true"], labels={"suite": tag, "kind": "done"})
    pod_env.wait_state(exited)

    def ids(**filter_fields: object) -> set[str]:
        return {c.id for c in pod_env.list_containers(**filter_fields)}

    def state(value: int) -> api_pb2.ContainerStateValue:
        return api_pb2.ContainerStateValue(state=value)

    assert {running, created, exited} <= ids()
    assert ids(label_selector={"suite": tag}) == {running, created, exited}
    assert ids(label_selector={"suite": tag, "kind": "new"}) == {created}
    assert ids(pod_sandbox_id=pod_a) == {running, created}
    assert ids(pod_sandbox_id=pod_b[:12]) == {exited}
    assert ids(id=running[:12]) == {running}
    assert ids(id=exited, pod_sandbox_id=pod_a) == set()
    assert ids(label_selector={"suite": tag}, state=state(api_pb2.CONTAINER_RUNNING)) == {running}
    assert ids(label_selector={"suite": tag}, state=state(api_pb2.CONTAINER_CREATED)) == {created}
    assert ids(label_selector={"suite": tag}, state=state(api_pb2.CONTAINER_EXITED)) == {exited}
    listed = pod_env.list_containers(id=running)[0]
    assert listed.pod_sandbox_id == pod_a and listed.metadata.name == "running"
    assert listed.image.image and listed.image_ref.startswith("sha256:")
    assert listed.state == api_pb2.CONTAINER_RUNNING and listed.created_at > 0


def test_remove_container_is_idempotent_and_takes_its_files(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ctr = pod_env.run(pod_id, config, "removed", SLEEP)
    ctr_dir = pod_env.daemon.root / "containers" / ctr
    assert ctr_dir.is_dir()
    pod_env.remove(ctr)  # running: killed first
    pod_env.remove(ctr)
    assert pod_env.list_containers(id=ctr) == []
    # Like containerd's snapshot GC, what a removed container leaves on disk goes in the background (journalled,
    # so a restart finishes it): wait for it, a bounded wait that only stops a hang.
    bundle = pod_env.daemon.runroot / "containers" / ctr
    deadline = time.monotonic() + 10
    while (ctr_dir.exists() or bundle.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ctr_dir.exists(), f"{ctr_dir} is left after RemoveContainer"
    assert not bundle.exists()
    assert rpc_error(lambda: pod_env.status(ctr)).code() == grpc.StatusCode.NOT_FOUND


# ---- what CreateContainer turns into the OCI spec ----------------------------------------------------------------


def test_command_args_env_and_working_dir(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ctr = pod_env.create(pod_id, config, pod_env.container_config(
        "process", ["sh", "-c"], args=['echo "$GREETING|$PATH"; pwd; sleep 3600'], working_dir="/tmp",
        envs=[api_pb2.KeyValue(key="GREETING", value="hello world")]))
    pod_env.start(ctr)
    log_path = Path(pod_env.status(ctr).log_path)
    pod_env.wait_for("output", lambda: log_path.exists() and len(log_messages(read_cri_log(log_path))) >= 2)
    assert log_messages(read_cri_log(log_path))[:2] == [
        "hello world|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "/tmp"]
    # Without a command the image's Cmd runs (busybox: /bin/sh, which exits at once on an empty stdin).
    default = pod_env.run(pod_id, config, "image-cmd")
    assert pod_env.wait_state(default).exit_code == 0


def test_host_path_mounts_read_write_and_read_only(pod_env: PodEnv, pod: tuple, tmp_path: Path) -> None:
    pod_id, config = pod
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "given").write_text("from the host\n")
    mounts = [api_pb2.Mount(container_path="/rw", host_path=str(tmp_path / "rw")),
              api_pb2.Mount(container_path="/ro", host_path=str(tmp_path / "ro"), readonly=True)]
    ctr = pod_env.create(pod_id, config, pod_env.container_config("mounts", SLEEP, mounts=mounts))
    pod_env.start(ctr)
    pod_env.sh(ctr, "echo from-the-container > /rw/written")
    assert (tmp_path / "rw" / "written").read_text() == "from-the-container\n"
    assert pod_env.sh(ctr, "cat /ro/given") == "from the host\n"
    reply = pod_env.exec(ctr, ["touch", "/ro/nope"])
    assert reply.exit_code != 0 and b"Read-only" in reply.stderr
    reported = {m.container_path: m for m in pod_env.status(ctr).mounts}
    assert reported["/ro"].readonly and not reported["/rw"].readonly
    assert reported["/ro"].host_path == str(tmp_path / "ro")
    pod_env.remove(ctr)  # before tmp_path goes


def test_device_is_made_available(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    ctr = pod_env.create(pod_id, config, pod_env.container_config("device", SLEEP, devices=[
        api_pb2.Device(container_path="/dev/hostnull", host_path="/dev/null", permissions="rwm")]))
    pod_env.start(ctr)
    assert pod_env.sh(ctr, "stat -c %F:%t:%T /dev/hostnull").strip() == "character special file:1:3"
    pod_env.sh(ctr, "echo discard > /dev/hostnull")


def test_cpu_quota_and_oom_score_reach_the_container(pod_env: PodEnv, pod: tuple) -> None:
    pod_id, config = pod
    resources = api_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, oom_score_adj=500)
    ctr = pod_env.create(pod_id, config, pod_env.container_config(
        "limited", SLEEP, linux=api_pb2.LinuxContainerConfig(resources=resources)))
    pod_env.start(ctr)
    cpu = container_cgroup(pod_env, ctr, "cpu")
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50000
    assert int((cpu / "cpu.cfs_period_us").read_text()) == 100000
    assert pod_env.sh(ctr, "cat /proc/self/oom_score_adj").strip() == "500"
    linux = pod_env.status(ctr).resources.linux
    assert (linux.cpu_quota, linux.cpu_period, linux.oom_score_adj) == (50000, 100000, 500)
