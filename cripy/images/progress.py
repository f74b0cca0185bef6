"""Progress of the pulls and imports in flight, layer by layer, and the pull counts since start.

The puller and the importer describe each operation here as it goes (which layers, how many bytes of each are in,
which are waiting, unpacking, already present); the admin service streams it to `cripy ctl pull` and `cripy image
import` for their progress bars, and the metrics read the totals when scraped. Updates are plain attribute writes
(a layer's bytes move once per downloaded chunk); nobody is woken per chunk: watchers look at a version number a
few times a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Layer states, in the order a layer goes through them.
WAITING = "waiting"  # for a download slot
DOWNLOADING = "downloading"
COPYING = "copying"  # an import's blob, out of the archive
UNPACKING = "unpacking"  # all bytes in; the unpacker finishes
DONE = "done"
PRESENT = "present"  # the node had it already: nothing to fetch
FAILED = "failed"

# Operation states.
RESOLVING = "resolving"  # registries, manifest, config: the layers are not known yet
FETCHING = "fetching"
SUCCEEDED = "succeeded"

PULL = "pull"
IMPORT = "import"
KEEP_FINISHED_SECONDS = 30.0  # a watcher that arrives just after the end still sees how it ended


@dataclass
class LayerProgress:
    digest: str
    size: int
    done: int = 0
    state: str = WAITING
    started: float = 0.0  # monotonic: when its bytes started to flow
    ended: float = 0.0
    operation: Operation | None = field(default=None, repr=False)

    def begin(self, state: str = DOWNLOADING) -> None:
        self.state, self.started = state, time.monotonic()
        self.done = 0  # a retried download starts over (or resumes: the registry client reports from where)
        self._changed()

    def advance(self, done: int) -> None:
        self.done = done
        self._changed()

    def set_state(self, state: str) -> None:
        self.state = state
        if state in (DONE, PRESENT, FAILED):
            self.ended = time.monotonic()
            if state != FAILED:
                self.done = self.size
        self._changed()

    def _changed(self) -> None:
        if self.operation is not None:
            self.operation.version += 1


@dataclass
class Operation:
    """One pull (named by the image as requested) or import (named by the id its client chose)."""

    kind: str
    name: str
    started: float = field(default_factory=time.monotonic)
    state: str = RESOLVING
    error: str = ""
    image_id: str = ""
    layers: list[LayerProgress] = field(default_factory=list)
    version: int = 0
    ended: float = 0.0

    def set_layers(self, layers: list[LayerProgress]) -> None:
        for layer in layers:
            layer.operation = self
        self.layers = layers
        self.state = FETCHING
        self.version += 1

    @property
    def finished(self) -> bool:
        return self.state in (SUCCEEDED, FAILED)

    @property
    def bytes_done(self) -> int:
        return sum(layer.done for layer in self.layers if layer.state != PRESENT)

    def snapshot(self) -> dict:
        """As the admin service sends it (JSON)."""
        now = time.monotonic()
        return {
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "error": self.error,
            "imageId": self.image_id,
            "seconds": round((self.ended or now) - self.started, 3),
            "layers": [
                {"digest": layer.digest, "size": layer.size, "done": layer.done, "state": layer.state,
                 "seconds": round(((layer.ended or now) - layer.started) if layer.started else 0.0, 3)}
                for layer in self.layers
            ],
        }


@dataclass
class PullCounts:
    """Pulls since start: what the metrics report (observe/metrics.py)."""

    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by reason: the gRPC code name of the failure
    bytes: int = 0  # blob bytes received from registries (configs and layers; a retried range counts again)
    layers: int = 0  # layers downloaded (not those the node had)


class ProgressBoard:
    """The operations in flight, and those finished in the last KEEP_FINISHED_SECONDS."""

    def __init__(self) -> None:
        self._operations: dict[tuple[str, str], Operation] = {}
        self.pulls = PullCounts()

    def begin(self, kind: str, name: str) -> Operation:
        self._prune()
        operation = Operation(kind, name)
        self._operations[(kind, name)] = operation
        return operation

    def finish(self, operation: Operation, error: BaseException | None = None, image_id: str = "") -> None:
        operation.state = FAILED if error is not None else SUCCEEDED
        operation.error = str(error) if error is not None else ""
        operation.image_id = image_id
        operation.ended = time.monotonic()
        operation.version += 1

    def find(self, kind: str, name: str) -> Operation | None:
        return self._operations.get((kind, name))

    def in_flight(self, kind: str) -> list[Operation]:
        return [op for op in list(self._operations.values()) if op.kind == kind and not op.finished]

    def _prune(self) -> None:
        horizon = time.monotonic() - KEEP_FINISHED_SECONDS
        for key, operation in list(self._operations.items()):
            if operation.finished and operation.ended < horizon:
                del self._operations[key]
