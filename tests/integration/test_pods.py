"""Pod sandboxes through CRI on real runc/conmon/CNI: status fields, the files a pod shares (hostname, resolv.conf,
hosts, /dev/shm), sysctls, host network, PID namespace sharing, the cgroup parent, listing with filters, and
idempotent stop/remove."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.integration.conftest_leaks import session_cgroup_parent
from tests.integration.podlib import PodEnv

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


def test_pod_status_reports_state_ip_namespaces_labels_and_verbose_info(pod_env: PodEnv) -> None:
    config = pod_env.pod_config("status-pod", labels={"app": "web"}, annotations={"note": "kept"})
    pod_id, _ = pod_env.run_pod(config)

    reply = pod_env.pod_status(pod_id, verbose=True)
    status = reply.status
    assert status.id == pod_id
    assert status.state == api_pb2.SANDBOX_READY
    assert (status.metadata.name, status.metadata.uid, status.metadata.namespace) == (
        "status-pod", config.metadata.uid, "cripytest")
    assert status.created_at > 0
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(pod_env.network.subnet)
    assert status.network.ip != pod_env.network.gateway
    options = status.linux.namespaces.options
    assert (options.network, options.pid, options.ipc) == (api_pb2.POD, api_pb2.CONTAINER, api_pb2.POD)
    assert dict(status.labels) == {"app": "web"}
    assert dict(status.annotations) == {"note": "kept"}
    info = json.loads(reply.info["info"])
    assert info["id"] == pod_id and info["ips"] == [status.network.ip]
    assert set(info["namespaces"]) == {"net", "uts", "ipc"}
    for path in info["namespaces"].values():
        assert os.path.ismount(path), f"namespace pin {path} is not mounted"

    pod_env.stop_pod(pod_id)
    stopped = pod_env.pod_status(pod_id).status
    assert stopped.state == api_pb2.SANDBOX_NOTREADY
    assert stopped.network.ip == ""
    for path in info["namespaces"].values():
        assert not os.path.ismount(path), f"namespace pin {path} is still mounted after StopPodSandbox"
    pod_env.remove_pod(pod_id)


def test_hostname_resolv_conf_hosts_and_shm(pod_env: PodEnv) -> None:
    dns = api_pb2.DNSConfig(servers=["10.96.0.10", "10.96.0.11"], searches=["svc.cluster.local", "cluster.local"],
                            options=["ndots:5", "edns0"])
    pod_id, config = pod_env.run_pod("files-pod", hostname="files-host", dns_config=dns)
    ctr = pod_env.run(pod_id, config, "main", SLEEP)
    ip = pod_env.pod_status(pod_id).status.network.ip

    resolv = pod_env.sh(ctr, "cat /etc/resolv.conf").splitlines()
    assert "nameserver 10.96.0.10" in resolv and "nameserver 10.96.0.11" in resolv
    assert "search svc.cluster.local cluster.local" in resolv
    assert "options ndots:5 edns0" in resolv
    assert pod_env.sh(ctr, "hostname").strip() == "files-host"
    assert pod_env.sh(ctr, "cat /etc/hostname").strip() == "files-host"
    hosts = pod_env.sh(ctr, "cat /etc/hosts")
    assert f"{ip}\tfiles-host" in hosts and "127.0.0.1\tlocalhost" in hosts
    shm = [line.split() for line in pod_env.sh(ctr, "cat /proc/mounts").splitlines()]
    assert any(fields[1] == "/dev/shm" and fields[2] == "tmpfs" for fields in shm), shm
    # Two containers of the pod see one /dev/shm.
    other = pod_env.run(pod_id, config, "other", SLEEP)
    pod_env.sh(ctr, "echo shared > /dev/shm/marker")
    assert pod_env.sh(other, "cat /dev/shm/marker") == "shared\n"


def test_pod_without_dns_config_gets_the_hosts_resolv_conf(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("hostdns-pod")
    ctr = pod_env.run(pod_id, config, "main", SLEEP)
    assert pod_env.sh(ctr, "cat /etc/resolv.conf") == Path("/etc/resolv.conf").read_text()


def test_namespaced_sysctl_is_applied(pod_env: PodEnv) -> None:
    linux = api_pb2.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_unprivileged_port_start": "0",
                                                   "kernel.shm_rmid_forced": "1"})
    pod_id, config = pod_env.run_pod("sysctl-pod", linux=linux)
    ctr = pod_env.run(pod_id, config, "main", SLEEP)
    assert pod_env.sh(ctr, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "0"
    assert pod_env.sh(ctr, "cat /proc/sys/kernel/shm_rmid_forced").strip() == "1"
    # The node keeps its own value: the sysctl went to the pod's namespaces only.
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "0" or \
        Path("/proc/sys/kernel/shm_rmid_forced").read_text().strip() != "1"


def test_host_network_pod_sees_the_node_interfaces_and_gets_no_cni(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("hostnet-pod", network=api_pb2.NODE)
    ctr = pod_env.run(pod_id, config, "main", SLEEP)

    links = pod_env.sh(ctr, "ip -o link")
    assert pod_env.network.bridge in links, "the node's test bridge is not visible in a host-network pod"
    assert pod_env.sh(ctr, "hostname").strip() == os.uname().nodename
    status = pod_env.pod_status(pod_id).status
    assert status.linux.namespaces.options.network == api_pb2.NODE
    assert status.network.ip == ""
    assert not (pod_env.daemon.root / "cni-cache" / f"{pod_id}.json").exists()


def test_shared_pid_namespace_shows_the_other_containers_and_pause(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("sharedpid-pod", pid=api_pb2.POD)
    first = pod_env.run(pod_id, config, "first", ["sleep", "3601"])
    second = pod_env.run(pod_id, config, "second", ["sleep", "3602"])

    processes = pod_env.sh(second, "ps -o pid,args")
    assert "sleep 3601" in processes and "sleep 3602" in processes, processes
    assert "/pause" in processes, processes
    assert pod_env.sh(first, "cat /proc/1/cmdline").startswith("/pause")
    assert pod_env.pod_status(pod_id).status.linux.namespaces.options.pid == api_pb2.POD


def test_per_container_pid_namespace_runs_the_command_as_pid_1(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("ownpid-pod")
    first = pod_env.run(pod_id, config, "first", ["sleep", "3611"])
    second = pod_env.run(pod_id, config, "second", ["sleep", "3612"])
    assert pod_env.sh(first, "cat /proc/1/cmdline").split("\0")[:2] == ["sleep", "3611"]
    processes = pod_env.sh(second, "ps -o pid,args")
    assert "sleep 3611" not in processes and "sleep 3612" in processes, processes


def test_pod_cgroup_parent_is_honoured(pod_env: PodEnv) -> None:
    parent = f"{session_cgroup_parent()}/pod{secrets.token_hex(4)}"
    pod_id, config = pod_env.run_pod("cgroup-pod", linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=parent))
    ctr = pod_env.run(pod_id, config, "main", SLEEP)
    pid = json.loads(pod_env.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ctr, verbose=True),
                                                timeout=10).info["info"])["pid"]
    memory_line = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                       if line.split(":")[1] in ("memory", ""))
    assert memory_line.split(":", 2)[2].startswith(f"{parent}/"), memory_line
    pod_env.stop_pod(pod_id)
    pod_env.remove_pod(pod_id)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():  # kubelet removes pod cgroups; here the test does
        directory = hierarchy / parent.lstrip("/")
        if directory.is_dir():
            directory.rmdir()


def test_list_pod_sandbox_filters(pod_env: PodEnv) -> None:
    tag = secrets.token_hex(3)
    ready, _ = pod_env.run_pod("list-a", labels={"suite": tag, "role": "a"})
    stopped, _ = pod_env.run_pod("list-b", labels={"suite": tag, "role": "b"})
    pod_env.stop_pod(stopped)

    def ids(**filter_fields: object) -> set[str]:
        return {pod.id for pod in pod_env.list_pods(**filter_fields)}

    assert {ready, stopped} <= ids()
    assert ids(label_selector={"suite": tag}) == {ready, stopped}
    assert ids(label_selector={"suite": tag, "role": "b"}) == {stopped}
    assert ids(label_selector={"suite": tag, "role": "c"}) == set()
    assert ids(id=ready[:10]) == {ready}
    assert ids(id=ready) == {ready}
    ready_state = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
    notready_state = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)
    assert ids(label_selector={"suite": tag}, state=ready_state) == {ready}
    assert ids(label_selector={"suite": tag}, state=notready_state) == {stopped}
    assert ids(id=stopped, state=ready_state) == set()
    listed = next(pod for pod in pod_env.list_pods(id=ready))
    assert listed.metadata.name == "list-a" and listed.state == api_pb2.SANDBOX_READY and listed.created_at > 0
    assert dict(listed.labels) == {"suite": tag, "role": "a"}


def test_stop_and_remove_are_idempotent_and_accept_unknown_pods(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("idem-pod")
    ctr = pod_env.run(pod_id, config, "main", SLEEP)
    pod_env.stop_pod(pod_id)
    pod_env.stop_pod(pod_id)
    assert pod_env.status(ctr).state == api_pb2.CONTAINER_EXITED, "StopPodSandbox left a container running"
    pod_env.remove_pod(pod_id)
    pod_env.remove_pod(pod_id)
    pod_env.stop_pod(pod_id)
    assert pod_env.list_pods(id=pod_id) == []
    assert pod_env.list_containers(id=ctr) == []
    unknown = secrets.token_hex(32)
    pod_env.stop_pod(unknown)
    pod_env.remove_pod(unknown)


def test_remove_of_a_running_pod_stops_and_removes_its_containers(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("rm-running-pod")
    ctr = pod_env.run(pod_id, config, "main", SLEEP)
    run_dir = Path(json.loads(pod_env.pod_status(pod_id, verbose=True).info["info"])["runDir"])
    assert run_dir.is_dir()
    pod_env.remove_pod(pod_id)
    assert pod_env.list_containers(id=ctr) == [] and pod_env.list_pods(id=pod_id) == []
    assert not run_dir.exists()
    assert not (pod_env.daemon.root / "containers" / ctr).exists()


def test_host_pid_pod(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("hostpid-pod", pid=api_pb2.NODE)
    ctr = pod_env.run(pod_id, config, "main", ["sleep", "3621"])
    assert pod_env.exec(ctr, ["cat", "/proc/1/cmdline"]).stdout == Path("/proc/1/cmdline").read_bytes()
    assert pod_env.sh(ctr, "readlink /proc/self/ns/pid").strip() == os.readlink("/proc/self/ns/pid")
    assert pod_env.sh(ctr, "readlink /proc/self/ns/net").strip() != os.readlink("/proc/self/ns/net")
    assert pod_env.pod_status(pod_id).status.linux.namespaces.options.pid == api_pb2.NODE


def test_host_ipc_pod(pod_env: PodEnv) -> None:
    pod_id, config = pod_env.run_pod("hostipc-pod", ipc=api_pb2.NODE)
    ctr = pod_env.run(pod_id, config, "main", ["sleep", "3622"])
    assert pod_env.sh(ctr, "readlink /proc/self/ns/ipc").strip() == os.readlink("/proc/self/ns/ipc")
    assert pod_env.pod_status(pod_id).status.linux.namespaces.options.ipc == api_pb2.NODE
