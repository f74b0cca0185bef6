"""Image volumes (KEP-4639): the filesystem of an image mounted read-only into one container.

Each volume is a read-only overlay of the image's unpacked layers, lower directories only (nothing can write
through an overlay without an upper directory), at `<container dir>/image-volumes/<n>`, n being the mount's index
in the request. The container's bind mount takes it from there: the whole image, or the sub-path the request
names, resolved inside the image as the container would see it (symlinks followed, never out of the image).

overlayfs wants two lower directories at least when it has no upper one: a one-layer image gets an empty directory
beneath its layer. An image without layers is an empty directory, nothing mounted (the bind makes it read-only).

Blocking file system work: call from a thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from cripy import faults
from cripy.containers.users import resolve_in_root
from cripy.errors import FailedPrecondition, InvalidArgument
from cripy.linux import mount as mnt

VOLUMES_DIR = "image-volumes"
_EMPTY_LAYER = "empty"


def volumes_dir(ctr_dir: Path) -> Path:
    """Where a container's image volumes are mounted (what the journal records before the first mount)."""
    return ctr_dir / VOLUMES_DIR


def mount_image_volume(directory: Path, index: int, layers: list[Path], sub_path: str, where: str) -> Path:
    """Mount the image whose layer directories are `layers` (lowest first) as volume `index` under `directory`;
    the host path the container's bind mount should take: the mount point, or `sub_path` inside it."""
    target = directory / str(index)
    target.mkdir(parents=True, exist_ok=True)
    lower = list(reversed(layers))  # overlay wants the topmost layer first
    if len(lower) == 1:
        empty = directory / _EMPTY_LAYER
        empty.mkdir(exist_ok=True)
        lower.append(empty)
    if lower:
        mnt.mount_overlay(lower, None, None, target, flags=mnt.MS_RDONLY)
        # Its own point: the rootfs overlay of the same create passes `mount.overlay` first.
        faults.point("image-volume.mounted")
    return _bind_source(target, sub_path, where) if sub_path else target


def _bind_source(root: Path, sub_path: str, where: str) -> Path:
    """`sub_path` inside the mounted image, every symlink resolved within it. The view is read-only, so what is
    resolved here is what runc binds: no link can change in between."""
    try:
        source = resolve_in_root(root, sub_path)
        st = os.lstat(source)
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidArgument(f"{where}: image_sub_path {sub_path!r} does not exist in the image") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidArgument(f"{where}: image_sub_path {sub_path!r}: too many symbolic links") from None
        raise
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InvalidArgument(f"{where}: image_sub_path {sub_path!r} is neither a directory nor a regular file")
    return source


def unmount_image_volumes(directory: Path) -> None:
    """Unmount every image volume under `directory` and remove it; idempotent. The tree is removed only once
    nothing is mounted below it, so the removal can never reach into the layers."""
    if not directory.exists():
        return
    mnt.unmount_all_under(directory)
    left = mnt.mounts_under(directory)
    if left:
        raise FailedPrecondition(f"image volumes under {directory}: {left[0].mount_point} is still mounted")
    shutil.rmtree(directory)
