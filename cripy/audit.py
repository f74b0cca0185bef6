"""`cripy audit`: the node compared with the journal and the records, object by object.

Orphaned: something on the node no record or journal entry owns (a mount, a pinned namespace, a conmon, a runc
container, a cgroup, a CNI cache entry, an IP reservation, a host-port chain, a directory, a layer). Missing:
something a record says exists and the node does not have (a ready pod's namespaces, a running container's
process or rootfs, a layer's directory).

`repair` undoes orphans with the journal's own undo functions (EffectJournal.undo_unrecorded), as if the entry
that was lost were still there; missing things are reported only (the daemon's recovery decides what a record
whose object is gone becomes). The daemon runs the check at start and logs a summary.

Races with a running daemon: an object's entry is journalled before its effect is made and forgotten only after
it is undone, so the journal is read before and after the node is scanned and only what neither reading knows
is orphaned. Layers are not journalled: their directories are compared with their rows under the layer lock
(images/layerlock.py), or not at all while a pull holds it, which `notes` then says.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import secrets
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cripy.containers.container import STATE_CREATED, STATE_RUNNING
from cripy.images.layerentries import remove_tree
from cripy.images.layerlock import LayerLock
from cripy.linux import cgroups
from cripy.linux import mount as mnt
from cripy.oci.conmon import monitor_argv, monitor_id
from cripy.pods.model import STATE_READY, namespaces_dir
from cripy.storage.effects import Effect
from cripy.storage.layout import Layout

if TYPE_CHECKING:
    from cripy.daemon import Daemon

log = logging.getLogger(__name__)

ORPHANED = "orphaned"
MISSING = "missing"
_ID = re.compile(r"^[0-9a-f]{64}$")
_INFRA_ID = re.compile(r"^([0-9a-f]{32})-infra$")
_CGROUP_NAME = re.compile(r"^cripy-([0-9a-f]{64}|[0-9a-f]{32}-infra)$")
RepairFn = Callable[[], Awaitable[None]]


@dataclass
class Finding:
    """One thing out of place: what (kind, where), whose (owner), orphaned or missing, and how to repair it."""

    problem: str
    kind: str
    owner: str
    where: str
    repair: RepairFn | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        return f"{self.problem} {self.kind}: {self.where}"


@dataclass(frozen=True)
class Known:
    """What the records and the journal know of."""

    pods: frozenset[str]
    containers: frozenset[str]

    def infra(self, ident: str) -> bool:
        return self.infra_owner(ident) is not None

    def infra_owner(self, ident: str) -> str | None:
        """The known pod whose infra process `ident` (<first 32 hex of the pod id>-infra) is, if any."""
        match = _INFRA_ID.match(ident)
        if match is None:
            return None
        return next((pod for pod in self.pods if pod.startswith(match.group(1))), None)

    def runtime_id(self, ident: str) -> bool:
        return ident in self.containers or self.infra(ident)

    @functools.cached_property
    def _monitor_ids(self) -> frozenset[str]:
        return frozenset(monitor_id(c) for c in self.containers)

    def monitor(self, name: str) -> bool:
        """An entry of conmon's socket directory: named by the cuuid conmon got, or by a whole id (older cripy)."""
        return self.runtime_id(name) or name in self._monitor_ids


class Audit:
    """One audit of a daemon's services (built but not necessarily serving: `cripy audit` builds its own)."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon
        assert daemon.journal is not None and daemon.db is not None, "the daemon's services are not built"
        self.journal = daemon.journal
        self.db = daemon.db
        self.layout = daemon.layout
        self._repairs: dict[tuple[str, str], RepairFn] = {}  # one repair per object, shared by its findings
        self._layer_lock = LayerLock(daemon.layout.layers_lock)
        self.notes: list[str] = []  # what this audit could not check, and why

    async def run(self) -> list[Finding]:
        before = await self._known(await self.journal.all_effects())
        parents = {self.d.config.runtime.cgroup_parent} | {pod.cgroup_parent for pod in await self.d.pods.list()}
        node = await asyncio.to_thread(NodeState.read, self.layout, self.d, parents)
        effects = await self.journal.all_effects()
        known = _union(before, await self._known(effects))
        findings: list[Finding] = []
        for check in (self._mounts, self._monitors, self._runtime_state, self._cgroups, self._cni,
                      self._directories):
            findings += await check(node, known)
        findings += await self._layers()
        findings += await self._missing(node, {(e.owner, e.kind): e for e in effects})  # the newest of each
        return sorted(findings, key=lambda f: (f.owner, f.problem, f.kind, f.where))

    async def repair(self, findings: list[Finding]) -> list[str]:
        """Undo every orphan (each repair once, in the order of the journal's own undo: processes and runtime
        state, network, mounts, directories); the problems met."""
        problems = []
        done: set[int] = set()
        for finding in sorted((f for f in findings if f.repair is not None), key=_repair_order):
            if id(finding.repair) in done:
                continue
            done.add(id(finding.repair))
            try:
                await finding.repair()  # type: ignore[misc]
            except Exception as e:
                problems.append(f"{finding.owner or '-'}: repairing {finding.line()} failed: {e}")
        return problems

    # ---- what is known ----------------------------------------------------------------------------------------

    async def _known(self, effects: list[Effect]) -> Known:
        pods = {pod.id for pod in await self.d.pods.list()}
        containers = {c.id for c in await self.d.containers.list()}
        pods |= {e.owner for e in effects if e.kind.startswith("pod-")}
        containers |= {e.owner for e in effects if e.kind.startswith("ctr-")}
        return Known(frozenset(pods), frozenset(containers))

    # ---- orphans ----------------------------------------------------------------------------------------------

    async def _mounts(self, node: "NodeState", known: Known) -> list[Finding]:
        found = []
        layout = self.layout
        pods_dir = layout.pods
        repairs = self._repairs
        for info in node.mounts:
            point = Path(info.mount_point)
            owner = _child_of(pods_dir, point)
            if owner is not None and owner not in known.pods:
                pinned = namespaces_dir(pods_dir / owner)
                if point.parent == pinned:
                    key = ("ns", owner)
                    repairs.setdefault(key, self._undo(owner, "pod-namespaces", path=str(pinned)))
                    found.append(Finding(ORPHANED, "pinned namespace", owner, str(point), repairs[key]))
                else:
                    repair = self._undo(owner, "pod-shm", path=str(point))
                    found.append(Finding(ORPHANED, "mount", owner, str(point), repair))
                continue
            # A container's overlay and image volumes (under its directory, or under rootfs/ in a pod with a user
            # namespace) and its id-mapped layer views (under idmap/).
            for base, kind in ((layout.containers, "ctr-rootfs"), (layout.userns_rootfs, "ctr-rootfs"),
                               (layout.idmap, "ctr-idmap")):
                owner = _child_of(base, point)
                if owner is not None and owner not in known.containers:
                    key = (kind, str(base / owner))
                    repairs.setdefault(key, self._undo(owner, kind, path=str(base / owner)))
                    found.append(Finding(ORPHANED, "mount", owner, str(point), repairs[key]))
        return found

    async def _monitors(self, node: "NodeState", known: Known) -> list[Finding]:
        return [Finding(ORPHANED, "process", ident, f"conmon pid {pid}", self._runtime_repair(known, ident))
                for pid, ident in node.monitors if not known.runtime_id(ident)]

    async def _runtime_state(self, node: "NodeState", known: Known) -> list[Finding]:
        return [Finding(ORPHANED, "runtime container", ident, f"{handler}: {ident} ({status})",
                        self._runtime_repair(known, ident, handler))
                for handler, ident, status in node.runtime_containers if not known.runtime_id(ident)]

    def _runtime_repair(self, known: Known, ident: str, handler: str | None = None) -> RepairFn:
        handler = handler or self.d.config.runtime.default_runtime
        key = ("runtime", ident)
        if key not in self._repairs:
            match = _INFRA_ID.match(ident)
            if match:
                owner = known.infra_owner(ident) or match.group(1)
                self._repairs[key] = self._undo(owner, "pod-infra", ctr_id=ident, handler=handler)
            else:
                self._repairs[key] = self._undo(ident, "ctr-runtime", handler=handler)
        return self._repairs[key]

    async def _cgroups(self, node: "NodeState", known: Known) -> list[Finding]:
        found = []
        for relpath in node.cgroups:
            ident = _CGROUP_NAME.match(relpath.rsplit("/", 1)[-1]).group(1)  # type: ignore[union-attr]
            if not known.runtime_id(ident):
                found.append(Finding(ORPHANED, "cgroup", ident, relpath, _in_thread(cgroups.remove, relpath)))
        return found

    async def _cni(self, node: "NodeState", known: Known) -> list[Finding]:
        found = []
        network = self.d.network
        for pod_id in node.cni_cache:
            if pod_id not in known.pods:
                found.append(Finding(ORPHANED, "CNI cache entry", pod_id, str(network.cache_dir / f"{pod_id}.json"),
                                     self._network_repair(pod_id, node)))
        for what, held in (("IP reservation", node.ip_reservations), ("host-port chain", node.port_chains)):
            for pod_id, items in held.items():
                if pod_id in known.pods or not _ID.match(pod_id):
                    continue
                found += [Finding(ORPHANED, what, pod_id, item, self._network_repair(pod_id, node)) for item in items]
        return found

    def _network_repair(self, pod_id: str, node: "NodeState") -> RepairFn:
        """A DEL with the pod's cached attach when there is one (the pod-network undo), else with the current
        network (the plugins release addresses and chains by container id)."""
        key = ("network", pod_id)
        if key not in self._repairs:
            if pod_id in node.cni_cache:
                netns = str(namespaces_dir(self.layout.pods / pod_id) / "net")
                self._repairs[key] = self._undo(pod_id, "pod-network", netns=netns)
            else:
                self._repairs[key] = lambda: self.d.network.release_unknown(pod_id)
        return self._repairs[key]

    async def _directories(self, node: "NodeState", known: Known) -> list[Finding]:
        found = []
        for ident, paths in node.container_dirs.items():
            if ident not in known.containers:
                repair = self._undo(ident, "ctr-dirs", paths=[str(p) for p in paths])
                found += [Finding(ORPHANED, "directory", ident, str(p), repair) for p in paths]
        for ident in node.pod_dirs:
            if ident not in known.pods:
                path = self.layout.pods / ident
                found.append(Finding(ORPHANED, "directory", ident, str(path), self._undo(ident, "pod-dir", path=str(path))))
        for path in node.runtime_files:
            if path.parent == self.layout.attach:
                if not known.monitor(path.name):
                    found.append(Finding(ORPHANED, "file", _attach_owner(path), str(path), _in_thread(_remove, path)))
            elif not known.runtime_id(path.name):
                found.append(Finding(ORPHANED, "file", path.name, str(path), _in_thread(_remove, path)))
        return found

    async def _layers(self) -> list[Finding]:
        """Layer directories against the layers' rows, under the layer lock (layerlock.py): a layer being pulled
        has its directory before its row."""
        with self._layer_lock.auditing() as alone:
            if not alone:
                self.notes.append("layer directories were not compared with the records: a pull or an image "
                                  "removal is changing layers now (run the audit again when it is done)")
                return []
            recorded = await self._recorded_layers()
            present, unpacked = await asyncio.to_thread(_layer_dirs, self.layout.layers)
        layers = self.layout.layers
        found = [Finding(ORPHANED, "layer directory", name, str(layers / name), self._remove_layer_dir(name))
                 for name in sorted(present - set(recorded))]
        for name, chain_id in sorted(recorded.items()):
            if name not in unpacked:
                found.append(Finding(MISSING, "layer directory", chain_id, str(layers / name / "diff")))
        return found

    async def _recorded_layers(self) -> dict[str, str]:
        """Directory name -> chain id of every recorded layer."""
        rows = await self.db.run(lambda conn: [r[0] for r in conn.execute("SELECT chain_id FROM layers")])
        return {row.split(":", 1)[-1]: row for row in rows}

    def _remove_layer_dir(self, name: str) -> RepairFn:
        """Removes the directory if, under the layer lock, it is still nobody's: a pull may have made it since.
        Under the lock it is only moved out of layers/ (into the downloads directory, emptied at start); deleting
        a big layer would hold every pull up for seconds."""
        async def repair() -> None:
            with self._layer_lock.auditing() as alone:
                if not alone:
                    raise RuntimeError("a pull or an image removal is changing layers now: left for the next audit")
                if name in await self._recorded_layers():
                    return
                self.layout.downloads.mkdir(exist_ok=True)
                moved = self.layout.downloads / f"orphaned-layer-{name}-{secrets.token_hex(4)}"
                # On the loop: one rename, and a cancelled thread could still be renaming once the lock is gone.
                os.rename(self.layout.layers / name, moved)
            await asyncio.to_thread(_remove, moved)

        return repair

    # ---- missing ----------------------------------------------------------------------------------------------

    async def _missing(self, node: "NodeState", latest: dict[tuple[str, str], Effect]) -> list[Finding]:
        found = []
        mounted = {m.mount_point for m in node.mounts}
        for pod in await self.d.pods.list():
            if pod.state != STATE_READY:
                continue
            for kind in pod.pinned_kinds:
                path = pod.ns_dir / kind
                if str(path) not in mounted:
                    found.append(Finding(MISSING, "pinned namespace", pod.id, str(path)))
            if not pod.host_ipc and (pod.id, "pod-shm") in latest and str(pod.shm_path) not in mounted:
                found.append(Finding(MISSING, "mount", pod.id, str(pod.shm_path)))
        monitored = {ident for _, ident in node.monitors}
        for container in await self.d.containers.list():
            recorded = latest.get((container.id, "ctr-rootfs"))
            if container.state in (STATE_CREATED, STATE_RUNNING) and recorded is not None:
                rootfs = recorded.data["path"]
                if rootfs not in mounted:
                    found.append(Finding(MISSING, "mount", container.id, rootfs))
            if container.state == STATE_RUNNING and container.id not in monitored:
                found.append(Finding(MISSING, "process", container.id, f"conmon of container (pid {container.pid})"))
        return found

    def _undo(self, owner: str, kind: str, **data: object) -> RepairFn:
        return lambda: self.journal.undo_unrecorded(owner, kind, **data)


@dataclass
class NodeState:
    """What the node holds under one daemon's roots, read in one pass (blocking: run it in a thread)."""

    mounts: list[mnt.MountInfo]
    monitors: list[tuple[int, str]]  # conmon pid, container id
    runtime_containers: list[tuple[str, str, str]]  # handler, id, status
    cgroups: list[str]  # relative cgroup paths named cripy-<id>
    cni_cache: list[str]
    ip_reservations: dict[str, list[str]]
    port_chains: dict[str, list[str]]
    container_dirs: dict[str, list[Path]]
    pod_dirs: list[str]
    runtime_files: list[Path]  # exit files and attach links

    @classmethod
    def read(cls, layout: Layout, daemon: "Daemon", cgroup_parents: set[str]) -> "NodeState":
        bases = (layout.pods, *layout.container_bases)
        mounts = [m for m in mnt.read_mountinfo() if any(_child_of(base, Path(m.mount_point)) for base in bases)]
        container_dirs: dict[str, list[Path]] = {}
        for base in layout.container_bases:
            for name in _listdir(base):
                container_dirs.setdefault(name, []).append(base / name)
        return cls(
            mounts=mounts,
            monitors=_monitors(layout.exits),
            runtime_containers=_runtime_containers(daemon),
            cgroups=_cripy_cgroups(cgroup_parents),
            cni_cache=daemon.network.cached_pod_ids(),
            ip_reservations=daemon.network.ip_reservations(),
            port_chains=daemon.network.port_chains(),
            container_dirs=container_dirs,
            pod_dirs=_listdir(layout.pods),
            runtime_files=[base / name for base in (layout.exits, layout.attach) for name in _listdir(base)],
        )


def _union(a: Known, b: Known) -> Known:
    return Known(a.pods | b.pods, a.containers | b.containers)


def _child_of(base: Path, path: Path) -> str | None:
    """The name of the entry of `base` that `path` is in (or is), None when it is not below base."""
    try:
        relative = path.relative_to(base)
    except ValueError:
        return None
    return relative.parts[0] if relative.parts else None


def _attach_owner(link: Path) -> str:
    """The container an attach link of conmon's belongs to: a container's bundle directory, which the link points
    at, has its whole id where the link has a shortened one (a pod's infra link keeps its whole id)."""
    try:
        target = Path(os.readlink(link)).name
    except OSError:
        return link.name
    return target if target.startswith(link.name) else link.name


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _monitors(exits_dir: Path) -> list[tuple[int, str]]:
    """conmon processes of this daemon: their --exit-dir is its exits directory; the id is --cid's."""
    found = []
    marker = str(exits_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = monitor_argv(int(entry.name))
        if argv is None or marker not in argv:
            continue
        if b"--cid" in argv and argv.index(b"--cid") + 1 < len(argv):
            found.append((int(entry.name), argv[argv.index(b"--cid") + 1].decode(errors="replace")))
    return found


def _runtime_containers(daemon: "Daemon") -> list[tuple[str, str, str]]:
    """Every container the handlers' runtimes hold state for (`runc list` reads its state root)."""
    found = []
    for name, runtime in daemon.runtimes.items():
        try:
            proc = subprocess.run([*runtime.runc_command(), "list", "--format", "json"], capture_output=True,
                                  text=True, timeout=30)
            entries = json.loads(proc.stdout or "null") or []
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
            continue
        found += [(name, entry.get("id", ""), entry.get("status", "?")) for entry in entries if isinstance(entry, dict)]
    return found


def _cripy_cgroups(parents: set[str]) -> list[str]:
    """cgroups named cripy-<id> directly under the default cgroup parent and every pod's."""
    found: set[str] = set()
    for parent in parents:
        clean = parent.strip("/")
        if not clean:
            continue
        try:
            paths = cgroups.cgroup_paths(clean)
        except Exception:
            continue
        for path in paths:
            found.update(f"{clean}/{name}" for name in _listdir(path) if _CGROUP_NAME.match(name))
    return sorted(found)


def _layer_dirs(layers: Path) -> tuple[set[str], set[str]]:
    """The layer directories, and those of them with their unpacked diff/: one trip to the disk."""
    present = set(os.listdir(layers)) if layers.is_dir() else set()
    return present, {name for name in present if (layers / name / "diff").is_dir()}


def _in_thread(fn: Callable[..., object], *args: object) -> RepairFn:
    async def run() -> None:
        await asyncio.to_thread(fn, *args)

    return run


def _remove(path: Path) -> None:
    """A file, a link or a whole tree (a layer's may hold directories without permissions); a failure is raised,
    so that the repair reports it."""
    remove_tree(path)


_ORDER = ("process", "runtime container", "CNI cache entry", "IP reservation", "host-port chain", "pinned namespace",
          "mount", "cgroup", "directory", "file", "layer directory")


def _repair_order(finding: Finding) -> int:
    return _ORDER.index(finding.kind) if finding.kind in _ORDER else len(_ORDER)


def summary(findings: list[Finding]) -> str:
    orphaned = sum(1 for f in findings if f.problem == ORPHANED)
    missing = len(findings) - orphaned
    if not findings:
        return "nothing orphaned or missing"
    return f"{orphaned} orphaned, {missing} missing"


def report(findings: list[Finding]) -> str:
    """Findings grouped by the object they belong to."""
    lines = []
    owner = None
    for finding in findings:
        if finding.owner != owner:
            owner = finding.owner
            lines.append(f"{owner or '(no owner)'}:")
        lines.append(f"  {finding.line()}")
    return "\n".join(lines)
