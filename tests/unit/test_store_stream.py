"""cripy.images.store with streamed layers: the blob flows from its (fake) download into the unpacking thread."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from typing import Awaitable, Callable

import pytest

from cripy.errors import DataLoss
from cripy.images.reference import parse_normalized
from cripy.images.store import PIPE_LIMIT, Image, ImageStore, LayerSource, chain_ids_of
from cripy.storage.layout import Layout
from tests.support.images import OCI_MANIFEST, Layer, LayerBuilder
from tests.unit.test_store import Parts, image_parts, layer_rows

WAIT_LIMIT = 30.0  # only keeps a broken run from hanging; no test asserts a duration

Sink = Callable[[bytes], Awaitable[None]]


def big_layer() -> Layer:
    """A gzip layer bigger than the pipe, so that back-pressure and early stops are exercised."""
    return LayerBuilder().add_file("small", "hello\n").add_file("big", os.urandom(3 * PIPE_LIMIT)) \
        .layer(compression="gzip")


class Streamer:
    """Stream functions that hand a layer's blob over in chunks; can pause before the end or fail there."""

    def __init__(self, chunk: int = 64 * 1024) -> None:
        self.chunk = chunk
        self.delivered: dict[str, int] = {}
        self.before_end: dict[str, asyncio.Event] = {}  # set when all bytes are handed on
        self.release: dict[str, asyncio.Event] = {}  # the verification waits for this, when present
        self.fail_at_end: dict[str, BaseException] = {}
        self.sink_error: dict[str, BaseException] = {}

    def source(self, layer: Layer, blob: bytes | None = None) -> LayerSource:
        data = layer.blob if blob is None else blob

        async def stream(sink: Sink) -> None:
            self.delivered[layer.diff_id] = 0
            try:
                for start in range(0, len(data), self.chunk):
                    await sink(data[start:start + self.chunk])
                    self.delivered[layer.diff_id] += len(data[start:start + self.chunk])
            except BaseException as e:
                self.sink_error[layer.diff_id] = e
                raise
            self.before_end.setdefault(layer.diff_id, asyncio.Event()).set()
            gate = self.release.get(layer.diff_id)
            if gate is not None:
                await gate.wait()
            error = self.fail_at_end.get(layer.diff_id)
            if error is not None:
                raise error  # e.g. the compressed digest did not match

        return LayerSource(layer.diff_id, layer.media_type, None, layer.digest, stream=stream)


async def add(store: ImageStore, parts: Parts, sources: list[LayerSource], name: str) -> Image:
    return await store.add_image(
        manifest=parts.manifest, manifest_type=OCI_MANIFEST, manifest_digest=parts.manifest_digest,
        config=parts.config, config_digest=parts.config_digest, layers=sources, names=[parse_normalized(name)],
    )


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_LIMIT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


def unpack_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("unpack ")]


def temp_dirs(layout: Layout, chain_id: str) -> list[str]:
    layer_dir = layout.layer_dir(chain_id)
    return [n for n in os.listdir(layer_dir) if n.startswith(".tmp-")] if layer_dir.is_dir() else []


async def test_streamed_layers_are_unpacked_and_recorded(store: ImageStore, layout: Layout, db) -> None:  # noqa: F811
    base = LayerBuilder().add_file("base", "base layer\n").layer(compression="gzip")
    app = big_layer()
    parts = image_parts([base, app])
    streamer = Streamer()
    image = await add(store, parts, [streamer.source(base), streamer.source(app)], "example.com/s:1")
    chains = chain_ids_of([base.diff_id, app.diff_id])
    assert image.chain_ids == chains
    assert (layout.layer_diff(chains[0]) / "base").read_text() == "base layer\n"
    assert (layout.layer_diff(chains[1]) / "big").stat().st_size == 3 * PIPE_LIMIT
    assert streamer.delivered[app.diff_id] == len(app.blob)
    rows = await layer_rows(db)
    assert rows[chains[1]] == (app.diff_id, chains[0], len("hello\n") + 3 * PIPE_LIMIT)
    assert list(layout.downloads.iterdir()) == []  # no blob file on the way
    assert temp_dirs(layout, chains[1]) == []


async def test_layer_goes_into_place_only_after_the_download_is_verified(store: ImageStore, layout: Layout) -> None:  # noqa: F811
    layer = LayerBuilder().add_file("f", "content\n").layer(compression="gzip")
    parts = image_parts([layer])
    streamer = Streamer()
    streamer.release[layer.diff_id] = asyncio.Event()
    streamer.fail_at_end[layer.diff_id] = DataLoss("blob digest mismatch")
    pull = asyncio.create_task(add(store, parts, [streamer.source(layer)], "example.com/s:1"))
    await streamer.before_end.setdefault(layer.diff_id, asyncio.Event()).wait()
    # Every byte is unpacked (the whole tar and its diff_id are fine), yet nothing may be in place: the
    # compressed digest has not been checked.
    chain = layer.diff_id
    await wait_until(lambda: any((layout.layer_dir(chain) / t / "f").exists() for t in temp_dirs(layout, chain)),
                     "the content to be unpacked in a temporary directory")
    assert not layout.layer_diff(chain).exists()
    streamer.release[layer.diff_id].set()
    with pytest.raises(DataLoss, match="blob digest mismatch"):
        await pull
    assert not layout.layer_dir(chain).exists()
    assert await store.find("example.com/s:1") is None
    assert unpack_threads() == []


async def test_corrupt_stream_stops_the_download_early_and_reports_the_unpack_error(
    store: ImageStore, layout: Layout  # noqa: F811
) -> None:
    layer = big_layer()
    corrupt = bytearray(layer.blob)
    corrupt[10] = 0b110  # the first deflate block header (right after gzip's 10 bytes): reserved block type
    parts = image_parts([layer])
    streamer = Streamer()
    with pytest.raises(DataLoss, match="corrupt or truncated compressed stream"):
        await add(store, parts, [streamer.source(layer, bytes(corrupt))], "example.com/s:1")
    # The download was told to stop instead of pushing the rest into a pipe nobody reads.
    assert layer.diff_id in streamer.sink_error
    assert streamer.delivered[layer.diff_id] < len(corrupt)
    assert not layout.layer_dir(layer.diff_id).exists()
    assert unpack_threads() == []


async def test_truncated_gzip_stream_is_data_loss_and_leaves_nothing(store: ImageStore, layout: Layout) -> None:  # noqa: F811
    layer = LayerBuilder().add_file("f", os.urandom(200_000)).layer(compression="gzip")
    parts = image_parts([layer])
    with pytest.raises(DataLoss):
        await add(store, parts, [Streamer().source(layer, layer.blob[:-10])], "example.com/s:1")
    assert not layout.layer_dir(layer.diff_id).exists()


async def test_cancelled_streaming_add_waits_for_its_thread_and_cleans_up(store: ImageStore, layout: Layout) -> None:  # noqa: F811
    layer = big_layer()
    parts = image_parts([layer])
    streamer = Streamer()
    streamer.release[layer.diff_id] = asyncio.Event()  # never set: the "verification" hangs
    pull = asyncio.create_task(add(store, parts, [streamer.source(layer)], "example.com/s:1"))
    await streamer.before_end.setdefault(layer.diff_id, asyncio.Event()).wait()
    pull.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pull
    # The cancelled add answered only after its unpacking thread was done and its work removed.
    assert unpack_threads() == []
    assert not layout.layer_dir(layer.diff_id).exists()


async def test_concurrent_streamed_adds_of_one_layer_stream_it_once(store: ImageStore, layout: Layout) -> None:  # noqa: F811
    layer = big_layer()
    parts_a = image_parts([layer], user="a")
    parts_b = image_parts([layer], user="b")
    streamer = Streamer()
    calls: list[str] = []

    def counted(source: LayerSource) -> LayerSource:
        async def stream(sink: Sink) -> None:
            calls.append(source.label)
            assert source.stream is not None
            await source.stream(sink)
        return LayerSource(source.diff_id, source.media_type, None, source.label, stream=stream)

    a, b = await asyncio.gather(
        add(store, parts_a, [counted(streamer.source(layer))], "example.com/a:1"),
        add(store, parts_b, [counted(streamer.source(layer))], "example.com/b:1"),
    )
    assert a.chain_ids == b.chain_ids == [layer.diff_id]
    assert calls == [layer.digest]
    assert (layout.layer_diff(layer.diff_id) / "small").read_text() == "hello\n"


def test_a_layer_source_needs_a_way_to_get_its_blob() -> None:
    with pytest.raises(Exception, match="neither a fetch nor a stream"):
        LayerSource("sha256:" + "0" * 64, "application/vnd.oci.image.layer.v1.tar+gzip", None, "label")


def test_gzip_of_the_test_layers_is_what_the_store_expects() -> None:
    # Guards the corrupt-stream test above: byte 10 must start the deflate data (a gzip header without names).
    blob = big_layer().blob
    assert blob[:2] == b"\x1f\x8b" and blob[3] == 0 and len(blob) > 3 * PIPE_LIMIT
    assert gzip.decompress(blob)  # a valid stream before the test corrupts it
