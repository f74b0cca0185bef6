"""The CNI protocol, without I/O: network configuration lists, what a plugin gets (stdin configuration, CNI_*
environment, CNI_ARGS) and what it answers (results, errors), and cripy's default network.

Owns the CNI 1.0.0 exec protocol's data: parsing and validating .conflist/.conf files, choosing the network,
building each plugin's input with the runtimeConfig its capabilities ask for, decoding results (0.x and 1.0) and
error objects. Running plugins, the conf dir and the attach cache are the manager's (cni.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cripy.errors import Internal, InvalidArgument

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
CONF_EXTENSIONS = (".conflist", ".conf", ".json")
LOOPBACK_PLUGIN = "loopback"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# CNI error code 3: "container unknown or does not exist"; plus the wording plugins use for vanished resources.
_ERR_CONTAINER_UNKNOWN = 3
_GONE_RE = re.compile(r"not found|no such|does not exist|doesn't exist|not exist", re.IGNORECASE)
_PLUGIN_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PROTOCOLS = ("tcp", "udp", "sctp")


# ---------------------------------------------------------------------------------------------------- domain


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def __post_init__(self) -> None:
        if self.protocol.lower() not in _PROTOCOLS:
            raise InvalidArgument(f"port mapping protocol {self.protocol!r} is not one of {', '.join(_PROTOCOLS)}")
        object.__setattr__(self, "protocol", self.protocol.lower())
        if not 0 <= self.host_port <= 65535 or not 1 <= self.container_port <= 65535:
            raise InvalidArgument(f"port mapping {self.host_port}->{self.container_port} is out of range")

    def to_cni(self) -> dict[str, Any]:
        """The portMappings capability entry (the convention shared by CNI runtimes and the portmap plugin)."""
        entry: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            entry["hostIP"] = self.host_ip
        return entry

    @classmethod
    def from_cni(cls, entry: Mapping[str, Any]) -> PortMapping:
        return cls(int(entry["hostPort"]), int(entry["containerPort"]), str(entry.get("protocol", "tcp")),
                   str(entry.get("hostIP", "")))


@dataclass
class AttachResult:
    ips: list[str]  # addresses without prefix length, IPv4 first
    interfaces: list[dict[str, Any]]
    raw: dict[str, Any]

    @classmethod
    def from_result(cls, raw: Mapping[str, Any]) -> AttachResult:
        return cls(ips=result_ips(raw), interfaces=list(raw.get("interfaces") or []), raw=dict(raw))


@dataclass(frozen=True)
class NetworkList:
    """A network configuration list: the unit CNIManager attaches pods to."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    source: str = ""  # the file it came from, for messages

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name, "plugins": list(self.plugins)}
        if self.disable_check:
            out["disableCheck"] = True
        return out

    @property
    def plugin_types(self) -> list[str]:
        return [p["type"] for p in self.plugins]


class CNIPluginError(Internal):
    """A plugin reported an error (or died) while running a command."""

    def __init__(self, plugin: str, command: str, pod_id: str, code: int | None, msg: str, details: str = ""):
        self.plugin, self.command, self.code, self.msg, self.details = plugin, command, code, msg, details
        text = f"CNI plugin {plugin} {command} for pod {pod_id} failed"
        if code is not None:
            text += f" (code {code})"
        text += f": {msg}"
        if details:
            text += f": {details}"
        super().__init__(text)

    @property
    def means_gone(self) -> bool:
        """The error says the thing to delete is already gone - fine for DEL."""
        return self.code == _ERR_CONTAINER_UNKNOWN or bool(_GONE_RE.search(f"{self.msg} {self.details}"))


# ---------------------------------------------------------------------------------------------------- protocol


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise InvalidArgument(f"cniVersion {version!r} is not a version number") from None


def parse_network_config(data: Any, source: str = "") -> NetworkList:
    """Validate a decoded .conflist or single-plugin .conf; a .conf becomes a one-plugin list."""
    where = f" in {source}" if source else ""
    if not isinstance(data, dict):
        raise InvalidArgument(f"network configuration{where} is not a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"network configuration{where} has no \"name\"")
    version = data.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise InvalidArgument(f"network {name}{where} has unsupported cniVersion {version!r} "
                              f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise InvalidArgument(f"network {name}{where} has an empty or malformed \"plugins\" list")
    elif "type" in data:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    else:
        raise InvalidArgument(f"network {name}{where} has neither \"plugins\" nor \"type\"")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise InvalidArgument(f"network {name}{where}: plugin #{index} is not a JSON object")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not _PLUGIN_TYPE_RE.match(kind):
            raise InvalidArgument(f"network {name}{where}: plugin #{index} has a missing or invalid \"type\" "
                                  f"{kind!r}")
    return NetworkList(name=name, cni_version=version, plugins=tuple(plugins),
                       disable_check=bool(data.get("disableCheck", False)), source=source)


def parse_network_file(path: Path, text: str) -> NetworkList:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{path} is not valid JSON: {exc}") from None
    return parse_network_config(data, str(path))


def conf_files(names: Sequence[str]) -> list[str]:
    """The configuration file names among names, in the lexical order that decides which network is used."""
    return sorted(n for n in names if n.endswith(CONF_EXTENSIONS) and not n.startswith("."))


def select_network(networks: Sequence[NetworkList], default_network: str) -> NetworkList | None:
    if default_network:
        return next((n for n in networks if n.name == default_network), None)
    return networks[0] if networks else None


def cni_args(pod_id: str, pod_name: str, pod_namespace: str, pod_uid: str) -> str:
    """CNI_ARGS with the Kubernetes keys plugins (portmap, bandwidth, third-party ones) look for."""
    values = {"K8S_POD_NAMESPACE": pod_namespace, "K8S_POD_NAME": pod_name,
              "K8S_POD_INFRA_CONTAINER_ID": pod_id, "K8S_POD_UID": pod_uid}
    for key, value in values.items():
        if any(c in value for c in ";=\0"):
            raise InvalidArgument(f"{key} value {value!r} contains a character CNI_ARGS cannot carry (';', '=')")
    return "IgnoreUnknown=1;" + ";".join(f"{k}={v}" for k, v in values.items())


def plugin_stdin(
    plugin: Mapping[str, Any],
    network: NetworkList,
    prev_result: Mapping[str, Any] | None,
    port_mappings: Sequence[PortMapping | Mapping[str, Any]],
) -> dict[str, Any]:
    """The configuration a plugin reads on stdin: its own conf, the list's name and version, the previous result,
    and runtimeConfig entries for the capabilities the plugin declares (only those)."""
    conf = {k: v for k, v in plugin.items() if k != "runtimeConfig"}
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    runtime: dict[str, Any] = {}
    capabilities = plugin.get("capabilities") or {}
    if capabilities.get("portMappings"):
        runtime["portMappings"] = [m.to_cni() if isinstance(m, PortMapping) else dict(m) for m in port_mappings]
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def plugin_env(
    command: str,
    container_id: str,
    netns: str,
    ifname: str,
    args: str,
    plugin_dirs: Sequence[Path],
    path: str = DEFAULT_PATH,
) -> dict[str, str]:
    """The environment of one plugin execution: the CNI_* variables and PATH (portmap needs iptables)."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": os.pathsep.join(str(d) for d in plugin_dirs),
        "PATH": path,
    }


def parse_plugin_output(
    plugin: str, command: str, pod_id: str, returncode: int, stdout: bytes, stderr: bytes
) -> dict[str, Any] | None:
    """The result object of a successful run (None when the plugin printed nothing), or CNIPluginError."""
    text = stdout.decode(errors="replace").strip()
    err_text = stderr.decode(errors="replace").strip()
    if returncode != 0:
        try:
            error = json.loads(text)
        except json.JSONDecodeError:
            error = None
        if isinstance(error, dict) and ("msg" in error or "code" in error):
            code = error.get("code")
            raise CNIPluginError(plugin, command, pod_id, code if isinstance(code, int) else None,
                                 str(error.get("msg", "")), str(error.get("details", "")))
        raise CNIPluginError(plugin, command, pod_id, None, f"exit status {returncode}",
                             err_text or text or "no output")
    if not text:
        return None
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        raise CNIPluginError(plugin, command, pod_id, None, "printed a result that is not JSON", text[:500]) from None
    if not isinstance(result, dict):
        raise CNIPluginError(plugin, command, pod_id, None, "printed a result that is not a JSON object", text[:500])
    return result


def result_ips(result: Mapping[str, Any]) -> list[str]:
    """Pod IPs (no prefix length, IPv4 first) on interfaces inside the sandbox; understands 0.x and 1.0 results."""
    interfaces = result.get("interfaces") or []
    addresses: list[str] = []
    for ip in result.get("ips") or []:
        index = ip.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces) and not interfaces[index].get("sandbox"):
            continue  # an address on a host-side interface (e.g. the bridge gateway), not the pod's
        if ip.get("address"):
            addresses.append(ip["address"].split("/")[0])
    for legacy in ("ip4", "ip6"):  # CNI 0.1.0/0.2.0 results
        entry = result.get(legacy)
        if isinstance(entry, dict) and entry.get("ip"):
            addresses.append(entry["ip"].split("/")[0])
    unique = list(dict.fromkeys(addresses))
    return sorted(unique, key=lambda a: ":" in a)


def dnat_chain_port_mappings(nat_table: str, chain: str) -> list[PortMapping]:
    """The host-port mappings portmap's DNAT chain `chain` forwards, read back from `iptables-save -t nat`.

    portmap deletes a pod's chains only when its DEL names some mapping, so a pod whose attach record is lost can
    release its host ports only with mappings read from the chain itself."""
    found: list[PortMapping] = []
    for line in nat_table.splitlines():
        words = line.split()
        if words[:2] != ["-A", chain] or "DNAT" not in words:
            continue
        options = dict(zip(words, words[1:]))
        destination, _, container_port = options.get("--to-destination", "").rpartition(":")
        try:
            mapping = PortMapping(int(options.get("--dport", "")), int(container_port), options.get("-p", "tcp"),
                                  options.get("-d", "").removesuffix("/32"))
        except (ValueError, InvalidArgument):
            continue
        if destination and mapping not in found:
            found.append(mapping)
    return found


def loopback_network(cni_version: str) -> NetworkList:
    return NetworkList(name="cni-loopback", cni_version=cni_version, plugins=({"type": LOOPBACK_PLUGIN},))


def default_bridge_conflist(
    subnet: str = "10.88.0.0/16",
    bridge: str = "cripy0",
    data_dir: str | None = None,
    name: str = "cripy",
) -> str:
    """cripy's default network: a bridge (gateway on the host, no masquerading to the outside, hairpin so a pod
    can reach itself through a service/host port) with host-local IPAM, plus portmap for hostPorts. No firewall
    plugin: it needs iptables chains set up beforehand."""
    ipam: dict[str, Any] = {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
    if data_dir:
        ipam["dataDir"] = data_dir
    conflist = {
        "cniVersion": SPEC_VERSION,
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": ipam},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"


DEFAULT_BRIDGE_CONFLIST = default_bridge_conflist()
