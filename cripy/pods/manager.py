"""Pod sandboxes: their life (run, stop, remove), their records, and undoing exactly what they did.

RunPodSandbox pins the pod's user (when it has its own), network, IPC and UTS namespaces, writes
hostname/resolv.conf/hosts, mounts a /dev/shm tmpfs, attaches the network through CNI and, when the pod shares one
PID namespace, starts the infra process that holds it. Each of these is journalled before it happens (storage/effects.py), so stop, remove and recovery
undo what was done and nothing else. Stop keeps the pod's record and files; remove takes the rest.

The dependency between pods and containers runs one way: the container manager uses this one (a container needs
its pod) and registers itself here as the pod's members (`PodMembers`), which stop and remove go through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Protocol

from cripy.containers.model import NamespaceMode, PodSandboxRequest, Resources
from cripy.errors import FailedPrecondition, InvalidArgument, NotFound
from cripy.linux import mount as mnt
from cripy.linux import namespaces
from cripy.network.cni import CNIManager, PortMapping
from cripy.oci import features
from cripy.oci import bundle as bundle_config
from cripy.oci.runtime import OCIRuntime
from cripy.pods import files
from cripy.pods.infra import infra_spec
from cripy.pods.model import STATE_CREATING, STATE_NOTREADY, STATE_READY, PodSandbox, reserved_name
from cripy.storage import records
from cripy.storage.db import Database
from cripy.storage.effects import Effect, EffectJournal
from cripy.storage.names import NameReservations
from cripy.timing import step

log = logging.getLogger(__name__)

SHM_SIZE = 64 * 1024 * 1024
# Undone at stop; the rest (the pod's directory) goes at removal.
STOP_EFFECTS = ("pod-infra", "pod-network", "pod-shm", "pod-namespaces")
_INSERTED = ("id", "name", "state", "created_at", "request", "runtime_handler", "ips", "cgroup_parent", "run_dir")
_UPDATED = ("state", "ips", "infra_id", "infra_pid")


class PodMembers(Protocol):
    """What stopping and removing a pod needs of the objects in it (its containers)."""

    async def stop_all_in_pod(self, pod_id: str) -> None: ...

    async def released_in_pod(self, pod_id: str) -> None: ...

    async def remove_all_in_pod(self, pod_id: str) -> None: ...


class PodManager:
    def __init__(
        self,
        db: Database,
        journal: EffectJournal,
        *,
        pods_dir: Path,
        network: CNIManager,
        runtimes: dict[str, OCIRuntime],
        default_runtime: str,
        default_cgroup_parent: str,
        pause_command: str,
    ) -> None:
        self._journal = journal
        self._pods_dir = pods_dir
        self._network = network
        self._runtimes = runtimes
        self._default_runtime = default_runtime
        self._default_cgroup_parent = default_cgroup_parent
        self._pause_command = pause_command
        self._names = NameReservations("pod sandbox")
        self._table = records.RecordTable(db, "pods", PodSandbox, _INSERTED, _UPDATED)
        self._locks: dict[str, asyncio.Lock] = {}
        self._members: PodMembers | None = None
        journal.register("pod-dir", self._undo_dir)
        journal.register("pod-namespaces", self._undo_namespaces)
        journal.register("pod-shm", self._undo_shm)
        journal.register("pod-network", self._undo_network)
        journal.register("pod-infra", self._undo_infra)

    # ---- queries --------------------------------------------------------------------------------------

    async def get(self, pod_id: str) -> PodSandbox:
        pod = await self.find(pod_id)
        if pod is None:
            raise NotFound(f"pod sandbox {pod_id!r} not found")
        return pod

    async def find(self, pod_id: str) -> PodSandbox | None:
        """A pod by full id or unique id prefix."""
        return self.lookup(pod_id)

    def lookup(self, pod_id: str) -> PodSandbox | None:
        """`find` for a caller that answers without waiting: the records are in memory."""
        if not pod_id:
            raise InvalidArgument("pod sandbox id is empty")
        return self._table.find(pod_id)

    @property
    def version(self) -> int:
        """Changes whenever any record changes."""
        return self._table.version

    async def list(self) -> list[PodSandbox]:
        return self._table.all()

    def count_by_state(self) -> dict[str, int]:
        """How many pods are in each state (synchronous: the metrics read it from their own thread)."""
        return self._table.count_by_state((STATE_CREATING, STATE_READY, STATE_NOTREADY))

    def runtime_for(self, pod: PodSandbox) -> OCIRuntime:
        return self._runtimes[pod.runtime_handler]

    def lock(self, pod_id: str) -> asyncio.Lock:
        return self._locks.setdefault(pod_id, asyncio.Lock())

    def hold_members(self, members: PodMembers) -> None:
        """Called by the container manager: the pod's stop and removal stop and remove its containers."""
        self._members = members

    # ---- run --------------------------------------------------------------------------------------------

    async def run(self, request: PodSandboxRequest) -> str:
        if not request.name or not request.namespace or not request.uid:
            raise InvalidArgument("pod sandbox metadata needs a name, a namespace and a uid")
        handler = request.runtime_handler or self._default_runtime
        if handler not in self._runtimes:
            raise NotFound(f"runtime handler {handler!r} is not configured (known: {', '.join(sorted(self._runtimes))})")
        runtime = self._runtimes[handler]
        features.require(runtime.features, handler, features.RUNNING_CONTAINERS,
                         f"pod sandbox {request.namespace}/{request.name}")
        if runtime.sandboxed and request.security.namespace_options.pid is NamespaceMode.POD:
            raise FailedPrecondition(
                f"pod sandbox {request.namespace}/{request.name}: runtime handler {handler!r} (gVisor) runs each "
                "container in a sandbox of its own, which cannot share one PID namespace (namespace_options.pid "
                "POD); use CONTAINER")
        if request.security.namespace_options.user is not None:
            _check_user_namespace_pod(request)
            features.require(self._runtimes[handler].features, handler, features.USER_NAMESPACES,
                             f"pod sandbox {request.namespace}/{request.name} (userns_options mode POD)")
        if not request.hostname:
            # As containerd and CRI-O do: a pod that names no hostname gets the node's (kubelet always sends one;
            # critest and hand-written configs often do not, and the pod's name is rarely a valid host name).
            request = dataclasses.replace(request, hostname=os.uname().nodename)
        name = reserved_name(request)
        return await self._names.create_once(name, self._name_holder, lambda: self._create(request, name, handler))

    async def _name_holder(self, name: str) -> str | None:
        return self._table.holder_of(name)

    async def _create(self, request: PodSandboxRequest, name: str, handler: str) -> str:
        pod = PodSandbox(
            id=secrets.token_hex(32),
            name=name,
            state=STATE_CREATING,
            created_at=time.time_ns(),
            request=request,
            runtime_handler=handler,
            cgroup_parent=request.cgroup_parent or self._default_cgroup_parent,
            run_dir=self._pods_dir / "",
        )
        pod.run_dir = self._pods_dir / pod.id
        await self._table.insert(pod)
        started = time.monotonic()
        try:
            await self._set_up(pod)
        except BaseException as e:
            log.warning("pod %s (%s): set-up failed, undoing it: %s", pod.id, name, e)
            await asyncio.shield(self._discard(pod))
            raise
        pod.state = STATE_READY
        await self._save(pod)
        log.info("pod %s (%s) ready in %.3fs, ips %s", pod.id, name, time.monotonic() - started, pod.ips or "-")
        return pod.id

    async def _set_up(self, pod: PodSandbox) -> None:
        with step("pod.files"):
            await self._journal.record(pod.id, "pod-dir", path=str(pod.run_dir))
            await asyncio.to_thread(pod.run_dir.mkdir, parents=True)
            await self._write_files(pod)
        kinds = pod.pinned_kinds
        if kinds:
            with step("pod.namespaces"):
                await self._journal.record(pod.id, "pod-namespaces", path=str(pod.ns_dir))
                userns = pod.userns
                await asyncio.to_thread(
                    namespaces.pin_namespaces,
                    kinds,
                    pod.ns_dir,
                    pod.hostname if "uts" in kinds else None,
                    pod.request.security.sysctls,
                    namespaces.UserMaps(tuple(userns.uids), tuple(userns.gids)) if userns is not None else None,
                )
        elif pod.request.security.sysctls:
            raise InvalidArgument("sysctls need the pod's own network or IPC namespace (the pod uses the host's)")
        if not pod.host_ipc:
            with step("pod.shm"):
                await self._journal.record(pod.id, "pod-shm", path=str(pod.shm_path))
                await asyncio.to_thread(_mount_shm, pod.shm_path)
        network = asyncio.create_task(self._attach_network(pod))
        try:
            if pod.shares_pid:
                await self._start_infra(pod)
        finally:
            await network  # CNI ADD runs while the infra process starts; both must finish before Ready
        await asyncio.to_thread(pod.hosts_path.write_text, files.hosts(pod.hostname, pod.ips))

    async def _write_files(self, pod: PodSandbox) -> None:
        def write() -> None:
            host_resolv = files.HOST_RESOLV_CONF.read_text() if files.HOST_RESOLV_CONF.exists() else ""
            pod.resolv_conf_path.write_text(files.resolv_conf(pod.request.dns, host_resolv))
            hostname = os.uname().nodename if pod.host_network else pod.hostname
            pod.hostname_path.write_text(files.hostname_file(hostname))
            pod.hosts_path.write_text(files.hosts(hostname, []))

        await asyncio.to_thread(write)

    async def _attach_network(self, pod: PodSandbox) -> None:
        if pod.host_network or pod.netns is None:
            return
        mappings = [
            PortMapping(m.host_port, m.container_port, m.protocol, m.host_ip)
            for m in pod.request.port_mappings
            if m.host_port > 0
        ]
        with step("cni.add"):
            await self._journal.record(pod.id, "pod-network", netns=str(pod.netns))
            result = await self._network.attach(
                pod.id,
                pod.netns,
                pod_name=pod.request.name,
                pod_namespace=pod.request.namespace,
                pod_uid=pod.request.uid,
                port_mappings=mappings,
            )
        pod.ips = result.ips

    async def _start_infra(self, pod: PodSandbox) -> None:
        with step("pod.infra"):
            await self._run_infra(pod)

    async def _run_infra(self, pod: PodSandbox) -> None:
        runtime = self.runtime_for(pod)
        infra_id = f"{pod.id[:32]}-infra"
        bundle = pod.run_dir / "infra"
        await self._journal.record(pod.id, "pod-infra", ctr_id=infra_id, handler=pod.runtime_handler)
        spec = infra_spec(pod, infra_id, self._pause_command)
        await asyncio.to_thread(_write_bundle, bundle, spec, pod.host_ids())
        created = await runtime.create(
            infra_id, bundle, log_path=bundle / "infra.log", persist_dir=bundle / "persist",
            name=f"{pod.name}-infra",
        )
        await runtime.start(infra_id)
        pod.infra_id = infra_id
        pod.infra_pid = created.pid
        await self._save(pod)

    # ---- resources --------------------------------------------------------------------------------------

    async def update_resources(self, pod_id: str, *, overhead: Resources | None, resources: Resources | None) -> None:
        """UpdatePodSandboxResources: record the pod-level overhead and resources the kubelet resized the pod to.

        The kubelet calls this after it has written them to the pod's cgroup, which is its own (the pod's cgroup
        parent); a pod without one shares cripy's cgroup parent with every other pod. cripy owns no pod-level
        cgroup either way, so there is nothing to write: the values are validated (by the caller) and recorded,
        and PodSandboxStatus's verbose info shows them beside the limits the pod's cgroup holds. A field the
        request leaves unset keeps its recorded value."""
        pod = await self.get(pod_id)
        async with self.lock(pod.id):
            if pod.state != STATE_READY:
                raise FailedPrecondition(f"pod sandbox {pod.id} is {pod.state}, not ready: its resources cannot be "
                                         "updated")
            recorded = pod.request
            pod.request = dataclasses.replace(
                recorded,
                overhead=overhead if overhead is not None else recorded.overhead,
                resources=resources if resources is not None else recorded.resources,
            )
            try:
                await self._table.update(pod, ("request",))
            except BaseException:
                pod.request = recorded  # memory stays what the database holds
                raise
        log.info("pod %s (%s): pod-level resources recorded (overhead %s, resources %s)", pod.id, pod.name,
                 pod.request.overhead, pod.request.resources)

    # ---- stop and remove ----------------------------------------------------------------------------------

    async def stop(self, pod_id: str) -> None:
        """StopPodSandbox: idempotent; a pod that does not exist is not an error."""
        pod = await self.find(pod_id)
        if pod is None:
            return
        async with self.lock(pod.id):
            if self._members is not None:
                await self._members.stop_all_in_pod(pod.id)
            await self._journal.undo(pod.id, STOP_EFFECTS)  # beside the containers' own clean-ups
            if self._members is not None:
                await self._members.released_in_pod(pod.id)
            if pod.state != STATE_NOTREADY:
                pod.state = STATE_NOTREADY
                await self._save(pod)
                log.info("pod %s (%s) stopped", pod.id, pod.name)

    async def remove(self, pod_id: str) -> None:
        """RemovePodSandbox: stops what still runs, removes every container and whatever is left."""
        pod = await self.find(pod_id)
        if pod is None:
            return
        await self.stop(pod.id)
        async with self.lock(pod.id):
            if self._members is not None:
                await self._members.remove_all_in_pod(pod.id)
            await self._journal.undo(pod.id)
            await self._table.delete(pod.id)
        self._locks.pop(pod.id, None)
        log.info("pod %s (%s) removed", pod.id, pod.name)

    async def _discard(self, pod: PodSandbox) -> None:
        """Undo a pod whose set-up failed, keeping nothing: not even its record or name."""
        await self._journal.undo(pod.id, keep_going=True)
        if not await self._journal.effects_of(pod.id):
            await self._table.delete(pod.id)
        else:
            # Something would not undo; keep the record (not ready) so that remove and recovery retry it.
            pod.state = STATE_NOTREADY
            await self._save(pod)

    async def _save(self, pod: PodSandbox) -> None:
        await self._table.update(pod)

    # ---- recovery -----------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the records into memory: first thing at start-up, before any recovery step looks at them."""
        await self._table.load()

    async def recover(self) -> None:
        """After a restart: finish undoing pods whose creation never completed; check the rest."""
        for pod in await self.list():
            if pod.state == STATE_CREATING:
                log.warning("pod %s (%s) was being created when cripy stopped: undoing it", pod.id, pod.name)
                await self._discard(pod)
            elif pod.state == STATE_READY and pod.pinned_kinds and not await asyncio.to_thread(pod.ns_dir.exists):
                # The run root is a tmpfs: its loss means the node rebooted and the pod's namespaces are gone.
                log.warning("pod %s (%s) lost its namespaces (node restarted?): marking it not ready", pod.id, pod.name)
                await self.stop(pod.id)

    # ---- undo functions -----------------------------------------------------------------------------------

    async def _undo_dir(self, effect: Effect) -> None:
        await asyncio.to_thread(shutil.rmtree, effect.data["path"], True)

    async def _undo_namespaces(self, effect: Effect) -> None:
        await asyncio.to_thread(namespaces.unpin_namespaces, Path(effect.data["path"]))

    async def _undo_shm(self, effect: Effect) -> None:
        await asyncio.to_thread(_unmount_if_mounted, Path(effect.data["path"]))

    async def _undo_network(self, effect: Effect) -> None:
        with step("cni.del"):
            await self._network.detach(effect.owner, Path(effect.data["netns"]))

    async def _undo_infra(self, effect: Effect) -> None:
        runtime = self._runtimes.get(effect.data["handler"])
        if runtime is None:
            raise FailedPrecondition(f"pod {effect.owner}: runtime handler {effect.data['handler']!r} is gone")
        ctr_id = effect.data["ctr_id"]
        await runtime.kill(ctr_id, 9, all_processes=True)
        await runtime.delete(ctr_id, force=True)
        # Its monitor reaps it and records the exit, which nobody reads: let it finish, then drop the record.
        await runtime.await_monitor_then_forget_exit(ctr_id, self._pods_dir / effect.owner / "infra")


def _mount_shm(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mnt.mount_tmpfs(path, SHM_SIZE, 0o1777, mnt.MS_NOSUID | mnt.MS_NODEV | mnt.MS_NOEXEC)


def _unmount_if_mounted(path: Path) -> None:
    if mnt.is_mountpoint(path):  # a path that is not there is no mount point
        mnt.umount(path, detach=True)


def _write_bundle(bundle: Path, spec: dict, root_ids: tuple[int, int]) -> None:
    """The infra bundle; its (empty) rootfs belongs to the pod's root, which creates the mount points in it."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    os.chown(rootfs, *root_ids)
    bundle_config.write_config(bundle, spec)


def _check_user_namespace_pod(request: PodSandboxRequest) -> None:
    """What a pod in its own user namespace cannot also have (the kubelet forbids it too): the node's network, PID
    or IPC namespace, which its root would not own, or privilege."""
    options = request.security.namespace_options
    where = f"pod sandbox {request.namespace}/{request.name}"
    for kind in ("network", "pid", "ipc"):
        if getattr(options, kind) is NamespaceMode.NODE:
            raise InvalidArgument(f"{where}: a pod in its own user namespace cannot use the node's {kind} namespace")
    if request.security.privileged:
        raise InvalidArgument(f"{where}: a pod in its own user namespace cannot be privileged")
