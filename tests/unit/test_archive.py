"""cripy.images.archive: OCI layouts (dir and tar) and docker-archive tarballs into a real store in tmp_path."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from cripy.errors import DataLoss, InvalidArgument, NotFound
from cripy.images.archive import Importer
from cripy.images.store import ImageStore
from cripy.storage.layout import Layout
from tests.support.images import (
    BUSYBOX_PATH,
    BuiltImage,
    LayerBuilder,
    build_image,
    busybox_image,
    canonical_json,
    host_arch,
    multiarch_index,
    other_arch,
    write_oci_layout,
)


def small_image(marker: str = "one") -> BuiltImage:
    base = LayerBuilder().add_dir("etc").add_file("etc/os-release", "ID=test\n").layer()
    top = LayerBuilder().add_file("marker", marker + "\n").layer(compression="none")
    return build_image([base, top], config={"User": "1000"})


@pytest.fixture
def importer(store: ImageStore, layout: Layout) -> Importer:
    return Importer(store, layout.downloads)


def tar_directory(source: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return archive


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(archive: Path, image: BuiltImage, repo_tags: list[str] | None) -> Path:
    """docker save's format: manifest.json, the config as <hex>.json, each layer as an uncompressed tar."""
    config_name = image.config_digest.split(":", 1)[1] + ".json"
    layer_names = [f"{layer.diff_id.split(':', 1)[1]}/layer.tar" for layer in image.layers]
    entry: dict = {"Config": config_name, "Layers": layer_names}
    if repo_tags is not None:
        entry["RepoTags"] = repo_tags
    with tarfile.open(archive, "w") as tar:
        add_member(tar, "manifest.json", json.dumps([entry]).encode())
        add_member(tar, config_name, image.config_bytes)
        for name, layer in zip(layer_names, image.layers):
            add_member(tar, name, layer.tar_bytes)
    return archive


def marker_of(layout: Layout, chain_id: str) -> str:
    return (layout.layer_diff(chain_id) / "marker").read_text()


# ---- OCI layouts -------------------------------------------------------------------------------------------------


async def test_oci_layout_directory_with_a_full_name(importer: Importer, store: ImageStore, layout: Layout,
                                                     tmp_path: Path) -> None:
    built = small_image()
    write_oci_layout(tmp_path / "oci", built, tag="example.com/team/small:1")
    (image,) = await importer.import_path(tmp_path / "oci")
    assert image.id == built.config_digest
    assert image.manifest_digest == built.manifest_digest
    assert image.repo_tags == ["example.com/team/small:1"]
    assert image.repo_digests == [f"example.com/team/small@{built.manifest_digest}"]
    assert image.user == "1000"
    assert marker_of(layout, image.chain_ids[-1]) == "one\n"
    found = await store.find("example.com/team/small:1")
    assert found is not None and found.id == image.id


async def test_oci_layout_with_a_bare_tag_needs_a_name(importer: Importer, store: ImageStore,
                                                       tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "oci", small_image(), tag="latest")
    with pytest.raises(InvalidArgument, match="carries no name"):
        await importer.import_path(tmp_path / "oci")
    assert await store.list() == []
    (image,) = await importer.import_path(tmp_path / "oci", name="small")
    assert image.repo_tags == ["docker.io/library/small:latest"]


async def test_oci_layout_tar(importer: Importer, layout: Layout, tmp_path: Path) -> None:
    built = small_image("tarred")
    write_oci_layout(tmp_path / "oci", built, tag="docker.io/library/small:2")
    archive = tar_directory(tmp_path / "oci", tmp_path / "small.tar")
    (image,) = await importer.import_path(archive)
    assert image.repo_tags == ["docker.io/library/small:2"]
    assert marker_of(layout, image.chain_ids[-1]) == "tarred\n"
    assert list(layout.downloads.iterdir()) == []  # the extraction directory is gone


async def test_oci_layout_index_picks_the_host_platform(importer: Importer, layout: Layout, tmp_path: Path) -> None:
    if not os.access(BUSYBOX_PATH, os.R_OK):
        pytest.skip("busybox-static is not installed")
    index = multiarch_index()
    write_oci_layout(tmp_path / "oci", index, tag="example.com/multi:1")
    (image,) = await importer.import_path(tmp_path / "oci")
    host_image = next(img for plat, img in index.images if plat["architecture"] == host_arch())
    assert image.id == host_image.config_digest
    assert (layout.layer_diff(image.chain_ids[-1]) / "arch").read_text() == host_arch() + "\n"
    assert other_arch() not in (layout.layer_diff(image.chain_ids[-1]) / "arch").read_text()


async def test_busybox_oci_layout(importer: Importer, layout: Layout, tmp_path: Path) -> None:
    if not os.access(BUSYBOX_PATH, os.R_OK):
        pytest.skip("busybox-static is not installed")
    built = busybox_image()
    write_oci_layout(tmp_path / "oci", built, tag="latest")
    (image,) = await importer.import_path(tmp_path / "oci", name="example.com/busybox:test")
    diff = layout.layer_diff(image.chain_ids[0])
    assert (diff / "bin" / "busybox").read_bytes() == BUSYBOX_PATH.read_bytes()
    assert os.readlink(diff / "bin" / "sh") == "busybox"
    assert "app:x:1000" in (diff / "etc" / "passwd").read_text()


async def test_corrupted_blob_is_data_loss_and_stores_nothing(importer: Importer, store: ImageStore,
                                                              layout: Layout, tmp_path: Path) -> None:
    # One layer only: no sibling layer is in flight when the copy fails (see test_store.py for those).
    built = build_image([LayerBuilder().add_file("marker", "one\n").layer(compression="none")])
    write_oci_layout(tmp_path / "oci", built, tag="example.com/small:1")
    layer = built.layers[0]
    blob = tmp_path / "oci" / "blobs" / "sha256" / layer.digest.split(":", 1)[1]
    blob.write_bytes(blob.read_bytes().replace(b"one\n", b"two\n"))
    with pytest.raises(DataLoss, match=layer.digest):
        await importer.import_path(tmp_path / "oci")
    assert await store.list() == []
    assert list(layout.layers.iterdir()) == []
    assert list(layout.downloads.iterdir()) == []


async def test_missing_blob_is_data_loss(importer: Importer, store: ImageStore, tmp_path: Path) -> None:
    built = small_image()
    write_oci_layout(tmp_path / "oci", built, tag="example.com/small:1")
    (tmp_path / "oci" / "blobs" / "sha256" / built.config_digest.split(":", 1)[1]).unlink()
    with pytest.raises(DataLoss, match="missing"):
        await importer.import_path(tmp_path / "oci")
    assert await store.list() == []


async def test_empty_index_is_invalid(importer: Importer, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "oci", small_image(), tag="example.com/small:1")
    (tmp_path / "oci" / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": []}))
    with pytest.raises(InvalidArgument, match="lists no image"):
        await importer.import_path(tmp_path / "oci")


# ---- docker-archive ------------------------------------------------------------------------------------------------


async def test_docker_archive(importer: Importer, store: ImageStore, layout: Layout, tmp_path: Path) -> None:
    built = small_image("docker")
    archive = write_docker_archive(tmp_path / "saved.tar", built, ["small:3", "example.com/small:3"])
    (image,) = await importer.import_path(archive)
    assert image.id == built.config_digest
    assert image.repo_tags == ["docker.io/library/small:3", "example.com/small:3"]
    assert marker_of(layout, image.chain_ids[-1]) == "docker\n"
    assert image.chain_ids[0] == built.layers[0].diff_id
    assert image.user == "1000"


async def test_docker_archive_without_tags_takes_the_given_name(importer: Importer, tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "saved.tar", small_image(), None)
    with pytest.raises(InvalidArgument, match="--name"):
        await importer.import_path(archive)
    (image,) = await importer.import_path(archive, name="example.com/named:7")
    assert image.repo_tags == ["example.com/named:7"]


async def test_docker_archive_path_escape_is_refused(importer: Importer, store: ImageStore, tmp_path: Path) -> None:
    built = small_image()
    root = tmp_path / "unpacked"
    root.mkdir()
    config_name = built.config_digest.split(":", 1)[1] + ".json"
    (root / config_name).write_bytes(built.config_bytes)
    (tmp_path / "outside.tar").write_bytes(built.layers[0].tar_bytes)
    manifest = [{"Config": config_name, "RepoTags": ["x:1"], "Layers": ["../outside.tar"]}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidArgument, match="unusable path"):
        await importer.import_path(root)
    assert await store.list() == []


async def test_docker_archive_missing_layer_file(importer: Importer, tmp_path: Path) -> None:
    built = small_image()
    root = tmp_path / "unpacked"
    root.mkdir()
    config_name = built.config_digest.split(":", 1)[1] + ".json"
    (root / config_name).write_bytes(built.config_bytes)
    (root / "manifest.json").write_text(json.dumps([{"Config": config_name, "Layers": ["nope/layer.tar"]}]))
    with pytest.raises(DataLoss, match="nope/layer.tar"):
        await importer.import_path(root, name="x:1")


async def test_docker_archive_manifest_not_json(importer: Importer, tmp_path: Path) -> None:
    root = tmp_path / "unpacked"
    root.mkdir()
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="not JSON"):
        await importer.import_path(root)


# ---- what is not an archive ----------------------------------------------------------------------------------------


async def test_missing_path_is_not_found(importer: Importer, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await importer.import_path(tmp_path / "nothing.tar")


async def test_directory_that_is_neither_format(importer: Importer, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidArgument, match="neither an OCI image layout nor a docker-archive"):
        await importer.import_path(tmp_path / "plain")


async def test_file_that_is_not_a_tar(importer: Importer, layout: Layout, tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(InvalidArgument, match="not a readable tar archive"):
        await importer.import_path(tmp_path / "junk.tar")
    assert list(layout.downloads.iterdir()) == []


async def test_archive_member_escaping_the_extraction_dir_is_refused(importer: Importer, layout: Layout,
                                                                     tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_member(tar, "../../escaped-by-cripy-test", b"x")  # from <root>/tmp/import-*/ up to <root>
    with pytest.raises(InvalidArgument):
        await importer.import_path(archive)
    assert not (layout.root / "escaped-by-cripy-test").exists()
    assert not (layout.downloads / "escaped-by-cripy-test").exists()
