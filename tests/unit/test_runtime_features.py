"""Runtime handler features: reading a runtime's `features` document, the reasons a feature is missing, the
refusal at create, and probing runtimes that answer, fail, hang or do not exist."""

from __future__ import annotations

import asyncio
import json
import stat
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


def test_user_namespaces_stay_off_until_cripy_builds_them():
    able = parse_features(json.dumps(DOCUMENT), kernel_mount_setattr=True, source="test")
    assert not features.CRIPY_BUILDS_USER_NAMESPACES
    assert not able.user_namespaces
    assert able.missing(USER_NAMESPACES) == "cripy does not create user namespaces yet"


def test_user_namespaces_need_the_namespace_and_idmap_mounts(monkeypatch):
    monkeypatch.setattr(features, "CRIPY_BUILDS_USER_NAMESPACES", True)
    assert parse_features(json.dumps(DOCUMENT), kernel_mount_setattr=True, source="test").user_namespaces
    no_idmap = HandlerFeatures(namespaces=frozenset({"user"}), source="s")
    assert "id-mapped" in no_idmap.missing(USER_NAMESPACES)
    no_userns = HandlerFeatures(idmap_mounts=True, source="s")
    assert "user namespace" in no_userns.missing(USER_NAMESPACES)


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
