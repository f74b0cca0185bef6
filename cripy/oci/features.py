"""What a runtime handler can do, found by asking rather than assumed from its name or version.

The OCI runtime says what it supports through `<runtime> features` (runc 1.1+: a JSON document of mount options,
namespaces, mount extensions...); the kernel decides the rest (recursive mount attributes need mount_setattr(2),
Linux 5.12). The daemon probes every handler at start and again at reload (a runtime upgraded in place may gain
features), reports the result in Status's runtime_handlers, and refuses at CreateContainer a request the handler
cannot honour, naming the feature, instead of letting it fail deep inside the runtime.

A runtime that has no `features` command (older runc, gVisor's runsc) is taken to support none of the optional
features: cripy never offers what it has not seen.

User namespaces need the runtime to join a user namespace (its `features` lists "user") and the node to make
id-mapped mounts of cripy's storage: cripy makes them itself (runc 1.1 has no idmap mount extension) and hands the
runtime paths that are already mapped. Whether the node can is one probe per daemon (`node_idmap_problem`), the
same for every handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cripy.errors import CripyError, FailedPrecondition
from cripy.linux import namespaces
from cripy.linux.idmap import IDRange, idmap_problem

PROBE_TIMEOUT_SECONDS = 10.0
RRO_MOUNT_OPTION = "rro"
RECURSIVE_READ_ONLY_MOUNTS = "recursive read-only mounts"
USER_NAMESPACES = "user namespaces"
RUNNING_CONTAINERS = "running containers"
PLATFORM_PROBE_TIMEOUT_SECONDS = 10.0
# The probe's user namespace maps one id somewhere no one uses (it only has to be a valid mapping).
_PROBE_HOST_ID = 2**31
# mount_setattr(2) has the same number on every architecture (syscalls added since Linux 5.1 share numbers).
_SYS_MOUNT_SETATTR = 442


@dataclass(frozen=True)
class HandlerFeatures:
    """What one runtime handler offers, and how that was found out (`source`, for logs and errors)."""

    mount_options: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    idmap_mounts: bool = False  # the runtime's own (runc 1.2+); cripy does not rely on it
    kernel_mount_setattr: bool = False
    node_idmap_problem: str | None = "not probed"  # why cripy cannot make id-mapped mounts here, None if it can
    platform_problem: str | None = None  # a sandboxed runtime whose platform does not work here: why
    source: str = "not probed"

    @property
    def recursive_read_only_mounts(self) -> bool:
        return self.missing(RECURSIVE_READ_ONLY_MOUNTS) is None

    @property
    def user_namespaces(self) -> bool:
        return self.missing(USER_NAMESPACES) is None

    def missing(self, feature: str) -> str | None:
        """Why the handler does not offer `feature` (RECURSIVE_READ_ONLY_MOUNTS, USER_NAMESPACES), None if it does."""
        if feature == RECURSIVE_READ_ONLY_MOUNTS:
            if RRO_MOUNT_OPTION not in self.mount_options:
                return f"its runtime does not list the {RRO_MOUNT_OPTION!r} mount option ({self.source})"
            if not self.kernel_mount_setattr:
                return "the kernel lacks mount_setattr(2) (Linux 5.12 or later)"
            return None
        if feature == RUNNING_CONTAINERS:
            return self.platform_problem
        if feature == USER_NAMESPACES:
            if "user" not in self.namespaces:
                return f"its runtime does not list the user namespace ({self.source})"
            if self.node_idmap_problem is not None:
                return f"cripy cannot make id-mapped mounts on this node: {self.node_idmap_problem}"
            return None
        raise ValueError(f"unknown runtime feature {feature!r}")


def require(features: HandlerFeatures, handler: str, feature: str, what: str) -> None:
    """Refuse `what` (the request part that needs `feature`) when handler `handler` does not offer it."""
    reason = features.missing(feature)
    if reason is not None:
        raise FailedPrecondition(f"{what} needs {feature}, which runtime handler {handler!r} does not offer: {reason}")


def parse_features(text: str | bytes, *, kernel_mount_setattr: bool, source: str,
                   node_idmap_problem: str | None = "not probed") -> HandlerFeatures:
    """The features an OCI runtime's `features` JSON (runtime-spec features.md) declares."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the features document is not a JSON object")
    linux = _object(document.get("linux"))
    idmap = _object(_object(linux.get("mountExtensions")).get("idmap"))
    return HandlerFeatures(
        mount_options=frozenset(_strings(document.get("mountOptions"))),
        namespaces=frozenset(_strings(linux.get("namespaces"))),
        idmap_mounts=idmap.get("enabled") is True,
        kernel_mount_setattr=kernel_mount_setattr,
        node_idmap_problem=node_idmap_problem,
        source=source,
    )


async def probe(runtime_path: str, *, timeout: float = PROBE_TIMEOUT_SECONDS,
                node_idmap_problem: str | None = "not probed") -> HandlerFeatures:
    """Ask the runtime at `runtime_path` for its features; a runtime that cannot say offers none.
    `node_idmap_problem` is the node's answer (see `probe_node_idmap()`), recorded with the runtime's."""
    kernel = await asyncio.to_thread(kernel_has_mount_setattr)
    command = f"{runtime_path} features"

    def says_nothing(source: str) -> HandlerFeatures:
        return HandlerFeatures(kernel_mount_setattr=kernel, node_idmap_problem=node_idmap_problem, source=source)

    try:
        proc = await asyncio.create_subprocess_exec(
            runtime_path, "features", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as err:
        return says_nothing(f"cannot run `{command}`: {err.strerror or err}")
    try:
        async with asyncio.timeout(timeout):
            out, err_out = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return says_nothing(f"`{command}` did not answer within {timeout}s")
    if proc.returncode != 0:
        said = err_out.decode(errors="replace").strip().splitlines()
        return says_nothing((
            f"`{command}` failed (exit status {proc.returncode}): {said[-1] if said else 'no message'}"))
    try:
        return parse_features(out, kernel_mount_setattr=kernel, source=f"`{command}`",
                              node_idmap_problem=node_idmap_problem)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        return says_nothing(f"`{command}` printed no features document: {err}")


async def probe_sandbox_platform(command: list[str], *,
                                 timeout: float = PLATFORM_PROBE_TIMEOUT_SECONDS) -> str | None:
    """Whether a gVisor runtime runs anything on this node with its platform: `<command> --network=none do
    /bin/true` (`command` is the runtime with its global flags) must succeed within `timeout`. The kvm platform,
    for one, hangs where /dev/kvm exists but cannot run guests. None when it works, else why not."""
    argv = [*command, "--network=none", "do", "/bin/true"]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    start_new_session=True)
    except OSError as err:
        return f"cannot run `{' '.join(argv)}`: {err.strerror or err}"
    try:
        async with asyncio.timeout(timeout):
            _, err_out = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # runsc and the sandbox it started
        await proc.wait()
        return f"`{' '.join(argv)}` did not finish within {timeout}s"
    if proc.returncode != 0:
        said = err_out.decode(errors="replace").strip().splitlines()
        return f"`{' '.join(argv)}` failed (exit status {proc.returncode}): {said[-1] if said else 'no message'}"
    return None


def probe_node_idmap(storage: Path, rootfs_parent: Path) -> str | None:
    """Why cripy cannot id-map the layers it keeps under `storage` (kernel, filesystem) or a pod's root could not
    reach a rootfs mounted in `rootfs_parent`, None when all is well. The id-mapped copy of `storage` is made with
    a throw-away user namespace and dropped, attached nowhere. Blocking: run it in a thread."""
    unsearchable = _unsearchable_ancestor(rootfs_parent)
    if unsearchable is not None:
        return unsearchable
    probe_maps = namespaces.UserMaps((IDRange(0, _PROBE_HOST_ID, 1),), (IDRange(0, _PROBE_HOST_ID, 1),))
    try:
        with namespaces.scratch_user_namespace(probe_maps) as userns:
            return idmap_problem(storage, userns)
    except (OSError, CripyError) as err:
        return f"cannot create a user namespace to test with: {err}"


def _unsearchable_ancestor(path: Path) -> str | None:
    """Why a process that is nobody on the node could not walk to `path` (a directory that does not let others
    search it on the way), None when it can."""
    for directory in [*reversed(path.parents), path]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            return None  # cripy creates the rest (0755 and the rootfs directory itself)
        if not mode & 0o001:
            return (f"{directory} is mode {mode & 0o7777:04o}: a pod's root, nobody on the node, could not reach "
                    f"the rootfs mounted under {path} (others need search permission, e.g. 0711)")
    return None


def kernel_has_mount_setattr() -> bool:
    """Whether this kernel (and any seccomp filter the daemon runs under) allows mount_setattr(2).

    Called with a file descriptor that cannot be valid: a kernel with the call answers EBADF (or EINVAL), one
    without it ENOSYS; a filter that forbids it answers EPERM, and would forbid the runtime too.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(-1), ctypes.c_char_p(b""),
                          ctypes.c_uint(0), ctypes.c_void_p(None), ctypes.c_size_t(0))
    if result == 0:
        return True
    return ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []

