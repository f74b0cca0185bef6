"""The daemon's wiring: open storage, recover state, serve CRI on the unix socket, shut down cleanly.

Signals: SIGTERM/SIGINT stop the daemon (containers keep running: conmon is their parent, not us); SIGHUP
re-reads the configuration and applies what can change live (log level, pinned images, pull settings).
registries.conf, auth.json and policy.json are read at each pull, so they need no reload.

Beside CRI the socket serves grpc.health.v1 (SERVING once CRI is served, NOT_SERVING from the moment the daemon
stops) and cripy's admin service (cri/admin.py). Metrics and traces start when the configuration asks for them
(observe/); systemd hears READY=1 once everything serves and STOPPING=1 when the daemon begins to stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from grpc_health.v1 import health_pb2

from cripy import busypoll, service, timing
from cripy.busypoll import BusyPollingLoop
from cripy.config import Config, ConfigError, handler_global_args, handler_runtime_root
from cripy.containers.manager import ContainerManager
from cripy.containers.spec import SpecSettings
from cripy.cri.admin import admin_methods
from cripy.cri.errors import IMAGE_SERVICE, RUNTIME_SERVICE
from cripy.cri.handlers import service_methods
from cripy.cri.images import ImageService
from cripy.cri.info import status_info
from cripy.cri.runtime import RuntimeService
from cripy.images.archive import Importer
from cripy.images.progress import ProgressBoard
from cripy.images.pull import Puller
from cripy.images.store import ImageStore
from cripy.linux import cgroups, child, memory
from cripy.linux.moveprimer import MovePrimer
from cripy.network.cni import CNIManager
from cripy.observe.watchdog import Watchdog
from cripy.oci.exits import ExitWatcher
from cripy.oci import features
from cripy.oci.features import HandlerFeatures
from cripy.oci.runtime import OCIRuntime, RuntimeHandler
from cripy.pods.manager import PodManager
from cripy.rpc.health import Health
from cripy.rpc.server import Server
from cripy.storage.db import Database
from cripy.storage.effects import EffectJournal
from cripy.storage.layout import Layout

if TYPE_CHECKING:
    from cripy.observe.metrics import Metrics
    from cripy.observe.tracing import Tracing
    from cripy.streaming.server import StreamingServer

log = logging.getLogger(__name__)


class Daemon:
    """One running cripy: storage, the domain services and the gRPC server."""

    def __init__(self, config: Config, *, reload: Callable[[], Config] | None = None,
                 config_files: Callable[[], list[Path]] = lambda: []) -> None:
        self.config = config
        self._reload = reload
        self._config_files = config_files
        self.config_files = config_files()  # the files `config` was read from, for Status's verbose info
        self.layout = Layout(config.root, config.runroot)
        self._stopping = asyncio.Event()
        self._server: Server | None = None
        self.streaming: StreamingServer | None = None
        self._streaming_lock = asyncio.Lock()
        self.db: Database | None = None
        self.journal: EffectJournal | None = None
        self._reprobe: asyncio.Task[None] | None = None
        self.board = ProgressBoard()
        self.metrics: Metrics | None = None
        self.tracing: Tracing | None = None
        self.watchdog: Watchdog | None = None
        self._health: Health | None = None
        self._audit_task: asyncio.Task[None] | None = None
        self._started = False
        self._reload_asked = False  # a SIGHUP came while start() was still building what a reload changes

    async def start(self) -> None:
        await asyncio.to_thread(self.layout.ensure)
        self.db = await Database.open(self.layout.database)
        self.journal = journal = EffectJournal(self.db)
        await journal.load()
        await self._build_services(self.db, journal)
        self._start_observing()  # before recovery: its undos are counted too
        await self._recover(journal)
        self.exits = ExitWatcher(self.layout.exits, self.containers.handle_exit)
        await self.exits.start()
        await self._serve_grpc()
        log.info("cripy serving CRI on %s (root %s, run root %s)", self.config.cripy.listen, self.layout.root, self.layout.runroot)
        service.notify("READY=1", f"STATUS=serving CRI on {self.config.cripy.listen}", f"MAINPID={os.getpid()}")
        self._audit_task = asyncio.get_running_loop().create_task(self._audit_at_start())

    def _start_observing(self) -> None:
        """The watchdog always; metrics and traces when configured (their libraries load only then)."""
        assert self.journal is not None
        sinks: list[timing.Sink] = []
        if self.config.metrics.address:
            from cripy.observe.metrics import Metrics

            self.metrics = Metrics(self.config.metrics.address)
            self.metrics.watch(pods=self.pods, containers=self.containers, effects=self.journal.counts,
                               board=self.board)
            self.metrics.start()
            sinks.append(self.metrics)
        if self.config.tracing.endpoint:
            from cripy.observe.tracing import Tracing

            self.tracing = Tracing(self.config.tracing.endpoint, self.config.tracing.sampling_ratio)
            sinks.append(self.tracing)
        timing.install(*sinks)
        self.watchdog = Watchdog(self.config.cripy.stuck_step_seconds,
                                 self.metrics.loop_lag if self.metrics is not None else None)
        self.watchdog.start()

    async def open_for_audit(self) -> None:
        """Storage, records and services without recovery or serving: what `cripy audit` compares the node with
        (the undo functions its repair runs are the services')."""
        self.db = await Database.open(self.layout.database)
        self.journal = journal = EffectJournal(self.db)
        await self._build_services(self.db, journal)
        await self.pods.load()
        await self.containers.load()

    async def close_audit(self) -> None:
        await self.puller.close()
        if self.db is not None:
            await asyncio.to_thread(self.db.close)

    async def _audit_at_start(self) -> None:
        """The same check as `cripy audit`, once recovery is done, in the background: its summary is logged.
        Start-up is over then: what the imports, recovery and the audit freed goes back to the kernel (~1 MiB)."""
        from cripy.audit import Audit, report, summary

        audit = Audit(self)
        try:
            findings = await audit.run()
        except Exception:
            log.exception("the audit at start failed")
            return
        finally:
            memory.release_soon()
        for note in audit.notes:
            log.info("audit at start: %s", note)
        if findings:
            log.warning("audit at start: %s (`cripy audit --repair` undoes orphans):\n%s", summary(findings),
                        report(findings))
        else:
            log.info("audit at start: %s", summary(findings))

    async def _build_services(self, db: Database, journal: EffectJournal) -> None:
        self.store = ImageStore(db, self.layout, pinned=self.config.images.pinned_images)
        self.puller = Puller(self.store, self.config.images, self.board)
        self.importer = Importer(self.store, self.layout.downloads, self.board)
        self.network = CNIManager(
            Path(self.config.network.conf_dir),
            [Path(p) for p in self.config.network.plugin_dirs],
            self.layout.cni_cache,
            self.config.network.default_network,
        )
        self.move_primer = MovePrimer(enabled=self.config.cripy.prime_cgroup_moves)
        self.runtimes = self._runtimes()
        await self._probe_runtime_features()
        self.pods = PodManager(
            db,
            journal,
            pods_dir=self.layout.pods,
            network=self.network,
            runtimes=self.runtimes,
            default_runtime=self.config.runtime.default_runtime,
            default_cgroup_parent=self.config.runtime.cgroup_parent,
            pause_command=self.config.runtime.pause_command,
        )
        self.containers = ContainerManager(
            db,
            journal,
            pods=self.pods,
            images=self.store,
            runtimes=self.runtimes,
            layout=self.layout,
            settings=await asyncio.to_thread(self._spec_settings),
            log_size_max=self.config.runtime.container_log_size_max,
        )

    async def _recover(self, journal: EffectJournal) -> None:
        """Reconcile what the database says with what the node has, before serving anything."""
        await self.pods.load()
        await self.containers.load()
        await self._undo_orphaned_effects(journal)
        await self.store.recover()
        await self.pods.recover()
        await self.containers.recover()
        await self._reset_exec_dir()

    async def _reset_exec_dir(self) -> None:
        runtime = next(iter(self.runtimes.values()))  # the handlers share the run root's exec directory
        left = await asyncio.to_thread(runtime.reset_exec_dir)
        if left:
            log.info("removed %d leftovers of exec calls cut short by the last stop from %s", left,
                     self.layout.exec_calls)

    async def _undo_orphaned_effects(self, journal: EffectJournal) -> None:
        """Effects whose pod or container record is gone were being cleaned up when the daemon stopped."""
        for owner in await journal.owners():
            if await self.pods.find(owner) is None and await self.containers.find(owner) is None:
                log.info("finishing the clean-up of removed object %s", owner)
                await journal.undo(owner, keep_going=True)

    def _runtimes(self) -> dict[str, OCIRuntime]:
        runtime = self.config.runtime
        return {
            name: OCIRuntime(
                RuntimeHandler(
                    name=name,
                    runtime_path=handler.runtime_path,
                    runtime_root=handler_runtime_root(self.config, name),
                    monitor_path=runtime.conmon,
                    runtime_type=handler.runtime_type,
                    kind=handler.kind,
                    global_args=handler_global_args(handler),
                ),
                layout=self.layout,
                log_level=self.config.cripy.log_level,
                move_primer=self.move_primer,
            )
            for name, handler in runtime.handlers.items()
        }

    async def _probe_runtime_features(self) -> None:
        """Ask each handler's runtime what it supports (Status reports it, RunPodSandbox and CreateContainer check
        against it), and the node whether cripy can id-map its image layers (user namespaces need it)."""
        idmap_problem = await asyncio.to_thread(features.probe_node_idmap, self.layout.layers,
                                                self.layout.userns_rootfs)
        if idmap_problem is not None:
            log.warning("no user namespaces on this node: %s", idmap_problem)
        probed = await asyncio.gather(*(runtime.probe_features(node_idmap_problem=idmap_problem)
                                        for runtime in self.runtimes.values()))
        for name, found in zip(self.runtimes, probed):
            log.info("runtime handler %s: recursive read-only mounts %s, user namespaces %s (from %s)", name,
                     _yes_no(found.recursive_read_only_mounts), _yes_no(found.user_namespaces), found.source)
            if found.platform_problem is not None:
                log.warning("runtime handler %s cannot run containers on this node: %s", name, found.platform_problem)

    def handler_features(self) -> dict[str, HandlerFeatures]:
        """Every handler's features by name; "" (no RuntimeClass) is the default handler."""
        handlers = {name: runtime.features for name, runtime in sorted(self.runtimes.items())}
        return {"": handlers[self.config.runtime.default_runtime], **handlers}

    def _spec_settings(self) -> SpecSettings:
        allow_negative = cgroups.can_set_negative_oom_score_adj()
        if not allow_negative:
            log.warning("this node refuses negative oom_score_adj (no CAP_SYS_RESOURCE): container OOM scores are"
                        " clamped to 0 and up, as containerd's restrict_oom_score_adj does")
        return SpecSettings(
            allow_negative_oom_score_adj=allow_negative,
            cgroup_parent_default=self.config.runtime.cgroup_parent,
        )

    async def streaming_server(self) -> StreamingServer:
        """The streaming server, started at the first Exec, Attach or PortForward (with the code behind it)."""
        async with self._streaming_lock:
            if self.streaming is None:
                from cripy.streaming.portforward import PortForwardHandler
                from cripy.streaming.remotecommand import AttachHandler, ExecHandler
                from cripy.streaming.server import KIND_ATTACH, KIND_EXEC, KIND_PORTFORWARD, ServerSettings
                from cripy.streaming.server import StreamingServer as Server

                server = Server(ServerSettings(**dataclasses.asdict(self.config.streaming)), {
                    KIND_EXEC: ExecHandler(self.containers),
                    KIND_ATTACH: AttachHandler(self.containers),
                    KIND_PORTFORWARD: PortForwardHandler(self.pods),
                })
                await server.start()
                self.streaming = server
            return self.streaming

    async def _serve_grpc(self) -> None:
        runtime_service = RuntimeService(
            pods=self.pods,
            containers=self.containers,
            handler_features=self.handler_features,
            network_status=self._network_status,
            config_info=lambda: status_info(self.config, self.config_files, self.network, self.handler_features()),
            streaming_server=self.streaming_server,
        )
        self._health = Health()
        server = Server({
            **self._health.methods(),
            **service_methods("ImageService", ImageService(self.store, self.puller)),
            **service_methods("RuntimeService", runtime_service),
            **admin_methods(self.importer, self.board),
        }, max_message_bytes=self.config.cripy.grpc_max_message_bytes, on_idle=busypoll.arm)
        socket_path = Path(self.config.cripy.listen)
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is born 0600: root only, never briefly world-connectable
        try:
            await server.start(socket_path)
        finally:
            os.umask(old_umask)
        socket_path.chmod(0o600)
        self._server = server
        for name in ("", RUNTIME_SERVICE, IMAGE_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _network_status(self) -> tuple[bool, str, str]:
        status = self.network.status()
        return status.ready, status.reason, status.message

    def request_stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        if self._reload is None:
            return
        service.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = self._reload()
        except ConfigError as e:
            log.error("configuration reload failed, keeping the running configuration: %s", e)
            service.notify("READY=1")
            return
        self.config_files = self._config_files()
        service.set_log_level(new.cripy.log_level)
        # A runtime upgraded in place may offer more (or less) than it did: ask again.
        self._reprobe = asyncio.get_running_loop().create_task(self._probe_runtime_features())
        self.store.set_pinned(new.images.pinned_images)
        self.puller.reconfigure(new.images)
        self.config.cripy.log_level = new.cripy.log_level
        self.config.images = new.images
        ignored = [key for key in ("root", "runroot", "listen") if getattr(new.cripy, key) != getattr(self.config.cripy, key)]
        if ignored or new.runtime != self.config.runtime or new.network != self.config.network \
                or new.streaming != self.config.streaming:
            log.warning("configuration reloaded; changes to %s take effect at the next start",
                        ", ".join(ignored + ["runtime/network/streaming settings"]))
        if new.metrics != self.config.metrics or new.tracing != self.config.tracing \
                or new.cripy.log_format != self.config.cripy.log_format:
            log.warning("configuration reloaded; metrics, tracing and log format changes take effect at the next start")
        if self.watchdog is not None:
            self.watchdog.stuck_after = new.cripy.stuck_step_seconds
        self.config.cripy.stuck_step_seconds = new.cripy.stuck_step_seconds
        busypoll.set_window(new.cripy.busy_poll_us / 1e6)
        self.config.cripy.busy_poll_us = new.cripy.busy_poll_us
        self.move_primer.enabled = self.config.cripy.prime_cgroup_moves = new.cripy.prime_cgroup_moves
        log.info("configuration reloaded")
        service.notify("READY=1")

    def _on_sighup(self) -> None:
        """Reload now, or once start() is done: until then the store, the puller and the primer a reload changes
        may not exist yet. The handler is there from the first moment, or a SIGHUP would end the daemon."""
        if self._started:
            self.reload()
        else:
            log.info("SIGHUP while starting: the configuration is reloaded once the daemon has started")
            self._reload_asked = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.start()
        self._started = True
        if self._reload_asked:
            self.reload()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        log.info("cripy shutting down")
        if self._audit_task is not None and not self._audit_task.done():
            self._audit_task.cancel()
        service.notify("STOPPING=1", "STATUS=shutting down")
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace=5)
        if self.streaming is not None:
            await self.streaming.stop()
        await self.exits.stop()
        await self.containers.wait_for_clean_up()
        await self.puller.close()
        if self.watchdog is not None:
            await self.watchdog.stop()
        timing.install()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends the spans still batched
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
        Path(self.config.cripy.listen).unlink(missing_ok=True)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def watch_children_with_pidfds() -> None:
    """Learn of conmon's and runc's exits through pidfds on the event loop. Python 3.11's default watcher starts
    a thread per child to wait for it (Python 3.12 makes pidfds the default): a thread start for every runc call,
    and dozens of threads while a node fills."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))  # the kernel (5.3+) and any seccomp filter must allow it
    except OSError as e:
        log.info("children are watched with a thread each: pidfd_open is refused (%s)", e)
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def run_daemon(config: Config, reload: Callable[[], Config] | None = None,
               config_files: Callable[[], list[Path]] = lambda: []) -> int:
    service.configure_logging(config.cripy.log_level, config.cripy.log_format)
    if marked := child.keep_descriptors_from_children():
        log.info("%d descriptors inherited from the daemon's parent are kept from the programs it runs", marked)
    watch_children_with_pidfds()
    with asyncio.Runner(loop_factory=lambda: BusyPollingLoop(config.cripy.busy_poll_us / 1e6)) as runner:
        asyncio.set_event_loop(runner.get_loop())  # what asyncio.run does, and the child watcher attaches to
        runner.run(Daemon(config, reload=reload, config_files=config_files).run())
    return 0

