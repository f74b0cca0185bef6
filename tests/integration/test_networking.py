"""Pod networking through CNI (bridge + host-local + portmap): containers of one pod share the network namespace,
a pod reaches another pod's IP on the bridge, a hostPort reaches the container from the host on 127.0.0.1, the
network is torn down at stop, and Status reports the network ready."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.podlib import PodEnv, rpc_error

pytestmark = pytest.mark.integration

PORT = 8080
SERVE = ["sh", "-c", f"mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www"]


def wait_serving(env: PodEnv, ctr: str) -> None:
    env.wait_for("httpd listening", lambda: f":{PORT}" in env.exec(ctr, ["netstat", "-ltn"]).stdout.decode())


def fetch_in(env: PodEnv, ctr: str, address: str) -> str:
    """The body of GET / from address:PORT, fetched inside the container. With nc: the static busybox's wget
    crashes (SIGSEGV) in its service lookup (glibc NSS in a static binary)."""
    reply = env.sh(ctr, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} {PORT}")
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], reply
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_network_ready_in_status(pod_env: PodEnv) -> None:
    conditions = {c.type: c for c in pod_env.rt.Status(api_pb2.StatusRequest(), timeout=10).status.conditions}
    assert conditions["NetworkReady"].status is True
    assert conditions["RuntimeReady"].status is True


def test_containers_of_one_pod_share_the_network(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("sharednet", hostname="sharednet-host")
    server = pod_env.run(pod_id, config, "server", SERVE)
    client = pod_env.run(pod_id, config, "client", ["sleep", "3600"])
    wait_serving(pod_env, server)
    assert fetch_in(pod_env, client, "127.0.0.1") == "sharednet-host\n"
    ip = pod_env.pod_status(pod_id).status.network.ip
    assert ip in pod_env.sh(client, "ip -4 -o addr show eth0")


def test_a_pod_reaches_another_pods_ip(pod_env: PodEnv) -> None:
    server_pod, server_config = pod_env.run_pod("netserver", hostname="netserver-host")
    client_pod, client_config = pod_env.run_pod("netclient")
    server = pod_env.run(server_pod, server_config, "server", SERVE)
    client = pod_env.run(client_pod, client_config, "client", ["sleep", "3600"])
    wait_serving(pod_env, server)
    server_ip = pod_env.pod_status(server_pod).status.network.ip
    client_ip = pod_env.pod_status(client_pod).status.network.ip
    assert server_ip != client_ip
    assert fetch_in(pod_env, client, server_ip) == "netserver-host\n"
    # And from the node, through the bridge.
    with urllib.request.urlopen(f"http://{server_ip}:{PORT}/", timeout=5) as reply:
        assert reply.read() == b"netserver-host\n"


def test_host_port_reaches_the_container_on_localhost(pod_env: PodEnv) -> None:
    host_port = free_port()
    mapping = api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=PORT, host_port=host_port)
    pod_id, config = pod_env.run_pod("hostport", hostname="hostport-host", port_mappings=[mapping])
    server = pod_env.run(pod_id, config, "server", SERVE)
    wait_serving(pod_env, server)
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=5) as reply:
        assert reply.read() == b"hostport-host\n"
    info = json.loads(pod_env.pod_status(pod_id, verbose=True).info["info"])
    assert info["portMappings"][0]["host_port"] == host_port

    pod_env.stop_pod(pod_id)
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert f"--dport {host_port} " not in nat, "the hostPort rules outlived StopPodSandbox"


def bridge_ports(env: PodEnv) -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", env.network.bridge], capture_output=True,
                         text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def test_stop_tears_the_network_down_and_releases_the_ip(pod_env: PodEnv) -> None:
    before = bridge_ports(pod_env)
    pod_id, config = pod_env.run_pod("teardown")
    ip = pod_env.pod_status(pod_id).status.network.ip
    ipam_dir = pod_env.network.data_dir / pod_env.network.name
    assert (ipam_dir / ip).exists(), "host-local did not record the lease"
    cache = pod_env.daemon.root / "cni-cache" / f"{pod_id}.json"
    assert cache.exists()
    assert len(bridge_ports(pod_env) - before) == 1, "the pod's veth is not on the bridge"
    pod_env.stop_pod(pod_id)
    assert not (ipam_dir / ip).exists(), "the IP lease outlived StopPodSandbox"
    assert not cache.exists()
    assert bridge_ports(pod_env) - before == set(), "the pod's veth outlived StopPodSandbox"
    pod_env.remove_pod(pod_id)


def test_without_a_network_config_status_says_not_ready_and_pods_are_refused(pod_env: PodEnv) -> None:
    conflist = next(pod_env.daemon.cni_dir.glob("*.conflist"))
    saved = conflist.read_text()
    pods_before = {p.id for p in pod_env.list_pods()}
    dirs_before = {d.name for d in (pod_env.daemon.runroot / "pods").iterdir()}
    conflist.unlink()
    try:
        conditions = {c.type: c for c in pod_env.rt.Status(api_pb2.StatusRequest(), timeout=10).status.conditions}
        network = conditions["NetworkReady"]
        assert network.status is False and network.reason == "NetworkPluginNotReady"
        assert str(pod_env.daemon.cni_dir) in network.message
        error = rpc_error(lambda: pod_env.run_pod("no-network"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert {p.id for p in pod_env.list_pods()} == pods_before
        assert {d.name for d in (pod_env.daemon.runroot / "pods").iterdir()} == dirs_before, "pod files left"
    finally:
        conflist.write_text(saved)
    conditions = {c.type: c for c in pod_env.rt.Status(api_pb2.StatusRequest(), timeout=10).status.conditions}
    assert conditions["NetworkReady"].status is True
    pod_id, _ = pod_env.run_pod("network-back")
    assert pod_env.pod_status(pod_id).status.network.ip
