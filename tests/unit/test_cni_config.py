"""CNI protocol pieces without plugins: conf parsing and selection, plugin stdin/env, results and errors, and the
manager's status and cache behaviour driven by fake plugins (shell scripts)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

from cripy.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from cripy.network import cni, cniprotocol

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [
        {"type": "bridge", "bridge": "br0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "tuning", "runtimeConfig": {"stale": 1}},
    ],
}

RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "br0", "mac": "aa:aa:aa:aa:aa:aa"},
        {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
        {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"interface": 2, "address": "fd00::5/64"},
        {"interface": 0, "address": "10.1.0.1/24"},
        {"interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
    ],
}


def network() -> cniprotocol.NetworkList:
    return cniprotocol.parse_network_config(CONFLIST, "test")


def test_parse_conflist() -> None:
    net = network()
    assert (net.name, net.cni_version) == ("podnet", "1.0.0")
    assert net.plugin_types == ["bridge", "portmap", "tuning"]
    assert cniprotocol.parse_network_config(net.to_dict()) == cniprotocol.NetworkList("podnet", "1.0.0", net.plugins)


def test_single_plugin_conf_becomes_a_list() -> None:
    net = cniprotocol.parse_network_config({"cniVersion": "0.4.0", "name": "one", "type": "ptp", "mtu": 1400})
    assert net.plugins == ({"type": "ptp", "mtu": 1400},)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ([], "not a JSON object"),
        ({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "name"),
        ({"name": "n", "cniVersion": "9.9.9", "plugins": [{"type": "x"}]}, "cniVersion"),
        ({"name": "n", "cniVersion": "1.0.0", "plugins": []}, "plugins"),
        ({"name": "n", "cniVersion": "1.0.0"}, "neither"),
        ({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../../bin/sh"}]}, "type"),
        ({"name": "n", "cniVersion": "1.0.0", "plugins": [{"bridge": "x"}]}, "type"),
    ],
)
def test_invalid_configs_are_refused(data: object, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        cniprotocol.parse_network_config(data, "f.conflist")


def test_conf_file_order_and_selection() -> None:
    assert cniprotocol.conf_files(["99-b.conf", "10-a.json", ".hidden.conf", "README", "50-c.conflist"]) == [
        "10-a.json", "50-c.conflist", "99-b.conf"]
    a = cniprotocol.NetworkList("a", "1.0.0", ({"type": "x"},))
    b = cniprotocol.NetworkList("b", "1.0.0", ({"type": "x"},))
    assert cniprotocol.select_network([a, b], "") is a
    assert cniprotocol.select_network([a, b], "b") is b
    assert cniprotocol.select_network([a, b], "c") is None
    assert cniprotocol.select_network([], "") is None


def test_cni_args() -> None:
    assert cniprotocol.cni_args("abc", "web", "default", "u-1") == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")
    with pytest.raises(InvalidArgument, match="K8S_POD_NAME"):
        cniprotocol.cni_args("abc", "we;b", "default", "u")


def test_plugin_stdin_injects_name_version_prev_result() -> None:
    net = network()
    stdin = cniprotocol.plugin_stdin(net.plugins[0], net, None, [cniprotocol.PortMapping(8080, 80)])
    assert stdin["name"] == "podnet" and stdin["cniVersion"] == "1.0.0"
    assert "prevResult" not in stdin
    assert "runtimeConfig" not in stdin  # bridge declares no capability
    assert stdin["ipam"]["subnet"] == "10.1.0.0/24"


def test_plugin_stdin_runtime_config_only_for_declared_capabilities() -> None:
    net = network()
    mappings = [cniprotocol.PortMapping(8080, 80), cniprotocol.PortMapping(5353, 53, "UDP", "127.0.0.1")]
    stdin = cniprotocol.plugin_stdin(net.plugins[1], net, RESULT, mappings)
    assert stdin["prevResult"] == RESULT
    assert stdin["runtimeConfig"] == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
    ]}
    tuning = cniprotocol.plugin_stdin(net.plugins[2], net, RESULT, mappings)
    assert "runtimeConfig" not in tuning  # a runtimeConfig in the file is not passed through


def test_port_mapping_validation() -> None:
    with pytest.raises(InvalidArgument, match="protocol"):
        cniprotocol.PortMapping(1, 2, "icmp")
    with pytest.raises(InvalidArgument, match="range"):
        cniprotocol.PortMapping(70000, 2)
    assert cniprotocol.PortMapping.from_cni(cniprotocol.PortMapping(1, 2, "SCTP", "::1").to_cni()) == cniprotocol.PortMapping(1, 2, "sctp",
                                                                                                     "::1")


def test_plugin_env() -> None:
    env = cniprotocol.plugin_env("ADD", "abc", "/run/ns/net", "eth0", "IgnoreUnknown=1", [Path("/a"), Path("/b")], "/bin")
    assert env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/ns/net", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": "IgnoreUnknown=1", "CNI_PATH": "/a:/b", "PATH": "/bin"}


def test_result_ips_sandbox_only_ipv4_first() -> None:
    assert cniprotocol.result_ips(RESULT) == ["10.1.0.5", "fd00::5"]
    assert cniprotocol.result_ips({"ip4": {"ip": "10.2.0.3/16"}}) == ["10.2.0.3"]
    assert cniprotocol.result_ips({}) == []
    attach = cniprotocol.AttachResult.from_result(RESULT)
    assert attach.ips[0] == "10.1.0.5" and len(attach.interfaces) == 3


def test_plugin_error_decoding() -> None:
    err = json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "no bridge"}).encode()
    with pytest.raises(cniprotocol.CNIPluginError) as info:
        cniprotocol.parse_plugin_output("bridge", "ADD", "pod1", 1, err, b"")
    assert isinstance(info.value, Internal)
    assert str(info.value) == "CNI plugin bridge ADD for pod pod1 failed (code 7): bad config: no bridge"
    assert not info.value.means_gone
    with pytest.raises(cniprotocol.CNIPluginError, match="exit status 2: boom"):
        cniprotocol.parse_plugin_output("x", "DEL", "pod1", 2, b"", b"boom\n")
    gone = json.dumps({"code": 999, "msg": "failed to find plugin", "details": "link veth1 not found"}).encode()
    with pytest.raises(cniprotocol.CNIPluginError) as info:
        cniprotocol.parse_plugin_output("bridge", "DEL", "pod1", 1, gone, b"")
    assert info.value.means_gone
    assert cniprotocol.parse_plugin_output("x", "DEL", "p", 0, b"", b"") is None
    assert cniprotocol.parse_plugin_output("x", "ADD", "p", 0, json.dumps(RESULT).encode(), b"") == RESULT
    with pytest.raises(cniprotocol.CNIPluginError, match="not JSON"):
        cniprotocol.parse_plugin_output("x", "ADD", "p", 0, b"{", b"")


def test_default_bridge_conflist_is_valid() -> None:
    net = cniprotocol.parse_network_config(json.loads(cniprotocol.default_bridge_conflist("10.5.0.0/16", "br9", "/var/lib/x")))
    bridge, portmap = net.plugins
    assert net.plugin_types == ["bridge", "portmap"]
    assert bridge["bridge"] == "br9" and bridge["isGateway"] and not bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["dataDir"] == "/var/lib/x"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.5.0.0/16"}]]
    assert portmap["capabilities"] == {"portMappings": True}
    assert json.loads(cniprotocol.DEFAULT_BRIDGE_CONFLIST)["plugins"][0]["bridge"] == "cripy0"


# ---------------------------------------------------------------------------------------------------- the manager
# with fake plugins: shell scripts that log their environment and stdin, and answer like a plugin would.

FAKE_PLUGIN = textwrap.dedent("""\
    #!/bin/sh
    input=$(cat)
    n=$(ls "$LOG" | wc -l)
    printf '%s\\n%s\\n%s\\n%s\\n' "$(basename "$0")" "$CNI_COMMAND" "$CNI_NETNS|$CNI_IFNAME|$CNI_ARGS" "$input" \\
        > "$LOG/$(printf %03d "$n")"
    if [ -e "$LOG/../fail-$(basename "$0")-$CNI_COMMAND" ]; then
        echo '{"code": 999, "msg": "injected failure", "details": "'"$(basename "$0")"'"}'
        exit 1
    fi
    if [ -e "$LOG/../hang-$(basename "$0")-$CNI_COMMAND" ]; then exec sleep 60; fi
    if [ "$CNI_COMMAND" = ADD ]; then
        echo '{"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "'"$CNI_NETNS"'"}],
               "ips": [{"interface": 0, "address": "10.9.0.'"$n"'/24"}]}'
    fi
    """)


class FakeWorld:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "conf"
        self.plugins = root / "plugins"
        self.cache = root / "cache"
        self.log = root / "log"
        for d in (self.conf, self.plugins, self.log):
            d.mkdir()
        for name in ("loopback", "first", "second"):
            self.add_plugin(name)

    def add_plugin(self, name: str) -> None:
        script = self.plugins / name
        # plugins see only CNI_* and PATH, so the log directory is written into the script
        script.write_text(FAKE_PLUGIN.replace('"$LOG', f'"{self.log}'))
        script.chmod(0o755)

    def write_conf(self, name: str = "10-fake.conflist", **extra: object) -> None:
        conf = {"cniVersion": "1.0.0", "name": "fake", "plugins": [
            {"type": "first"}, {"type": "second", "capabilities": {"portMappings": True}}], **extra}
        (self.conf / name).write_text(json.dumps(conf))

    def manager(self, **kwargs: object) -> cni.CNIManager:
        return cni.CNIManager(self.conf, [self.root / "nowhere", self.plugins], self.cache, **kwargs)

    def calls(self) -> list[tuple[str, str, str, dict]]:
        out = []
        for entry in sorted(self.log.iterdir()):
            plugin, command, env, stdin = entry.read_text().split("\n", 3)
            out.append((plugin, command, env, json.loads(stdin)))
        return out


@pytest.fixture
def world(tmp_path: Path) -> FakeWorld:
    return FakeWorld(tmp_path)


@pytest.fixture
def netns() -> Path:
    return Path("/proc/self/ns/net")  # a real namespace handle; the fake plugins never enter it


def test_status_empty_broken_missing_plugin(world: FakeWorld) -> None:
    manager = world.manager()
    status = manager.status()
    assert not status.ready and status.reason == "NetworkPluginNotReady"
    assert str(world.conf) in status.message
    (world.conf / "01-broken.conf").write_text("{not json")
    status = manager.status()
    assert not status.ready and "01-broken.conf" in status.message and "not valid JSON" in status.message
    world.write_conf(plugins=[{"type": "first"}, {"type": "absent"}])
    status = manager.status()
    assert not status.ready and "absent" in status.message
    (world.conf / "10-fake.conflist").unlink()
    world.write_conf()
    status = manager.status()
    assert status.ready, status.message
    assert world.manager(default_network="other").status().ready is False
    assert world.manager(default_network="fake").status().ready is True


def test_status_rereads_rewritten_file(world: FakeWorld) -> None:
    world.write_conf()
    manager = world.manager()
    assert manager.status().ready
    (world.conf / "10-fake.conflist").write_text("[]")
    assert not manager.status().ready


async def test_attach_runs_loopback_then_list_and_caches(world: FakeWorld, netns: Path) -> None:
    world.write_conf()
    manager = world.manager()
    result = await manager.attach("pod1", netns, pod_name="web", pod_namespace="ns1", pod_uid="uid1",
                                  port_mappings=[cniprotocol.PortMapping(8080, 80), cniprotocol.PortMapping(0, 81)])
    calls = world.calls()
    assert [(c[0], c[1]) for c in calls] == [("loopback", "ADD"), ("first", "ADD"), ("second", "ADD")]
    assert calls[0][2].startswith(f"{netns}|lo|")
    assert calls[1][2] == f"{netns}|eth0|" + cniprotocol.cni_args("pod1", "web", "ns1", "uid1")
    assert "prevResult" not in calls[1][3]
    assert calls[2][3]["prevResult"]["ips"][0]["address"] == "10.9.0.1/24"  # first's result reaches second
    assert calls[2][3]["runtimeConfig"] == {"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                              "protocol": "tcp"}]}
    assert "runtimeConfig" not in calls[1][3]
    assert result.ips == ["10.9.0.2"]  # the last plugin's result is the attach result
    assert manager.cached("pod1") == result
    assert world.manager().cached("pod1") == result  # survives a new manager (restart)
    with pytest.raises(AlreadyExists):
        await manager.attach("pod1", netns, pod_name="web", pod_namespace="ns1", pod_uid="uid1")


async def test_detach_uses_cache_after_conf_change(world: FakeWorld, netns: Path) -> None:
    world.write_conf()
    await world.manager().attach("pod1", netns, pod_name="web", pod_namespace="ns1", pod_uid="uid1",
                                 port_mappings=[cniprotocol.PortMapping(8080, 80)])
    for f in world.conf.iterdir():
        f.unlink()
    for f in world.log.iterdir():
        f.unlink()
    manager = world.manager()
    assert not manager.status().ready
    await manager.detach("pod1", netns)
    calls = world.calls()
    assert [(c[0], c[1]) for c in calls] == [("second", "DEL"), ("first", "DEL"), ("loopback", "DEL")]
    assert calls[0][3]["prevResult"]["ips"][0]["address"] == "10.9.0.2/24"
    assert calls[0][3]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert manager.cached("pod1") is None and manager.cached_pod_ids() == []
    await manager.detach("pod1", netns)  # idempotent: nothing cached, nothing run
    assert len(world.calls()) == 3


async def test_detach_with_vanished_netns_passes_empty_netns(world: FakeWorld, tmp_path: Path,
                                                             netns: Path) -> None:
    world.write_conf()
    manager = world.manager()
    await manager.attach("pod1", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    for f in world.log.iterdir():
        f.unlink()
    stale = tmp_path / "stale-netns"
    stale.write_text("")  # a pin file whose namespace was unmounted
    await manager.detach("pod1", stale)
    calls = world.calls()
    # the cached netns (/proc/self/ns/net) is still live, so it is preferred over the dead path given
    assert [c[2].split("|")[0] for c in calls] == [str(netns)] * 3


async def test_detach_without_any_live_netns(world: FakeWorld, tmp_path: Path) -> None:
    world.write_conf()
    manager = world.manager()
    pin = tmp_path / "pin"
    pin.symlink_to("/proc/self/ns/net")
    await manager.attach("pod1", pin, pod_name="a", pod_namespace="b", pod_uid="c")
    pin.unlink()
    for f in world.log.iterdir():
        f.unlink()
    await manager.detach("pod1", None)
    calls = world.calls()
    assert [(c[0], c[2].split("|")[0]) for c in calls] == [("second", ""), ("first", "")]  # no lo without a netns
    assert manager.cached_pod_ids() == []


async def test_failed_del_keeps_cache_and_gone_errors_are_ignored(world: FakeWorld, netns: Path) -> None:
    world.write_conf()
    manager = world.manager()
    await manager.attach("pod1", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    (world.root / "fail-first-DEL").touch()
    with pytest.raises(Internal, match="injected failure"):
        await manager.detach("pod1", netns)
    assert manager.cached_pod_ids() == ["pod1"]
    (world.root / "fail-first-DEL").unlink()
    await manager.detach("pod1", netns)
    assert manager.cached_pod_ids() == []


async def test_failed_add_rolls_back(world: FakeWorld, netns: Path) -> None:
    world.write_conf()
    manager = world.manager()
    (world.root / "fail-second-ADD").touch()
    with pytest.raises(Internal, match="second ADD for pod pod1 failed.*injected failure"):
        await manager.attach("pod1", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    commands = [(c[0], c[1]) for c in world.calls()]
    assert commands == [("loopback", "ADD"), ("first", "ADD"), ("second", "ADD"),
                        ("second", "DEL"), ("first", "DEL"), ("loopback", "DEL")]
    assert manager.cached_pod_ids() == []


async def test_cache_written_before_add(world: FakeWorld, netns: Path) -> None:
    """A crash mid-ADD (here: a hanging plugin, then the rollback also fails) leaves a cache entry for detach."""
    world.write_conf()
    manager = world.manager(plugin_timeout=0.5)
    (world.root / "hang-second-ADD").touch()
    (world.root / "fail-first-DEL").touch()
    with pytest.raises(DeadlineExceeded, match="second ADD"):
        await manager.attach("pod1", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    assert manager.cached_pod_ids() == ["pod1"]
    assert manager.cached("pod1") is None  # ADD never completed
    (world.root / "fail-first-DEL").unlink()
    await world.manager().detach("pod1", None)
    assert manager.cached_pod_ids() == []


async def test_check_uses_cached_result(world: FakeWorld, netns: Path) -> None:
    world.write_conf()
    manager = world.manager()
    await manager.attach("pod1", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    for f in world.log.iterdir():
        f.unlink()
    await manager.check("pod1", netns)
    calls = world.calls()
    assert [(c[0], c[1]) for c in calls] == [("first", "CHECK"), ("second", "CHECK")]
    assert calls[0][3]["prevResult"]["ips"][0]["address"] == "10.9.0.2/24"


async def test_attach_refuses_bad_input(world: FakeWorld, tmp_path: Path, netns: Path) -> None:
    manager = world.manager()
    with pytest.raises(FailedPrecondition, match="not ready"):
        await manager.attach("pod1", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    world.write_conf()
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(FailedPrecondition, match="not a network namespace"):
        await manager.attach("pod1", plain, pod_name="a", pod_namespace="b", pod_uid="c")
    with pytest.raises(InvalidArgument):
        await manager.attach("../x", netns, pod_name="a", pod_namespace="b", pod_uid="c")
    assert world.calls() == []
    assert manager.cached_pod_ids() == []


async def test_parallel_attaches(world: FakeWorld, netns: Path) -> None:
    world.write_conf()
    manager = world.manager()
    results = await asyncio.gather(*(manager.attach(f"pod{i}", netns, pod_name="a", pod_namespace="b",
                                                    pod_uid=str(i)) for i in range(5)))
    assert all(r.ips for r in results)
    assert manager.cached_pod_ids() == [f"pod{i}" for i in range(5)]


# A pod's portmap chains as `iptables-save -t nat` prints them (CNI plugins 1.1), with a second pod's beside them.
NAT_TABLE = """*nat
:CNI-DN-6d6b0f38aac7b023ec7ef - [0:0]
:CNI-DN-0123456789abcdef01234 - [0:0]
-A CNI-DN-6d6b0f38aac7b023ec7ef -s 10.196.3.0/24 -p tcp -m tcp --dport 30947 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-6d6b0f38aac7b023ec7ef -s 127.0.0.1/32 -p tcp -m tcp --dport 30947 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-6d6b0f38aac7b023ec7ef -p tcp -m tcp --dport 30947 -j DNAT --to-destination 10.196.3.2:80
-A CNI-DN-6d6b0f38aac7b023ec7ef -d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.196.3.2:53
-A CNI-DN-0123456789abcdef01234 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.196.3.3:8080
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"n\\" id: \\"p\\"" -m multiport --dports 30947 -j CNI-DN-6d6b0f38aac7b023ec7ef
COMMIT
"""


def test_the_host_ports_a_dnat_chain_forwards_are_read_back_from_it() -> None:
    assert cniprotocol.dnat_chain_port_mappings(NAT_TABLE, "CNI-DN-6d6b0f38aac7b023ec7ef") == [
        cniprotocol.PortMapping(30947, 80, "tcp"),
        cniprotocol.PortMapping(5353, 53, "udp", "127.0.0.1"),
    ]
    assert cniprotocol.dnat_chain_port_mappings(NAT_TABLE, "CNI-DN-ffffffffffffffffffffff") == []


def test_a_dnat_rule_that_does_not_parse_is_skipped() -> None:
    table = ("-A CNI-DN-x -p tcp -m tcp --dport 99999 -j DNAT --to-destination 10.0.0.2:80\n"
             "-A CNI-DN-x -p tcp -m tcp -j DNAT --to-destination 10.0.0.2:80\n"
             "-A CNI-DN-x -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.0.0.2\n"
             "-A CNI-DN-x -p tcp -m tcp --dport 82 -j DNAT --to-destination [fd00::2]:8082\n")
    assert cniprotocol.dnat_chain_port_mappings(table, "CNI-DN-x") == [cniprotocol.PortMapping(82, 8082, "tcp")]
