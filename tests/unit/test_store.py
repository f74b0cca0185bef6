"""cripy.images.store with a real database and real (tiny) layer tarballs built in the test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from cripy.errors import DataLoss, FailedPrecondition, NotFound
from cripy.images.reference import parse_normalized
from cripy.images.store import Image, ImageStore, LayerSource, chain_ids_of
from cripy.storage.db import Database
from cripy.storage.layout import Layout
from tests.support.images import OCI_MANIFEST, Layer, LayerBuilder, canonical_json, sha256_digest


def layer_of(**files: str) -> Layer:
    builder = LayerBuilder()
    for name, content in files.items():
        builder.add_file(name, content)
    return builder.layer(compression="gzip")


BASE = layer_of(base="base layer\n")
APP_A = layer_of(a="app a\n")
APP_B = layer_of(b="app b\n")


@dataclass
class Parts:
    """What add_image wants for one image, plus the layers it is built from."""

    layers: list[Layer]
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str


def image_parts(layers: list[Layer], user: str = "") -> Parts:
    config = canonical_json({
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": user, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config),
                   "size": len(config)},
        "layers": [layer.descriptor() for layer in layers],
    })
    return Parts(layers, config, sha256_digest(config), manifest, sha256_digest(manifest))


IMAGE_A = image_parts([BASE, APP_A], user="1000")
IMAGE_B = image_parts([BASE, APP_B])


class Fetcher:
    """Layer fetch functions that copy the test's blobs, counting fetches per diff_id; can block or fail."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.fail: dict[str, BaseException] = {}
        self.running: set[str] = set()

    def source(self, layer: Layer) -> LayerSource:
        async def fetch(dest: Path) -> None:
            self.count[layer.diff_id] += 1
            self.running.add(layer.diff_id)
            try:
                self.started.setdefault(layer.diff_id, asyncio.Event()).set()
                gate = self.gates.get(layer.diff_id)
                if gate is not None:
                    await gate.wait()
                dest.write_bytes(layer.blob[: len(layer.blob) // 2])  # a partial download first
                error = self.fail.get(layer.diff_id)
                if error is not None:
                    raise error
                dest.write_bytes(layer.blob)
            finally:
                self.running.discard(layer.diff_id)

        return LayerSource(layer.diff_id, layer.media_type, fetch, layer.digest)

    def gate(self, layer: Layer) -> asyncio.Event:
        self.started[layer.diff_id] = asyncio.Event()
        return self.gates.setdefault(layer.diff_id, asyncio.Event())


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher()


async def add(store: ImageStore, fetcher: Fetcher, parts: Parts, *names: str) -> Image:
    return await store.add_image(
        manifest=parts.manifest,
        manifest_type=OCI_MANIFEST,
        manifest_digest=parts.manifest_digest,
        config=parts.config,
        config_digest=parts.config_digest,
        layers=[fetcher.source(layer) for layer in parts.layers],
        names=[parse_normalized(name) for name in names],
    )


async def layer_rows(db: Database) -> dict[str, tuple]:
    rows = await db.run(lambda conn: conn.execute("SELECT chain_id, diff_id, parent, size FROM layers").fetchall())
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def settle(store: ImageStore) -> None:
    """Wait for layer work still running (belt and braces: add_image should leave none behind)."""
    while store._layer_fetches:
        await asyncio.gather(*store._layer_fetches.values(), return_exceptions=True)


def layer_dirs_on_disk(layout: Layout) -> set[str]:
    return {entry.name for entry in layout.layers.iterdir()}


def hexpart(digest: str) -> str:
    return digest.split(":", 1)[1]


# ---- chain ids -------------------------------------------------------------------------------------------------


def test_chain_ids_of_matches_a_hand_computed_chain() -> None:
    d0 = "sha256:" + "a" * 64
    d1 = "sha256:" + "b" * 64
    d2 = "sha256:" + "c" * 64
    c1 = "sha256:" + hashlib.sha256(f"{d0} {d1}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {d2}".encode()).hexdigest()
    assert chain_ids_of([d0, d1, d2]) == [d0, c1, c2]
    assert chain_ids_of([]) == []
    assert chain_ids_of([d1]) == [d1]
    # A known value, computed independently with `printf 'sha256:aaa… sha256:bbb…' | sha256sum`.
    assert c1 == "sha256:" + hashlib.sha256(
        b"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
        b"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    ).hexdigest()


# ---- adding ----------------------------------------------------------------------------------------------------


async def test_add_image_records_the_image_and_unpacks_its_layers(
    store: ImageStore, fetcher: Fetcher, layout: Layout, db: Database
) -> None:
    image = await add(store, fetcher, IMAGE_A, "example.com/app:1")
    chains = chain_ids_of([BASE.diff_id, APP_A.diff_id])
    assert image.id == IMAGE_A.config_digest
    assert image.repo_tags == ["example.com/app:1"]
    assert image.repo_digests == [f"example.com/app@{IMAGE_A.manifest_digest}"]
    assert image.manifest_digest == IMAGE_A.manifest_digest
    assert image.chain_ids == chains
    assert image.user == "1000"
    assert image.config == json.loads(IMAGE_A.config)
    assert image.size == len("base layer\n") + len("app a\n") + len(IMAGE_A.config)
    assert image.pulled_at > 0
    dirs = await store.layer_dirs(image.id)
    assert dirs == [layout.layer_diff(c) for c in chains]
    assert (dirs[0] / "base").read_text() == "base layer\n"
    assert (dirs[1] / "a").read_text() == "app a\n"
    rows = await layer_rows(db)
    assert rows[chains[0]] == (BASE.diff_id, None, len("base layer\n"))
    assert rows[chains[1]] == (APP_A.diff_id, chains[0], len("app a\n"))
    assert list(layout.downloads.iterdir()) == []  # the downloaded blobs are gone


async def test_two_images_sharing_a_base_layer_store_it_once(
    store: ImageStore, fetcher: Fetcher, layout: Layout, db: Database
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    b = await add(store, fetcher, IMAGE_B, "example.com/b:1")
    assert a.chain_ids[0] == b.chain_ids[0] == BASE.diff_id
    assert fetcher.count == Counter({BASE.diff_id: 1, APP_A.diff_id: 1, APP_B.diff_id: 1})
    assert len(await layer_rows(db)) == 3
    assert layer_dirs_on_disk(layout) == {hexpart(c) for c in {*a.chain_ids, *b.chain_ids}}
    assert {image.id for image in await store.list()} == {a.id, b.id}


async def test_concurrent_adds_of_one_layer_fetch_it_once(store: ImageStore, fetcher: Fetcher) -> None:
    release_base = fetcher.gate(BASE)
    b_top_fetched = fetcher.gate(APP_B)
    b_top_fetched.set()  # APP_B's fetch does not block; its start tells us image B reached its layers
    first = asyncio.create_task(add(store, fetcher, IMAGE_A, "example.com/a:1"))
    await fetcher.started[BASE.diff_id].wait()
    second = asyncio.create_task(add(store, fetcher, IMAGE_B, "example.com/b:1"))
    await fetcher.started[APP_B.diff_id].wait()
    assert fetcher.count[BASE.diff_id] == 1
    release_base.set()
    a, b = await asyncio.gather(first, second)
    assert fetcher.count[BASE.diff_id] == 1
    assert a.chain_ids[0] == b.chain_ids[0]


async def test_concurrent_adds_of_the_same_image(store: ImageStore, fetcher: Fetcher) -> None:
    results = await asyncio.gather(*(add(store, fetcher, IMAGE_A, "example.com/a:1") for _ in range(3)))
    assert {image.id for image in results} == {IMAGE_A.config_digest}
    assert fetcher.count == Counter({BASE.diff_id: 1, APP_A.diff_id: 1})
    assert len(await store.list()) == 1


async def test_failing_fetch_leaves_no_layer_behind(
    store: ImageStore, fetcher: Fetcher, layout: Layout, db: Database
) -> None:
    fetcher.fail[APP_A.diff_id] = ConnectionResetError("registry hung up")
    release_top = fetcher.gate(APP_A)
    adding = asyncio.create_task(add(store, fetcher, IMAGE_A, "example.com/a:1"))
    # Let the base layer finish completely (unpacked and recorded) before the top layer fails.
    fetcher.gate(BASE).set()
    await fetcher.started[BASE.diff_id].wait()
    await asyncio.wait([store._layer_fetches[BASE.diff_id]])
    assert BASE.diff_id in await layer_rows(db)
    release_top.set()
    with pytest.raises(ConnectionResetError):
        await adding
    chains = chain_ids_of([BASE.diff_id, APP_A.diff_id])
    # Nothing of the failed add is left: not the failed layer, and not the base it unpacked (nothing uses it).
    assert await layer_rows(db) == {}
    assert layer_dirs_on_disk(layout) == set()
    assert list(layout.downloads.iterdir()) == []
    assert await store.list() == []
    assert await store.find("example.com/a:1") is None
    del fetcher.fail[APP_A.diff_id]
    image = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    assert image.chain_ids == chains
    assert fetcher.count == Counter({BASE.diff_id: 2, APP_A.diff_id: 2})
    assert list(layout.downloads.iterdir()) == []


async def test_failed_add_keeps_layers_other_images_use(
    store: ImageStore, fetcher: Fetcher, layout: Layout, db: Database
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    fetcher.fail[APP_B.diff_id] = ConnectionResetError("registry hung up")
    with pytest.raises(ConnectionResetError):
        await add(store, fetcher, IMAGE_B, "example.com/b:1")
    assert set(await layer_rows(db)) == set(a.chain_ids)
    assert layer_dirs_on_disk(layout) == {hexpart(c) for c in a.chain_ids}


async def test_failed_add_leaves_no_layer_work_running(store: ImageStore, fetcher: Fetcher, layout: Layout) -> None:
    """When one layer fails, the sibling layers are cancelled and cleaned up before add_image answers."""
    release_base = fetcher.gate(BASE)
    fetcher.fail[APP_A.diff_id] = ConnectionResetError("registry hung up")
    try:
        with pytest.raises(ConnectionResetError):  # the cause itself, not an ExceptionGroup
            await add(store, fetcher, IMAGE_A, "example.com/a:1")
        assert fetcher.running == set()
        assert store._layer_fetches == {}
        assert list(layout.downloads.iterdir()) == []
        assert layer_dirs_on_disk(layout) == set()
    finally:
        release_base.set()
        await settle(store)


async def test_failed_add_does_not_answer_while_an_unpack_thread_still_runs(
    store: ImageStore, fetcher: Fetcher, layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cripy.images import unpack as unpack_module

    at_rename = asyncio.Event()
    rename_gate = threading.Event()
    unpack_finished = threading.Event()
    loop = asyncio.get_running_loop()
    real_rename = unpack_module._rename_into_place

    def held_rename(tmp: Path, dest: Path, blob: Path) -> None:
        try:
            loop.call_soon_threadsafe(at_rename.set)
            # A deadlock guard for a fixed store (which waits for this thread before answering), not a timing
            # assertion: with the bug the gate is opened by the test right after add_image answered.
            rename_gate.wait(timeout=2)
            real_rename(tmp, dest, blob)
        finally:
            unpack_finished.set()

    monkeypatch.setattr(unpack_module, "_rename_into_place", held_rename)
    fetcher.fail[APP_A.diff_id] = ConnectionResetError("registry hung up")
    release_top = fetcher.gate(APP_A)
    adding = asyncio.create_task(add(store, fetcher, IMAGE_A, "example.com/a:1"))
    try:
        await at_rename.wait()  # the base layer's unpack thread is about to move its result into place
        release_top.set()  # the top layer fails, which cancels the base layer's task
        with pytest.raises(ConnectionResetError):
            await adding
        assert unpack_finished.is_set(), "add_image answered while its unpack thread was still running"
    finally:
        rename_gate.set()
        await asyncio.to_thread(unpack_finished.wait)


async def test_cancelled_add_hands_its_layer_to_a_waiting_add(store: ImageStore, fetcher: Fetcher) -> None:
    """A waiter does not inherit another pull's cancellation: it fetches the layer itself."""
    release_base = fetcher.gate(BASE)
    fetcher.gate(APP_B).set()
    first = asyncio.create_task(add(store, fetcher, IMAGE_A, "example.com/a:1"))
    await fetcher.started[BASE.diff_id].wait()
    second = asyncio.create_task(add(store, fetcher, IMAGE_B, "example.com/b:1"))
    await fetcher.started[APP_B.diff_id].wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release_base.set()
    b = await second
    assert b.chain_ids[0] == BASE.diff_id
    assert fetcher.count[BASE.diff_id] == 2  # fetched again by the waiter
    assert await store.find("example.com/a:1") is None


async def test_failure_reaches_the_concurrent_waiter(store: ImageStore, fetcher: Fetcher, layout: Layout) -> None:
    release = fetcher.gate(BASE)
    fetcher.fail[BASE.diff_id] = DataLoss("blob truncated")
    fetcher.gate(APP_B).set()
    first = asyncio.create_task(add(store, fetcher, IMAGE_A, "example.com/a:1"))
    await fetcher.started[BASE.diff_id].wait()
    second = asyncio.create_task(add(store, fetcher, IMAGE_B, "example.com/b:1"))
    await fetcher.started[APP_B.diff_id].wait()
    release.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    await settle(store)
    assert all(isinstance(r, DataLoss) for r in results)
    assert fetcher.count[BASE.diff_id] == 1
    assert not layout.layer_dir(BASE.diff_id).exists()


async def test_wrong_diff_id_is_data_loss_and_leaves_nothing(
    store: ImageStore, fetcher: Fetcher, layout: Layout, db: Database
) -> None:
    wrong = "sha256:" + "0" * 64
    source = fetcher.source(APP_A)
    bad = LayerSource(wrong, source.media_type, source.fetch, source.label)
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": [wrong]}})
    with pytest.raises(DataLoss, match="digest"):
        await store.add_image(manifest=b"{}", manifest_type=OCI_MANIFEST, manifest_digest="sha256:" + "1" * 64,
                              config=config, config_digest=sha256_digest(config), layers=[bad],
                              names=[parse_normalized("example.com/bad:1")])
    assert await layer_rows(db) == {}
    assert layer_dirs_on_disk(layout) == set()
    assert list(layout.downloads.iterdir()) == []


async def test_config_that_is_not_json_is_data_loss(store: ImageStore, fetcher: Fetcher) -> None:
    with pytest.raises(DataLoss, match="not valid JSON"):
        await store.add_image(manifest=b"{}", manifest_type=OCI_MANIFEST, manifest_digest="sha256:" + "1" * 64,
                              config=b"{not json", config_digest="sha256:" + "2" * 64, layers=[], names=[])
    assert fetcher.count == Counter()


async def test_a_tag_moves_to_the_newest_image(store: ImageStore, fetcher: Fetcher) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/app:latest")
    b = await add(store, fetcher, IMAGE_B, "example.com/app:latest")
    found = await store.find("example.com/app:latest")
    assert found is not None and found.id == b.id
    old = await store.get(a.id)
    assert old is not None
    assert old.repo_tags == []
    assert old.repo_digests == [f"example.com/app@{IMAGE_A.manifest_digest}"]  # still reachable by digest


# ---- look-ups ----------------------------------------------------------------------------------------------------


async def test_find_by_id_prefix_name_and_digest(store: ImageStore, fetcher: Fetcher) -> None:
    a = await add(store, fetcher, IMAGE_A, "busybox:1.36", "example.com/team/app:v2")
    await add(store, fetcher, IMAGE_B, "example.com/other:1")
    hex_id = hexpart(a.id)
    for ref in (
        a.id,
        hex_id,
        hex_id[:12],
        "busybox:1.36",  # normalized to docker.io/library/busybox:1.36
        "docker.io/library/busybox:1.36",
        "example.com/team/app:v2",
        f"example.com/team/app@{IMAGE_A.manifest_digest}",
        f"docker.io/library/busybox@{IMAGE_A.manifest_digest}",
        f"busybox@{IMAGE_A.manifest_digest}",
        f"  {a.id}  ",
    ):
        found = await store.find(ref)
        assert found is not None, ref
        assert found.id == a.id, ref
    assert await store.find("busybox:1.35") is None
    assert await store.find("example.com/team/app") is None  # means :latest
    assert await store.find("sha256:" + "f" * 64) is None
    assert await store.find("f" * 12) is None
    assert await store.get("sha256:" + "f" * 64) is None


async def test_find_with_candidates(store: ImageStore, fetcher: Fetcher) -> None:
    a = await add(store, fetcher, IMAGE_A, "quay.io/team/tool:1")
    assert await store.find("team/tool:1") is None  # docker.io by default normalization
    found = await store.find("team/tool:1", [parse_normalized("quay.io/team/tool:1")])
    assert found is not None and found.id == a.id


class CountingDatabase:
    """The store's database, counting the trips to its thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.trips = 0

    async def run(self, fn):
        self.trips += 1
        return await self.db.run(fn)

    async def transaction(self, fn):
        self.trips += 1
        return await self.db.transaction(fn)


async def test_find_answers_from_memory_until_an_image_changes(db: Database, layout: Layout, fetcher: Fetcher) -> None:
    counting = CountingDatabase(db)
    store = ImageStore(counting, layout)  # type: ignore[arg-type]
    a = await add(store, fetcher, IMAGE_A, "example.com/app:1", "example.com/app:2")
    first = await store.find("example.com/app:1")
    trips = counting.trips
    again = await store.find("example.com/app:1")
    assert counting.trips == trips, "asked again with nothing changed: answered from memory"
    assert again == first and again is not first, "a new Image each time: one caller's changes stay its own"
    assert await store.find("example.com/app:3") is None
    assert await store.find("example.com/app:3") is None and counting.trips == trips + 1

    b = await add(store, fetcher, IMAGE_B, "example.com/app:1", "example.com/app:3")  # a tag moves, one is new
    assert (await store.find("example.com/app:1")).id == b.id  # type: ignore[union-attr]
    assert (await store.find("example.com/app:3")).id == b.id  # type: ignore[union-attr]
    await store.remove("example.com/app:2")  # a's last tag: a goes
    assert await store.find("example.com/app:2") is None
    assert await store.find(a.id) is None
    await store.remove("example.com/app:3")  # one of b's two tags
    assert await store.find("example.com/app:3") is None
    assert (await store.find("example.com/app:1")).id == b.id  # type: ignore[union-attr]


async def test_a_find_that_read_before_a_change_is_not_kept(store: ImageStore, fetcher: Fetcher, db: Database) -> None:
    await add(store, fetcher, IMAGE_A, "example.com/app:1", "example.com/app:2")
    gate = threading.Event()
    blocked = asyncio.create_task(db.run(lambda conn: gate.wait(10)))  # holds the database thread
    await asyncio.sleep(0)
    find = asyncio.create_task(store.find("example.com/app:1"))  # its read queues behind the block
    await asyncio.sleep(0)
    untag = asyncio.create_task(store._change_images(  # a write queued behind the read, as every change is
        lambda conn: conn.execute("DELETE FROM image_names WHERE name = ?", ("example.com/app:1",))))
    await asyncio.sleep(0.05)
    gate.set()
    await blocked
    assert await find is not None, "the read ran before the write"
    await untag
    assert await store.find("example.com/app:1") is None, "and its answer was not kept"


async def test_ambiguous_id_prefix_finds_nothing(store: ImageStore, fetcher: Fetcher, db: Database) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    twin = "sha256:" + hexpart(a.id)[:12] + ("0" if hexpart(a.id)[12] != "0" else "1") + "f" * 51
    await db.run(lambda conn: conn.execute(
        "INSERT INTO images (id, manifest_digest, manifest, manifest_type, config, size, pulled_at)"
        " VALUES (?, 'sha256:m', x'', 't', '{}', 0, 0)", (twin,)))
    assert await store.find(hexpart(a.id)[:12]) is None  # two ids start with it
    found = await store.find(hexpart(a.id)[:13])
    assert found is not None and found.id == a.id
    # Prefixes shorter than 4 characters are never treated as ids.
    assert await store.find(hexpart(a.id)[:3]) is None


async def test_layer_dirs_of_an_absent_image(store: ImageStore) -> None:
    with pytest.raises(NotFound, match="sha256:"):
        await store.layer_dirs("sha256:" + "e" * 64)


async def test_pinned_images(db: Database, layout: Layout, fetcher: Fetcher) -> None:
    store = ImageStore(db, layout, pinned=["registry.k8s.io/pause:3.9", "not a reference!"])
    pause = await add(store, fetcher, IMAGE_A, "registry.k8s.io/pause:3.9")
    other = await add(store, fetcher, IMAGE_B, "example.com/b:1")
    assert pause.pinned and not other.pinned
    store.set_pinned([])
    refreshed = await store.get(pause.id)
    assert refreshed is not None and not refreshed.pinned


# ---- removal -----------------------------------------------------------------------------------------------------


async def test_remove_one_of_two_tags_keeps_the_image(
    store: ImageStore, fetcher: Fetcher, layout: Layout
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1", "example.com/a:2")
    await store.remove("example.com/a:1")
    kept = await store.get(a.id)
    assert kept is not None
    assert kept.repo_tags == ["example.com/a:2"]
    assert store.removals == 0, "a name went, not an image: a container being created need not look again"
    assert all(layout.layer_diff(c).is_dir() for c in a.chain_ids)


async def test_removing_the_last_tag_removes_image_and_unused_layers(
    store: ImageStore, fetcher: Fetcher, layout: Layout, db: Database
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1", "example.com/a:2")
    b = await add(store, fetcher, IMAGE_B, "example.com/b:1")
    await store.remove("example.com/a:1")
    assert store.removals == 0
    await store.remove("example.com/a:2")
    assert store.removals == 1
    assert await store.get(a.id) is None
    assert await store.find(f"example.com/a@{IMAGE_A.manifest_digest}") is None
    # APP_A's layer went; the base layer stays because image B uses it.
    assert not layout.layer_dir(a.chain_ids[1]).exists()
    assert layout.layer_diff(BASE.diff_id).is_dir()
    assert set(await layer_rows(db)) == set(b.chain_ids)
    await store.remove("example.com/b:1")
    assert await layer_rows(db) == {}
    assert layer_dirs_on_disk(layout) == set()
    assert (await store.fs_usage()).used_bytes == 0


async def test_remove_by_digest_removes_the_image_with_all_its_tags(
    store: ImageStore, fetcher: Fetcher, layout: Layout
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1", "example.com/a:2")
    await store.remove(f"example.com/a@{IMAGE_A.manifest_digest}")
    assert await store.get(a.id) is None
    assert await store.find("example.com/a:2") is None
    assert layer_dirs_on_disk(layout) == set()


async def test_remove_by_id_and_by_prefix(store: ImageStore, fetcher: Fetcher) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1", "example.com/a:2")
    b = await add(store, fetcher, IMAGE_B, "example.com/b:1")
    await store.remove(a.id)
    assert await store.get(a.id) is None
    await store.remove(hexpart(b.id)[:16])
    assert await store.list() == []


async def test_removing_an_absent_image_is_not_an_error(store: ImageStore) -> None:
    await store.remove("example.com/never:1")
    await store.remove("sha256:" + "d" * 64)


async def test_image_in_use_keeps_its_content_when_its_names_go(
    store: ImageStore, fetcher: Fetcher, layout: Layout
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    in_use = {a.id}

    async def image_in_use(image_id: str) -> bool:
        return image_id in in_use

    store.image_in_use = image_in_use
    await store.remove("example.com/a:1")
    kept = await store.get(a.id)
    assert kept is not None
    assert kept.repo_tags == [] and kept.repo_digests == []
    assert all(layout.layer_diff(c).is_dir() for c in a.chain_ids)
    assert await store.find("example.com/a:1") is None

    await store.remove_unnamed_unused()  # still in use: stays
    assert await store.get(a.id) is not None
    assert store.removals == 0
    in_use.clear()
    await store.remove_unnamed_unused()
    assert await store.get(a.id) is None
    assert store.removals == 1
    assert layer_dirs_on_disk(layout) == set()


async def test_an_image_mounted_as_a_volume_is_not_removed(
    store: ImageStore, fetcher: Fetcher, layout: Layout
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1", "example.com/a:2")
    mounted = {a.id: ["c0ffee"]}

    async def image_mounted_by(image_id: str) -> list[str]:
        return mounted.get(image_id, [])

    async def image_in_use(image_id: str) -> bool:
        return image_id in mounted

    store.image_mounted_by, store.image_in_use = image_mounted_by, image_in_use
    await store.remove("example.com/a:1")  # one name of two: the image stays either way
    for ref in ("example.com/a:2", a.id, f"example.com/a@{IMAGE_A.manifest_digest}"):
        with pytest.raises(FailedPrecondition, match="mounted as an image volume by container.*c0ffee"):
            await store.remove(ref)
    kept = await store.get(a.id)
    assert kept is not None and kept.repo_tags == ["example.com/a:2"]
    assert all(layout.layer_diff(c).is_dir() for c in a.chain_ids)

    mounted.clear()
    await store.remove("example.com/a:2")
    assert await store.get(a.id) is None
    assert layer_dirs_on_disk(layout) == set()


async def test_removals_wait_while_held(store: ImageStore, fetcher: Fetcher) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    async with store.removals_held():
        removal = asyncio.create_task(store.remove(a.id))
        await asyncio.sleep(0.05)
        assert not removal.done()
        assert await store.get(a.id) is not None
    await removal
    assert await store.get(a.id) is None


async def test_remove_unnamed_unused_keeps_named_images(store: ImageStore, fetcher: Fetcher) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    await store.remove_unnamed_unused()
    assert await store.get(a.id) is not None


async def test_removal_does_not_take_layers_an_add_in_flight_holds(
    store: ImageStore, fetcher: Fetcher, layout: Layout
) -> None:
    """B's base layer is A's; A is removed while B is still fetching its own top layer."""
    await add(store, fetcher, IMAGE_A, "example.com/a:1")
    release_top = fetcher.gate(APP_B)
    adding = asyncio.create_task(add(store, fetcher, IMAGE_B, "example.com/b:1"))
    await fetcher.started[APP_B.diff_id].wait()
    await store.remove("example.com/a:1")
    assert layout.layer_diff(BASE.diff_id).is_dir()
    release_top.set()
    b = await adding
    assert all(layout.layer_diff(c).is_dir() for c in b.chain_ids)
    assert fetcher.count[BASE.diff_id] == 1


# ---- usage and recovery ------------------------------------------------------------------------------------------


async def test_fs_usage_sums_the_layers(store: ImageStore, fetcher: Fetcher, layout: Layout) -> None:
    empty = await store.fs_usage()
    assert (empty.used_bytes, empty.inodes_used) == (0, 0)
    assert empty.mountpoint == str(layout.layers)
    await add(store, fetcher, IMAGE_A, "example.com/a:1")
    await add(store, fetcher, IMAGE_B, "example.com/b:1")
    usage = await store.fs_usage()
    assert usage.used_bytes == len("base layer\n") + len("app a\n") + len("app b\n")
    assert usage.inodes_used == 3  # one file per layer, the base counted once
    assert usage.timestamp_ns >= empty.timestamp_ns


async def test_recover_removes_strays_and_keeps_known_layers(
    store: ImageStore, fetcher: Fetcher, layout: Layout
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    stray_layer = layout.layers / ("9" * 64)
    (stray_layer / "diff" / "sub").mkdir(parents=True)
    (stray_layer / "diff" / "sub" / "f").write_text("half unpacked")
    (stray_layer / "diff" / "sub").chmod(0o500)  # remove_tree copes with unwritable dirs
    stray_blob = layout.downloads / "abc-1-2.blob"
    stray_blob.write_bytes(b"partial")
    stray_dir = layout.downloads / "import-xyz"
    stray_dir.mkdir()
    (stray_dir / "x").write_text("x")
    await store.recover()
    assert not stray_layer.exists()
    assert list(layout.downloads.iterdir()) == []
    assert layer_dirs_on_disk(layout) == {hexpart(c) for c in a.chain_ids}
    assert (await store.layer_dirs(a.id))[1].joinpath("a").read_text() == "app a\n"


async def test_recover_collects_images_that_lost_their_names(
    store: ImageStore, fetcher: Fetcher, db: Database, layout: Layout
) -> None:
    a = await add(store, fetcher, IMAGE_A, "example.com/a:1")
    # As after a crash between removing the names of an image in use and the image itself.
    await db.run(lambda conn: conn.execute("DELETE FROM image_names WHERE image_id = ?", (a.id,)))
    await store.recover()
    assert await store.get(a.id) is None
    assert layer_dirs_on_disk(layout) == set()
