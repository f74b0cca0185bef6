"""Where things live on disk under the root (persistent) and the run root (tmpfs, gone at reboot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Every path the daemon writes, derived from the two roots."""

    root: Path
    runroot: Path

    @property
    def database(self) -> Path:
        return self.root / "cripy.db"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    def layer_dir(self, chain_id: str) -> Path:
        """The directory of one layer; its unpacked content is in `diff/`."""
        return self.layers / _hex(chain_id)

    def layer_diff(self, chain_id: str) -> Path:
        return self.layer_dir(chain_id) / "diff"

    @property
    def layers_lock(self) -> Path:
        """Held shared while a layer is written or removed, exclusive while the audit compares (layerlock.py)."""
        return self.root / "layers.lock"

    @property
    def downloads(self) -> Path:
        """Blobs being downloaded; anything here at start-up is a leftover and is removed."""
        return self.root / "tmp"

    @property
    def containers(self) -> Path:
        """<id>/: a container's upper/, work/, merged/ (its overlay), volumes/, image-volumes/."""
        return self.root / "containers"

    @property
    def cni_cache(self) -> Path:
        return self.root / "cni-cache"

    # ---- under the run root (gone at reboot) ----

    @property
    def pods(self) -> Path:
        """<id>/: a pod's files, pinned namespaces, shm and infra bundle."""
        return self.runroot / "pods"

    @property
    def bundles(self) -> Path:
        """<id>/: a container's OCI bundle, pid files and conmon's persist/ directory."""
        return self.runroot / "containers"

    @property
    def userns_rootfs(self) -> Path:
        """<id>: the overlay rootfs of a container in a user namespace (its root must be able to reach it)."""
        return self.runroot / "rootfs"

    @property
    def idmap(self) -> Path:
        """<id>/: a container's id-mapped views of layers and volumes."""
        return self.runroot / "idmap"

    @property
    def exits(self) -> Path:
        """<id>: the exit files conmon writes."""
        return self.runroot / "exits"

    def runtime_state(self, handler: str) -> Path:
        """The OCI runtime's own state directory (`runc --root`) for a handler that configures none."""
        return self.runroot / "runtimes" / handler

    @property
    def attach(self) -> Path:
        """conmon's links to bundles, named short enough for a unix socket path."""
        return self.runroot / "attach"

    @property
    def exec_calls(self) -> Path:
        """runc's pid files and logs of exec calls in flight (emptied at start)."""
        return self.runroot / "exec"

    @property
    def container_bases(self) -> tuple[Path, ...]:
        """Every directory that holds one entry per container."""
        return (self.containers, self.bundles, self.userns_rootfs, self.idmap)

    def ensure(self) -> None:
        for path in (self.root, self.layers, self.downloads, self.containers, self.runroot):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest
