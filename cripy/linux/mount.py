"""Mounts: mount(2)/umount2(2) over ctypes, /proc/self/mountinfo parsing, tmpfs and overlay helpers.

Everything here is synchronous (the daemon runs it in a thread pool). Kernel errors surface as OSError whose
message names the path involved.

Whether a path is a mount point is asked of statx(2) (STATX_ATTR_MOUNT_ROOT, Linux 5.8), not of the mount table:
reading /proc/self/mountinfo costs the kernel and the parser every mount on the node, several per pod, so with a
node full of pods each look was the daemon's largest cost while pods were replaced. The table is still read where
a question is about the mounts below a path, when the cheap answer is not conclusive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cripy import faults

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

MNT_DETACH = 0x2

# mount(2) copies at most one page of option data; longer strings are silently truncated or refused.
MOUNT_DATA_LIMIT = 4096 - 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_statx = getattr(_libc, "statx", None)  # glibc 2.28 and later
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int

_AT_FDCWD = -100
_AT_NO_AUTOMOUNT = 0x800
_STATX_BUFFER = 256  # sizeof(struct statx)
_STATX_ATTRIBUTES = slice(8, 16)  # stx_attributes, a u64 in the machine's byte order
_STATX_ATTRIBUTES_MASK = slice(56, 64)  # stx_attributes_mask: which attributes the kernel knows
STATX_ATTR_MOUNT_ROOT = 0x2000
STACKED_MOUNTS_MAX = 16  # mounts at one path unmounted one by one before the mount table's walk takes over


def _raise_errno(action: str, path: str | os.PathLike[str]) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{action} {os.fspath(path)}: {os.strerror(err)}", os.fspath(path))


def mount(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    fstype: str = "",
    flags: int = 0,
    data: str = "",
) -> None:
    """mount(2). An empty fstype/data is passed as NULL, as propagation and bind mounts expect."""
    if len(data.encode()) > MOUNT_DATA_LIMIT:
        raise OSError(errno.EINVAL, f"mount {os.fspath(target)}: option string longer than a page", os.fspath(target))
    rc = _libc.mount(
        os.fsencode(source),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        _raise_errno(f"mount {os.fspath(source)!s} ({fstype or 'no fstype'}) on", target)
    faults.point(f"mount.{fstype or _flags_kind(flags)}")


def _flags_kind(flags: int) -> str:
    """A name for a mount(2) without a filesystem type, for fault points."""
    if flags & MS_REMOUNT:
        return "remount"
    if flags & MS_BIND:
        return "bind"
    return "propagation"


def umount(target: str | os.PathLike[str], detach: bool = False) -> None:
    """umount2(2); detach=True is a lazy unmount (MNT_DETACH)."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH if detach else 0) != 0:
        _raise_errno("umount", target)
    faults.point("umount")


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    options: str
    optional_fields: tuple[str, ...]
    fs_type: str
    source: str
    super_options: str
    option_set: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def read_only(self) -> bool:
        return "ro" in self.option_set


def _unescape(value: str) -> str:
    """Undo the kernel's octal escaping of space, tab, newline and backslash (\\040 and friends)."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        chunk = value[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_mountinfo_line(line: str) -> MountInfo:
    fields = line.split(" ")
    try:
        separator = fields.index("-", 6)
        mount_id, parent_id, major_minor, root, mount_point, options = fields[:6]
        fs_type, source, super_options = fields[separator + 1 : separator + 4]
        return MountInfo(
            mount_id=int(mount_id),
            parent_id=int(parent_id),
            major_minor=major_minor,
            root=_unescape(root),
            mount_point=_unescape(mount_point),
            options=options,
            optional_fields=tuple(fields[6:separator]),
            fs_type=fs_type,
            source=_unescape(source),
            super_options=super_options,
            option_set=frozenset(options.split(",")),
        )
    except (ValueError, IndexError) as exc:
        raise ValueError(f"malformed mountinfo line {line!r}") from exc


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse the whole text of a mountinfo file, in the kernel's order (parents before children)."""
    return [parse_mountinfo_line(line) for line in text.splitlines() if line.strip()]


def read_mountinfo() -> list[MountInfo]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def _is_under(mount_point: str, root: str) -> bool:
    if root == "/":
        return True
    return mount_point == root or mount_point.startswith(root + "/")


def mounts_under(path: str | os.PathLike[str]) -> list[MountInfo]:
    """Mounts at or below path (path resolved through symlinks, as the kernel reports real paths)."""
    root = os.path.realpath(path)
    return [m for m in read_mountinfo() if _is_under(m.mount_point, root)]


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """True when something is mounted exactly at path (bind mounts of files included; symlinks followed)."""
    answer = _mount_root(path)
    if answer is not None:
        return answer
    target = os.path.realpath(path)
    return any(m.mount_point == target for m in read_mountinfo())


def _mount_root(path: str | os.PathLike[str]) -> bool | None:
    """Whether path is the root of a mount, from statx(2); None when the kernel or libc cannot tell (the caller
    reads the mount table), or the path cannot be looked at. A path that does not exist is no mount point."""
    if _statx is None:
        return None
    buffer = ctypes.create_string_buffer(_STATX_BUFFER)
    if _statx(_AT_FDCWD, os.fsencode(path), _AT_NO_AUTOMOUNT, 0, buffer) != 0:
        return False if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR) else None
    raw = buffer.raw
    if not int.from_bytes(raw[_STATX_ATTRIBUTES_MASK], sys.byteorder) & STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(int.from_bytes(raw[_STATX_ATTRIBUTES], sys.byteorder) & STATX_ATTR_MOUNT_ROOT)


def _umount_tolerant(target: str) -> None:
    """Unmount one mount; fall back to a lazy unmount when busy; ignore a mount that is already gone."""
    for attempt in range(3):
        try:
            umount(target)
            return
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return  # already unmounted (e.g. detached together with its parent)
            if exc.errno != errno.EBUSY:
                raise
            if attempt < 2:
                time.sleep(0.01)
    umount(target, detach=True)


def unmount_all_under(path: str | os.PathLike[str]) -> None:
    """Unmount every mount at or below path, deepest (and most recent) first."""
    if _unmounted_alone(path):
        return
    mounts = mounts_under(path)
    ordered = sorted(mounts, key=lambda m: (m.mount_point.count("/"), m.mount_id), reverse=True)
    for m in ordered:
        _umount_tolerant(m.mount_point)


def _unmounted_alone(path: str | os.PathLike[str]) -> bool:
    """The common case, without the mount table: unmount what is mounted at path (stacked mounts one by one) and
    find an empty directory, or none, beneath. An unmount succeeds only for a mount with nothing mounted below it,
    and nothing can be mounted below an empty directory, so True means nothing is left at or below path. False
    (a mount below, one in use, entries beneath, a kernel that cannot tell) leaves the rest to the table's walk."""
    for _ in range(STACKED_MOUNTS_MAX):
        mounted = _mount_root(path)
        if mounted is None:
            return False
        if not mounted:
            return _nothing_beneath(path)
        try:
            umount(path)
        except OSError:
            return False
    return False


def _nothing_beneath(path: str | os.PathLike[str]) -> bool:
    """Whether path is an empty directory, or no directory at all: nothing can be mounted below it."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def mount_tmpfs(target: str | os.PathLike[str], size_bytes: int, mode: int = 0o755, flags: int = 0) -> None:
    """Mount a tmpfs of size_bytes (0 means the kernel default, half of RAM) at target."""
    options = [f"mode={mode:o}"]
    if size_bytes:
        options.append(f"size={size_bytes}")
    mount("tmpfs", target, "tmpfs", flags, ",".join(options))


def _escape_overlay_path(path: str) -> str:
    """Overlayfs splits lowerdir on ':' and the option string on ','; a backslash escapes both."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def overlay_options(lowerdirs: list[str], upper: str | None, work: str | None) -> str:
    """The overlay option string; lowerdirs are topmost first, as overlayfs expects."""
    if not lowerdirs:
        raise ValueError("an overlay mount needs at least one lower directory")
    options = ["lowerdir=" + ":".join(_escape_overlay_path(p) for p in lowerdirs)]
    if upper is not None and work is not None:
        options.append("upperdir=" + _escape_overlay_path(upper))
        options.append("workdir=" + _escape_overlay_path(work))
    return ",".join(options)


def mount_overlay(
    lowerdirs: list[Path],
    upper: Path | None,
    work: Path | None,
    target: Path,
    flags: int = 0,
) -> None:
    """Mount an overlay of lowerdirs (topmost first) with upper/work (both None: a read-only overlay).

    Long layer lists do not fit in a page of mount options. Then a temporary directory next to target gets one
    short symlink per directory (0, 1, ..., u, w) and the mount(8) helper mounts with that directory as its cwd,
    so the options name only the symlinks; the kernel resolves them at mount time and they are removed after.
    Changing the cwd of this (threaded) process is not an option.
    """
    options = overlay_options([os.fspath(p) for p in lowerdirs], _opt(upper), _opt(work))
    if len(options.encode()) <= MOUNT_DATA_LIMIT:
        mount("overlay", target, "overlay", flags, options)
        return
    extra = _flags_to_mount_options(flags)
    short = overlay_options([str(i) for i in range(len(lowerdirs))], "u" if upper else None, "w" if work else None)
    if extra:
        short += "," + extra
    if len(short) > MOUNT_DATA_LIMIT:
        raise OSError(errno.E2BIG, f"mount overlay on {os.fspath(target)}: {len(lowerdirs)} layers are too many",
                      os.fspath(target))
    link_dir = Path(tempfile.mkdtemp(prefix=f".{Path(target).name}-lower-", dir=Path(target).parent))
    try:
        for i, layer in enumerate(lowerdirs):
            os.symlink(os.path.abspath(layer), link_dir / str(i))
        if upper is not None and work is not None:
            os.symlink(os.path.abspath(upper), link_dir / "u")
            os.symlink(os.path.abspath(work), link_dir / "w")
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", short, os.path.abspath(target)],
            cwd=link_dir,
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise OSError(
            errno.EIO,
            f"mount overlay ({len(lowerdirs)} layers) on {os.fspath(target)}: {proc.stderr.strip()}",
            os.fspath(target),
        )


def _opt(path: Path | None) -> str | None:
    return os.fspath(path) if path is not None else None


def _flags_to_mount_options(flags: int) -> str:
    names = {MS_RDONLY: "ro", MS_NOSUID: "nosuid", MS_NODEV: "nodev", MS_NOEXEC: "noexec"}
    unsupported = flags & ~sum(names)
    if unsupported:
        raise ValueError(f"mount flags {unsupported:#x} cannot be passed to mount(8) for a long overlay mount")
    return ",".join(name for bit, name in names.items() if flags & bit)
