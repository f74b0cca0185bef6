"""CNI plugins run for pods: loading the network configuration, running plugins (ADD/CHECK/DEL) with the CNI 1.0.0
exec protocol, and caching what was attached so that DEL works after a daemon restart or a configuration change.

CNIManager does the I/O: reading the conf dir (re-read when it changes), finding and executing plugins as asyncio
subprocesses with a deadline, the cache files, and what host-local and portmap leave on the node (for audit). The
protocol's data (conf parsing, plugin stdin and environment, result and error decoding) is in cniprotocol.py.
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
from cripy.network.cniprotocol import (
    DEFAULT_PATH,
    LOOPBACK_PLUGIN,
    AttachResult,
    CNIPluginError,
    NetworkList,
    PortMapping,
    cni_args,
    conf_files,
    dnat_chain_port_mappings,
    loopback_network,
    parse_network_config,
    parse_network_file,
    parse_plugin_output,
    plugin_env,
    plugin_stdin,
    select_network,
    version_tuple,
)

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_TIMEOUT_S = 60.0
HOST_LOCAL_DATA_DIR = "/var/lib/cni/networks"  # host-local's default dataDir
NOT_READY_REASON = "NetworkPluginNotReady"

_POD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")


# ---------------------------------------------------------------------------------------------------- domain


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    reason: str
    message: str


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


# ---------------------------------------------------------------------------------------------------- manager


def find_plugin(plugin_type: str, plugin_dirs: Sequence[Path]) -> Path | None:
    """The executable for a plugin type: the first match in the plugin directories (CNI_PATH order)."""
    for directory in plugin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


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
        reservation or host-port chain left by an attach whose record is gone). Plugins release by container id;
        the host ports are read back from the pod's portmap chains, since portmap deletes none without them."""
        async with self._lock(pod_id):
            if await asyncio.to_thread(self._read_cache, pod_id) is not None:
                raise FailedPrecondition(f"pod {pod_id} has a CNI cache entry: detach it instead")
            network = await asyncio.to_thread(self.current_network)
            nat_table = await asyncio.to_thread(_nat_table)
            chains = _port_chains(nat_table, network.name).get(pod_id, [])
            mappings = [m.to_cni() for chain in chains for m in dnat_chain_port_mappings(nat_table, chain)]
            entry = CacheEntry(pod_id=pod_id, network=network.to_dict(), ifname="eth0", netns="",
                               cni_args=cni_args(pod_id, "", "", ""), port_mappings=mappings, loopback=False)
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
        except CripyError:
            return {}
        return _port_chains(_nat_table(), network.name)

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


def _nat_table() -> str:
    """`iptables-save -t nat`, or nothing where it cannot be read."""
    try:
        return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _port_chains(nat_table: str, network_name: str) -> dict[str, list[str]]:
    """portmap's DNAT chains of the network in the nat table: pod id -> chain names."""
    found: dict[str, list[str]] = {}
    pattern = re.compile(rf'dnat name: \\?"{re.escape(network_name)}\\?" id: \\?"([^"\\]+)\\?".* -j (CNI-DN-\S+)')
    for line in nat_table.splitlines():
        match = pattern.search(line)
        if match and match.group(2) not in found.get(match.group(1), []):
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
