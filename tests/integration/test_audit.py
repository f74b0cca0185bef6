"""`cripy audit`: every kind of orphan is found (by object) and repaired with the journal's undo functions, what
records claim and the node lacks is reported missing, and the daemon logs the same check's summary at start.

Orphans are made the way a lost journal would leave them: a pod with a shared PID namespace (an infra process), a
host port and a running container, then the daemon killed and its records and journal deleted from the database.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from cripy.linux import mount as mnt
from tests.integration.daemon import CripyDaemon
from tests.integration.podlib import PodEnv, mounts_under, run_audit
from tests.integration.test_images_common import (assert_store_consistent, image_chain_ids, insecure_conf, layer_diff,
                                                  unique, wait_for)
from tests.support.images import busybox_image

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


def _monitors(workdir: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and cmdline.split(" ", 1)[0].endswith("conmon") and str(workdir) in cmdline:
            found.append(cmdline)
    return found


def _forget_everything(daemon: CripyDaemon) -> None:
    """The journal and the records lost (what a corrupted or restored database would leave)."""
    with sqlite3.connect(daemon.root / "cripy.db") as conn:
        for table in ("effects", "containers", "pods"):
            conn.execute(f"DELETE FROM {table}")


def test_a_clean_node_has_nothing_to_audit(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    pod_id, config = env.run_pod("audit-clean", pid=api_pb2.POD)
    env.run(pod_id, config, "main", SLEEP)
    result = run_audit(env.daemon)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing orphaned or missing" in result.stdout
    assert "audit at start: nothing orphaned or missing" in env.daemon.log_text()


def test_every_kind_of_orphan_is_found_and_repaired(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    host_port = 30000 + secrets.randbelow(5000)
    mapping = api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=80, host_port=host_port)
    pod_id, config = env.run_pod("audit-orphans", pid=api_pb2.POD, port_mappings=[mapping])
    ctr_id = env.run(pod_id, config, "main", SLEEP)
    env.daemon.kill()
    _forget_everything(env.daemon)

    found = run_audit(env.daemon)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    expected = {
        pod_id: ["orphaned pinned namespace", "orphaned mount", "orphaned CNI cache entry", "orphaned directory",
                 "orphaned IP reservation", "orphaned host-port chain"],
        ctr_id: ["orphaned mount", "orphaned process", "orphaned runtime container", "orphaned cgroup",
                 "orphaned directory", "orphaned file"],
        f"{pod_id[:32]}-infra": ["orphaned process", "orphaned runtime container", "orphaned cgroup",
                                 "orphaned file"],
    }
    for owner, kinds in expected.items():
        assert f"{owner}:" in lines, f"no findings for {owner}:\n{found.stdout}"
        block = _block(lines, owner)
        for kind in kinds:
            assert any(line.strip().startswith(kind) for line in block), f"{owner}: no {kind!r} in\n{found.stdout}"

    repaired = run_audit(env.daemon, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "after repair, nothing orphaned or missing" in repaired.stdout
    assert mounts_under(env.workdir) == []
    assert _monitors(env.workdir) == []
    again = run_audit(env.daemon)
    assert again.returncode == 0 and "nothing orphaned or missing" in again.stdout, again.stdout
    env.daemon.start()
    assert env.list_pods() == [] and env.list_containers() == []


def test_an_address_and_host_port_left_without_their_cni_cache_entry_are_released(
        pod_env_factory: Callable[..., PodEnv]) -> None:
    """With the attach's cache entry lost too, the repair DELs through the current network by the pod's id."""
    env = pod_env_factory()
    host_port = 30000 + secrets.randbelow(5000)
    mapping = api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=80, host_port=host_port)
    pod_id, _ = env.run_pod("audit-no-cache", port_mappings=[mapping])
    env.daemon.kill()
    _forget_everything(env.daemon)
    (env.daemon.root / "cni-cache" / f"{pod_id}.json").unlink()

    found = run_audit(env.daemon)
    assert found.returncode == 1, found.stdout + found.stderr
    block = _block(found.stdout.splitlines(), pod_id)
    for kind in ("orphaned IP reservation", "orphaned host-port chain"):
        assert any(line.strip().startswith(kind) for line in block), f"no {kind!r} in\n{found.stdout}"
    assert not any("CNI cache entry" in line for line in block), found.stdout

    repaired = run_audit(env.daemon, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "after repair, nothing orphaned or missing" in repaired.stdout
    again = run_audit(env.daemon)
    assert again.returncode == 0 and "nothing orphaned or missing" in again.stdout, again.stdout
    env.daemon.start()


def _block(lines: list[str], owner: str) -> list[str]:
    start = lines.index(f"{owner}:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


def test_what_the_records_claim_and_the_node_lacks_is_missing(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    pod_id, config = env.run_pod("audit-missing")
    ctr_id = env.run(pod_id, config, "main", SLEEP)
    net_pin = env.daemon.runroot / "pods" / pod_id / "ns" / "net"
    rootfs = env.daemon.root / "containers" / ctr_id / "merged"
    env.daemon.stop()
    mnt.umount(net_pin, detach=True)
    mnt.unmount_all_under(rootfs)
    found = run_audit(env.daemon)
    assert found.returncode == 1
    assert f"missing pinned namespace: {net_pin}" in found.stdout, found.stdout
    assert f"missing mount: {rootfs}" in found.stdout, found.stdout
    assert "orphaned " not in found.stdout.replace("0 orphaned, ", ""), found.stdout
    env.daemon.start()


def test_the_daemon_logs_the_audit_at_start(pod_env_factory: Callable[..., PodEnv]) -> None:
    env = pod_env_factory()
    env.daemon.stop()
    stray = env.daemon.root / "containers" / secrets.token_hex(32)
    (stray / "merged").mkdir(parents=True)
    mnt.mount_tmpfs(stray / "merged", 1 << 20)
    try:
        env.daemon.start()
        env.wait_for("the audit's summary in the log", lambda: "audit at start: 2 orphaned" in env.daemon.log_text())
        assert f"orphaned mount: {stray / 'merged'}" in env.daemon.log_text()
        repaired = run_audit(env.daemon, "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert not stray.exists()
    finally:
        if (stray / "merged").exists() and mnt.is_mountpoint(stray / "merged"):
            mnt.umount(stray / "merged", detach=True)


def test_a_layer_being_pulled_is_not_taken_for_an_orphan(cripy_factory, plain_registry, fault_proxy) -> None:
    """A pulled layer's directory exists before its row: `cripy audit --repair` run meanwhile leaves it (and every
    unrecorded layer directory) alone and says so; once the pull is done the next audit removes a real orphan."""
    proxy = fault_proxy(plain_registry)
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))
    repo = unique("audit-pull")
    image = busybox_image()
    plain_registry.push_image(repo, "v1", image)
    proxy.trickle(f"/blobs/{image.layers[0].digest}", rate=120_000)  # busybox takes several seconds
    stray = daemon.root / "layers" / ("0" * 64)
    pulled: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        pull = pool.submit(lambda: pulled.append(daemon.pull(proxy.ref(repo, "v1"))))
        wait_for(lambda: layer_diff(daemon, image_chain_ids(image)[0]).parent.is_dir(), "the layer's directory")
        stray.mkdir()
        during = run_audit(daemon, "--repair")
        assert not pull.done(), "the pull ended before the audit: the test proves nothing"
        pull.result(timeout=120)
    assert during.returncode == 3, during.stdout + during.stderr  # nothing found, but not everything checked
    assert "layer directories were not compared with the records" in during.stdout, during.stdout
    assert "orphaned layer directory" not in during.stdout, during.stdout
    assert pulled == [image.config_digest]
    assert stray.is_dir()
    proxy.clear_faults()

    after = run_audit(daemon, "--repair")
    assert f"orphaned layer directory: {stray}" in after.stdout, after.stdout
    assert "after repair, nothing orphaned or missing" in after.stdout, after.stdout
    assert not stray.exists()
    assert_store_consistent(daemon)
