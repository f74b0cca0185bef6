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
        return self.root / "containers"

    def ensure(self) -> None:
        for path in (self.root, self.layers, self.downloads, self.containers, self.runroot):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest
