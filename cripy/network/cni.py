"""CNI: loading the network configuration, running plugins (ADD/CHECK/DEL) with the CNI 1.0.0 exec protocol, and
caching what was attached so that DEL works after a daemon restart or a configuration change.

The protocol pieces (conf parsing, plugin stdin and environment, result and error decoding) are pure functions;
CNIManager does the I/O: reading the conf dir, executing plugins as asyncio subprocesses, the cache files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cripy import faults
from cripy.errors import (
    AlreadyExists,
    CripyError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from cripy.linux.namespaces import is_namespace_file

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
CONF_EXTENSIONS = (".conflist", ".conf", ".json")
LOOPBACK_PLUGIN = "loopback"
DEFAULT_PLUGIN_TIMEOUT_S = 60.0
HOST_LOCAL_DATA_DIR = "/var/lib/cni/networks"  # host-local's default dataDir
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_READY_REASON = "NetworkPluginNotReady"

# CNI error code 3: "container unknown or does not exist"; plus the wording plugins use for vanished resources.
_ERR_CONTAINER_UNKNOWN = 3
_GONE_RE = re.compile(r"not found|no such|does not exist|doesn't exist|not exist", re.IGNORECASE)
_POD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
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


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    reason: str
    message: str


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


@dataclass
class CacheEntry:
    """What detach needs to undo an attach, independent of the current conf dir."""

    pod_id: str
    network: dict[str, Any]
    ifname: str
    netns: str
    cni_args: str
    port_mappings: list[dict[str, Any]]
    result: dict[str, Any] | None = None
    loopback: bool = True
    format: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheEntry:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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


# ---------------------------------------------------------------------------------------------------- pure protocol


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


def find_plugin(plugin_type: str, plugin_dirs: Sequence[Path]) -> Path | None:
    for directory in plugin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


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


# ---------------------------------------------------------------------------------------------------- manager


@dataclass
class _ConfState:
    key: tuple[Any, ...] | None = None
    networks: list[NetworkList] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class CNIManager:
    """Attaches pods (by their pinned network namespace) to the configured CNI network and detaches them."""

    def __init__(
        self,
        conf_dir: Path,
        plugin_dirs: list[Path],
        cache_dir: Path,
        default_network: str = "",
        plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT_S,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.plugin_dirs = [Path(d) for d in plugin_dirs]
        self.cache_dir = Path(cache_dir)
        self.default_network = default_network
        self.plugin_timeout = plugin_timeout
        self._conf = _ConfState()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- configuration

    def _conf_key(self) -> tuple[Any, ...]:
        """Changes whenever a file is added, removed, renamed or rewritten in the conf dir."""
        stat = self.conf_dir.stat()
        files = []
        for name in conf_files(os.listdir(self.conf_dir)):
            try:
                st = (self.conf_dir / name).stat()
                files.append((name, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                continue
        return (stat.st_mtime_ns, tuple(files))

    def _reload(self) -> None:
        try:
            key = self._conf_key()
        except OSError as exc:
            self._conf = _ConfState(None, [], [f"cannot read CNI configuration directory {self.conf_dir}: "
                                               f"{exc.strerror}"])
            return
        if key == self._conf.key:
            return
        networks: list[NetworkList] = []
        problems: list[str] = []
        for name, _mtime, _size in key[1]:
            path = self.conf_dir / name
            try:
                networks.append(parse_network_file(path, path.read_text()))
            except (InvalidArgument, OSError, UnicodeDecodeError) as exc:
                problems.append(f"skipped {path}: {exc}")
        self._conf = _ConfState(key, networks, problems)
        for problem in problems:
            log.warning("CNI configuration %s", problem)

    def _missing_plugins(self, network: NetworkList) -> list[str]:
        needed = [LOOPBACK_PLUGIN, *network.plugin_types]
        return [t for t in dict.fromkeys(needed) if find_plugin(t, self.plugin_dirs) is None]

    def _evaluate(self) -> tuple[NetworkList | None, NetworkStatus]:
        self._reload()
        network = select_network(self._conf.networks, self.default_network)
        problems = "; ".join(self._conf.problems)
        if network is None:
            if self.default_network:
                message = f"network {self.default_network!r} not found in {self.conf_dir}"
            else:
                message = f"no valid CNI network configuration in {self.conf_dir}"
            if problems:
                message += f" ({problems})"
            return None, NetworkStatus(False, NOT_READY_REASON, message)
        missing = self._missing_plugins(network)
        if missing:
            dirs = ", ".join(str(d) for d in self.plugin_dirs)
            return None, NetworkStatus(False, NOT_READY_REASON,
                                       f"network {network.name} ({network.source}) needs CNI plugin(s) "
                                       f"{', '.join(missing)} not found in {dirs}")
        return network, NetworkStatus(True, "", f"network {network.name} from {network.source}")

    def status(self) -> NetworkStatus:
        """Ready when a valid network list is configured and all its plugins exist; re-reads changed configs."""
        return self._evaluate()[1]

    def configuration(self) -> tuple[NetworkList | None, NetworkStatus, list[NetworkList], list[str]]:
        """For an operator: the network pods attach to (None if not ready), why, every valid network list found,
        and the files skipped with the reason."""
        network, status = self._evaluate()
        return network, status, list(self._conf.networks), list(self._conf.problems)

    def current_network(self) -> NetworkList:
        network, status = self._evaluate()
        if network is None:
            raise FailedPrecondition(f"CNI network is not ready: {status.message}")
        return network

    # -- cache

    def _cache_path(self, pod_id: str) -> Path:
        if not _POD_ID_RE.match(pod_id):
            raise InvalidArgument(f"pod id {pod_id!r} is not usable as a CNI container id")
        return self.cache_dir / f"{pod_id}.json"

    def _read_cache(self, pod_id: str) -> CacheEntry | None:
        path = self._cache_path(pod_id)
        try:
            return CacheEntry.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise Internal(f"CNI cache {path} for pod {pod_id} is unreadable: {exc}") from exc

    def _write_cache(self, entry: CacheEntry) -> None:
        path = self._cache_path(entry.pod_id)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(entry), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.cache_dir)

    def _remove_cache(self, pod_id: str) -> None:
        try:
            self._cache_path(pod_id).unlink()
        except FileNotFoundError:
            return
        _fsync_dir(self.cache_dir)

    def cached(self, pod_id: str) -> AttachResult | None:
        """The result of the pod's completed attach; None when not attached (or an ADD never finished)."""
        entry = self._read_cache(pod_id)
        if entry is None or entry.result is None:
            return None
        return AttachResult.from_result(entry.result)

    def cached_pod_ids(self) -> list[str]:
        """Pods with a cache entry (complete or not): what recovery may need to detach."""
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    # -- plugin execution

    async def _exec(
        self,
        plugin_type: str,
        command: str,
        pod_id: str,
        stdin: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> dict[str, Any] | None:
        binary = find_plugin(plugin_type, self.plugin_dirs)
        if binary is None:
            dirs = ", ".join(str(d) for d in self.plugin_dirs)
            raise FailedPrecondition(f"CNI plugin {plugin_type} ({command} for pod {pod_id}) not found in {dirs}")
        faults.point(f"cni.{command}.{plugin_type}")
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd="/",
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(stdin).encode()),
                                                    self.plugin_timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"CNI plugin {plugin_type} {command} for pod {pod_id} did not finish within "
                                   f"{self.plugin_timeout:g}s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: do not leave the plugin running
                proc.kill()
                await proc.wait()
        faults.point(f"cni.{command}.{plugin_type}.done")
        return parse_plugin_output(plugin_type, command, pod_id, proc.returncode or 0, stdout, stderr)

    async def _run(
        self,
        command: str,
        entry: CacheEntry,
        network: NetworkList,
        plugin: Mapping[str, Any],
        netns: str,
        ifname: str,
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        stdin = plugin_stdin(plugin, network, prev_result, entry.port_mappings)
        env = plugin_env(command, entry.pod_id, netns, ifname, entry.cni_args, self.plugin_dirs,
                         os.environ.get("PATH", DEFAULT_PATH))
        return await self._exec(plugin["type"], command, entry.pod_id, stdin, env)

    def _lock(self, pod_id: str) -> asyncio.Lock:
        lock = self._locks.get(pod_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[pod_id] = lock
        return lock

    # -- ADD / DEL / CHECK

    async def attach(
        self,
        pod_id: str,
        netns: Path,
        *,
        pod_name: str,
        pod_namespace: str,
        pod_uid: str,
        port_mappings: Sequence[PortMapping] = (),
        ifname: str = "eth0",
    ) -> AttachResult:
        """Bring up lo and attach the pod's netns to the network (ADD through the list). On failure the partial
        attachment is rolled back (DEL) before the error is raised."""
        self._cache_path(pod_id)  # validates the id before anything happens
        async with self._lock(pod_id):
            if await asyncio.to_thread(self._read_cache, pod_id) is not None:
                raise AlreadyExists(f"pod {pod_id} is already attached to a CNI network; detach it first")
            if not is_namespace_file(netns):
                raise FailedPrecondition(f"{netns} is not a network namespace (pod {pod_id})")
            network = await asyncio.to_thread(self.current_network)  # re-reads changed conf files
            entry = CacheEntry(
                pod_id=pod_id,
                network=network.to_dict(),
                ifname=ifname,
                netns=str(netns),
                cni_args=cni_args(pod_id, pod_name, pod_namespace, pod_uid),
                port_mappings=[m.to_cni() for m in port_mappings if m.host_port > 0],
            )
            # Written before any plugin runs: after a crash mid-ADD, detach still finds what to undo.
            await asyncio.to_thread(self._write_cache, entry)
            try:
                result = await self._add(entry, network, str(netns))
            except BaseException as exc:
                await self._rollback(entry, exc)
                raise
            entry.result = result
            await asyncio.to_thread(self._write_cache, entry)
            return AttachResult.from_result(result)

    async def _add(self, entry: CacheEntry, network: NetworkList, netns: str) -> dict[str, Any]:
        loopback = loopback_network(network.cni_version)
        await self._run("ADD", entry, loopback, loopback.plugins[0], netns, "lo", None)
        result: dict[str, Any] | None = None
        for plugin in network.plugins:
            result = await self._run("ADD", entry, network, plugin, netns, entry.ifname, result) or result
        return result or {}

    async def _rollback(self, entry: CacheEntry, cause: BaseException) -> None:
        try:
            await asyncio.shield(self._delete(entry, entry.netns))
        except Exception as exc:  # the ADD error is what the caller needs; the cache keeps DEL retryable
            log.warning("rolling back CNI ADD of pod %s after %r failed: %s", entry.pod_id, cause, exc)
            return
        await asyncio.to_thread(self._remove_cache, entry.pod_id)

    async def detach(self, pod_id: str, netns: Path | None) -> None:
        """Undo the pod's attach with the cached configuration and result (DEL through the list in reverse, then
        lo). Without a cache entry there is nothing to do. A netns that is gone is passed as "" (spec-allowed) and
        "already gone" errors are ignored. The cache entry goes only when every DEL succeeded."""
        async with self._lock(pod_id):
            entry = await asyncio.to_thread(self._read_cache, pod_id)
            if entry is None:
                return
            candidates = [str(netns)] if netns is not None else []
            candidates.append(entry.netns)
            live = next((c for c in candidates if c and is_namespace_file(Path(c))), "")
            await self._delete(entry, live)
            await asyncio.to_thread(self._remove_cache, pod_id)

    async def _delete(self, entry: CacheEntry, netns: str) -> None:
        network = parse_network_config(entry.network, f"CNI cache of pod {entry.pod_id}")
        prev = entry.result if version_tuple(network.cni_version) >= (0, 4, 0) else None
        for plugin in reversed(network.plugins):
            await self._tolerant_del(entry, network, plugin, netns, entry.ifname, prev)
        if entry.loopback and netns:  # without a netns, lo is gone with it
            loopback = loopback_network(network.cni_version)
            await self._tolerant_del(entry, loopback, loopback.plugins[0], netns, "lo", None)

    async def _tolerant_del(
        self,
        entry: CacheEntry,
        network: NetworkList,
        plugin: Mapping[str, Any],
        netns: str,
        ifname: str,
        prev: Mapping[str, Any] | None,
    ) -> None:
        try:
            await self._run("DEL", entry, network, plugin, netns, ifname, prev)
        except CNIPluginError as exc:
            if not exc.means_gone:
                raise
            log.info("CNI DEL of pod %s: ignoring %s", entry.pod_id, exc)

    async def release_unknown(self, pod_id: str) -> None:
        """DEL through the current network for a pod that has no cache entry (found by `cripy audit`: an IP
        reservation or host-port chain left by an attach whose record is gone). Plugins release by container id."""
        async with self._lock(pod_id):
            if await asyncio.to_thread(self._read_cache, pod_id) is not None:
                raise FailedPrecondition(f"pod {pod_id} has a CNI cache entry: detach it instead")
            network = await asyncio.to_thread(self.current_network)
            entry = CacheEntry(pod_id=pod_id, network=network.to_dict(), ifname="eth0", netns="",
                               cni_args=cni_args(pod_id, "", "", ""), loopback=False)
            await self._delete(entry, "")

    # -- what the node holds for the current network (for `cripy audit`)

    def ip_reservations(self) -> dict[str, list[str]]:
        """host-local's reservations in the current network: pod (container) id -> its addresses."""
        try:
            network = self.current_network()
        except CripyError:
            return {}
        found: dict[str, list[str]] = {}
        for plugin in network.plugins:
            ipam = plugin.get("ipam") or {}
            if ipam.get("type") != "host-local":
                continue
            directory = Path(ipam.get("dataDir") or HOST_LOCAL_DATA_DIR) / network.name
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if name == "lock" or name.startswith("last_reserved_ip"):
                    continue
                try:
                    owner = (directory / name).read_text(errors="replace").split()[0]
                except (OSError, IndexError):
                    continue
                found.setdefault(owner, []).append(name)
        return found

    def port_chains(self) -> dict[str, list[str]]:
        """portmap's DNAT chains in the nat table for the current network: pod id -> chain names."""
        try:
            network = self.current_network()
            out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30).stdout
        except (CripyError, OSError, subprocess.TimeoutExpired):
            return {}
        found: dict[str, list[str]] = {}
        pattern = re.compile(rf'dnat name: \\?"{re.escape(network.name)}\\?" id: \\?"([^"\\]+)\\?".* -j (CNI-DN-\S+)')
        for line in out.splitlines():
            match = pattern.search(line)
            if match and match.group(2) not in found.get(match.group(1), []):
                found.setdefault(match.group(1), []).append(match.group(2))
        return found

    async def check(self, pod_id: str, netns: Path) -> None:
        """CHECK the pod's attachment with the cached configuration; raises when a plugin finds it broken."""
        async with self._lock(pod_id):
            entry = await asyncio.to_thread(self._read_cache, pod_id)
            if entry is None or entry.result is None:
                raise NotFound(f"pod {pod_id} is not attached to a CNI network")
            network = parse_network_config(entry.network, f"CNI cache of pod {pod_id}")
            if version_tuple(network.cni_version) < (0, 4, 0):
                raise Unimplemented(f"network {network.name} uses cniVersion {network.cni_version}, which has no "
                                    "CHECK")
            if network.disable_check:
                return
            if not is_namespace_file(netns):
                raise FailedPrecondition(f"{netns} is not a network namespace (pod {pod_id})")
            for plugin in network.plugins:
                await self._run("CHECK", entry, network, plugin, str(netns), entry.ifname, entry.result)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
