"""CNIManager with the real plugins from /usr/lib/cni: a test bridge network (cripy's default conflist shape with a
test bridge name, subnet and IPAM dir), two pods in pinned network namespaces, host ports, detach after restart.

Everything is undone in finalizers: cached attachments are detached, the bridge link and IPAM data removed,
namespaces unpinned.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cripy.errors import FailedPrecondition
from cripy.linux import mount as mnt
from cripy.linux import namespaces as ns
from cripy.network import cni, cniprotocol
from tests.integration.podlib import NETWORK_PREFIX

pytestmark = pytest.mark.integration

PLUGIN_DIR = Path("/usr/lib/cni")
SERVER_PORT = 8080

if not (PLUGIN_DIR / "bridge").exists():
    pytest.skip("containernetworking-plugins are not installed", allow_module_level=True)


@dataclass
class BridgeNetwork:
    name: str
    bridge: str
    prefix: str  # "10.199.N"
    conf_dir: Path
    cache_dir: Path
    ipam_dir: Path

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    def manager(self) -> cni.CNIManager:
        return cni.CNIManager(self.conf_dir, [PLUGIN_DIR], self.cache_dir)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[BridgeNetwork]:
    suffix = secrets.token_hex(2)
    prefix = f"10.199.{secrets.randbelow(250) + 1}"
    net = BridgeNetwork(name=f"{NETWORK_PREFIX}-{suffix}", bridge=f"{NETWORK_PREFIX}{suffix}", prefix=prefix,
                      conf_dir=tmp_path / "net.d", cache_dir=tmp_path / "cni-cache", ipam_dir=tmp_path / "ipam")
    net.conf_dir.mkdir()
    (net.conf_dir / "10-test.conflist").write_text(
        cniprotocol.default_bridge_conflist(f"{prefix}.0/24", net.bridge, str(net.ipam_dir), net.name))
    yield net
    # Detach whatever a failed test left attached (with a conf-independent manager: the cache is enough).
    leftover = net.manager()
    for pod_id in leftover.cached_pod_ids():
        try:
            asyncio.run(leftover.detach(pod_id, None))
        except Exception as exc:  # keep cleaning
            print(f"cleanup: detach {pod_id}: {exc}")
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True)
    shutil.rmtree(net.ipam_dir, ignore_errors=True)


@pytest.fixture
def make_netns(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    pinned: list[Path] = []

    def make(name: str) -> Path:
        pin_dir = tmp_path / "pods" / name
        pinned.append(pin_dir)
        return ns.pin_namespaces(["net"], pin_dir)["net"]

    yield make
    for pin_dir in pinned:
        ns.unpin_namespaces(pin_dir)
    assert mnt.mounts_under(tmp_path) == []


def in_thread(fn: Callable[[], object]) -> object:
    """Run fn in a throwaway thread (in_netns must not run in the main thread) and return its result."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


class PodServer:
    """A TCP server listening inside a pod netns that answers every connection with a greeting."""

    def __init__(self, netns: Path, greeting: bytes) -> None:
        def listen() -> socket.socket:
            with ns.in_netns(netns):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", SERVER_PORT))
            sock.listen()
            return sock

        self.sock: socket.socket = in_thread(listen)  # type: ignore[assignment]
        self.greeting = greeting
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.greeting)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()


def fetch(host: str, port: int, netns: Path | None = None) -> bytes:
    """Connect (from netns, or the host) and read the greeting; OSError when unreachable."""
    def make() -> socket.socket:
        if netns is None:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with ns.in_netns(netns):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    sock: socket.socket = in_thread(make)  # type: ignore[assignment]
    with sock:
        sock.settimeout(5)  # a guard against hanging, not a timing assertion
        sock.connect((host, port))
        return sock.recv(100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def nat_rules() -> str:
    return subprocess.run(["iptables-save", "-t", "nat"], check=True, capture_output=True, text=True).stdout


def bridge_ports(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()]


def attach(manager: cni.CNIManager, pod_id: str, netns: Path, mappings: list[cniprotocol.PortMapping] | None = None):
    return manager.attach(pod_id, netns, pod_name=pod_id, pod_namespace="test", pod_uid=f"uid-{pod_id}",
                          port_mappings=mappings or [])


# ---------------------------------------------------------------------------------------------------- tests


async def test_status_with_real_plugin_dir(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    manager = cni.CNIManager(conf, [PLUGIN_DIR], tmp_path / "cache")
    assert not manager.status().ready and "cannot read" in manager.status().message
    conf.mkdir()
    assert "no valid CNI network" in manager.status().message
    (conf / "05-broken.conflist").write_text('{"name": "x", "cniVersion": "1.0.0", "plugins": "nope"}')
    status = manager.status()
    assert not status.ready and "05-broken.conflist" in status.message
    (conf / "10-missing.conflist").write_text(json.dumps(
        {"name": "m", "cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"type": "no-such-plugin"}]}))
    status = manager.status()
    assert not status.ready and status.reason == "NetworkPluginNotReady" and "no-such-plugin" in status.message
    (conf / "10-missing.conflist").write_text(cniprotocol.DEFAULT_BRIDGE_CONFLIST)
    assert manager.status().ready
    # the broken file sorts first but is skipped; the valid one is used
    assert manager.current_network().name == "cripy"


async def test_two_pods_get_ips_and_talk(network: BridgeNetwork, make_netns: Callable[[str], Path]) -> None:
    manager = network.manager()
    assert manager.status().ready, manager.status().message
    netns_a, netns_b = make_netns("a"), make_netns("b")
    result_a = await attach(manager, "poda", netns_a)
    result_b = await attach(manager, "podb", netns_b)
    ip_a, ip_b = result_a.ips[0], result_b.ips[0]
    assert ip_a != ip_b
    assert ip_a.startswith(network.prefix + ".") and ip_b.startswith(network.prefix + ".")
    assert (network.ipam_dir / network.name / ip_a).exists()  # host-local used the configured dataDir

    links = subprocess.run(["nsenter", f"--net={netns_a}", "ip", "-o", "addr"], capture_output=True,
                           text=True).stdout
    assert f"inet {ip_a}/24" in links and "lo    inet 127.0.0.1/8" in links  # eth0 configured, lo brought up
    ping = subprocess.run(["nsenter", f"--net={netns_a}", "/bin/busybox", "ping", "-c1", "-W2", ip_b],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    server = PodServer(netns_b, b"hello from b")
    try:
        assert fetch(ip_b, SERVER_PORT, netns_a) == b"hello from b"
        assert fetch(ip_b, SERVER_PORT) == b"hello from b"  # the host reaches pods through the bridge gateway
    finally:
        server.close()

    await manager.check("poda", netns_a)  # no port mappings: every plugin's CHECK passes
    await manager.detach("poda", netns_a)
    await manager.detach("podb", netns_b)
    assert bridge_ports(network.bridge) == []
    assert not (network.ipam_dir / network.name / ip_a).exists()
    assert manager.cached_pod_ids() == []


async def test_host_ports(network: BridgeNetwork, make_netns: Callable[[str], Path]) -> None:
    manager = network.manager()
    netns = make_netns("web")
    any_ip_port, loopback_port = free_port(), free_port()
    mappings = [cniprotocol.PortMapping(any_ip_port, SERVER_PORT),
                cniprotocol.PortMapping(loopback_port, SERVER_PORT, host_ip="127.0.0.1")]
    await attach(manager, "podweb", netns, mappings)
    assert 'podweb' in nat_rules()
    server = PodServer(netns, b"web")
    try:
        # Reachable on the host's addresses: the bridge gateway, and 127.0.0.1 too (portmap's snat=true sets
        # route_localnet on the bridge and masquerades localhost-sourced traffic).
        assert fetch(network.gateway, any_ip_port) == b"web"
        assert fetch("127.0.0.1", any_ip_port) == b"web"
        assert fetch("127.0.0.1", loopback_port) == b"web"
        # A mapping bound to 127.0.0.1 does not answer on other host addresses.
        with pytest.raises(OSError):
            fetch(network.gateway, loopback_port)
    finally:
        server.close()
    await manager.detach("podweb", netns)
    assert 'podweb' not in nat_rules()
    assert bridge_ports(network.bridge) == []


async def test_detach_after_restart_with_conf_dir_emptied(
    network: BridgeNetwork, make_netns: Callable[[str], Path]
) -> None:
    netns = make_netns("r")
    result = await attach(network.manager(), "podr", netns, [cniprotocol.PortMapping(free_port(), SERVER_PORT)])
    assert bridge_ports(network.bridge) != []
    for f in network.conf_dir.iterdir():
        f.unlink()

    restarted = network.manager()  # a new daemon: nothing in memory, no network configured any more
    assert not restarted.status().ready
    assert restarted.cached("podr") == result
    await restarted.detach("podr", netns)
    assert 'podr' not in nat_rules()
    assert bridge_ports(network.bridge) == []
    assert not (network.ipam_dir / network.name / result.ips[0]).exists()
    assert restarted.cached("podr") is None
    await restarted.detach("podr", netns)  # idempotent


async def test_detach_after_netns_is_gone(network: BridgeNetwork, make_netns: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    manager = network.manager()
    netns = make_netns("gone")
    result = await attach(manager, "podgone", netns, [cniprotocol.PortMapping(free_port(), SERVER_PORT)])
    # The namespace dies (the kernel tears it down, and the pod's veth with it, asynchronously).
    ns.unpin_namespaces(tmp_path / "pods" / "gone")
    assert not ns.is_namespace_file(netns)
    await manager.detach("podgone", netns)
    assert 'podgone' not in nat_rules()
    assert not (network.ipam_dir / network.name / result.ips[0]).exists()  # IP released
    assert manager.cached_pod_ids() == []


async def test_attach_to_missing_netns_is_refused(network: BridgeNetwork, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not a network namespace"):
        await attach(network.manager(), "podx", tmp_path / "nothing")
    assert network.manager().cached_pod_ids() == []
