"""What a container is made of on the node, made for CreateContainer and taken back through the journal.

Its directories, the id-mapped views of a pod in a user namespace, the overlay rootfs, its image volumes' mounts,
the process user resolved in the rootfs, the OCI spec and the bundle. Each effect is journalled before it is made
(ctr-dirs, ctr-idmap, ctr-rootfs, ctr-image-volumes: effects() lists them, the manager journals them with the
container's record); the undo functions registered here take them back, for a failed create, a removal, or
recovery after a crash. Where each piece lives is ContainerPaths.

In a pod with its own user namespace the rootfs is an overlay of id-mapped views of the shared image layers (the
image's root-owned files are the pod root's, nothing is copied or chowned) over an upper directory owned by the
pod's root, mounted at <run root>/rootfs/<id>: runc reaches the rootfs as the pod's root, so every directory on
the way must let others search it, which the root directory (0700: the database, the layers) must not. A mount
that asks for uid/gid mappings is bound from an id-mapped view of its host path. These views live under
<run root>/idmap/<id>, away from the container's directories, whose removal must never reach through a mount
into a host path.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from cripy.containers import context, imagevolumes
from cripy.containers import rootfs as fs
from cripy.containers.container import Container
from cripy.containers.hostfacts import HostFacts
from cripy.containers.model import ContainerRequest, ImageRuntimeConfig
from cripy.containers.spec import BuiltSpec, SpecSettings, build_spec
from cripy.containers.users import ProcessUser, resolve_user
from cripy.images.store import Image, ImageStore
from cripy.pods.model import PodSandbox
from cripy.storage.effects import Effect, EffectJournal
from cripy.storage.layout import Layout
from cripy.timing import step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerPaths:
    """Where one container's pieces live (the directories that hold them are the Layout's)."""

    layout: Layout

    def dir(self, ctr_id: str) -> Path:
        """upper/, work/, merged/, volumes/, image-volumes/: what outlives a reboot."""
        return self.layout.containers / ctr_id

    def bundle(self, ctr_id: str) -> Path:
        return self.layout.bundles / ctr_id

    def rootfs(self, ctr_id: str, pod: PodSandbox) -> Path:
        """Where the container's overlay is mounted; in a pod with its own user namespace, on a path the pod's
        root can search (the root directory is 0700)."""
        if pod.userns is not None:
            return self.layout.userns_rootfs / ctr_id
        return self.dir(ctr_id) / "merged"

    def upper(self, ctr_id: str) -> Path:
        return self.dir(ctr_id) / "upper"

    def idmap(self, ctr_id: str) -> Path:
        """The id-mapped views, away from the container's directories: their removal must never reach through a
        mount into a host path."""
        return self.layout.idmap / ctr_id


class ContainerSetUp:
    """Makes a container's pieces (set_up) and registers the journal's undo functions for them."""

    def __init__(self, journal: EffectJournal, images: ImageStore, paths: ContainerPaths,
                 settings: SpecSettings) -> None:
        self._images = images
        self._paths = paths
        self._settings = settings
        self._warned: set[str] = set()
        journal.register("ctr-dirs", self._undo_dirs)
        journal.register("ctr-idmap", self._undo_idmap)
        journal.register("ctr-rootfs", self._undo_rootfs)
        journal.register("ctr-image-volumes", self._undo_image_volumes)

    async def set_up(self, container: Container, pod: PodSandbox, image: Image, target_pid_ns: str | None,
                     host: HostFacts) -> None:
        """Everything up to the bundle, as effects() lists it (the caller has journalled those); sets the
        container's process user, stop signal and cgroup path.

        It is made in one trip to a worker thread (each trip costs two thread wake-ups, more than most of the
        work): everything here is in cripy's own directories, and what it needs from paths the request names is
        in `host`, read ahead in the host-path pool."""
        volume_layers = {i: await self._images.layer_dirs(m.image_id)
                         for i, m in enumerate(container.request.mounts) if m.image}
        image_config = context.image_runtime_config(image)
        user, built = await asyncio.to_thread(self._make, container, pod, image, image_config, target_pid_ns, host,
                                              volume_layers)
        container.process_user = user
        for warning in built.warnings:
            # A node-wide limit (e.g. no CAP_SYS_RESOURCE) would repeat for every container: said once, then quiet.
            level = logging.DEBUG if warning in self._warned else logging.WARNING
            self._warned.add(warning)
            log.log(level, "container %s (%s): %s", container.id, container.name, warning)
        container.stop_signal = container.request.stop_signal or image_config.stop_signal
        container.cgroup_path = built.spec["linux"]["cgroupsPath"]

    def effects(self, container: Container, pod: PodSandbox) -> list[tuple[str, dict]]:
        """What set_up makes, in the order it makes it (undone newest first): to journal before set_up."""
        ctr_dir = self._paths.dir(container.id)
        rootfs = self._paths.rootfs(container.id, pod)
        effects: list[tuple[str, dict]] = [
            ("ctr-dirs", {"paths": [str(ctr_dir), str(self._paths.bundle(container.id)), str(rootfs)]})]
        if pod.userns is not None or any(m.idmapped for m in container.request.mounts):
            effects.append(("ctr-idmap", {"path": str(self._paths.idmap(container.id))}))
        effects.append(("ctr-rootfs", {"path": str(rootfs)}))
        if any(m.image for m in container.request.mounts):
            effects.append(("ctr-image-volumes", {"path": str(imagevolumes.volumes_dir(ctr_dir))}))
        return effects

    def _make(self, container: Container, pod: PodSandbox, image: Image, image_config: ImageRuntimeConfig,
              target_pid_ns: str | None, host: HostFacts,
              volume_layers: dict[int, list[Path]]) -> tuple[ProcessUser, BuiltSpec]:
        """The rootfs, the image volumes and id-mapped mounts, the process user, the spec and the bundle (blocking)."""
        ctr_dir = self._paths.dir(container.id)
        rootfs = self._paths.rootfs(container.id, pod)
        idmap_dir = self._paths.idmap(container.id)
        request = container.request
        with step("ctr.rootfs"):
            userns = pod.namespace_path("user")
            fs.mount_rootfs(ctr_dir, self._images.layer_dirs_of(image), rootfs,
                            fs.RootfsMapping(userns, pod.host_ids(), idmap_dir) if userns is not None else None)
        with step("ctr.volumes"):
            sources = self._mount_image_volumes(request, ctr_dir, idmap_dir, volume_layers)
            sources.update(fs.idmapped_mount_sources(request, host.mount_sources, idmap_dir / "mounts"))
        with step("ctr.spec"):
            sec = request.security
            user = resolve_user(rootfs, run_as_user=sec.run_as_user, run_as_group=sec.run_as_group,
                                run_as_username=sec.run_as_username, image_user=image_config.user,
                                supplemental_groups=sec.supplemental_groups,
                                supplemental_groups_policy=sec.supplemental_groups_policy)
            built = build_spec(request, image_config, ctr_id=container.id, rootfs=rootfs, user=user,
                               pod=context.pod_context(pod), settings=self._settings,
                               host=host.with_sources(sources), volumes_dir=ctr_dir / "volumes",
                               target_pid_ns=target_pid_ns)
        with step("ctr.bundle"):
            fs.write_bundle(self._paths.bundle(container.id), built.spec, built.volume_dirs, Path(container.log_path),
                            pod.host_ids())
        return user, built

    @staticmethod
    def _mount_image_volumes(request: ContainerRequest, ctr_dir: Path, idmap_dir: Path,
                             volume_layers: dict[int, list[Path]]) -> dict[int, str]:
        """Mount the container's image volumes (blocking); where each is bound from, by its index in the request's
        mounts: its mount, or the sub-path in it, read-only.

        An image volume with uid/gid mappings (a pod in a user namespace) is an overlay of id-mapped views of the
        image's layers, as the rootfs is: an overlay mount cannot be id-mapped itself, so its bind takes none."""
        directory = imagevolumes.volumes_dir(ctr_dir)
        sources: dict[int, str] = {}
        for i, layers in volume_layers.items():
            mount = request.mounts[i]
            where = f"container {request.name!r}: mounts[{i}] (image volume {mount.image} at {mount.container_path})"
            source = fs.mount_image_volume(directory, i, layers, mount, idmap_dir / "image-volumes" / str(i), where)
            sources[i] = str(source)
        return sources

    # ---- undo functions -----------------------------------------------------------------------------------

    async def _undo_dirs(self, effect: Effect) -> None:
        for path in effect.data["paths"]:
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def _undo_rootfs(self, effect: Effect) -> None:
        await asyncio.to_thread(fs.unmount_all, Path(effect.data["path"]))

    async def _undo_image_volumes(self, effect: Effect) -> None:
        await asyncio.to_thread(imagevolumes.unmount_image_volumes, Path(effect.data["path"]))

    async def _undo_idmap(self, effect: Effect) -> None:
        await asyncio.to_thread(fs.remove_idmap_dir, Path(effect.data["path"]))
