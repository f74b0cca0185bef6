"""Where each CRI call is and how long its steps take: the one place steps are declared and measured.

A CRI call is a `Call` from the moment cri/errors.py's grpc_method receives it until it answers. Inside it, code
marks its steps with `with step("cni.add"):` (names from STEPS below, and nowhere else). A step feeds:

- the in-flight table, always: the calls in progress, the steps each is in and since when. `cripy ctl inflight`
  reads it through the admin service, and observe/watchdog.py logs a step that has lasted too long;
- the sinks installed at start-up, when the operator turned them on: Prometheus metrics (observe/metrics.py) and
  OpenTelemetry spans (observe/tracing.py). With none installed a step costs two clock reads and a list append;
- the debug log: when debug logging is on, a call's finished steps are logged as it answers.

Steps may nest (a layer's download inside the pull) and run side by side (CNI ADD while the infra process starts);
the step a call "is in" is every innermost step still running. Work that outlives its call's handler (a pull the
client gave up on, a sandbox creation kubelet will retry) holds the call with `hold()`, and a retry that joins it
is counted on it (`join`), so the table shows one row per piece of work, not per gRPC call.
"""

from __future__ import annotations

import itertools
import logging
import time
from contextvars import ContextVar
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)

# Every step, with what it covers. Metric labels, span names and `cripy ctl inflight` use these names; README lists
# them. Keeping them in one table keeps the label set bounded.
STEPS: dict[str, str] = {
    "pod.files": "the pod's hostname, resolv.conf and hosts files written",
    "pod.namespaces": "the pod's namespaces (network, IPC, UTS; user, for a user-namespace pod) created and pinned",
    "pod.shm": "the pod's /dev/shm tmpfs mounted",
    "cni.add": "CNI ADD: the pod attached to its network",
    "cni.del": "CNI DEL: the pod detached from its network",
    "pod.infra": "the infra process (pause) started through conmon and runc",
    "ctr.rootfs": "the image's layers looked up and the container's overlay rootfs mounted",
    "ctr.volumes": "the container's image volumes mounted",
    "ctr.spec": "the process user resolved from the rootfs's passwd and group files, and the OCI runtime spec "
                "generated",
    "ctr.bundle": "the OCI bundle written",
    "runtime.create": "conmon started and `runc create` done (the container's process exists, stopped)",
    "runtime.start": "`runc start`",
    "runtime.kill": "`runc kill` with the stop signal or SIGKILL",
    "ctr.wait_exit": "waiting for the container to exit after a signal",
    "ctr.release": "a stopped container's runtime state deleted (`runc delete`) and its rootfs unmounted",
    "runtime.exec": "`runc exec` of an ExecSync command, until it exits",
    "image.pull": "a whole image pull, resolution to the last layer (one per pull, shared by joined retries)",
    "image.resolve": "registries.conf, the trust policy and the auth files read",
    "image.manifest": "the manifest fetched (and this platform's manifest, when the first is an index), its "
                      "signatures checked when the trust policy asks for them",
    "image.config": "the image config blob fetched",
    "layer.wait": "a layer waiting for one of the max_parallel_layers download slots",
    "layer.download": "a layer downloaded (streamed layers unpack while they download)",
    "layer.copy": "an imported layer's blob copied out of the archive and verified",
    "layer.unpack": "unpacking left to do once a layer's bytes are all in (all of it, for an import)",
    "image.commit": "the image and its names recorded in the database",
    "image.import": "a whole image import from an archive",
}


class Sink(Protocol):
    """Something that wants to hear about calls and steps (metrics, traces). Called on the event loop, or in a
    worker thread for steps taken there: implementations are thread-safe and cheap."""

    def call_started(self, call: Call, context: Any) -> None: ...

    def call_ended(self, call: Call, code: str, seconds: float) -> None: ...

    def step_started(self, step: Step) -> None: ...

    def step_ended(self, step: Step, seconds: float, failed: bool) -> None: ...


_sinks: tuple[Sink, ...] = ()
_current_call: ContextVar[Call | None] = ContextVar("cripy_call", default=None)
_current_step: ContextVar[Step | None] = ContextVar("cripy_step", default=None)
_table: dict[int, Call] = {}
_ids = itertools.count(1)


def install(*sinks: Sink) -> None:
    """Set the sinks (at start-up; `install()` removes them)."""
    global _sinks
    _sinks = tuple(sinks)


class Call:
    """One CRI call (or admin call) in progress, and the work it started."""

    __slots__ = ("id", "service", "method", "request", "describe", "started", "active", "joined", "holds", "span",
                 "finished", "joined_to")

    def __init__(self, service: str, method: str, request: Any, describe: Callable[[Any], str]) -> None:
        self.id = next(_ids)
        self.service = service  # the gRPC service: "runtime.v1.RuntimeService"
        self.method = method  # "RunPodSandbox"
        self.request = request
        self.describe = describe  # request -> "pod nginx_default" etc.; called only when someone looks
        self.started = time.monotonic()
        self.active: list[Step] = []
        self.joined = 0  # retries that joined this call's work instead of starting their own
        self.holds = 1  # the handler, plus work that outlives it (hold())
        self.span: Any = None  # the tracing sink's
        self.finished: list[tuple[str, float]] | None = [] if log.isEnabledFor(logging.DEBUG) else None
        self.joined_to: Call | None = None

    @property
    def subject(self) -> str:
        try:
            return self.describe(self.request)
        except Exception:  # a display helper must never break the listing
            return ""

    def current_steps(self) -> list[Step]:
        """The innermost steps running now: those no other running step is nested in."""
        active = list(self.active)
        parents = {id(s.parent) for s in active if s.parent is not None}
        return [s for s in active if id(s) not in parents]


class Step:
    """One step of a call; a context manager (`with step("cni.add"):`), usable in coroutines and threads."""

    __slots__ = ("name", "detail", "call", "parent", "started", "span", "reported", "_token")

    def __init__(self, name: str, detail: str = "") -> None:
        if name not in STEPS:
            raise ValueError(f"undeclared step {name!r}: add it to cripy.timing.STEPS")
        self.name = name
        self.detail = detail
        self.call: Call | None = None
        self.parent: Step | None = None
        self.started = 0.0
        self.span: Any = None
        self.reported = False  # the watchdog logged it as stuck

    def __enter__(self) -> Step:
        self.call = _current_call.get()
        self.parent = _current_step.get()
        self._token = _current_step.set(self)
        self.started = time.monotonic()
        if self.call is not None:
            self.call.active.append(self)
        for sink in _sinks:
            sink.step_started(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        seconds = time.monotonic() - self.started
        _current_step.reset(self._token)
        call = self.call
        if call is not None:
            call.active.remove(self)
            if call.finished is not None:
                call.finished.append((self.name, seconds))
        for sink in _sinks:
            sink.step_ended(self, seconds, kind is not None)
        if self.reported:
            log.info("%s: step %s finished after %.1fs", _who(call), self.name, seconds)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


step = Step


# ---- calls --------------------------------------------------------------------------------------------------


def begin(service: str, method: str, request: Any, describe: Callable[[Any], str], context: Any = None) -> Call:
    """A call arrives: it becomes the current call of this task and enters the in-flight table. `context` is the
    gRPC servicer context (the tracing sink reads the caller's trace context from its metadata)."""
    call = Call(service, method, request, describe)
    _current_call.set(call)
    _table[call.id] = call
    for sink in _sinks:
        sink.call_started(call, context)
    return call


def end(call: Call, code: str) -> None:
    """The call's handler answers with `code` (a gRPC status code name)."""
    seconds = time.monotonic() - call.started
    for sink in _sinks:
        sink.call_ended(call, code, seconds)
    _release(call)
    if call.joined_to is not None:
        _release(call.joined_to)
    if call.finished is not None and call.finished:
        detail = " ".join(f"{name}={s * 1000:.1f}ms" for name, s in call.finished)
        log.debug("%s took %.1fms (%s): %s", call.method, seconds * 1000, code, detail)


def instant(service: str, method: str, request: Any, describe: Callable[[Any], str], context: Any = None) -> None:
    """A call answered in the step that received it (from memory): the sinks hear it begin and end. It is never in
    the in-flight table, where nobody could have seen it, and never the current call."""
    if not _sinks:
        return
    call = Call(service, method, request, describe)
    for sink in _sinks:
        sink.call_started(call, context)
    seconds = time.monotonic() - call.started
    for sink in _sinks:
        sink.call_ended(call, "OK", seconds)


def current() -> Call | None:
    return _current_call.get()


def join(owner: Call | None) -> None:
    """The current call waits for `owner`'s work instead of doing its own (a retry joining an in-flight call):
    counted on the owner, which stays listed while anyone waits for it; the joiner is not listed itself."""
    call = _current_call.get()
    if owner is None or call is None or owner is call:
        return
    owner.joined += 1
    owner.holds += 1
    _table[owner.id] = owner
    call.joined_to = owner
    _table.pop(call.id, None)


class hold:
    """Keep the current call listed while this block runs, even after its handler answered (work in a task of
    its own that a client may give up on)."""

    __slots__ = ("call",)

    def __enter__(self) -> None:
        self.call = _current_call.get()
        if self.call is not None:
            self.call.holds += 1

    def __exit__(self, *exc: object) -> None:
        if self.call is not None:
            _release(self.call)


def _release(call: Call) -> None:
    call.holds -= 1
    if call.holds <= 0:
        _table.pop(call.id, None)
    elif call.joined_to is None:
        _table[call.id] = call


def inflight() -> list[Call]:
    """The calls in progress, oldest first."""
    return sorted(_table.values(), key=lambda c: c.started)


def _who(call: Call | None) -> str:
    if call is None:
        return "background work"
    subject = call.subject
    return f"{call.method} #{call.id}" + (f" ({subject})" if subject else "")


def describe_stuck(step_: Step) -> str:
    """The log line for a step that has lasted too long: which call, which step, for how long."""
    what = f"step {step_.name}" + (f" [{step_.detail}]" if step_.detail else "")
    return f"{_who(step_.call)} has been in {what} for {step_.seconds:.1f}s ({STEPS[step_.name]})"
