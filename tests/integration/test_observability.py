"""What an operator watches a real daemon through: the Prometheus metrics scraped during a pull and over a pod's
life, a RunPodSandbox's trace received by an in-process OTLP receiver, `cripy ctl inflight` naming a call held in
a CNI plugin that the test keeps waiting (and the stuck-step log), pull and import progress on a terminal and off
it, grpc.health.v1, sd_notify and the journal's log format."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.daemon import REPO_ROOT, CripyDaemon
from tests.integration.podlib import CNI_PLUGIN_DIR, PodEnv, short_tempdir
from tests.integration.test_images_common import insecure_conf, marker_image, unique, wait_for
from tests.support.images import write_oci_layout
from tests.support.otlp import OTLPReceiver
from tests.support.scrape import scrape, value

MIB = 1024 * 1024


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 108 bytes; pytest's tmp_path can be longer)."""
    directory = short_tempdir("obs")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def metrics_toml(socket_path: Path) -> str:
    return f'\n[metrics]\naddress = "unix://{socket_path}"\n'


def cripy_ctl(daemon: CripyDaemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cripy.cli", "ctl", "-r", str(daemon.socket), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


# ---- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_follow_a_pull(cripy_factory, plain_registry, fault_proxy, short_dir: Path) -> None:
    proxy = fault_proxy(plain_registry)
    metrics = short_dir / "metrics.sock"
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host), extra_toml=metrics_toml(metrics))
    image = marker_image("metrics during a pull")
    repo = unique("metrics")
    plain_registry.push_image(repo, "v1", image)
    big, small = image.layers
    proxy.trickle(f"/blobs/{big.digest}", rate=250_000)  # the busybox layer (~1 MB) takes a few seconds
    outcome: list[Any] = []
    puller = threading.Thread(target=lambda: outcome.append(daemon.pull(proxy.ref(repo, "v1"))))
    puller.start()

    def mid_pull() -> dict | None:
        samples = scrape(metrics)
        done = value(samples, "cripy_image_pull_in_flight_bytes")
        return samples if value(samples, "cripy_image_pulls_in_flight") == 1 and 0 < done < len(big.blob) else None

    wait_for(lambda: mid_pull() is not None, "a scrape in the middle of the pull")
    during = scrape(metrics)
    assert value(during, "cripy_cri_requests_in_flight", method="PullImage") == 1
    assert value(during, "cripy_image_pulls_total") == 0
    puller.join(60)
    assert outcome == [image.config_digest]

    after = scrape(metrics)
    image_bytes = len(big.blob) + len(small.blob) + len(image.config_bytes)
    assert value(after, "cripy_image_pull_bytes_total") == image_bytes
    assert value(after, "cripy_image_pull_layers_total") == 2
    assert value(after, "cripy_image_pulls_total") == 1
    assert value(after, "cripy_image_pulls_in_flight") == 0
    assert value(after, "cripy_image_pull_in_flight_bytes") == 0
    assert value(after, "cripy_cri_request_duration_seconds_count", method="PullImage", code="OK") == 1
    assert value(after, "cripy_step_duration_seconds_count", step="image.pull") == 1
    assert value(after, "cripy_step_duration_seconds_count", step="layer.download") == 2
    assert value(after, "cripy_step_duration_seconds_count", step="layer.unpack") == 2
    assert value(after, "cripy_step_duration_seconds_sum", step="layer.download") > 1.0  # the trickled layer

    # Again: only the manifest and config travel; no layer is downloaded twice.
    proxy.clear_faults()
    daemon.pull(proxy.ref(repo, "v1"))
    again = scrape(metrics)
    assert value(again, "cripy_image_pull_bytes_total") == image_bytes + len(image.config_bytes)
    assert value(again, "cripy_image_pull_layers_total") == 2
    assert value(again, "cripy_image_pulls_total") == 2

    with pytest.raises(grpc.RpcError) as missing:
        daemon.pull(proxy.ref(repo, "no-such-tag"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # The client has its answer a moment before the handler's bookkeeping ends.
    wait_for(lambda: value(scrape(metrics), "cripy_cri_request_duration_seconds_count", method="PullImage",
                           code="NOT_FOUND") == 1, "the failed PullImage counted")
    assert value(scrape(metrics), "cripy_image_pull_failures_total", reason="not_found") == 1


def test_metrics_follow_a_pods_life(pod_env_factory, short_dir: Path) -> None:
    metrics = short_dir / "metrics.sock"
    env: PodEnv = pod_env_factory(extra_toml=metrics_toml(metrics))
    before = scrape(metrics)
    assert value(before, "cripy_pods", state="ready") == 0
    assert value(before, "cripy_effects_pending") == 0

    pod_id, config = env.run_pod("metrics-pod")
    ran = scrape(metrics)
    assert value(ran, "cripy_cri_request_duration_seconds_count", method="RunPodSandbox", code="OK") == 1
    assert value(ran, "cripy_pods", state="ready") == 1
    assert value(ran, "cripy_step_duration_seconds_count", step="cni.add") == 1
    assert value(ran, "cripy_step_duration_seconds_count", step="pod.namespaces") == 1
    assert value(ran, "cripy_effects_recorded_total", kind="pod-network") == 1
    assert value(ran, "cripy_effects_pending") >= 4  # dir, namespaces, shm, network

    limit = 16 * MIB
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit)
    hog = env.run(pod_id, config, "hog", ["sh", "-c", "tail /dev/zero"],
                  linux=api_pb2.LinuxContainerConfig(resources=resources))
    fine = env.run(pod_id, config, "fine", ["true"])
    assert env.wait_state(hog, timeout=60).reason == "OOMKilled"
    env.wait_state(fine)
    exited = scrape(metrics)
    assert value(exited, "cripy_container_oom_kills_total") == 1
    assert value(exited, "cripy_container_exits_total", code_class="signal") == 1
    assert value(exited, "cripy_container_exits_total", code_class="zero") == 1
    assert value(exited, "cripy_containers", state="exited") == 2
    assert value(exited, "cripy_cri_request_duration_seconds_count", method="StartContainer", code="OK") == 2
    assert value(exited, "cripy_step_duration_seconds_count", step="runtime.create") == 2

    env.stop_pod(pod_id)
    env.remove_pod(pod_id)
    env.wait_for("the journal emptied", lambda: value(scrape(metrics), "cripy_effects_pending") == 0)
    gone = scrape(metrics)
    assert value(gone, "cripy_pods", state="ready") + value(gone, "cripy_pods", state="notready") == 0
    assert value(gone, "cripy_containers", state="exited") == 0
    assert value(gone, "cripy_effects_undone_total", kind="pod-network") == 1
    assert value(gone, "cripy_effect_undo_failures_total", kind="pod-network") == 0
    assert value(gone, "cripy_step_duration_seconds_count", step="cni.del") == 1
    assert value(gone, "cripy_event_loop_lag_seconds_count") > 0


# ---- traces ----------------------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    otlp = OTLPReceiver().start()
    yield otlp
    otlp.stop()


def test_a_run_pod_sandbox_is_traced_in_the_kubelets_trace(pod_env_factory, receiver: OTLPReceiver) -> None:
    env: PodEnv = pod_env_factory(extra_toml=f'\n[tracing]\nendpoint = "{receiver.endpoint}"\n')
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    config = env.pod_config("traced-pod")
    env.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60,
                         metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")])
    env.rt.Version(api_pb2.VersionRequest(), timeout=10)  # no trace context: a trace of its own

    def complete(spans: list) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"runtime.v1.RuntimeService/RunPodSandbox", "cni.add"} <= names and any(
            s.name == "runtime.v1.RuntimeService/Version" for s in spans)

    spans = receiver.wait_for(complete)
    ours = [s for s in spans if s.trace_id == trace_id]
    (call,) = [s for s in ours if s.name == "runtime.v1.RuntimeService/RunPodSandbox"]
    assert call.parent_span_id == parent_id  # the kubelet's span is its parent
    assert call.kind == 2  # SERVER
    assert call.service == "cripy"
    assert call.attributes["rpc.method"] == "RunPodSandbox"
    assert call.attributes["rpc.grpc.status_code"] == 0
    assert "traced-pod" in call.attributes["cripy.subject"]
    steps = {s.name: s for s in ours if s.parent_span_id == call.span_id}
    assert {"pod.files", "pod.namespaces", "pod.shm", "cni.add"} <= set(steps)
    for step in steps.values():
        assert call.start_ns <= step.start_ns <= step.end_ns <= call.end_ns
    assert {s.name for s in ours} - {call.name} == set(steps)  # nothing else in the kubelet's trace
    versions = [s for s in spans if s.name == "runtime.v1.RuntimeService/Version"]  # the test's and start()'s
    assert versions and all(v.parent_span_id == "" and v.trace_id != trace_id for v in versions)


# ---- in flight -------------------------------------------------------------------------------------------------

HELD_BRIDGE = f"""#!/bin/sh
# The bridge plugin, held in ADD until the test creates RELEASE (or a minute passes).
if [ "$CNI_COMMAND" = ADD ]; then
    n=0
    while [ ! -e "{{release}}" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
fi
exec {CNI_PLUGIN_DIR}/bridge "$@"
"""


def test_inflight_names_a_call_held_in_a_slow_cni_plugin(pod_env_factory, short_dir: Path) -> None:
    plugins = short_dir / "plugins"
    plugins.mkdir()
    release = short_dir / "RELEASE"
    (plugins / "bridge").write_text(HELD_BRIDGE.format(release=release))
    (plugins / "bridge").chmod(0o755)
    env: PodEnv = pod_env_factory(plugin_dirs=(plugins, CNI_PLUGIN_DIR), dropin="[cripy]\nstuck_step_seconds = 1\n")
    config = env.pod_config("Held-In-CNI-" + "x" * 40)
    request = api_pb2.RunPodSandboxRequest(config=config)
    try:
        # The kubelet's first try gives up after its deadline; its retry joins the work still going on.
        with pytest.raises(grpc.RpcError) as first:
            env.rt.RunPodSandbox(request, timeout=2)
        assert first.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answers: list[Any] = []
        retry = threading.Thread(target=lambda: answers.append(env.rt.RunPodSandbox(request, timeout=90)))
        retry.start()

        def held() -> dict | None:
            calls = json.loads(cripy_ctl(env.daemon, "inflight", "-o", "json").stdout)["calls"]
            return next((c for c in calls if c["method"] == "RunPodSandbox" and c["joined"] == 1), None)

        env.wait_for("the retry joining the held call", held)
        call = held()
        assert call is not None
        assert [step["name"] for step in call["steps"]] == ["cni.add"]
        assert call["seconds"] >= 2 and call["steps"][0]["seconds"] >= 1.5
        assert config.metadata.name in call["object"] and "cripytest" in call["object"]
        table = cripy_ctl(env.daemon, "inflight")
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["ID", "METHOD", "OBJECT", "AGE", "STEP", "IN", "STEP", "JOINED"]
        (row,) = [line for line in rows if "RunPodSandbox" in line]
        assert "cni.add" in row and config.metadata.name in row and row.split()[-1] == "1"
        env.wait_for("the stuck-step log", lambda: "has been in step cni.add" in env.daemon.log_text())
        (line,) = [line for line in env.daemon.log_text().splitlines() if "has been in step cni.add" in line]
        assert "WARNING" in line and "RunPodSandbox" in line and config.metadata.name in line
    finally:
        release.touch()
    retry.join(90)
    assert len(answers) == 1 and answers[0].pod_sandbox_id
    env.wait_for("nothing in flight", lambda: json.loads(
        cripy_ctl(env.daemon, "inflight", "-o", "json").stdout)["calls"] == [])
    assert "step cni.add finished after" in env.daemon.log_text()


# ---- progress --------------------------------------------------------------------------------------------------


def run_on_pty(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run with stdout and stderr on a 120x40 terminal; its exit code and everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        code = process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return code, output.decode(errors="replace")


def test_pull_shows_a_progress_bar_per_layer_on_a_terminal(cripy_factory, plain_registry, fault_proxy) -> None:
    proxy = fault_proxy(plain_registry)
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))
    image = marker_image("progress on a terminal")
    repo = unique("progress")
    plain_registry.push_image(repo, "v1", image)
    big, small = image.layers
    proxy.trickle(f"/blobs/{big.digest}", rate=300_000)  # long enough for the bar to be drawn several times
    code, screen = run_on_pty([sys.executable, "-m", "cripy.cli", "ctl", "-r", str(daemon.socket), "pull",
                               proxy.ref(repo, "v1")])
    assert code == 0, screen
    assert f"Image is up to date for {image.config_digest}" in screen
    big_short, small_short = big.digest[7:19], small.digest[7:19]
    assert big_short in screen and small_short in screen
    redraws = [part for part in screen.split("\r") if big_short in part]
    assert len(redraws) >= 3, screen  # the bar moved in place
    assert any("downloading" in part and "B/s" in part for part in redraws), screen  # bytes and speed
    assert any("100%" in part and "done" in part for part in redraws), screen
    assert any("%|" in part and "<" in part for part in redraws), screen  # the bar and the time left


def test_pull_and_import_progress_are_plain_lines_off_a_terminal(cripy_factory, plain_registry,
                                                                 tmp_path: Path) -> None:
    daemon = cripy_factory(registries_conf=insecure_conf(plain_registry.host))
    image = marker_image("progress in lines")
    repo = unique("lines")
    plain_registry.push_image(repo, "v1", image)
    pulled = cripy_ctl(daemon, "pull", plain_registry.ref(repo, "v1"))
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"Image is up to date for {image.config_digest}\n"  # stdout as crictl's
    lines = pulled.stderr.splitlines()
    for layer in image.layers:
        short = layer.digest[7:19]
        assert any(line.startswith(f"{short}: done ") for line in lines), pulled.stderr
    assert "\r" not in pulled.stderr and "\x1b" not in pulled.stderr
    quiet = cripy_ctl(daemon, "pull", "--no-progress", plain_registry.ref(repo, "v1"))
    assert quiet.returncode == 0 and quiet.stderr == ""

    layout = tmp_path / "layout"
    write_oci_layout(layout, marker_image("imported with progress"))
    imported = subprocess.run([sys.executable, "-m", "cripy.cli", "image", "import", str(layout), "--name",
                               "localhost/progress/imported:v1", "-r", str(daemon.socket)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("imported sha256:")
    states = {line.split()[1] for line in imported.stderr.splitlines() if ": " in line}
    assert "done" in states, imported.stderr


# ---- health, sd_notify, log formats ----------------------------------------------------------------------------


def test_grpc_health_says_serving(cripy_factory) -> None:
    daemon = cripy_factory()
    health = health_pb2_grpc.HealthStub(daemon.channel)
    for service in ("", "runtime.v1.RuntimeService", "runtime.v1.ImageService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_systemd_hears_ready_and_stopping_and_the_journal_gets_its_format(tmp_path: Path, short_dir: Path) -> None:
    notify_path = short_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        listener.settimeout(30)
        daemon = CripyDaemon(tmp_path / "d")
        daemon.log_path.touch()
        st = daemon.log_path.stat()  # the daemon's stderr: as systemd's JOURNAL_STREAM names the journal's
        daemon.env.update(NOTIFY_SOCKET=str(notify_path), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        try:
            daemon.start()
            ready = listener.recv(4096).decode().split("\n")
            assert ready[0] == "READY=1" and f"MAINPID={daemon.pid}" in ready
            assert any(line.startswith("STATUS=serving CRI on") for line in ready)
        finally:
            daemon.stop()
        assert listener.recv(4096).decode().split("\n")[0] == "STOPPING=1"
    lines = daemon.log_text().splitlines()
    assert lines and all(line[0] == "<" and line[2] == ">" for line in lines if line), lines[:5]
    assert any(line.startswith("<6>cripy.daemon: cripy serving CRI on") for line in lines)


def test_json_log_lines_on_request(tmp_path: Path) -> None:
    daemon = CripyDaemon(tmp_path / "d")
    (daemon.workdir / "cripy.d").mkdir()
    (daemon.workdir / "cripy.d" / "log.toml").write_text('[cripy]\nlog_format = "json"\n')
    try:
        daemon.start()
    finally:
        daemon.stop()
    records = [json.loads(line) for line in daemon.log_text().splitlines() if line]
    assert any(r["message"].startswith("cripy serving CRI on") and r["level"] == "info" for r in records)
    assert {"time", "level", "logger", "message"} <= set(records[0])
