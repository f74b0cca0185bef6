"""`cripy image import` for air-gapped nodes: an OCI image layout (directory or tar) and a docker-archive tarball
built by the test are loaded into the running daemon, verified like a pull, and then served by CRI like any
pulled image. A corrupted blob is DataLoss and leaves nothing in the store."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.integration.test_images_common import (
    assert_alive,
    assert_store_consistent,
    assert_store_empty,
    cripy_import,
    image_chain_ids,
    layer_diff,
    marker_image,
    wait_for,
    tmp_entries,
)
from tests.support.images import BuiltImage, host_arch, multiarch_index, write_oci_layout


@pytest.fixture
def daemon(cripy_factory):
    return cripy_factory()


def tar_directory(source: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return archive


def write_docker_archive(archive: Path, image: BuiltImage, repo_tags: list[str]) -> None:
    """docker save's format: manifest.json, the config as <hex>.json, each layer as an uncompressed tar."""
    config_name = image.config_digest.split(":", 1)[1] + ".json"
    layer_names = [f"{layer.diff_id.split(':', 1)[1]}/layer.tar" for layer in image.layers]
    manifest = [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(archive, "w") as tar:
        add(tar, "manifest.json", json.dumps(manifest).encode())
        add(tar, config_name, image.config_bytes)
        for name, layer in zip(layer_names, image.layers):
            add(tar, name, layer.tar_bytes)


def assert_usable(daemon, image: BuiltImage, name: str, marker: str) -> None:
    got = daemon.image_status(name).image
    assert got.id == image.config_digest
    assert name in got.repo_tags
    assert got.size > 0
    chains = image_chain_ids(image)
    assert (layer_diff(daemon, chains[0]) / "bin" / "busybox").is_file()
    assert (layer_diff(daemon, chains[-1]) / "marker").read_text() == marker + "\n"
    assert_store_consistent(daemon)


def test_import_oci_layout_directory(daemon, tmp_path) -> None:
    image = marker_image("oci dir")
    name = "example.test/imported/oci-dir:1.0"
    write_oci_layout(tmp_path / "layout", image, tag=name)

    result = cripy_import(daemon, tmp_path / "layout")

    assert result.returncode == 0, result.stderr
    assert image.config_digest in result.stdout
    assert_usable(daemon, image, name, "oci dir")
    assert [i.id for i in daemon.list_images(name)] == [image.config_digest]


def test_import_oci_layout_tar_with_a_given_name(daemon, tmp_path) -> None:
    image = marker_image("oci tar")
    write_oci_layout(tmp_path / "layout", image, tag="latest")  # a bare tag names nothing: --name does
    archive = tar_directory(tmp_path / "layout", tmp_path / "image.tar")
    name = "example.test/imported/oci-tar:2.0"

    result = cripy_import(daemon, archive, name=name)

    assert result.returncode == 0, result.stderr
    assert_usable(daemon, image, name, "oci tar")


def test_import_oci_layout_with_an_index_picks_the_host_platform(daemon, tmp_path) -> None:
    index = multiarch_index()
    (_, host_image), _ = index.images
    name = "example.test/imported/multiarch:1"
    write_oci_layout(tmp_path / "layout", index, tag=name)

    result = cripy_import(daemon, tmp_path / "layout")

    assert result.returncode == 0, result.stderr
    assert daemon.image_status(name).image.id == host_image.config_digest
    top = image_chain_ids(host_image)[-1]
    assert (layer_diff(daemon, top) / "arch").read_text() == host_arch() + "\n"


def test_import_docker_archive(daemon, tmp_path) -> None:
    image = marker_image("docker archive")
    tags = ["example.test/imported/docker:3.0", "example.test/imported/docker:latest"]
    write_docker_archive(tmp_path / "docker.tar", image, tags)

    result = cripy_import(daemon, tmp_path / "docker.tar")

    assert result.returncode == 0, result.stderr
    assert sorted(daemon.image_status(tags[0]).image.repo_tags) == sorted(tags)
    assert_usable(daemon, image, tags[0], "docker archive")


def test_imported_image_survives_restart_and_removal(daemon, tmp_path) -> None:
    image = marker_image("import restart")
    name = "example.test/imported/restart:1"
    write_oci_layout(tmp_path / "layout", image, tag=name)
    assert cripy_import(daemon, tmp_path / "layout").returncode == 0
    daemon.restart()
    assert daemon.image_status(name).image.id == image.config_digest
    daemon.remove_image(name)
    assert_store_empty(daemon)


@pytest.mark.parametrize("which", ["layer", "config"])
def test_import_of_a_corrupted_blob_is_data_loss_and_stores_nothing(daemon, tmp_path, which) -> None:
    image = marker_image(f"corrupt {which}")
    name = f"example.test/imported/corrupt-{which}:1"
    layout = tmp_path / "layout"
    write_oci_layout(layout, image, tag=name)
    digest = image.layers[0].digest if which == "layer" else image.config_digest
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    result = cripy_import(daemon, layout)

    assert result.returncode != 0
    assert "DATA_LOSS" in result.stderr
    assert digest in result.stderr
    assert daemon.list_images() == []
    wait_for(lambda: tmp_entries(daemon) == [], "the other layer's copy to end")
    assert not layer_diff(daemon, image_chain_ids(image)[0]).parent.exists()
    assert_alive(daemon)


def test_import_of_a_docker_archive_with_a_wrong_layer_is_data_loss(daemon, tmp_path) -> None:
    image = marker_image("docker wrong layer")
    write_docker_archive(tmp_path / "docker.tar", image, ["example.test/imported/docker-bad:1"])
    # Swap the marker layer's content: its digest no longer matches the config's diff_id.
    with tarfile.open(tmp_path / "docker.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    marker_name = f"{image.layers[1].diff_id.split(':', 1)[1]}/layer.tar"
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for member, data in members:
            if member.name == marker_name:
                data = data.replace(b"docker wrong layer", b"docker WRONG layer")
            tar.addfile(member, io.BytesIO(data))

    result = cripy_import(daemon, tmp_path / "bad.tar")

    assert result.returncode != 0
    assert "DATA_LOSS" in result.stderr
    assert image.layers[1].diff_id in result.stderr
    assert daemon.list_images() == []
    assert_alive(daemon)


def test_import_of_a_missing_path_fails_cleanly(daemon, tmp_path) -> None:
    result = cripy_import(daemon, tmp_path / "nothing-here.tar")
    assert result.returncode != 0
    assert "NOT_FOUND" in result.stderr
    not_an_archive = tmp_path / "junk.tar"
    not_an_archive.write_bytes(b"not a tar at all" * 100)
    result = cripy_import(daemon, not_an_archive)
    assert result.returncode != 0 and "INVALID_ARGUMENT" in result.stderr
    assert_store_empty(daemon)
    assert_alive(daemon)
