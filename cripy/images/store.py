"""The image store: image metadata in SQLite and unpacked layers on disk, shared between images.

It owns: looking images up by id, name or digest; adding an image once its layers are in place (each layer
unpacked once, keyed by its chain id, fetched at most once even when two pulls want it at the same moment);
removing names and images (never one a container mounts as an image volume), and the layers nothing uses any
more; the usage figures for ImageFsInfo; and the start-up clean-up of whatever a crash left half-done. Fetching
blobs is the caller's business (pull.py, archive.py): the store is handed a `fetch` function for each layer it does
not have.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

from cripy.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from cripy.images import imagerows, progress
from cripy.images.chunkpipe import ChunkPipe, ConsumerGone, start_reader_thread
from cripy.images.layerlock import LayerLock, LayerLockTimeout
from cripy.images.progress import LayerProgress
from cripy.images.reference import Reference, parse_normalized
from cripy.storage.db import Database
from cripy.storage.layout import Layout
from cripy.timing import step

if TYPE_CHECKING:
    from cripy.images.unpack import UnpackedLayer

log = logging.getLogger(__name__)
T = TypeVar("T")

# fetch(dest) downloads or copies one layer blob to dest, verified against its compressed digest.
LayerFetch = Callable[[Path], Awaitable[None]]
# stream(sink) hands the layer blob to sink chunk by chunk (awaiting it: that is the back-pressure) and returns
# only once the blob is complete and verified against its compressed digest; it raises otherwise.
LayerStream = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]

# Compressed bytes allowed between a layer's download and its unpacking thread: enough to keep both busy.
PIPE_LIMIT = 4 << 20
# find()'s answers kept at most (names a client asked for; forgotten all at once when full, and at every change).
FOUND_KEPT_MAX = 512


@dataclass(frozen=True)
class LayerSource:
    """One layer of an image being added: its uncompressed digest (from the config) and how to get its blob:
    streamed into the unpacker as it downloads (preferred), or fetched to a file first."""

    diff_id: str
    media_type: str
    fetch: LayerFetch | None
    label: str  # what to call it in logs and errors (usually the blob digest)
    stream: LayerStream | None = None
    # What `cripy ctl pull` shows of it; the store sets its later states (a detached one by default: shown nowhere).
    progress: LayerProgress = field(default_factory=lambda: LayerProgress("", 0))

    def __post_init__(self) -> None:
        if self.fetch is None and self.stream is None:
            raise InvalidArgument(f"layer {self.label}: neither a fetch nor a stream function")


@dataclass
class Image:
    """An image as the CRI sees it."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    manifest_digest: str
    config: dict
    chain_ids: list[str]
    pinned: bool = False
    pulled_at: int = 0

    @property
    def user(self) -> str:
        return str(self.config.get("config", {}).get("User", "") or "")


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass
class _LayerUse:
    """Layers an in-flight pull relies on, so that a concurrent removal does not take them away."""

    counts: dict[str, int] = field(default_factory=dict)

    def hold(self, chain_ids: Iterable[str]) -> None:
        for chain_id in chain_ids:
            self.counts[chain_id] = self.counts.get(chain_id, 0) + 1

    def release(self, chain_ids: Iterable[str]) -> None:
        for chain_id in chain_ids:
            left = self.counts.get(chain_id, 0) - 1
            if left > 0:
                self.counts[chain_id] = left
            else:
                self.counts.pop(chain_id, None)


def chain_ids_of(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain ids: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


class ImageStore:
    """Images and layers of one cripy root."""

    def __init__(self, db: Database, layout: Layout, *, pinned: Sequence[str] = ()) -> None:
        self._db = db
        self._layout = layout
        self._layer_fetches: dict[str, asyncio.Future[None]] = {}
        self._layer_lock = LayerLock(layout.layers_lock)
        self._in_use = _LayerUse()
        self._lock = asyncio.Lock()
        # Images removed since start: a caller that found an image, then holds removals off, looks it up again
        # only when this moved in between.
        self.removals = 0
        self._pinned_names: set[str] = set()
        self.set_pinned(pinned)
        # Containers (a later layer) tell the store which images they hold, and which of those they mount as
        # image volumes (ids of the containers); until then nothing holds any.
        self.image_in_use: Callable[[str], Awaitable[bool]] = _nothing_uses
        self.image_mounted_by: Callable[[str], Awaitable[list[str]]] = _nothing_mounts
        # find()'s answers, kept while no image row changes: the kubelet asks ImageStatus of the same few names
        # before every container it creates, and CreateContainer asks again. What each question resolved to (an
        # image id, or None), and each image's rows once, however many names lead to it.
        self._found: dict[tuple[str, tuple[Reference, ...]], str | None] = {}
        self._found_rows: dict[str, list] = {}
        self._changes = 0  # writes to the image rows handed to the database so far

    def set_pinned(self, names: Sequence[str]) -> None:
        pinned: set[str] = set()
        for name in names:
            try:
                pinned.add(str(parse_normalized(name)))
            except InvalidArgument:
                log.warning("ignoring pinned image %r: not a valid reference", name)
        self._pinned_names = pinned

    # ---- look-ups -------------------------------------------------------------------------------------

    async def list(self) -> list[Image]:
        rows = await self._db.run(imagerows.select_images)
        return [self._image_from(row, names, chains) for row, names, chains in rows]

    async def find(self, ref: str, candidates: Sequence[Reference] = ()) -> Image | None:
        """The image named by an id, an id prefix, a name or digest reference, or any of `candidates`."""
        key = (ref, tuple(candidates))
        if key in self._found:
            image_id = self._found[key]
            rows = self._found_rows[image_id] if image_id is not None else []
        else:

            def select(conn: sqlite3.Connection) -> tuple[str | None, list]:
                found = imagerows.resolve_id(conn, ref, candidates)
                return found, [] if found is None else imagerows.select_images(conn, found)

            changes = self._changes
            image_id, rows = await self._db.run(select)
            if changes == self._changes:  # else a change was queued before the read ended: it may predate it
                self._keep_found(key, image_id, rows)
        return self._image_from(*rows[0]) if rows else None  # a new Image each time: callers may change theirs

    def _keep_found(self, key: tuple[str, tuple[Reference, ...]], image_id: str | None, rows: builtins.list) -> None:
        if len(self._found) >= FOUND_KEPT_MAX:
            self._forget_found()
        self._found[key] = image_id
        if image_id is not None:
            self._found_rows[image_id] = rows

    def _forget_found(self) -> None:
        self._found.clear()
        self._found_rows.clear()

    async def get(self, image_id: str) -> Image | None:
        rows = self._found_rows.get(image_id)  # an image find() kept (CreateContainer found it just before)
        if rows is None:
            rows = await self._db.run(lambda conn: imagerows.select_images(conn, image_id))
        return self._image_from(*rows[0]) if rows else None

    @contextlib.asynccontextmanager
    async def removals_held(self) -> AsyncIterator[None]:
        """No image or layer is removed while this is held: a caller finds images and records its use of them
        (a container that `image_in_use` then counts) in one step, so that no RemoveImage or collection of
        unused images falls between the two."""
        async with self._lock:
            yield

    async def layer_dirs(self, image_id: str) -> builtins.list[Path]:
        """The diff directories of an image, lowest layer first (overlay wants them in the reverse order)."""
        image = await self.get(image_id)
        if image is None:
            raise NotFound(f"image {image_id} not found")
        return self.layer_dirs_of(image)

    def layer_dirs_of(self, image: Image) -> builtins.list[Path]:
        """layer_dirs of an image already looked up (and held: its layers stay while a container holds it)."""
        return [self._layout.layer_diff(chain_id) for chain_id in image.chain_ids]

    # ---- adding ---------------------------------------------------------------------------------------

    async def add_image(
        self,
        *,
        manifest: bytes,
        manifest_type: str,
        manifest_digest: str,
        config: bytes,
        config_digest: str,
        layers: Sequence[LayerSource],
        names: Sequence[Reference],
    ) -> Image:
        """Make sure every layer is unpacked, then record the image and its names in one transaction."""
        _parse_config(config, config_digest)  # refuse a config that is not a JSON object before any download
        diff_ids = [layer.diff_id for layer in layers]
        chain_ids = chain_ids_of(diff_ids)
        self._in_use.hold(chain_ids)
        try:
            # A TaskGroup: when one layer fails, the others are cancelled and cleaned up before the pull answers.
            async with asyncio.TaskGroup() as group:
                for chain, parent, layer in zip(chain_ids, [None, *chain_ids[:-1]], layers):
                    group.create_task(self._ensure_layer(chain, parent, layer))
            with step("image.commit"):
                async with self._lock:
                    await self._change_images(
                        lambda conn: imagerows.insert_image(
                            conn, config_digest, manifest_digest, manifest, manifest_type, config, chain_ids, names
                        ),
                        transaction=True,
                    )
        except BaseExceptionGroup as group_error:
            # Report the first real failure (not the cancellations it caused), as a plain error.
            raise _first_cause(group_error) from None
        finally:
            self._in_use.release(chain_ids)
            if not await self._db.run(lambda conn: imagerows.image_exists(conn, config_digest)):
                # Layers this failed add unpacked are referenced by nothing: they go now, not at the next removal.
                async with self._lock:
                    await self._collect_layers()
        image = await self.get(config_digest)
        assert image is not None
        log.info("image %s stored as %s (%d layers, %d bytes)", ", ".join(map(str, names)) or "(no name)",
                 image.id, len(chain_ids), image.size)
        return image

    async def _ensure_layer(self, chain_id: str, parent: str | None, layer: LayerSource) -> None:
        """Unpack a layer unless it is present; concurrent callers for one chain id share one fetch."""
        while True:
            if await self._db.run(lambda conn: imagerows.layer_exists(conn, chain_id)):
                if layer.progress.state == progress.WAITING:
                    layer.progress.set_state(progress.PRESENT)
                return
            pending = self._layer_fetches.get(chain_id)
            if pending is None:
                break
            await asyncio.wait([pending])  # its failure is the other pull's; ours only if it was not cancelled
            if not pending.cancelled() and pending.exception() is not None:
                raise pending.exception()  # type: ignore[misc]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._layer_fetches[chain_id] = future
        try:
            await self._fetch_and_unpack(chain_id, parent, layer)
            future.set_result(None)
        except asyncio.CancelledError:
            future.cancel()  # a waiting pull takes over the layer
            raise
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # a failure is reported to each waiter; not "never retrieved" noise
            raise
        finally:
            del self._layer_fetches[chain_id]

    async def _fetch_and_unpack(self, chain_id: str, parent: str | None, layer: LayerSource) -> None:
        async with self._layer_lock.writing():  # the directory exists before its row: no audit may judge it
            await self._write_layer(chain_id, parent, layer)

    async def _write_layer(self, chain_id: str, parent: str | None, layer: LayerSource) -> None:
        layer_dir = self._layout.layer_dir(chain_id)
        try:
            await _in_thread(_clear_dir, layer_dir)
            layer_dir.mkdir(parents=True)
            if layer.stream is not None:
                unpacked = await self._stream_and_unpack(chain_id, layer)
            else:
                unpacked = await self._download_then_unpack(chain_id, layer)
            await self._db.run(
                lambda conn: conn.execute(
                    "INSERT OR IGNORE INTO layers (chain_id, diff_id, parent, size, inodes, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (chain_id, layer.diff_id, parent, unpacked.size, unpacked.inodes, int(time.time())),
                )
            )
        except BaseException:
            layer.progress.set_state(progress.FAILED)
            if not await self._db.run(lambda conn: imagerows.layer_exists(conn, chain_id)):
                await _in_thread(_clear_dir, layer_dir)
            raise
        layer.progress.set_state(progress.DONE)

    async def _download_then_unpack(self, chain_id: str, layer: LayerSource) -> UnpackedLayer:
        from cripy.images.unpack import unpack_layer  # the unpacker (tar, zstd) loads at the first pull

        assert layer.fetch is not None
        blob = self._layout.downloads / f"{_hex(chain_id)}-{os.getpid()}-{time.monotonic_ns()}.blob"
        try:
            with step("layer.copy", layer.label):
                await layer.fetch(blob)
            layer.progress.set_state(progress.UNPACKING)
            with step("layer.unpack", layer.label):
                return await _in_thread(
                    unpack_layer, blob, self._layout.layer_diff(chain_id), layer.media_type, layer.diff_id
                )
        finally:
            await _in_thread(_unlink_quietly, blob)

    async def _stream_and_unpack(self, chain_id: str, layer: LayerSource) -> UnpackedLayer:
        from cripy.images.unpack import unpack_stream  # the unpacker (tar, zstd) loads at the first pull

        """Unpack while downloading: the blob flows through a bounded pipe into an unpacking thread.

        The thread renames the layer into place only after the pipe's end, which comes only after the download
        verified the compressed digest; a failed download aborts the pipe and the thread removes its work."""
        assert layer.stream is not None
        pipe = ChunkPipe(asyncio.get_running_loop(), PIPE_LIMIT, layer.label)
        diff = self._layout.layer_diff(chain_id)
        # The thread starts with the first byte: a layer waiting for a download slot holds no thread.
        pipe.on_first_write(lambda: start_reader_thread(
            unpack_stream, pipe, diff, layer.media_type, layer.diff_id, name=layer.label, what=f"unpack {layer.label}"
        ))
        try:
            await layer.stream(pipe.write)
        except BaseException as error:
            pipe.abort(error)
            unpacking = pipe.consumer
            if unpacking is not None:
                await asyncio.wait([unpacking])  # the thread stops at its next read and cleans up
                cause = None if unpacking.cancelled() else unpacking.exception()
                if isinstance(error, ConsumerGone) and cause is not None:
                    raise cause from None  # the real cause
            raise
        pipe.close()
        unpacking = pipe.consumer
        assert unpacking is not None
        layer.progress.set_state(progress.UNPACKING)
        try:
            with step("layer.unpack", layer.label):
                return await asyncio.shield(unpacking)
        except asyncio.CancelledError:
            if not unpacking.done():
                pipe.abort(asyncio.CancelledError())
                await asyncio.wait([unpacking])
            raise

    # ---- removal --------------------------------------------------------------------------------------

    async def remove(self, ref: str, candidates: Sequence[Reference] = ()) -> None:
        """RemoveImage: a tag removes that name (and the image with its last tag); an id or digest the image."""
        async with self._lock:
            image_id = await self._db.run(lambda conn: imagerows.resolve_id(conn, ref, candidates))
            if image_id is None:
                return  # CRI: removing an image that is not there is not an error
            removed_tag = await self._db.run(lambda conn: imagerows.tag_named(conn, ref, candidates, image_id))
            last_name = removed_tag is None or await self._db.run(lambda conn: imagerows.tag_count(conn, image_id)) == 1
            mounted_by = await self.image_mounted_by(image_id) if last_name else []
            if mounted_by:
                # Unlike a container's own image (its names go, its content stays), an image volume is named by
                # the image the kubelet keeps pulled for it: removing it is a mistake, and said as one.
                raise FailedPrecondition(
                    f"image {image_id} ({ref}) is mounted as an image volume by container(s) {', '.join(mounted_by)}:"
                    " remove the container(s) first"
                )
            if removed_tag is not None:
                await self._change_images(
                    lambda conn: conn.execute("DELETE FROM image_names WHERE name = ?", (removed_tag,)))
                if not last_name:
                    log.info("removed name %s of image %s", removed_tag, image_id)
                    return
            if await self.image_in_use(image_id):
                await self._change_images(
                    lambda conn: conn.execute("DELETE FROM image_names WHERE image_id = ?", (image_id,)))
                log.info("image %s is used by a container: its names are removed, its content stays", image_id)
                return
            await self._delete_image(image_id)
            log.info("removed image %s", image_id)
            await self._collect_layers()

    async def _delete_image(self, image_id: str) -> None:
        """The image's record goes (its layers with the next collection); under self._lock, as every removal."""
        await self._change_images(lambda conn: conn.execute("DELETE FROM images WHERE id = ?", (image_id,)),
                                  transaction=True)
        self.removals += 1

    async def _change_images(self, write: Callable[[sqlite3.Connection], object], *, transaction: bool = False) -> None:
        """Every write to the image rows goes through here. find()'s kept answers are forgotten in the same step
        of the event loop as the write is queued for the database thread, which runs in order: a look-up queued
        after it reads what it wrote, and one queued before it is not kept."""
        self._changes += 1
        self._forget_found()
        await (self._db.transaction(write) if transaction else self._db.run(write))

    async def _collect_layers(self) -> None:
        """Delete layers no image references and no pull in flight holds (decided under the layer lock: a pull
        may start to hold one while the lock is awaited). An audit holding the lock too long leaves them to the
        next collection."""
        try:
            async with self._layer_lock.writing():  # rows go first, directories after
                held = self._in_use.counts  # includes every layer being fetched: add_image holds them first
                unused = await self._db.run(imagerows.unreferenced_layers)
                doomed = [chain_id for chain_id in unused if chain_id not in held]
                if not doomed:
                    return
                await self._db.transaction(
                    lambda conn: conn.executemany("DELETE FROM layers WHERE chain_id = ?", [(c,) for c in doomed])
                )
                for chain_id in doomed:
                    await _in_thread(_clear_dir, self._layout.layer_dir(chain_id))
        except LayerLockTimeout as e:
            log.warning("unused layers are left for the next image removal: %s", e)
            return
        log.info("removed %d unused layer(s)", len(doomed))

    async def release(self, image_id: str) -> None:
        """A container of this image is gone: if the image lost all its names meanwhile and nothing else uses
        it, it goes now (one look-up in the common case of a named image)."""
        if await self._db.run(lambda conn: imagerows.has_names(conn, image_id)) or await self.image_in_use(image_id):
            return
        async with self._lock:  # again, held: a container created meanwhile may hold the image now
            named = await self._db.run(lambda conn: imagerows.has_names(conn, image_id))
            if not named and not await self.image_in_use(image_id):
                await self._delete_image(image_id)
                log.info("removed image %s: its last user is gone and it has no name", image_id)
                await self._collect_layers()

    async def remove_unnamed_unused(self) -> None:
        """Images that lost all their names while a container used them go once nothing uses them."""
        async with self._lock:
            for image_id in await self._db.run(imagerows.unnamed_images):
                if not await self.image_in_use(image_id):
                    await self._delete_image(image_id)
            await self._collect_layers()

    # ---- usage and recovery ---------------------------------------------------------------------------

    async def fs_usage(self) -> FsUsage:
        used, inodes = await self._db.run(
            lambda conn: conn.execute("SELECT COALESCE(SUM(size), 0), COALESCE(SUM(inodes), 0) FROM layers").fetchone()
        )
        return FsUsage(str(self._layout.layers), int(used), int(inodes), time.time_ns())

    async def recover(self) -> None:
        """Undo what a crash left half-done: downloads, unpacks that never committed, dirs of deleted layers."""
        known = {_hex(c) for c in await self._db.run(lambda conn: [r[0] for r in conn.execute("SELECT chain_id FROM layers")])}
        await asyncio.to_thread(_remove_strays, self._layout, known)
        await self.remove_unnamed_unused()

    def _image_from(self, row: sqlite3.Row, names: builtins.list[tuple[str, str]], chains: builtins.list[str]) -> Image:
        tags = sorted(name for name, kind in names if kind == "tag")
        digests = sorted(name for name, kind in names if kind == "digest")
        return Image(
            id=row["id"],
            repo_tags=tags,
            repo_digests=digests,
            size=int(row["size"]),
            manifest_digest=row["manifest_digest"],
            config=json.loads(row["config"]),
            chain_ids=chains,
            pinned=any(tag in self._pinned_names for tag in tags),
            pulled_at=int(row["pulled_at"]),
        )


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a worker thread. Cancelling the caller waits for the thread to finish first, so clean-up
    never races a thread that is still writing (a thread cannot be stopped half-way)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


async def _nothing_uses(image_id: str) -> bool:
    return False


async def _nothing_mounts(image_id: str) -> list[str]:
    return []


def _parse_config(config: bytes, config_digest: str) -> dict:
    try:
        doc = json.loads(config)
    except ValueError as e:
        raise DataLoss(f"image config {config_digest} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise DataLoss(f"image config {config_digest} is not a JSON object")
    return doc


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_cause(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _clear_dir(path: Path) -> None:
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    from cripy.images.unpack import remove_tree

    remove_tree(path)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _remove_strays(layout: Layout, known_layer_hex: set[str]) -> None:
    for leftover in layout.downloads.iterdir():
        _clear_dir(leftover)
    for entry in layout.layers.iterdir():
        if entry.name not in known_layer_hex:
            log.info("removing leftover layer directory %s", entry)
            _clear_dir(entry)
        elif not (entry / "diff").is_dir():
            log.error("layer directory %s is recorded in the database but has no diff/: images using it"
                      " will fail to run until they are removed and pulled again", entry)
