"""PullImage, ImageStatus and ListImages through the CRI API of a real daemon, against a real docker-registry with
images built by the tests: tags and digests, status fields, whiteouts on disk, platform selection, Docker schema 2,
zstd and uncompressed layers, TLS, progress in the log, one pull for two identical requests, shared layers."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import grpc
import pytest

from tests.integration.test_images_common import (
    assert_alive,
    assert_store_consistent,
    image_chain_ids,
    image_status_or_none,
    insecure_conf,
    layer_diff,
    layer_dir_names,
    marker_image,
    rpc_error,
    unique,
    wait_for,
    with_dropin,
)
from tests.support.images import (
    busybox_image,
    docker_schema2_image,
    host_arch,
    multiarch_index,
    multilayer_whiteout_image,
    user_image,
    zstd_image,
)


@pytest.fixture
def daemon(cripy_factory, plain_registry):
    return cripy_factory(registries_conf=insecure_conf(plain_registry.host))


def test_pull_by_tag_reports_every_status_field(daemon, plain_registry) -> None:
    repo = unique("status/numeric")
    image = user_image("1000:2000")
    ref = plain_registry.push_image(repo, "v1", image)

    image_ref = daemon.pull(ref)

    assert image_ref == image.config_digest
    status = daemon.image_status(ref, verbose=True)
    assert status.HasField("image")
    got = status.image
    assert got.id == image.config_digest
    assert list(got.repo_tags) == [ref]
    assert list(got.repo_digests) == [f"{plain_registry.host}/{repo}@{image.manifest_digest}"]
    assert got.size > 0
    assert got.HasField("uid") and got.uid.value == 1000
    assert got.username == ""
    assert not got.pinned
    info = json.loads(status.info["info"])
    assert info["imageSpec"] == image.config
    assert info["imageSpec"]["config"]["User"] == "1000:2000"
    # The image is findable by its id and by its repo digest too.
    assert daemon.image_status(image.config_digest).image.id == image.config_digest
    assert daemon.image_status(got.repo_digests[0]).image.id == image.config_digest


def test_named_user_is_reported_as_username(daemon, plain_registry) -> None:
    ref = plain_registry.push_image(unique("status/named"), "v1", user_image("app"))
    daemon.pull(ref)
    got = daemon.image_status(ref).image
    assert got.username == "app"
    assert not got.HasField("uid")


def test_pull_by_digest(daemon, plain_registry) -> None:
    repo = unique("bydigest")
    image = marker_image("by digest")
    ref = plain_registry.push_image(repo, None, image)  # pushed by digest only: no tag exists
    assert "@sha256:" in ref

    assert daemon.pull(ref) == image.config_digest

    got = daemon.image_status(ref).image
    assert got.id == image.config_digest
    assert list(got.repo_digests) == [ref]
    assert list(got.repo_tags) == []
    assert_store_consistent(daemon)


def test_list_images_with_and_without_filter(daemon, plain_registry) -> None:
    first = marker_image("list one")
    second = marker_image("list two")
    ref1 = plain_registry.push_image(unique("list/one"), "a", first)
    ref2 = plain_registry.push_image(unique("list/two"), "b", second)
    daemon.pull(ref1)
    daemon.pull(ref2)

    everything = {image.id: list(image.repo_tags) for image in daemon.list_images()}
    assert everything == {first.config_digest: [ref1], second.config_digest: [ref2]}

    filtered = daemon.list_images(ref2)
    assert [image.id for image in filtered] == [second.config_digest]
    assert [image.id for image in daemon.list_images(first.config_digest)] == [first.config_digest]
    assert daemon.list_images(f"{plain_registry.host}/list/absent:nope") == []


def test_multilayer_image_layers_hold_overlay_whiteouts(daemon, plain_registry) -> None:
    image = multilayer_whiteout_image()
    ref = plain_registry.push_image(unique("whiteouts"), "v1", image)
    daemon.pull(ref)

    chains = image_chain_ids(image)
    assert layer_dir_names(daemon) == {c.split(":", 1)[1] for c in chains}
    base, middle, top = (layer_diff(daemon, c) for c in chains)
    assert (base / "bin" / "busybox").is_file()
    assert (middle / "data" / "a").read_text() == "a\n"
    assert (middle / "opq" / "old1").exists()

    whiteout = os.lstat(top / "data" / "a")
    assert stat.S_ISCHR(whiteout.st_mode), "a .wh. file must become a character device"
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert os.getxattr(top / "opq", "trusted.overlay.opaque") == b"y"
    assert (top / "opq" / "new").read_text() == "new\n"
    leftovers = [p for p in top.rglob("*") if p.name.startswith(".wh.")]
    assert leftovers == [], f"whiteout markers left in the layer: {leftovers}"
    assert_store_consistent(daemon)


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_index_pull_picks_the_host_platform(daemon, plain_registry, fmt) -> None:
    index = multiarch_index(fmt=fmt)
    ref = plain_registry.push_index(unique(f"multiarch-{fmt}"), "v1", index)
    (host_plat, host_image), (_, other_image) = index.images
    assert host_plat["architecture"] == host_arch()

    assert daemon.pull(ref) == host_image.config_digest

    top = image_chain_ids(host_image)[-1]
    assert (layer_diff(daemon, top) / "arch").read_text() == host_arch() + "\n"
    assert image_status_or_none(daemon, other_image.config_digest) is None
    assert [image.id for image in daemon.list_images()] == [host_image.config_digest]
    assert_store_consistent(daemon)


@pytest.mark.parametrize("builder", [docker_schema2_image, zstd_image,
                                     lambda: busybox_image(compression="none")],
                         ids=["docker-schema2", "zstd", "uncompressed"])
def test_layer_formats(daemon, plain_registry, builder) -> None:
    image = builder()
    ref = plain_registry.push_image(unique("formats"), "v1", image)
    assert daemon.pull(ref) == image.config_digest
    (chain,) = image_chain_ids(image)
    busybox = layer_diff(daemon, chain) / "bin" / "busybox"
    assert busybox.read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.readlink(layer_diff(daemon, chain) / "bin" / "sh") == "busybox"
    assert daemon.image_status(ref).image.size > 0


def test_tls_registry_trusted_through_certs_dir(cripy_factory, tls_registry) -> None:
    ref = tls_registry.push_image(unique("tls"), "v1", busybox_image())
    untrusting = cripy_factory()
    details = rpc_error(lambda: untrusting.pull(ref), grpc.StatusCode.UNAVAILABLE)
    assert tls_registry.host in details
    assert_alive(untrusting)

    trusting = cripy_factory()
    host_dir = trusting.certs_dir / tls_registry.host
    host_dir.mkdir()
    (host_dir / "ca.crt").write_bytes(tls_registry.ca_cert_path.read_bytes())
    assert trusting.pull(ref) == busybox_image().config_digest


def test_pull_progress_is_logged_with_the_layer_digest(daemon, plain_registry) -> None:
    image = busybox_image()
    ref = plain_registry.push_image(unique("progress"), "v1", image)
    daemon.pull(ref)
    digest = image.layers[0].digest
    lines = [line for line in daemon.log_text().splitlines() if digest in line]
    assert any(f"{image.layers[0].size}/{image.layers[0].size} bytes" in line for line in lines), lines


def test_same_pull_twice_at_once_is_done_once(cripy_factory, plain_registry, fault_proxy) -> None:
    proxy = fault_proxy(plain_registry)
    image = marker_image("concurrent")
    repo = unique("concurrent")
    plain_registry.push_image(repo, "v1", image)
    ref = proxy.ref(repo, "v1")
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))
    layer_path = f"/v2/{repo}/blobs/{image.layers[0].digest}"
    proxy.delay(layer_path, 2.0)  # holds the first pull in flight while the second one arrives

    results: dict[str, str | Exception] = {}

    def pull(key: str) -> None:
        try:
            results[key] = daemon.pull(ref)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[key] = e

    first = threading.Thread(target=pull, args=("first",))
    first.start()
    wait_for(lambda: any(r.path == layer_path for r in proxy.requests), "the first pull to ask for the layer")
    second = threading.Thread(target=pull, args=("second",))
    second.start()
    first.join(60)
    second.join(60)

    assert results == {"first": image.config_digest, "second": image.config_digest}
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert len([r for r in gets if r.path == layer_path]) == 1
    assert len([r for r in gets if r.path.startswith(f"/v2/{repo}/manifests/")]) == 1
    assert len(daemon.list_images()) == 1


def test_shared_layer_is_stored_once_and_removed_with_its_last_image(cripy_factory, plain_registry,
                                                                     fault_proxy) -> None:
    proxy = fault_proxy(plain_registry)
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))
    first, second = marker_image("shared one"), marker_image("shared two")
    repo1, repo2 = unique("shared/one"), unique("shared/two")
    plain_registry.push_image(repo1, "v1", first)
    plain_registry.push_image(repo2, "v1", second)
    base_chain, first_top = image_chain_ids(first)
    _, second_top = image_chain_ids(second)
    assert image_chain_ids(second)[0] == base_chain

    daemon.pull(proxy.ref(repo1, "v1"))
    daemon.pull(proxy.ref(repo2, "v1"))

    hexes = {c.split(":", 1)[1] for c in (base_chain, first_top, second_top)}
    assert layer_dir_names(daemon) == hexes
    base_blob = first.layers[0].digest
    base_gets = [r for r in proxy.requests if r.method == "GET" and r.path.endswith(f"/blobs/{base_blob}")]
    assert len(base_gets) == 1, "the shared base layer must be downloaded once"

    daemon.remove_image(proxy.ref(repo1, "v1"))
    assert layer_dir_names(daemon) == {base_chain.split(":", 1)[1], second_top.split(":", 1)[1]}
    assert (layer_diff(daemon, base_chain) / "bin" / "busybox").is_file()
    assert daemon.image_status(proxy.ref(repo2, "v1")).image.id == second.config_digest

    daemon.remove_image(proxy.ref(repo2, "v1"))
    assert layer_dir_names(daemon) == set()
    assert daemon.list_images() == []


def test_layers_are_downloaded_in_parallel(cripy_factory, plain_registry, fault_proxy) -> None:
    proxy = fault_proxy(plain_registry)
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))
    image = multilayer_whiteout_image()
    repo = unique("parallel")
    plain_registry.push_image(repo, "v1", image)
    layer_paths = {f"/v2/{repo}/blobs/{layer.digest}" for layer in image.layers}
    for path in layer_paths:
        proxy.delay(path, 1.5)  # each answer is held back: a sequential puller would never have two open

    puller = threading.Thread(target=daemon.pull, args=(proxy.ref(repo, "v1"),))
    puller.start()
    try:
        wait_for(lambda: len([r for r in proxy.requests if r.path in layer_paths and r.status == 0]) >= 2,
                 "two layer downloads to be open at the same time")
    finally:
        puller.join(60)
    assert daemon.image_status(proxy.ref(repo, "v1")).image.id == image.config_digest


def test_pinned_images_are_reported_pinned(daemon, plain_registry) -> None:
    pinned_ref = plain_registry.push_image(unique("pinned"), "v1", marker_image("pinned"))
    other_ref = plain_registry.push_image(unique("unpinned"), "v1", marker_image("unpinned"))
    with_dropin(daemon, f'[images]\npinned_images = ["{pinned_ref}"]\n')
    daemon.pull(pinned_ref)
    daemon.pull(other_ref)
    assert daemon.image_status(pinned_ref).image.pinned
    assert not daemon.image_status(other_ref).image.pinned
