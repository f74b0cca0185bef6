"""What a runtime handler can do, found by asking rather than assumed from its name or version.

The OCI runtime says what it supports through `<runtime> features` (runc 1.1+: a JSON document of mount options,
namespaces, mount extensions...); the kernel decides the rest (recursive mount attributes need mount_setattr(2),
Linux 5.12). The daemon probes every handler at start and again at reload (a runtime upgraded in place may gain
features), reports the result in Status's runtime_handlers, and refuses at CreateContainer a request the handler
cannot honour, naming the feature, instead of letting it fail deep inside the runtime.

A runtime that has no `features` command (older runc, other runtimes) is taken to support none of the optional
features: cripy never offers what it has not seen.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
from dataclasses import dataclass
from typing import Any

from cripy.errors import FailedPrecondition

PROBE_TIMEOUT_SECONDS = 10.0
RRO_MOUNT_OPTION = "rro"
RECURSIVE_READ_ONLY_MOUNTS = "recursive read-only mounts"
USER_NAMESPACES = "user namespaces"
# cripy does not build user namespaces yet: a handler whose runtime could run them cannot be offered them until it
# does. The probe records what the runtime can do (namespaces, idmap mounts), so only this switch remains.
CRIPY_BUILDS_USER_NAMESPACES = False
# mount_setattr(2) has the same number on every architecture (syscalls added since Linux 5.1 share numbers).
_SYS_MOUNT_SETATTR = 442


@dataclass(frozen=True)
class HandlerFeatures:
    """What one runtime handler offers, and how that was found out (`source`, for logs and errors)."""

    mount_options: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    idmap_mounts: bool = False
    kernel_mount_setattr: bool = False
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
        if feature == USER_NAMESPACES:
            if not CRIPY_BUILDS_USER_NAMESPACES:
                return "cripy does not create user namespaces yet"
            if "user" not in self.namespaces:
                return f"its runtime does not list the user namespace ({self.source})"
            if not self.idmap_mounts:
                return f"its runtime has no id-mapped mounts ({self.source})"
            return None
        raise ValueError(f"unknown runtime feature {feature!r}")


def require(features: HandlerFeatures, handler: str, feature: str, what: str) -> None:
    """Refuse `what` (the request part that needs `feature`) when handler `handler` does not offer it."""
    reason = features.missing(feature)
    if reason is not None:
        raise FailedPrecondition(f"{what} needs {feature}, which runtime handler {handler!r} does not offer: {reason}")


def parse_features(text: str | bytes, *, kernel_mount_setattr: bool, source: str) -> HandlerFeatures:
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
        source=source,
    )


async def probe(runtime_path: str, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> HandlerFeatures:
    """Ask the runtime at `runtime_path` for its features; a runtime that cannot say offers none."""
    kernel = await asyncio.to_thread(kernel_has_mount_setattr)
    command = f"{runtime_path} features"
    try:
        proc = await asyncio.create_subprocess_exec(
            runtime_path, "features", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as err:
        return HandlerFeatures(kernel_mount_setattr=kernel, source=f"cannot run `{command}`: {err.strerror or err}")
    try:
        async with asyncio.timeout(timeout):
            out, err_out = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return HandlerFeatures(kernel_mount_setattr=kernel, source=f"`{command}` did not answer within {timeout}s")
    if proc.returncode != 0:
        said = err_out.decode(errors="replace").strip().splitlines()
        return HandlerFeatures(kernel_mount_setattr=kernel, source=(
            f"`{command}` failed (exit status {proc.returncode}): {said[-1] if said else 'no message'}"))
    try:
        return parse_features(out, kernel_mount_setattr=kernel, source=f"`{command}`")
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        return HandlerFeatures(kernel_mount_setattr=kernel, source=f"`{command}` printed no features document: {err}")


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

