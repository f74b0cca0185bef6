"""Crash safety, walked rather than hoped for: the daemon is made to die (SIGKILL, cripy/faults.py) at every fault
point that each lifecycle call and a pull pass, then started again. Each time the lists must match the node (no
mount, namespace pin or monitor that no listed object owns; every running container's process alive), the same call
retried must succeed (or have taken effect already), and once everything is removed nothing of it may remain.

The points of a call are learnt first from a trace of a run without faults, so that a new fault point is walked
without this file changing.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import BUSYBOX, PodEnv, mounts_under
from tests.integration.test_images_common import assert_store_consistent, insecure_conf, marker_image, unique

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
SETTLE = 0.4  # seconds without a new point reached: the call's background work is over
DEATH_LIMIT = 20.0
USERNS_HOST_BASE = 65536 * (200 + secrets.randbelow(100))  # a limit only against a broken run: the armed point is reached within the call or just after


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Callable[["Walk"], dict[str, Any]]
    call: Callable[["Walk", dict[str, Any]], Any]
    took_effect: Callable[["Walk", dict[str, Any]], bool]  # after a restart: retrying is then not needed
    check: Callable[["Walk", dict[str, Any]], None]


class Walk:
    """A daemon with fault points enabled: a control file arms one, a trace file records the points reached."""

    def __init__(self, env: PodEnv) -> None:
        self.env = env
        self.control = env.workdir / "fault-control"
        self.trace = env.workdir / "fault-trace"
        env.daemon.env = {"CRIPY_FAULT_CONTROL": str(self.control), "CRIPY_FAULT_TRACE": str(self.trace)}
        env.daemon.restart()

    # -- learning and arming

    def points_of(self, scenario: Scenario) -> list[str]:
        """The distinct points the scenario's call reaches, in the order first reached."""
        ctx = scenario.setup(self)
        self.settle()
        start = self.trace.stat().st_size
        scenario.call(self, ctx)
        self.settle()
        with self.trace.open() as handle:
            handle.seek(start)
            names = handle.read().split()
        self.clear()
        return list(dict.fromkeys(names))

    def settle(self) -> None:
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < SETTLE:
            size = self.trace.stat().st_size if self.trace.exists() else 0
            if size != last:
                last, quiet_since = size, time.monotonic()
            time.sleep(0.05)

    def arm(self, point: str) -> None:
        self.control.write_text(point)

    def disarm(self) -> None:
        self.control.unlink(missing_ok=True)

    # -- the state of the node against the lists

    def assert_node_matches_lists(self) -> None:
        pods = {p.id: p for p in self.env.list_pods()}
        containers = {c.id: c for c in self.env.list_containers()}
        daemon = self.env.daemon
        owners = [daemon.runroot / "pods" / pod_id for pod_id in pods]
        owners += [place / ctr_id for ctr_id in containers
                   for place in (daemon.root / "containers", daemon.runroot / "rootfs", daemon.runroot / "idmap")]
        for point in mounts_under(self.env.workdir):
            assert any(Path(point).is_relative_to(owner) for owner in owners), \
                f"{point} is mounted, but no listed pod or container owns it"
        for pod in pods.values():
            info = json.loads(self.env.pod_status(pod.id, verbose=True).info["info"])
            for path in info.get("namespaces", {}).values():
                pinned = os.path.ismount(path)
                assert pinned == (pod.state == api_pb2.SANDBOX_READY), \
                    f"pod {pod.id[:12]} is {api_pb2.PodSandboxState.Name(pod.state)} but {path} pinned={pinned}"
        for ctr in containers.values():
            if ctr.state == api_pb2.CONTAINER_RUNNING:
                reply = self.env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr.id, verbose=True),
                                                    timeout=10)
                info = json.loads(reply.info["info"])
                assert _alive(info["pid"]), f"container {ctr.id[:12]} is listed running, its pid {info['pid']} is gone"
        known = set(pods) | set(containers) | {p[:32] for p in pods}
        for pid, cmdline in _monitors(self.env.workdir):
            assert any(ident in cmdline for ident in known), f"pid {pid} ({cmdline[:120]}) belongs to no listed object"

    def assert_clean(self) -> None:
        """After every pod is removed: no mount, monitor or IP reservation of them is left."""
        assert mounts_under(self.env.workdir) == []
        assert list(_monitors(self.env.workdir)) == []
        ipam = self.env.network.data_dir / self.env.network.name
        if ipam.is_dir():
            reserved = [p.name for p in ipam.iterdir() if p.name not in ("lock",) and not p.name.startswith("last_")]
            assert reserved == [], f"IP addresses still reserved: {reserved}"

    def reset(self) -> None:
        self.disarm()
        problems = self.env.remove_all_pods()
        assert not problems, problems
        self.assert_clean()

    def clear(self) -> None:
        self.reset()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


_RUNC_QUERIES = {"list", "state", "features"}  # short-lived questions (the audit at start asks `runc list`)


def _monitors(workdir: Path) -> Iterator[tuple[int, str]]:
    """conmon and runc processes of this daemon (their command lines name its directories), but for runc's
    answers to questions, which belong to no object."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = os.path.basename(cmdline.split(" ", 1)[0])
        if name in ("conmon", "runc") and str(workdir) in cmdline:
            if name == "runc" and _RUNC_QUERIES & set(cmdline.split()):
                continue
            yield int(entry.name), cmdline


# ---------------------------------------------------------------------------------------------------- scenarios


def _pod_config(walk: Walk) -> api_pb2.PodSandboxConfig:
    # pid=POD: the pod gets its infra process, so RunPodSandbox passes conmon and runc too
    return walk.env.pod_config(f"crash-{secrets.token_hex(3)}", pid=api_pb2.POD)


def _userns_pod_config(walk: Walk) -> api_pb2.PodSandboxConfig:
    """A pod in a user namespace of its own (the kubelet's hostUsers: false)."""
    config = _pod_config(walk)
    ids = [api_pb2.IDMapping(container_id=0, host_id=USERNS_HOST_BASE, length=65536)]
    config.linux.security_context.namespace_options.userns_options.CopyFrom(
        api_pb2.UserNamespace(mode=api_pb2.POD, uids=ids, gids=ids))
    return config


def _pod(walk: Walk) -> dict[str, Any]:
    config = _pod_config(walk)
    pod_id, _ = walk.env.run_pod(config)
    return {"config": config, "pod": pod_id}


def _userns_pod(walk: Walk) -> dict[str, Any]:
    config = _userns_pod_config(walk)
    pod_id, _ = walk.env.run_pod(config)
    return {"config": config, "pod": pod_id, "userns": True}


def _container_config(walk: Walk, ctx: dict[str, Any]) -> api_pb2.ContainerConfig:
    if not ctx.get("userns"):
        return walk.env.container_config("main", SLEEP)
    # In a userns pod: an id-mapped volume too, as the kubelet sends its volumes there.
    volume = walk.env.workdir / "crash-volume"
    volume.mkdir(exist_ok=True)
    ids = [api_pb2.IDMapping(container_id=0, host_id=USERNS_HOST_BASE, length=65536)]
    return walk.env.container_config("main", SLEEP, mounts=[api_pb2.Mount(
        container_path="/vol", host_path=str(volume), uidMappings=ids, gidMappings=ids)])


def _created(walk: Walk) -> dict[str, Any]:
    ctx = _pod(walk)
    ctx["ctr"] = walk.env.create(ctx["pod"], ctx["config"], walk.env.container_config("main", SLEEP))
    return ctx


def _userns_created(walk: Walk) -> dict[str, Any]:
    ctx = _userns_pod(walk)
    _create_call(walk, ctx)
    return ctx


def _userns_exited(walk: Walk) -> dict[str, Any]:
    ctx = _userns_created(walk)
    walk.env.start(ctx["ctr"])
    walk.env.stop(ctx["ctr"])
    return ctx


def _running(walk: Walk) -> dict[str, Any]:
    ctx = _created(walk)
    walk.env.start(ctx["ctr"])
    return ctx


def _exited(walk: Walk) -> dict[str, Any]:
    ctx = _running(walk)
    walk.env.stop(ctx["ctr"])
    return ctx


def _stopped_pod(walk: Walk) -> dict[str, Any]:
    ctx = _running(walk)
    walk.env.stop_pod(ctx["pod"])
    return ctx


def _ctr_state(walk: Walk, ctx: dict[str, Any]) -> int | None:
    found = walk.env.list_containers(id=ctx["ctr"])
    return found[0].state if found else None


def _pod_state(walk: Walk, ctx: dict[str, Any]) -> int | None:
    found = walk.env.list_pods(id=ctx["pod"])
    return found[0].state if found else None


def _run_pod_call(walk: Walk, ctx: dict[str, Any]) -> None:
    ctx["pod"], _ = walk.env.run_pod(ctx["config"])


def _check_pod_ready(walk: Walk, ctx: dict[str, Any]) -> None:
    ctr = walk.env.run(ctx["pod"], ctx["config"], "probe", SLEEP)
    assert walk.env.sh(ctr, "cat /proc/1/cmdline | tr '\\0' ' '").strip() != ""


def _create_call(walk: Walk, ctx: dict[str, Any]) -> None:
    ctx["ctr"] = walk.env.create(ctx["pod"], ctx["config"], _container_config(walk, ctx))


def _with_image_volume(walk: Walk) -> api_pb2.ContainerConfig:
    config = walk.env.container_config("main", SLEEP)
    config.mounts.append(api_pb2.Mount(container_path="/mnt/image", readonly=True, image_sub_path="etc",
                                       image=api_pb2.ImageSpec(image=BUSYBOX)))
    return config


def _create_with_image_volume_call(walk: Walk, ctx: dict[str, Any]) -> None:
    ctx["ctr"] = walk.env.create(ctx["pod"], ctx["config"], _with_image_volume(walk))


def _check_created_with_image_volume(walk: Walk, ctx: dict[str, Any]) -> None:
    _check_created(walk, ctx)
    assert "root:x:0:0" in walk.env.sh(ctx["ctr"], "cat /mnt/image/passwd")


def _check_created(walk: Walk, ctx: dict[str, Any]) -> None:
    assert _ctr_state(walk, ctx) == api_pb2.CONTAINER_CREATED
    walk.env.start(ctx["ctr"])
    walk.env.sh(ctx["ctr"], "true")


def _check_running(walk: Walk, ctx: dict[str, Any]) -> None:
    assert _ctr_state(walk, ctx) == api_pb2.CONTAINER_RUNNING
    assert walk.env.sh(ctx["ctr"], "echo alive") == "alive\n"


def _check_exited(walk: Walk, ctx: dict[str, Any]) -> None:
    assert _ctr_state(walk, ctx) == api_pb2.CONTAINER_EXITED


def _check_ctr_gone(walk: Walk, ctx: dict[str, Any]) -> None:
    assert _ctr_state(walk, ctx) is None
    daemon = walk.env.daemon
    for rootfs in (daemon.root / "containers" / ctx["ctr"] / "merged", daemon.runroot / "rootfs" / ctx["ctr"]):
        assert not rootfs.exists() or not os.path.ismount(rootfs)
    assert mounts_under(daemon.runroot / "idmap" / ctx["ctr"]) == []


def _check_pod_stopped(walk: Walk, ctx: dict[str, Any]) -> None:
    assert _pod_state(walk, ctx) == api_pb2.SANDBOX_NOTREADY
    assert _ctr_state(walk, ctx) == api_pb2.CONTAINER_EXITED


def _check_pod_gone(walk: Walk, ctx: dict[str, Any]) -> None:
    assert _pod_state(walk, ctx) is None and _ctr_state(walk, ctx) is None


SCENARIOS = [
    Scenario("RunPodSandbox", lambda w: {"config": _pod_config(w)}, _run_pod_call,
             lambda w, ctx: False, _check_pod_ready),
    Scenario("CreateContainer", _pod, _create_call, lambda w, ctx: False, _check_created),
    Scenario("CreateContainer with an image volume", _pod, _create_with_image_volume_call, lambda w, ctx: False,
             _check_created_with_image_volume),
    Scenario("StartContainer", _created, lambda w, ctx: w.env.start(ctx["ctr"]),
             lambda w, ctx: _ctr_state(w, ctx) == api_pb2.CONTAINER_RUNNING, _check_running),
    Scenario("StopContainer", _running, lambda w, ctx: w.env.stop(ctx["ctr"]),
             lambda w, ctx: False, _check_exited),
    Scenario("RemoveContainer", _exited, lambda w, ctx: w.env.remove(ctx["ctr"]),
             lambda w, ctx: False, _check_ctr_gone),
    Scenario("StopPodSandbox", _running, lambda w, ctx: w.env.stop_pod(ctx["pod"]),
             lambda w, ctx: False, _check_pod_stopped),
    Scenario("RemovePodSandbox", _stopped_pod, lambda w, ctx: w.env.remove_pod(ctx["pod"]),
             lambda w, ctx: False, _check_pod_gone),
    # A pod in a user namespace: its pinning, the id-mapped layers and volume, and their undoing.
    Scenario("RunPodSandbox-userns", lambda w: {"config": _userns_pod_config(w), "userns": True}, _run_pod_call,
             lambda w, ctx: False, _check_pod_ready),
    Scenario("CreateContainer-userns", _userns_pod, _create_call, lambda w, ctx: False, _check_created),
    Scenario("RemoveContainer-userns", _userns_exited, lambda w, ctx: w.env.remove(ctx["ctr"]),
             lambda w, ctx: False, _check_ctr_gone),
]


@pytest.fixture(scope="module")
def walk(pod_env: PodEnv) -> Iterator[Walk]:
    walk = Walk(pod_env)
    yield walk
    walk.disarm()


def crash_and_recover(walk: Walk, scenario: Scenario, point: str) -> None:
    daemon = walk.env.daemon
    ctx = scenario.setup(walk)
    walk.settle()  # the set-up's own background work must not reach the armed point
    walk.arm(point)
    try:
        scenario.call(walk, ctx)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{scenario.name} @ {point}: {e.code().name}: {e.details()}"
    status = daemon.wait_exit(DEATH_LIMIT)
    assert status == -9, f"{scenario.name}: the daemon did not die at fault point {point} (status {status})"
    walk.disarm()
    daemon.start()
    walk.assert_node_matches_lists()
    if not scenario.took_effect(walk, ctx):
        scenario.call(walk, ctx)  # the kubelet's retry
    scenario.check(walk, ctx)
    walk.reset()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_fault_point_of_a_lifecycle_call(walk: Walk, scenario: Scenario) -> None:
    points = walk.points_of(scenario)
    assert points, f"{scenario.name} passed no fault point"
    failures = []
    for point in points:
        try:
            crash_and_recover(walk, scenario, point)
        except (AssertionError, grpc.RpcError) as e:
            failures.append(f"{point}: {e}")
            walk.disarm()
            if walk.env.daemon.pid is None:
                walk.env.daemon.start()
            walk.reset()
    assert not failures, f"{scenario.name}: {len(failures)} of {len(points)} fault points failed:\n" + \
        "\n".join(failures)
    print(f"{scenario.name}: {len(points)} fault points walked")


def test_every_fault_point_of_a_pull(walk: Walk, plain_registry) -> None:
    daemon = walk.env.daemon
    daemon.registries_conf.write_text(insecure_conf(plain_registry.host))

    def fresh_ref() -> str:
        return plain_registry.push_image(unique("crash/pull"), "v1", marker_image(secrets.token_hex(8)))

    def pull(ref: str) -> None:
        daemon.pull(ref)

    ref = fresh_ref()
    start = walk.trace.stat().st_size
    pull(ref)
    walk.settle()
    with walk.trace.open() as handle:
        handle.seek(start)
        points = list(dict.fromkeys(handle.read().split()))
    daemon.remove_image(ref)
    assert "layer.renamed" in points, points
    failures = []
    for point in points:
        ref = fresh_ref()
        walk.arm(point)
        try:
            pull(ref)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, f"pull @ {point}: {e.code().name}: {e.details()}"
        if daemon.wait_exit(DEATH_LIMIT) != -9:
            failures.append(f"{point}: the daemon did not die there")
            walk.disarm()
            continue
        walk.disarm()
        daemon.start()
        try:
            assert_store_consistent(daemon)
            pull(ref)
            assert_store_consistent(daemon)
            daemon.remove_image(ref)
        except (AssertionError, grpc.RpcError) as e:
            failures.append(f"{point}: {e}")
    assert not failures, "pull: fault points failed:\n" + "\n".join(failures)
    print(f"pull: {len(points)} fault points walked")
