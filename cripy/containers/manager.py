"""Containers: create (rootfs + OCI spec + conmon/runc), start, stop, remove, exits, exec, updates, stats.

The state machine is creating -> created -> running -> exited. Exits arrive from conmon's exit files through the
exit watcher (no polling). Every side effect (directories, id-mapped mounts, the rootfs mount, image volume
mounts, the runtime container) is journalled before it is made; a failed create undoes them all, and remove undoes
what is left. A container holds its image and the images it mounts as volumes: it finds them and is recorded in one
step, with image removals held off, so that no RemoveImage can take an image from under a container being created.
What a container is made of on the node (directories, rootfs, image volumes, spec, bundle) is setup.py's.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Awaitable, Callable

from cripy import blocking
from cripy.containers import context, nodefit
from cripy.containers import rootfs as fs
from cripy.containers.container import (
    REASON_COMPLETED,
    REASON_ERROR,
    REASON_OOM,
    REASON_START_ERROR,
    STATE_CREATED,
    STATE_CREATING,
    STATE_EXITED,
    STATE_RUNNING,
    Container,
    reserved_name,
)
from cripy.containers.events import ContainerEvent, EventBus, EventType
from cripy.containers.hostfacts import HostFacts, read_host_facts
from cripy.containers.model import ContainerRequest, NamespaceMode, Resources
from cripy.containers.setup import ContainerPaths, ContainerSetUp
from cripy.containers.spec import SpecSettings, spec_resources
from cripy.containers.usage import ContainerUsage, WritableLayerCache, read_usage
from cripy.errors import CripyError, FailedPrecondition, InvalidArgument, NotFound
from cripy.images.store import Image, ImageStore
from cripy.oci import conmon, features
from cripy.oci.exits import read_oom_file
from cripy.oci.features import HandlerFeatures
from cripy.oci.runtime import ExecResult, OCIRuntime
from cripy.pods.manager import PodManager
from cripy.pods.model import STATE_READY, PodSandbox
from cripy.storage import records
from cripy.storage.db import Database
from cripy.storage.effects import Effect, EffectJournal
from cripy.storage.layout import Layout
from cripy.storage.names import NameReservations
from cripy.timing import step

log = logging.getLogger(__name__)

KILL_WAIT_SECONDS = 10.0
# How long StopContainer waits for a stopped container's clean-up before it answers anyway (the clean-up goes on).
RELEASE_WAIT_SECONDS = 10.0
_INSERTED = ("id", "pod_id", "name", "state", "created_at", "image_id", "image_name", "request", "log_path")
_UPDATED = ("state", "started_at", "finished_at", "exit_code", "reason", "message", "pid", "conmon_pid",
            "stop_signal", "cgroup_path", "process_user")


EXIT_CLASSES = ("zero", "error", "signal")


@dataclass
class ExitCounts:
    """Container exits seen by this daemon, by class of exit code, and the OOM kills among them: plain counts the
    metrics read when scraped (observe/metrics.py)."""

    by_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXIT_CLASSES, 0))
    oom_kills: int = 0

    def count(self, code: int, oom: bool) -> None:
        # 128+N is how conmon reports death by signal N (137: SIGKILL, also the OOM killer's).
        self.by_class["zero" if code == 0 else "signal" if code > 128 else "error"] += 1
        self.oom_kills += oom


class ContainerManager:
    def __init__(
        self,
        db: Database,
        journal: EffectJournal,
        *,
        pods: PodManager,
        images: ImageStore,
        runtimes: dict[str, OCIRuntime],
        layout: Layout,
        settings: SpecSettings,
        log_size_max: int = 0,
    ) -> None:
        self._journal = journal
        self._log_size_max = log_size_max
        self._pods = pods
        self._images = images
        self._runtimes = runtimes
        self.paths = ContainerPaths(layout)
        self._setup = ContainerSetUp(journal, images, self.paths, settings)
        self._dev_root = settings.host_dev_root
        self._names = NameReservations("container")
        self._table = records.RecordTable(db, "containers", Container, _INSERTED, _UPDATED)
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._cleanups: dict[str, asyncio.Task[None]] = {}
        self._writable_layers = WritableLayerCache()
        self.events = EventBus()
        self.exits = ExitCounts()
        journal.register("ctr-runtime", self._undo_runtime)
        images.image_in_use = self._image_in_use
        images.image_mounted_by = self._image_mounted_by
        pods.hold_members(self)

    # ---- queries --------------------------------------------------------------------------------------

    async def get(self, ctr_id: str) -> Container:
        container = await self.find(ctr_id)
        if container is None:
            raise NotFound(f"container {ctr_id!r} not found")
        return container

    async def find(self, ctr_id: str) -> Container | None:
        return self.lookup(ctr_id)

    def lookup(self, ctr_id: str) -> Container | None:
        """`find` for a caller that answers without waiting: the records are in memory."""
        if not ctr_id:
            raise InvalidArgument("container id is empty")
        return self._table.find(ctr_id)

    @property
    def version(self) -> int:
        """Changes whenever any record changes."""
        return self._table.version

    async def list(self, pod_id: str | None = None) -> list[Container]:
        return [c for c in self._table.all() if pod_id is None or c.pod_id == pod_id]

    def count_by_state(self) -> dict[str, int]:
        """How many containers are in each state (synchronous: the metrics read it from their own thread)."""
        return self._table.count_by_state((STATE_CREATING, STATE_CREATED, STATE_RUNNING, STATE_EXITED))

    def lock(self, ctr_id: str) -> asyncio.Lock:
        return self._locks.setdefault(ctr_id, asyncio.Lock())

    def bundle_dir(self, ctr_id: str) -> Path:
        return self.paths.bundle(ctr_id)

    async def runtime_of(self, container: Container) -> OCIRuntime:
        """The OCI runtime of the container's pod (containers are removed before their pod, so it exists)."""
        return self._pods.runtime_for(await self._pods.get(container.pod_id))

    # ---- create -------------------------------------------------------------------------------------------

    async def create(self, pod_id: str, request: ContainerRequest) -> str:
        if not request.name:
            raise InvalidArgument("container metadata needs a name")
        pod = await self._pods.get(pod_id)
        if pod.state != STATE_READY:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready (state {pod.state}): cannot create a container in it")
        removals_seen = self._images.removals
        image = await self._images.find(request.image)
        if image is None:
            raise NotFound(f"image {request.image!r} not found: pull it first")
        _require_handler_features(request, pod.runtime_handler, self._pods.runtime_for(pod).features)
        # Reads what the request names on the node (a network mount may hang: the bounded pool with a deadline),
        # and what the node offers (sysfs, the root cpuset), in one trip off the event loop.
        host = await blocking.HOST_PATHS.run(f"container {request.name!r}: reading host paths, devices and the "
                                             "seccomp profile", _read_node_and_host, request, self._dev_root)
        name = reserved_name(request, pod.request.name, pod.request.namespace, pod.request.uid)
        return await self._names.create_once(
            name, self._name_holder, lambda: self._create(pod, image, request, name, removals_seen, host)
        )

    async def _name_holder(self, name: str) -> str | None:
        return self._table.holder_of(name)

    async def _create(self, pod: PodSandbox, image: Image, request: ContainerRequest, name: str,
                      removals_seen: int, host: HostFacts) -> str:
        started = time.monotonic()
        container = Container(
            id=secrets.token_hex(32),
            pod_id=pod.id,
            name=name,
            state=STATE_CREATING,
            created_at=time.time_ns(),
            image_id=image.id,
            image_name=request.image,
            request=request,
            log_path=context.log_path(pod, request),
        )
        async with self._images.removals_held(), self._pods.lock(pod.id):
            current = await self._pods.get(pod.id)
            if current.state != STATE_READY:
                raise FailedPrecondition(f"pod sandbox {pod.id} stopped while the container was being created")
            await self._find_held_images(container, removals_seen)
            target_pid_ns = await self._target_pid_namespace(request, pod)
            # The record (from here on, the container holds its images) and what set_up is about to make, in one
            # commit: a crash after it leaves a container that recovery undoes, before it nothing.
            await self._journal.record_all(container.id, self._setup.effects(container, pod),
                                           along=lambda conn: self._table.insert_row(conn, container))
            self._table.inserted(container)
        try:
            await self._setup.set_up(container, pod, image, target_pid_ns, host)
        except BaseException as e:
            log.warning("container %s (%s): create failed, undoing it: %s", container.id, name, e)
            await asyncio.shield(self._discard(container))
            raise
        container.state = STATE_CREATED
        # What set_up filled in (the request was written whole by the insert: not encoded again).
        await self._table.update(container, ("state", "process_user", "stop_signal", "cgroup_path"))
        self.events.publish(ContainerEvent(container.id, pod.id, EventType.CREATED))
        log.info("container %s (%s) created in %.3fs", container.id, name, time.monotonic() - started)
        return container.id

    async def _find_held_images(self, container: Container, removals_seen: int) -> None:
        """The images the container will hold, looked up with removals held off: its own (found before; looked
        up again if any image was removed since) and those of its image volumes, whose ids it records."""
        if self._images.removals != removals_seen and await self._images.get(container.image_id) is None:
            raise NotFound(f"image {container.image_name!r} ({container.image_id}) was removed while container"
                           f" {container.name} was being created")
        for i, mount in enumerate(container.request.mounts):
            if not mount.image:
                continue
            image = await self._images.find(mount.image)
            if image is None:
                raise NotFound(f"container {container.request.name!r}: mounts[{i}]: image {mount.image!r} of the image"
                               f" volume at {mount.container_path} is not present: pull it first")
            mount.image_id = image.id

    async def _target_pid_namespace(self, request: ContainerRequest, pod: PodSandbox) -> str | None:
        options = request.security.namespace_options
        if options.pid is not NamespaceMode.TARGET:
            return None
        target = await self.get(options.target_id)
        if target.pod_id != pod.id or not target.running:
            raise FailedPrecondition(f"PID namespace target {options.target_id} is not a running container of pod {pod.id}")
        return f"/proc/{target.pid}/ns/pid"

    async def _discard(self, container: Container) -> None:
        await self._journal.undo(container.id, keep_going=True)
        if not await self._journal.effects_of(container.id):
            await self._table.delete(container.id)
        else:
            container.state = STATE_EXITED
            container.reason, container.message = REASON_ERROR, "create failed and could not be fully undone"
            await self._save(container)

    # ---- start, stop, exits -------------------------------------------------------------------------------

    async def start(self, ctr_id: str) -> None:
        """StartContainer: conmon and `runc create`, then `runc start`. As in containerd, the process only comes
        into being here: a container that is created and never started holds no monitor and no process."""
        container = await self.get(ctr_id)
        async with self.lock(container.id):
            container = await self.get(container.id)
            if container.state != STATE_CREATED:
                raise FailedPrecondition(f"container {container.id} is {container.state}, not created: cannot start it")
            pod = await self._pods.get(container.pod_id)
            if pod.state != STATE_READY:
                raise FailedPrecondition(f"pod sandbox {pod.id} is not ready: cannot start container {container.id}")
            self._exited.setdefault(container.id, asyncio.Event())
            try:
                await self._run(container, pod)
            except CripyError as e:
                await self._journal.undo(container.id, ("ctr-runtime",), keep_going=True)
                container.state, container.exit_code, container.finished_at = STATE_EXITED, 128, time.time_ns()
                container.reason, container.message = REASON_START_ERROR, str(e)
                await self._save(container)
                self._exited[container.id].set()
                raise
        self.events.publish(ContainerEvent(container.id, container.pod_id, EventType.STARTED))
        log.info("container %s (%s) started", container.id, container.name)

    async def _run(self, container: Container, pod: PodSandbox) -> None:
        runtime = self._pods.runtime_for(pod)
        request = container.request
        bundle = self.bundle_dir(container.id)
        with step("runtime.create"):
            await self._journal.record(container.id, "ctr-runtime", handler=pod.runtime_handler)
            created = await runtime.create(
                container.id,
                bundle,
                log_path=Path(container.log_path),
                persist_dir=bundle / "persist",
                terminal=request.tty,
                stdin=request.stdin,
                stdin_once=request.stdin_once,
                name=container.name,
                log_size_max=self._log_size_max or -1,
            )
        container.pid, container.conmon_pid = created.pid, created.conmon_pid
        # Taken before the start: a short-lived process may exit (and conmon stamp its exit) before runc returns.
        started_at = time.time_ns()
        with step("runtime.start"):
            await runtime.start(container.id)
        # The exit handler takes the container's lock too: no exit can have been recorded in between.
        container.state, container.started_at = STATE_RUNNING, started_at
        await self._table.update(container, ("state", "started_at", "pid", "conmon_pid"))

    async def stop(self, ctr_id: str, timeout: int, wait_for_release: bool = True) -> None:
        """StopContainer: the stop signal, then SIGKILL after `timeout` seconds. Idempotent, as the CRI says:
        stopping a stopped container, or one that does not exist (any more), succeeds. Returns once the exit's
        clean-up is done too, unless `wait_for_release` is False (a pod's stop, which waits for it later)."""
        container = await self.find(ctr_id)
        if container is None:
            log.debug("StopContainer of %r: no such container, nothing to stop", ctr_id)
            return
        if await self._end_process(container, timeout) and wait_for_release:
            await self.released([container.id])  # also an exit of its own, which may still be being cleaned up

    async def _end_process(self, container: Container, timeout: int) -> bool:
        """The stop signal, then SIGKILL after `timeout` seconds; whether the container's exit is recorded (False
        when its process never ran, or when no exit came after SIGKILL though runc no longer reports it running)."""
        if container.state == STATE_EXITED:
            return True
        if container.state in (STATE_CREATING, STATE_CREATED):
            return False  # nothing runs before StartContainer; the container stays created, as in containerd
        runtime = await self.runtime_of(container)
        exited = self._exited.setdefault(container.id, asyncio.Event())
        if timeout > 0:
            with step("runtime.kill"):
                await runtime.kill(container.id, context.signal_number(container.stop_signal))
            if await _exit_within(exited, timeout):
                return True
            log.info("container %s did not stop within %ds: killing it", container.id, timeout)
        with step("runtime.kill"):
            await runtime.kill(container.id, signal.SIGKILL, all_processes=True)
        if await _exit_within(exited, KILL_WAIT_SECONDS):
            return True
        state = await runtime.state(container.id)
        if state is not None and state.get("status") == "running":
            raise FailedPrecondition(f"container {container.id} is still running after SIGKILL")
        return False

    async def released(self, ctr_ids: builtins.list[str]) -> None:
        """Wait for the exits' clean-ups (`runc delete`, the rootfs unmounted), as containerd's StopContainer waits
        for its task's deletion: a stopped container then holds nothing of the runtime's, and a RemoveContainer
        that follows does not compete with that clean-up for the CPU and the event loop. At most
        RELEASE_WAIT_SECONDS: a clean-up that hangs goes on in the background."""
        with step("ctr.release"):
            if not await self.wait_for_clean_up(ctr_ids, timeout=RELEASE_WAIT_SECONDS):
                log.warning("container(s) %s stopped, but their clean-up (runc delete, unmounts) is still going after "
                            "%ds: the stop answers, the clean-up goes on", ", ".join(ctr_ids), RELEASE_WAIT_SECONDS)

    async def handle_exit(self, ctr_id: str, code: int, exit_time: datetime) -> None:
        """An exit file appeared: record how the container ended."""
        container = await self.find(ctr_id) if len(ctr_id) == 64 else None
        if container is None or container.id != ctr_id:
            return  # an infra process, or a container already removed
        async with self.lock(ctr_id):
            container = await self.get(ctr_id)
            if container.state == STATE_EXITED:
                self._exited.setdefault(ctr_id, asyncio.Event()).set()
                return
            if container.state in (STATE_CREATED, STATE_CREATING):
                # No process of it runs: the exit of a start that was taken back (recovery), nothing to record.
                log.debug("container %s: ignoring the exit file of a start that was taken back", ctr_id)
                return
            oom = await asyncio.to_thread(read_oom_file, self.bundle_dir(ctr_id) / "persist")
            container.state = STATE_EXITED
            container.exit_code = code
            # The exit file's mtime comes from the kernel's coarse clock: it can read a few ms before the start.
            container.finished_at = max(int(exit_time.timestamp() * 1e9), container.started_at)
            container.reason = REASON_OOM if oom else (REASON_COMPLETED if code == 0 else REASON_ERROR)
            self.exits.count(code, oom)  # before anyone can see the exit: a status read then finds it counted
            await self._save(container)
        self._exited.setdefault(ctr_id, asyncio.Event()).set()
        self.events.publish(ContainerEvent(ctr_id, container.pod_id, EventType.STOPPED))
        log.info("container %s (%s) exited with %d (%s)", ctr_id, container.name, code, container.reason)
        # A container never runs again (kubelet creates a new one): its runc state and mounts go now, in a task
        # (a StopContainer waits for it; an exit of the container's own has nobody waiting). Its directories
        # (upper layer, logs) stay until removal.
        self._clean_up_later(ctr_id, ("ctr-runtime", "ctr-idmap", "ctr-image-volumes", "ctr-rootfs"))

    async def remove(self, ctr_id: str) -> None:
        """RemoveContainer: idempotent; a running container is killed first."""
        container = await self.find(ctr_id)
        if container is None:
            return
        if container.state == STATE_RUNNING:
            await self.stop(container.id, 0)
        async with self.lock(container.id):
            exit_file = (await self.runtime_of(container)).exit_file_path(container.id)
            await self._table.delete(container.id)

        async def finish() -> None:
            await asyncio.to_thread(exit_file.unlink, True)
            for image_id in {container.image_id, *_volume_images(container)}:
                await self._images.release(image_id)

        # What the container left on the node is journalled: it is undone in the background (and by recovery,
        # should the daemon stop first), so that RemoveContainer answers as soon as the record is gone.
        self._clean_up_later(container.id, finish=finish)
        self._locks.pop(container.id, None)
        self._exited.pop(container.id, None)
        self._writable_layers.forget(container.id)
        self.events.publish(ContainerEvent(container.id, container.pod_id, EventType.DELETED))
        log.info("container %s (%s) removed", container.id, container.name)

    async def stop_all_in_pod(self, pod_id: str) -> None:
        """Stop the pod's running containers; their clean-ups go on while the pod's own stop runs (CNI DEL beside
        `runc delete`), and released_in_pod waits for them."""
        containers = [c for c in await self.list(pod_id) if c.state == STATE_RUNNING]
        await asyncio.gather(*(self.stop(c.id, 0, wait_for_release=False) for c in containers))

    async def released_in_pod(self, pod_id: str) -> None:
        await self.released([c.id for c in await self.list(pod_id)])

    async def remove_all_in_pod(self, pod_id: str) -> None:
        """Remove the pod's containers and wait until what they left is cleaned up: the pod's own clean-up
        comes next."""
        containers = await self.list(pod_id)
        for container in containers:
            await self.remove(container.id)
        await self.wait_for_clean_up([c.id for c in containers])

    def _clean_up_later(
        self, ctr_id: str, kinds: tuple[str, ...] | None = None, finish: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Undo the container's journalled effects (only `kinds`, when given), then run `finish`, in a task; one
        after the other per container."""
        previous = self._cleanups.get(ctr_id)

        async def clean_up() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await self._journal.undo(ctr_id, kinds, keep_going=True)
            if finish is not None:
                await finish()

        task = asyncio.get_running_loop().create_task(clean_up(), name=f"clean up container {ctr_id[:12]}")
        self._cleanups[ctr_id] = task
        task.add_done_callback(lambda done: self._cleanups.pop(ctr_id, None) if self._cleanups.get(ctr_id) is done else None)

    async def wait_for_clean_up(self, ctr_ids: builtins.list[str] | None = None, timeout: float | None = None) -> bool:
        """Wait for the clean-ups of these containers (all, when None); False when `timeout` passed first."""
        tasks = [task for key, task in self._cleanups.items() if ctr_ids is None or key in ctr_ids]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    # ---- exec, update, logs, stats ------------------------------------------------------------------------

    async def exec_sync(self, ctr_id: str, cmd: builtins.list[str], timeout: int) -> ExecResult:
        if not cmd:
            raise InvalidArgument("exec needs a command")
        container = await self._running(ctr_id, "exec in")
        runtime = await self.runtime_of(container)
        with step("runtime.exec"):
            return await runtime.exec_sync(container.id, cmd, timeout if timeout > 0 else None)

    async def update_resources(self, ctr_id: str, resources: Resources) -> None:
        container = await self.get(ctr_id)
        await asyncio.to_thread(nodefit.require_node_support, resources, f"container {container.id}")
        if container.state not in (STATE_CREATED, STATE_RUNNING):
            raise FailedPrecondition(f"container {container.id} is {container.state}: cannot update its resources")
        if container.state == STATE_CREATED:
            await asyncio.to_thread(fs.update_bundle_resources, self.bundle_dir(container.id), spec_resources(resources))
        else:
            await (await self.runtime_of(container)).update_resources(container.id, spec_resources(resources))
        container.request.resources = resources
        await self._table.update(container, ("request",))

    async def reopen_log(self, ctr_id: str) -> None:
        container = await self._running(ctr_id, "reopen the log of")
        await (await self.runtime_of(container)).reopen_log(container.id, Path(container.log_path))

    async def usage(self, containers: builtins.list[Container], *, full: bool = False) -> builtins.list[ContainerUsage]:
        """What the containers use: for the stats calls, or (full) for the metrics calls (containers/usage.py).
        Read in one worker-thread trip for all of them: a trip per container cost more than its reading."""
        def read_all() -> list[ContainerUsage]:
            return [read_usage(c.id, cgroup_path=c.cgroup_path, pid=c.pid, upper_dir=self.paths.upper(c.id),
                               layers=self._writable_layers, running=c.running, full=full) for c in containers]

        return await asyncio.to_thread(read_all) if containers else []

    async def _running(self, ctr_id: str, action: str) -> Container:
        container = await self.get(ctr_id)
        if container.state != STATE_RUNNING:
            raise FailedPrecondition(f"cannot {action} container {container.id}: it is {container.state}, not running")
        return container

    async def _save(self, container: Container) -> None:
        await self._table.update(container)

    async def _image_in_use(self, image_id: str) -> bool:
        return any(c.image_id == image_id or image_id in _volume_images(c) for c in self._table.all())

    async def _image_mounted_by(self, image_id: str) -> builtins.list[str]:
        return [c.id for c in self._table.all() if image_id in _volume_images(c)]

    # ---- recovery -----------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the records into memory: first thing at start-up, before any recovery step looks at them."""
        await self._table.load()

    async def recover(self) -> None:
        """After a restart: undo half-made containers; containers whose monitor died without an exit file
        (a node reboot, a killed conmon) are recorded as exited. Exit files are reported by the exit watcher."""
        for container in await self.list():
            if container.state == STATE_CREATING:
                log.warning("container %s was being created when cripy stopped: undoing it", container.id)
                await self._discard(container)
                continue
            if container.state == STATE_CREATED and await self._journal.find(container.id, "ctr-runtime"):
                await self._recover_interrupted_start(container)
            if container.state != STATE_RUNNING:
                continue  # a created container has no process (it gets one at StartContainer)
            exit_file = (await self.runtime_of(container)).exit_file_path(container.id)
            if await asyncio.to_thread(lambda: exit_file.exists() or conmon.is_monitor_of(container.conmon_pid, container.id)):
                continue
            container.state = STATE_EXITED
            container.exit_code = 255
            container.finished_at = time.time_ns()
            container.reason = REASON_ERROR
            container.message = "its monitor (conmon) is gone and recorded no exit code (node restarted?)"
            await self._save(container)
            log.warning("container %s: %s", container.id, container.message)

    async def _recover_interrupted_start(self, container: Container) -> None:
        """A StartContainer the daemon did not see through: conmon and `runc create` go on without it, and so may
        `runc start`. A process that was started is adopted (it runs, or its exit file says how it ended);
        anything short of that is taken back, so that the kubelet's retried StartContainer starts afresh."""
        runtime = await self.runtime_of(container)
        state = await runtime.state(container.id)
        if state is not None and state.get("status") in ("running", "stopped"):
            container.pid = int(state.get("pid") or 0)
            container.conmon_pid = runtime.monitor_pid(container.id, self.bundle_dir(container.id)) or 0
            container.state, container.started_at = STATE_RUNNING, time.time_ns()
            await self._table.update(container, ("state", "started_at", "pid", "conmon_pid"))
            log.warning("container %s was started while cripy stopped: recorded as running", container.id)
            return
        log.warning("container %s: its start was interrupted (runtime state %s): taking it back, it can be "
                    "started again", container.id, state.get("status") if state else "none")
        await self._journal.undo(container.id, ("ctr-runtime",))
    # ---- undo functions (what set-up makes is undone by setup.py's) ---------------------------------------

    async def _undo_runtime(self, effect: Effect) -> None:
        runtime = self._runtimes.get(effect.data["handler"])
        if runtime is None:
            raise FailedPrecondition(f"container {effect.owner}: runtime handler {effect.data['handler']!r} is gone")
        await runtime.abandon(effect.owner, self.bundle_dir(effect.owner))


# ---- helpers ------------------------------------------------------------------------------------------------


def _require_handler_features(request: ContainerRequest, handler: str, offered: HandlerFeatures) -> None:
    """Refuse what the pod's runtime handler cannot do, before anything is made for the container."""
    for i, mount in enumerate(request.mounts):
        if mount.recursive_read_only:
            features.require(offered, handler, features.RECURSIVE_READ_ONLY_MOUNTS,
                             f"container {request.name!r}: mounts[{i}] ({mount.container_path})")


def _read_node_and_host(request: ContainerRequest, dev_root: str) -> HostFacts:
    nodefit.require_node_support(request.resources, f"container {request.name!r}")
    return read_host_facts(request, dev_root)


async def _exit_within(exited: asyncio.Event, seconds: float) -> bool:
    """Whether the container's exit is recorded within `seconds`."""
    try:
        with step("ctr.wait_exit"):
            await asyncio.wait_for(exited.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _volume_images(container: Container) -> set[str]:
    return {m.image_id for m in container.request.mounts if m.image_id}
