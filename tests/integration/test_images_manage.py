"""Managing pulled images through CRI: RemoveImage by id, tag and digest, ImageFsInfo, daemon restarts (SIGTERM
and SIGKILL, also in the middle of a pull), and bad input answered with clear codes while the daemon stays up."""

from __future__ import annotations

import os
import signal
import threading

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.test_images_common import (
    assert_alive,
    assert_store_consistent,
    assert_store_empty,
    image_chain_ids,
    image_status_or_none,
    insecure_conf,
    layer_diff,
    layer_dir_names,
    marker_image,
    rpc_error,
    tmp_entries,
    unique,
    wait_for,
)
from tests.support.images import busybox_image, multilayer_whiteout_image


@pytest.fixture
def daemon(cripy_factory, plain_registry):
    return cripy_factory(registries_conf=insecure_conf(plain_registry.host))


def fs_usage(daemon) -> tuple[int, int]:
    (fs,) = daemon.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10).image_filesystems
    return fs.used_bytes.value, fs.inodes_used.value


# ---- RemoveImage ----------------------------------------------------------------------------------------------


def test_remove_by_id_removes_image_and_layers(daemon, plain_registry) -> None:
    image = marker_image("remove by id")
    ref = plain_registry.push_image(unique("rm/id"), "v1", image)
    daemon.pull(ref)
    assert layer_dir_names(daemon)

    daemon.remove_image(image.config_digest)

    assert image_status_or_none(daemon, ref) is None
    assert_store_empty(daemon)


def test_remove_by_tag_removes_only_that_name_until_the_last(daemon, plain_registry) -> None:
    image = marker_image("two tags")
    repo = unique("rm/tags")
    ref1 = plain_registry.push_image(repo, "one", image)
    ref2 = plain_registry.push_image(repo, "two", image)
    daemon.pull(ref1)
    daemon.pull(ref2)
    assert sorted(daemon.image_status(image.config_digest).image.repo_tags) == sorted([ref1, ref2])
    layers = layer_dir_names(daemon)

    daemon.remove_image(ref1)

    remaining = daemon.image_status(ref2).image
    assert remaining.id == image.config_digest
    assert list(remaining.repo_tags) == [ref2]
    assert image_status_or_none(daemon, ref1) is None
    assert layer_dir_names(daemon) == layers

    daemon.remove_image(ref2)
    assert_store_empty(daemon)


def test_remove_by_digest(daemon, plain_registry) -> None:
    image = marker_image("remove by digest")
    repo = unique("rm/digest")
    ref = plain_registry.push_image(repo, "v1", image)
    daemon.pull(ref)
    digest_ref = f"{plain_registry.host}/{repo}@{image.manifest_digest}"

    daemon.remove_image(digest_ref)

    assert image_status_or_none(daemon, ref) is None
    assert_store_empty(daemon)


def test_removing_an_absent_image_is_not_an_error(daemon, plain_registry) -> None:
    daemon.remove_image(f"{plain_registry.host}/never/pulled:v1")
    daemon.remove_image("sha256:" + "ab" * 32)
    # Twice in a row: the second removal finds nothing and is fine too.
    image = marker_image("remove twice")
    ref = plain_registry.push_image(unique("rm/twice"), "v1", image)
    daemon.pull(ref)
    daemon.remove_image(ref)
    daemon.remove_image(ref)
    assert_alive(daemon)


def test_image_fs_info_grows_with_pulls_and_shrinks_with_removals(daemon, plain_registry) -> None:
    empty_bytes, empty_inodes = fs_usage(daemon)
    image = multilayer_whiteout_image()
    ref = plain_registry.push_image(unique("fsinfo"), "v1", image)

    daemon.pull(ref)
    used_bytes, used_inodes = fs_usage(daemon)
    assert used_bytes >= empty_bytes + len(image.layers[0].tar_bytes) // 2  # at least the busybox binary
    assert used_inodes > empty_inodes + 10

    daemon.remove_image(ref)
    assert fs_usage(daemon) == (empty_bytes, empty_inodes)


# ---- restarts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_images_survive_a_daemon_restart(daemon, plain_registry, sig) -> None:
    first, second = multilayer_whiteout_image(), marker_image("restart")
    ref1 = plain_registry.push_image(unique("restart/one"), "v1", first)
    ref2 = plain_registry.push_image(unique("restart/two"), "v1", second)
    daemon.pull(ref1)
    daemon.pull(ref2)
    before = {image.id: (list(image.repo_tags), list(image.repo_digests), image.size)
              for image in daemon.list_images()}
    usage = fs_usage(daemon)

    daemon.restart(sig)

    after = {image.id: (list(image.repo_tags), list(image.repo_digests), image.size)
             for image in daemon.list_images()}
    assert after == before
    assert fs_usage(daemon) == usage
    for image in (first, second):
        for chain in image_chain_ids(image):
            assert layer_diff(daemon, chain).is_dir()
    assert (layer_diff(daemon, image_chain_ids(first)[0]) / "bin" / "busybox").is_file()
    assert_store_consistent(daemon)
    # Still usable: a pull is a no-op on the stored image, and removal works as before.
    assert daemon.pull(ref1) == first.config_digest
    daemon.remove_image(ref2)
    assert [image.id for image in daemon.list_images()] == [first.config_digest]
    assert_store_consistent(daemon)


def test_pull_killed_with_the_daemon_leaves_nothing_half_written(cripy_factory, plain_registry,
                                                                  fault_proxy) -> None:
    proxy = fault_proxy(plain_registry)
    daemon = cripy_factory(registries_conf=insecure_conf(proxy.host))
    image = marker_image("killed pull")
    repo = unique("killed")
    plain_registry.push_image(repo, "v1", image)
    big, small = image.layers
    proxy.trickle(f"/blobs/{big.digest}", rate=50_000)
    small_chain = image_chain_ids(image)[1]

    outcome: list[BaseException | str] = []

    def pull() -> None:
        try:
            outcome.append(daemon.pull(proxy.ref(repo, "v1")))
        except grpc.RpcError as e:
            outcome.append(e)

    puller = threading.Thread(target=pull)
    puller.start()
    big_layer_dir = layer_diff(daemon, image_chain_ids(image)[0]).parent

    def big_layer_half_done() -> bool:
        # Downloaded to a partial file first, or streamed straight into a temporary unpack directory.
        unpacking = big_layer_dir.is_dir() and any(name.startswith(".tmp-") for name in os.listdir(big_layer_dir))
        return unpacking or any(name.endswith(".partial") for name in tmp_entries(daemon))

    # Kill when the big layer is half downloaded and the small one is already unpacked in place.
    wait_for(lambda: big_layer_half_done() and layer_diff(daemon, small_chain).is_dir(), "the pull to be under way")
    daemon.kill()
    puller.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], grpc.RpcError)

    proxy.clear_faults()
    daemon.start()

    assert tmp_entries(daemon) == []
    assert layer_dir_names(daemon) == set(), "layers of the unrecorded image must be gone"
    assert daemon.list_images() == []
    assert fs_usage(daemon)[0] == 0
    assert daemon.pull(proxy.ref(repo, "v1")) == image.config_digest
    assert_store_consistent(daemon)


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["127.0.0.1:5000/Upper/case:tag", "bad name:1", "repo@sha256:xyz", "host:port:bad/x",
                                       "repo:", "::"])
def test_malformed_reference_is_invalid_argument(daemon, reference) -> None:
    details = rpc_error(lambda: daemon.pull(reference), grpc.StatusCode.INVALID_ARGUMENT)
    assert details
    rpc_error(lambda: daemon.image_status(reference), grpc.StatusCode.INVALID_ARGUMENT)
    assert_alive(daemon)


def test_empty_reference_is_invalid_argument(daemon) -> None:
    rpc_error(lambda: daemon.pull(""), grpc.StatusCode.INVALID_ARGUMENT)
    rpc_error(lambda: daemon.image_status(""), grpc.StatusCode.INVALID_ARGUMENT)
    assert_alive(daemon)


def test_unknown_image_status_answers_with_no_image(daemon, plain_registry) -> None:
    for name in (f"{plain_registry.host}/nothing/here:v1", "sha256:" + "cd" * 32,
                 f"{plain_registry.host}/nothing/here@sha256:" + "ef" * 32):
        response = daemon.image_status(name)
        assert not response.HasField("image")
    assert daemon.list_images(f"{plain_registry.host}/nothing/here:v1") == []


def test_pull_of_a_missing_tag_or_repo_is_not_found(daemon, plain_registry) -> None:
    repo = unique("missing")
    plain_registry.push_image(repo, "present", busybox_image())
    details = rpc_error(lambda: daemon.pull(plain_registry.ref(repo, "absent")), grpc.StatusCode.NOT_FOUND)
    assert "absent" in details and plain_registry.host in details
    rpc_error(lambda: daemon.pull(plain_registry.ref(unique("no-such-repo"), "v1")), grpc.StatusCode.NOT_FOUND)
    rpc_error(lambda: daemon.pull(plain_registry.ref(repo, "sha256:" + "12" * 32)), grpc.StatusCode.NOT_FOUND)
    assert_store_empty(daemon)
    assert_alive(daemon)
