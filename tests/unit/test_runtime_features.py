"""Runtime handler features: reading a runtime's `features` document, the reasons a feature is missing, the
refusal at create, and probing runtimes that answer, fail, hang or do not exist."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from cripy.errors import FailedPrecondition
from cripy.oci import features
from cripy.oci.features import RECURSIVE_READ_ONLY_MOUNTS, USER_NAMESPACES, HandlerFeatures, parse_features

# The shape of the runtime-spec features document (features.md), with the parts cripy reads.
DOCUMENT = {
    "ociVersionMin": "1.0.0",
    "ociVersionMax": "1.1.0",
    "mountOptions": ["bind", "rbind", "ro", "rro", "rprivate", 7],
    "linux": {
        "namespaces": ["mount", "network", "pid", "user"],
        "mountExtensions": {"idmap": {"enabled": True}},
    },
}


def test_parse_reads_mount_options_namespaces_and_idmap():
    found = parse_features(json.dumps(DOCUMENT), kernel_mount_setattr=True, source="test")
    assert found.mount_options == {"bind", "rbind", "ro", "rro", "rprivate"}  # non-strings are ignored
    assert found.namespaces == {"mount", "network", "pid", "user"}
    assert found.idmap_mounts
    assert found.recursive_read_only_mounts


def test_parse_of_a_sparse_document_offers_nothing():
    found = parse_features('{"ociVersionMin": "1.0.0", "linux": {"mountExtensions": null}}',
                           kernel_mount_setattr=True, source="test")
    assert found == HandlerFeatures(kernel_mount_setattr=True, source="test")
    assert not found.recursive_read_only_mounts and not found.user_namespaces


@pytest.mark.parametrize("text", ["[]", "not json", '"rro"'])
def test_parse_refuses_what_is_not_a_features_object(text):
    with pytest.raises(ValueError):
        parse_features(text, kernel_mount_setattr=True, source="test")


def test_recursive_read_only_needs_the_runtime_option_and_the_kernel():
    both = HandlerFeatures(mount_options=frozenset({"rro"}), kernel_mount_setattr=True, source="`runc features`")
    assert both.missing(RECURSIVE_READ_ONLY_MOUNTS) is None
    no_kernel = HandlerFeatures(mount_options=frozenset({"rro"}), kernel_mount_setattr=False)
    assert "mount_setattr" in no_kernel.missing(RECURSIVE_READ_ONLY_MOUNTS)
    assert not no_kernel.recursive_read_only_mounts
    no_option = HandlerFeatures(mount_options=frozenset({"ro"}), kernel_mount_setattr=True, source="`x features`")
    assert no_option.missing(RECURSIVE_READ_ONLY_MOUNTS) == \
        "its runtime does not list the 'rro' mount option (`x features`)"


def test_user_namespaces_need_the_runtime_to_join_one_and_the_node_to_idmap():
    runc_1_1 = {**DOCUMENT, "linux": {"namespaces": ["mount", "user"]}}  # no idmap mount extension: cripy maps
    able = parse_features(json.dumps(runc_1_1), kernel_mount_setattr=True, source="test", node_idmap_problem=None)
    assert able.user_namespaces and able.missing(USER_NAMESPACES) is None
    unprobed = parse_features(json.dumps(runc_1_1), kernel_mount_setattr=True, source="test")
    assert unprobed.missing(USER_NAMESPACES) == "cripy cannot make id-mapped mounts on this node: not probed"
    node_cannot = HandlerFeatures(namespaces=frozenset({"user"}), node_idmap_problem="the filesystem says no")
    assert "the filesystem says no" in node_cannot.missing(USER_NAMESPACES)
    no_userns = HandlerFeatures(node_idmap_problem=None, source="`runsc features` failed")
    assert no_userns.missing(USER_NAMESPACES) == \
        "its runtime does not list the user namespace (`runsc features` failed)"


def test_node_idmap_probe_checks_the_path_to_the_rootfs():
    base = Path(tempfile.mkdtemp(prefix="cripy-probe-", dir="/tmp"))  # pytest's tmp_path sits under a 0700 dir
    try:
        base.chmod(0o711)
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        problem = features.probe_node_idmap(base, closed / "run" / "rootfs")
        assert problem is not None and f"{closed} is mode 0700" in problem
        closed.chmod(0o711)
        assert features.probe_node_idmap(base, closed / "run" / "rootfs") is None  # /tmp is ext4 here
    finally:
        shutil.rmtree(base)


def test_require_names_the_request_the_handler_the_feature_and_why():
    offered = HandlerFeatures(mount_options=frozenset({"ro"}), kernel_mount_setattr=True, source="`old features`")
    with pytest.raises(FailedPrecondition) as caught:
        features.require(offered, "kata", RECURSIVE_READ_ONLY_MOUNTS, "container 'app': mounts[0] (/data)")
    assert str(caught.value) == (
        "container 'app': mounts[0] (/data) needs recursive read-only mounts, which runtime handler 'kata' does not"
        " offer: its runtime does not list the 'rro' mount option (`old features`)")
    features.require(HandlerFeatures(mount_options=frozenset({"rro"}), kernel_mount_setattr=True), "runc",
                     RECURSIVE_READ_ONLY_MOUNTS, "x")


def test_an_unknown_feature_is_a_programming_error():
    with pytest.raises(ValueError):
        HandlerFeatures().missing("teleportation")


def test_this_kernel_answers_the_mount_setattr_probe():
    assert isinstance(features.kernel_has_mount_setattr(), bool)


# ---- probing runtimes ----------------------------------------------------------------------------------------


def fake_runtime(tmp_path: Path, body: str) -> str:
    path = tmp_path / "runtime"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_probe_reads_what_the_runtime_prints(tmp_path):
    (tmp_path / "doc.json").write_text(json.dumps(DOCUMENT))
    runtime = fake_runtime(tmp_path, f'[ "$1" = features ] && exec cat {tmp_path / "doc.json"}\nexit 3')
    found = asyncio.run(features.probe(runtime))
    assert found.mount_options >= {"rro", "rbind"}
    assert found.source == f"`{runtime} features`"
    assert found.kernel_mount_setattr == features.kernel_has_mount_setattr()


@pytest.mark.parametrize(("body", "why"), [
    ('echo "unknown command \\"features\\" for \\"runc\\"" >&2; exit 1', 'failed (exit status 1): unknown command'),
    ("echo '{not json'", "printed no features document"),
    ("exec sleep 30", "did not answer within 0.5s"),
])
def test_a_runtime_that_cannot_say_offers_nothing(tmp_path, body, why):
    found = asyncio.run(features.probe(fake_runtime(tmp_path, body), timeout=0.5))
    assert not found.mount_options and not found.recursive_read_only_mounts
    assert why in found.source


def test_a_missing_runtime_offers_nothing(tmp_path):
    found = asyncio.run(features.probe(str(tmp_path / "absent")))
    assert "cannot run" in found.source and not found.recursive_read_only_mounts
