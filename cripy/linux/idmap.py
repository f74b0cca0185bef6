"""Id mappings and id-mapped mounts: what a user namespace's uid_map/gid_map say, and bind mounts that show a
directory's files through such a mapping (mount_setattr(2) with MOUNT_ATTR_IDMAP, Linux 5.12; overlayfs accepts
id-mapped lower layers from Linux 5.19).

An id-mapped mount of a directory whose files are owned by uid 0, made with a user namespace that maps container
uid 0 to host uid 100000, shows those files owned by host uid 100000 (container root, inside that namespace), and
writes through it land on disk as uid 0 again. Nothing on disk changes: no copy, no chown.

The mounts are made in three steps on a file descriptor (open_tree(2) clone, mount_setattr(2), move_mount(2)), so
a mount appears at its target only once it is id-mapped. Everything here is synchronous: call it from a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cripy import faults

# System call numbers added since Linux 5.1 are the same on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
MAX_ID = 2**32 - 1  # (uid_t)-1 is "no id" and cannot be mapped

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    """struct mount_attr (MOUNT_ATTR_SIZE_VER0, 32 bytes)."""

    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


@dataclass(frozen=True)
class IDRange:
    """One line of a uid_map or gid_map: `length` ids from `container_id` inside are `host_id`... outside."""

    container_id: int
    host_id: int
    length: int

    def problem(self) -> str | None:
        """Why this range cannot be written to a user namespace's map, None when it can."""
        if self.length <= 0:
            return f"length {self.length} must be positive"
        for name, start in (("container_id", self.container_id), ("host_id", self.host_id)):
            if start < 0 or start + self.length > MAX_ID:
                return f"{name} {start} + length {self.length} leaves the id space (0..{MAX_ID - 1})"
        return None


def map_text(ranges: Sequence[IDRange]) -> str:
    """The uid_map/gid_map text of `ranges` (the kernel takes it in one write)."""
    return "".join(f"{r.container_id} {r.host_id} {r.length}\n" for r in ranges)


def to_host(ranges: Sequence[IDRange], container_id: int) -> int | None:
    """The host id that `container_id` is inside the mapping, None when it is not mapped."""
    for r in ranges:
        if r.container_id <= container_id < r.container_id + r.length:
            return r.host_id + container_id - r.container_id
    return None


def idmapped_bind(source: Path, target: Path, userns: Path, *, recursive: bool = False) -> None:
    """Bind `source` at `target` (an existing directory or file) id-mapped through the user namespace at `userns`
    (a /proc/<pid>/ns/user or a pinned one). `recursive` takes the mounts below `source` along, each id-mapped; a
    filesystem that cannot be id-mapped fails the whole call (EINVAL) and nothing is mounted."""
    tree = _open_tree(source, recursive)
    try:
        userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _set_idmap(tree, userns_fd, source, recursive)
        finally:
            os.close(userns_fd)
        _move_mount(tree, target)
    finally:
        os.close(tree)
    faults.point("mount.idmap")


def idmap_problem(path: Path, userns: Path) -> str | None:
    """Why an id-mapped bind of `path` cannot be made on this node (kernel, filesystem), None when it can.

    The check makes the mount on a detached copy of the tree and drops it: nothing appears anywhere.
    """
    try:
        tree = _open_tree(path, False)
    except OSError as err:
        return f"open_tree({path}): {err.strerror}"
    try:
        userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _set_idmap(tree, userns_fd, path, False)
        finally:
            os.close(userns_fd)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return "the kernel has no mount_setattr(2) (Linux 5.12 or later)"
        if err.errno == errno.EINVAL:
            return f"the filesystem of {path} cannot be id-mapped (mount_setattr MOUNT_ATTR_IDMAP: EINVAL)"
        return f"mount_setattr(MOUNT_ATTR_IDMAP) on {path}: {err.strerror}"
    finally:
        os.close(tree)
    return None


def _open_tree(path: Path, recursive: bool) -> int:
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(os.fsencode(path)),
                       ctypes.c_uint(flags))
    if fd < 0:
        _raise("open_tree", path)
    return int(fd)


def _set_idmap(tree: int, userns_fd: int, path: Path, recursive: bool) -> None:
    attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, attr_clr=0, propagation=0, userns_fd=userns_fd)
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    result = _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(tree), ctypes.c_char_p(b""),
                           ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if result < 0:
        _raise("mount_setattr(MOUNT_ATTR_IDMAP) of", path)


def _move_mount(tree: int, target: Path) -> None:
    result = _libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree), ctypes.c_char_p(b""),
                           ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(os.fsencode(target)),
                           ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))
    if result < 0:
        _raise("move_mount to", target)


def _raise(action: str, path: Path) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{action} {os.fspath(path)}: {os.strerror(err)}", os.fspath(path))
