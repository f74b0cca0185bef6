"""What a container is made of on the node, as blocking functions its manager runs in worker threads: the overlay
rootfs (over id-mapped views of the image's layers, in a pod with its own user namespace), the id-mapped views of
its volumes, its image volumes' mounts, and the OCI bundle with the image's anonymous volumes. Each of these is
journalled by the manager before it is made; the functions that undo them never remove recursively through a
mount."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cripy.containers import imagevolumes
from cripy.containers.model import ContainerRequest, Mount
from cripy.errors import FailedPrecondition
from cripy.linux import idmap, namespaces
from cripy.linux import mount as mnt
from cripy.oci import bundle as bundle_config


@dataclass(frozen=True)
class RootfsMapping:
    """How a rootfs is seen from a pod's user namespace: the namespace, its root's host ids, where the id-mapped
    views of the layers are made."""

    userns: Path
    root_ids: tuple[int, int]
    idmap_dir: Path


def mount_rootfs(ctr_dir: Path, layers: list[Path], target: Path, mapping: RootfsMapping | None = None) -> None:
    for sub in ("upper", "work"):
        (ctr_dir / sub).mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    lower = list(reversed(layers))  # overlay wants the topmost layer first
    if not lower:
        (ctr_dir / "empty").mkdir(exist_ok=True)
        lower = [ctr_dir / "empty"]
    if mapping is None:
        mnt.mount_overlay(lower, ctr_dir / "upper", ctr_dir / "work", target)
        return
    # The overlay's root directory is its upper directory's: the pod's root must own it to write in /.
    os.chown(ctr_dir / "upper", *mapping.root_ids)
    views = idmapped_layers(lower, mapping.userns, mapping.idmap_dir / "layers")
    try:
        mnt.mount_overlay(views, ctr_dir / "upper", ctr_dir / "work", target)
    finally:
        drop_views(views)


def mount_image_volume(directory: Path, index: int, layers: list[Path], mount: Mount, views_dir: Path,
                        where: str) -> Path:
    if not mount.idmapped:
        return imagevolumes.mount_image_volume(directory, index, layers, mount.image_sub_path, where)
    maps = namespaces.UserMaps(tuple(mount.uid_mappings), tuple(mount.gid_mappings))
    with namespaces.scratch_user_namespace(maps) as userns:
        views = idmapped_layers(layers, userns, views_dir)
    try:
        return imagevolumes.mount_image_volume(directory, index, views, mount.image_sub_path, where)
    finally:
        drop_views(views)


def idmapped_layers(layers: list[Path], userns: Path, views_dir: Path) -> list[Path]:
    """An id-mapped view of each layer, in order, under views_dir (undone together if one fails)."""
    views: list[Path] = []
    try:
        for i, layer in enumerate(layers):
            view = views_dir / str(i)
            view.mkdir(parents=True, exist_ok=True)
            idmap.idmapped_bind(layer, view, userns)
            views.append(view)
    except OSError as err:
        drop_views(views)
        raise FailedPrecondition(f"cannot id-map image layer {layer} for the pod's user namespace: {err}") from err
    return views


def drop_views(views: list[Path]) -> None:
    """An overlay holds its layers by reference: their id-mapped views need no place in the mount table once it is
    mounted (or failed)."""
    for view in views:
        mnt.umount(view, detach=True)
        view.rmdir()


def idmapped_mount_sources(request: ContainerRequest, sources: tuple[str, ...], mounts_dir: Path) -> dict[int, str]:
    """Where each of the request's mounts with uid/gid mappings is bound from: an id-mapped view of its source
    (sources[i], the host path resolved), made under mounts_dir/<index> with a user namespace of their own
    mappings, which the mount keeps alive."""
    views: dict[int, str] = {}
    for i, mount in enumerate(request.mounts):
        if not mount.idmapped or mount.image:  # an image volume's mappings apply to its layers (mount_image_volume)
            continue
        source = Path(sources[i])
        view = mounts_dir / str(i)
        view.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            view.mkdir(exist_ok=True)
        else:
            view.touch(exist_ok=True)
        maps = namespaces.UserMaps(tuple(mount.uid_mappings), tuple(mount.gid_mappings))
        try:
            with namespaces.scratch_user_namespace(maps) as userns:
                idmap.idmapped_bind(source, view, userns, recursive=True)
        except OSError as err:
            raise FailedPrecondition(f"container {request.name!r}: mounts[{i}] ({mount.container_path}): cannot make "
                                     f"an id-mapped mount of {source}: {err}") from err
        views[i] = str(view)
    return views


def remove_idmap_dir(path: Path) -> None:
    """Unmount every id-mapped view under `path`, then remove the empty places they were mounted on. Nothing is
    removed recursively: a view still mounted (unmount failed) makes rmdir/unlink fail, never empties a host path."""
    if not path.exists():
        return
    mnt.unmount_all_under(path)
    # layers/<n> and mounts/<n> are views; image-volumes/<volume>/<n> are the views of each image volume's layers.
    for sub, depth in (("layers", 1), ("mounts", 1), ("image-volumes", 2)):
        directory = path / sub
        if directory.is_dir():
            _remove_view_places(directory, depth)
    path.rmdir()


def _remove_view_places(directory: Path, depth: int) -> None:
    """The places views were mounted on, `depth` levels down, then the directory. Never looks inside a place."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if depth > 1:
                _remove_view_places(entry, depth - 1)
            else:
                entry.rmdir()
        else:
            entry.unlink()  # the empty file a single-file view was mounted on
    directory.rmdir()


def unmount_all(path: Path) -> None:
    if path.exists():
        mnt.unmount_all_under(path)


def write_bundle(bundle: Path, spec: dict, volume_dirs: list[Path], log_path: Path,
                  root_ids: tuple[int, int] = (0, 0)) -> None:
    """The bundle, the image's anonymous volumes (owned by the container's root, as seen from its pod) and the log's
    directory."""
    bundle.mkdir(parents=True, exist_ok=True)
    for directory in volume_dirs:
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, *root_ids)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bundle_config.write_config(bundle, spec)


def update_bundle_resources(bundle: Path, resources: dict) -> None:
    """Resources of a container not started yet: they go into its spec, which runc reads at start."""
    spec = bundle_config.read_config(bundle)
    devices = spec.get("linux", {}).get("resources", {}).get("devices", [])
    spec.setdefault("linux", {})["resources"] = {**resources, "devices": devices}
    bundle_config.write_config(bundle, spec)
