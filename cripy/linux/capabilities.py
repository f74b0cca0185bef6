"""Linux capabilities: names and numbers, the kernel's supported range, name normalization, CRI-O's defaults,
and decoding of the capability masks shown in /proc/<pid>/status."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from cripy.errors import InvalidArgument

# capability(7), in bit order; the number is the index.
_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate(_NAMES)}
CAPABILITY_NAMES: dict[int, str] = dict(enumerate(_NAMES))

# What CRI-O grants a container when the pod spec adds or drops nothing.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_KILL",
)

_CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")


@functools.cache
def last_cap() -> int:
    """The highest capability number the running kernel knows (capped to the names this module knows)."""
    try:
        kernel = int(_CAP_LAST_CAP.read_text().strip())
    except (OSError, ValueError):
        kernel = len(_NAMES) - 1
    return min(kernel, len(_NAMES) - 1)


def known_capabilities() -> list[str]:
    """Every capability name the running kernel supports, in bit order."""
    return list(_NAMES[: last_cap() + 1])


@functools.cache
def grantable_capabilities() -> list[str]:
    """The capabilities this process can hand to a container: the kernel's, within our own bounding set.

    A privileged container (or add: [ALL]) gets these, as containerd and CRI-O do: asking runc for a capability
    the daemon itself lacks (e.g. CAP_SYS_RESOURCE in some sandboxes) would fail the container.
    """
    bounding = _own_bounding_mask()
    if bounding is None:
        return known_capabilities()
    return [name for name in known_capabilities() if bounding >> CAPABILITIES[name] & 1]


def _own_bounding_mask() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return int(line.split(":", 1)[1], 16)
    except (OSError, ValueError):
        pass
    return None


def normalize(name: str) -> str:
    """"NET_ADMIN", "net_admin", "cap_net_admin" -> "CAP_NET_ADMIN"; unknown names are InvalidArgument."""
    upper = name.strip().upper()
    canonical = upper if upper.startswith("CAP_") else "CAP_" + upper
    if canonical not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return canonical


def resolve(names: Iterable[str]) -> list[str]:
    """Normalize a CRI capability list; "ALL" (any case) stands for every capability the kernel supports."""
    out: dict[str, None] = {}
    for name in names:
        if name.strip().upper() in ("ALL", "CAP_ALL"):
            out.update(dict.fromkeys(grantable_capabilities()))
        else:
            out[normalize(name)] = None
    return list(out)


def parse_cap_mask(mask: str) -> set[str]:
    """Decode a hex capability mask (CapEff/CapPrm/CapBnd in /proc/<pid>/status) into names.
    Bits beyond the known names appear as "CAP_<bit>"."""
    try:
        value = int(mask.strip(), 16)
    except ValueError:
        raise InvalidArgument(f"capability mask {mask!r} is not hexadecimal") from None
    out: set[str] = set()
    bit = 0
    while value:
        if value & 1:
            out.add(CAPABILITY_NAMES.get(bit, f"CAP_{bit}"))
        value >>= 1
        bit += 1
    return out


def to_cap_mask(names: Iterable[str]) -> str:
    """The inverse of parse_cap_mask: 16 hex digits, as /proc/<pid>/status prints them."""
    value = 0
    for name in names:
        value |= 1 << CAPABILITIES[normalize(name)]
    return f"{value:016x}"
