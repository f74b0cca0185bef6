"""What a container's spec takes from the node outside cripy's own directories, read in one go before anything
is made: the sources of its host-path mounts (symlinks resolved), its devices, its Localhost seccomp profile.

A path a request names may be on a network mount that hangs, so reading these belongs in the host-path pool
(blocking.HOST_PATHS), whose deadline lets CreateContainer give up. Everything CreateContainer does afterwards
(the rootfs, the user from the image's passwd, the spec, the bundle) touches only cripy's own directories and can
run in one trip to an ordinary worker thread; build_spec does no I/O on a path a request names.
Read-only and blocking: call from a thread in async code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from cripy.containers import seccomp
from cripy.containers.devices import build_devices
from cripy.containers.model import ContainerRequest
from cripy.errors import InvalidArgument


@dataclass(frozen=True)
class HostFacts:
    """mount_sources[i] is where request mount i comes from on the node: its host path with symlinks resolved, as
    the CRI asks ("" for an image volume until its mount is made, see with_sources). devices and device_rules are
    linux.devices and the device cgroup rules; seccomp_localhost is the Localhost profile's document, when the
    container asks for one."""

    mount_sources: tuple[str, ...] = ()
    devices: list[dict[str, Any]] = field(default_factory=list)
    device_rules: list[dict[str, Any]] = field(default_factory=list)
    seccomp_localhost: dict[str, Any] | None = None

    def with_sources(self, sources: Mapping[int, str]) -> HostFacts:
        """These facts with some mounts' sources replaced (an image volume's mount, an id-mapped view)."""
        return replace(self, mount_sources=tuple(sources.get(i, s) for i, s in enumerate(self.mount_sources)))


def read_host_facts(req: ContainerRequest, dev_root: str = "/dev") -> HostFacts:
    sec = req.security
    devices, rules = build_devices(req.devices, privileged=sec.privileged, dev_root=dev_root)
    profile = None
    if sec.seccomp.kind == "localhost" and not sec.privileged:
        profile = seccomp.load_localhost_profile(sec.seccomp.localhost_ref)
    return HostFacts(mount_sources=tuple(_mount_source(req, i) for i in range(len(req.mounts))), devices=devices,
                     device_rules=rules, seccomp_localhost=profile)


def _mount_source(req: ContainerRequest, index: int) -> str:
    mount = req.mounts[index]
    if mount.image:
        return ""  # an image volume: its image is looked up when the container is recorded
    where = f"container {req.name!r}: mounts[{index}] ({mount.container_path})"
    if not mount.host_path or not os.path.isabs(mount.host_path):
        raise InvalidArgument(f"{where}: host path {mount.host_path!r} is not absolute")
    real = os.path.realpath(mount.host_path)
    if not os.path.exists(real):
        raise InvalidArgument(f"{where}: host path {mount.host_path} does not exist")
    return real
