"""The devices of a container's OCI spec: linux.devices and the device cgroup rules, from the CRI's devices (a
device node, or a directory of them under /dev, as device plugins hand over) or, for a privileged container, every
device of the host's /dev. Read-only I/O (stat, a walk of /dev): call from a thread in async code."""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Any

from cripy.containers.model import Device
from cripy.errors import InvalidArgument

# Host /dev entries a privileged container does not get as device nodes (pseudo filesystems, the console).
_HOST_DEV_SKIP_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}
_HOST_DEV_SKIP_FILES = {"console"}
MAX_DEVICES_PER_DIRECTORY = 4096


def build_devices(
    requested: list[Device], *, privileged: bool, dev_root: str = "/dev"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """linux.devices and the device cgroup rules: deny all, then allow each requested device (privileged: all)."""
    entries: dict[str, dict[str, Any]] = {}
    rules: list[dict[str, Any]] = []
    if privileged:
        for path, st in host_devices(dev_root):
            entries[path] = _device_entry(path, st)
        rules.append({"allow": True, "access": "rwm"})
    else:
        rules.append({"allow": False, "access": "rwm"})
    for i, dev in enumerate(requested):
        for container_path, st in _requested_device_nodes(dev, f"devices[{i}]", dev_root):
            entry = _device_entry(container_path, st)
            entries[container_path] = entry
            if not privileged:
                rules.append({"allow": True, "type": entry["type"], "major": entry["major"],
                              "minor": entry["minor"], "access": dev.permissions or "rwm"})
    return list(entries.values()), rules


def host_devices(dev_root: str = "/dev") -> list[tuple[str, os.stat_result]]:
    """Every character/block device under dev_root (as /dev/... paths), skipping pseudo-fs directories."""
    found = []
    for dirpath, dirnames, filenames in os.walk(dev_root):
        if dirpath == dev_root:
            dirnames[:] = [d for d in dirnames if d not in _HOST_DEV_SKIP_DIRS]
        for name in filenames:
            if dirpath == dev_root and name in _HOST_DEV_SKIP_FILES:
                continue
            host_path = os.path.join(dirpath, name)
            st = _device_node(host_path)
            if st is not None:
                found.append(("/dev/" + os.path.relpath(host_path, dev_root), st))
    return sorted(found, key=lambda item: item[0])


def _device_node(path: str) -> os.stat_result | None:
    """The path's stat if it is a character or block device itself (links are not followed); None otherwise,
    also when it went away while /dev was walked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st if _is_device(st) else None


def _is_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)


def _requested_device_nodes(dev: Device, where: str, dev_root: str) -> list[tuple[str, os.stat_result]]:
    try:
        st = os.stat(dev.host_path)
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidArgument(f"{where}: host device {dev.host_path} does not exist") from None
    if _is_device(st):
        return [(dev.container_path, st)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{where}: {dev.host_path} is neither a device nor a directory of devices")
    # A directory of devices is one of /dev's (what device plugins hand over: /dev/snd, /dev/dri): walking any
    # other directory ("/", /proc) would be a walk of the host, and find no devices that belong to a container.
    real, root = os.path.realpath(dev.host_path), os.path.realpath(dev_root)
    if real != root and not real.startswith(root + "/"):
        raise InvalidArgument(f"{where}: {dev.host_path} is a directory outside {dev_root}: only a device or a "
                              f"directory of devices under {dev_root} can be given")
    nodes = []
    for dirpath, _dirnames, filenames in os.walk(real):
        for name in sorted(filenames):
            host_path = os.path.join(dirpath, name)
            node = _device_node(host_path)
            if node is not None:
                rel = os.path.relpath(host_path, real)
                nodes.append((posixpath.join(dev.container_path, rel), node))
                if len(nodes) > MAX_DEVICES_PER_DIRECTORY:
                    raise InvalidArgument(f"{where}: {dev.host_path} holds more than {MAX_DEVICES_PER_DIRECTORY} "
                                          "devices")
    if not nodes:
        raise InvalidArgument(f"{where}: directory {dev.host_path} contains no devices")
    return nodes


def _device_entry(path: str, st: os.stat_result) -> dict[str, Any]:
    return {
        "path": path,
        "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
