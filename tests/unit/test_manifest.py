"""Manifest, index and image config parsing; platform selection."""

import hashlib
import json

import pytest

from cripy.errors import InvalidArgument, NotFound, Unimplemented
from cripy.images import manifest as m
from cripy.images.manifest import Descriptor, ImageIndex, ImageManifest, Platform

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64


def oci_manifest(**overrides) -> dict:
    doc = {
        "schemaVersion": 2,
        "mediaType": m.OCI_MANIFEST,
        "config": {"mediaType": m.OCI_CONFIG, "digest": D1, "size": 100},
        "layers": [
            {"mediaType": m.OCI_LAYER_TAR_GZIP, "digest": D2, "size": 2000},
            {"mediaType": m.OCI_LAYER_TAR_ZSTD, "digest": D3, "size": 3000, "annotations": {"a": "b"}},
        ],
    }
    doc.update(overrides)
    return doc


def body(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def index_entry(digest: str, os: str, arch: str, variant: str = "", **extra) -> dict:
    platform = {"os": os, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": m.OCI_MANIFEST, "digest": digest, "size": 500, "platform": platform, **extra}


def index(*entries: dict) -> ImageIndex:
    parsed = m.parse_manifest(m.OCI_INDEX, body({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": list(entries)}))
    assert isinstance(parsed, ImageIndex)
    return parsed


def test_parse_oci_manifest():
    parsed = m.parse_manifest(m.OCI_MANIFEST, body(oci_manifest()))
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == m.OCI_MANIFEST
    assert parsed.config == Descriptor(m.OCI_CONFIG, D1, 100)
    assert [(l.media_type, l.digest, l.size) for l in parsed.layers] == [
        (m.OCI_LAYER_TAR_GZIP, D2, 2000),
        (m.OCI_LAYER_TAR_ZSTD, D3, 3000),
    ]
    assert parsed.layers[1].annotations == {"a": "b"}


def test_parse_docker_schema2_from_header_when_body_has_no_media_type():
    doc = oci_manifest(config={"mediaType": m.DOCKER_CONFIG, "digest": D1, "size": 7})
    del doc["mediaType"]
    parsed = m.parse_manifest(m.DOCKER_MANIFEST_V2 + "; charset=utf-8", body(doc))
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == m.DOCKER_MANIFEST_V2


def test_body_media_type_wins_over_header():
    doc = {"schemaVersion": 2, "mediaType": m.DOCKER_MANIFEST_LIST, "manifests": [index_entry(D1, "linux", "amd64")]}
    parsed = m.parse_manifest("application/json", body(doc))
    assert isinstance(parsed, ImageIndex)
    assert parsed.media_type == m.DOCKER_MANIFEST_LIST
    assert parsed.manifests[0].platform == Platform("linux", "amd64")


def test_shape_decides_when_no_media_type_anywhere():
    doc = {"schemaVersion": 2, "manifests": []}
    assert isinstance(m.parse_manifest("application/octet-stream", body(doc)), ImageIndex)
    doc = oci_manifest()
    del doc["mediaType"]
    assert isinstance(m.parse_manifest("", body(doc)), ImageManifest)


@pytest.mark.parametrize("header", [m.DOCKER_MANIFEST_V1, m.DOCKER_MANIFEST_V1_SIGNED])
def test_schema1_is_refused_clearly(header):
    doc = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}
    with pytest.raises(Unimplemented, match="schema 1"):
        m.parse_manifest(header, body(doc))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["layers"][0].update(digest="sha256:abc"), "digest 'sha256:abc'"),
        (lambda d: d["layers"][0].update(digest="sha256:" + "A" * 64), "is not sha256"),
        (lambda d: d["layers"][0].update(digest="md5:" + "a" * 32), "is not sha256"),
        (lambda d: d["layers"][0].update(size=-1), "size -1"),
        (lambda d: d["layers"][0].update(size=True), "size True"),
        (lambda d: d["layers"][0].update(size="12"), "size '12'"),
        (lambda d: d["layers"][0].pop("mediaType"), "'mediaType' is missing"),
        (lambda d: d.update(layers=[]), "non-empty list"),
        (lambda d: d.pop("layers"), "non-empty list"),
        (lambda d: d.pop("config"), "descriptor must be an object"),
        (lambda d: d.update(schemaVersion=3), "schemaVersion must be 2"),
        (lambda d: d["layers"][0].update(urls="http://x"), "list of strings"),
    ],
)
def test_malformed_manifests_are_invalid_argument(mutate, message):
    doc = oci_manifest()
    mutate(doc)
    with pytest.raises(InvalidArgument, match=message):
        m.parse_manifest(m.OCI_MANIFEST, body(doc))


def test_sha512_digests_are_accepted():
    doc = oci_manifest()
    doc["layers"][0]["digest"] = "sha512:" + "0" * 128
    parsed = m.parse_manifest(m.OCI_MANIFEST, body(doc))
    assert parsed.layers[0].digest.startswith("sha512:")


def test_not_json_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        m.parse_manifest(m.OCI_MANIFEST, b"\xff{")
    with pytest.raises(InvalidArgument, match="JSON object"):
        m.parse_manifest(m.OCI_MANIFEST, b"[1]")


def test_artifact_config_and_unknown_types_are_unimplemented():
    doc = oci_manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D1, "size": 1})
    with pytest.raises(Unimplemented, match="helm"):
        m.parse_manifest(m.OCI_MANIFEST, body(doc))
    with pytest.raises(Unimplemented, match="text/plain"):
        m.parse_manifest("text/plain", body({"schemaVersion": 2, "mediaType": "text/plain"}))


def test_descriptor_is_hashable_and_compares_annotations():
    a = Descriptor(m.OCI_MANIFEST, D1, 1, annotations={"x": "1"})
    b = Descriptor(m.OCI_MANIFEST, D1, 1, annotations={"x": "2"})
    assert hash(a) == hash(b)
    assert a != b
    assert len({a, Descriptor(m.OCI_MANIFEST, D1, 1, annotations={"x": "1"})}) == 1


def test_select_exact_platform():
    idx = index(index_entry(D1, "linux", "arm64", "v8"), index_entry(D2, "linux", "amd64"))
    assert m.select_platform(idx, Platform("linux", "amd64")).digest == D2


def test_arm64_without_variant_matches_v8_both_ways():
    idx = index(index_entry(D1, "linux", "arm64"))
    assert m.select_platform(idx, Platform("linux", "arm64", "v8")).digest == D1
    idx = index(index_entry(D2, "linux", "arm64", "v8"))
    assert m.select_platform(idx, Platform("linux", "arm64")).digest == D2


def test_variant_match_is_preferred_over_earlier_entries():
    idx = index(
        index_entry(D1, "linux", "arm", "v6"),
        index_entry(D2, "linux", "arm", "v7"),
    )
    assert m.select_platform(idx, Platform("linux", "arm", "v7")).digest == D2
    # an older variant runs on a newer CPU, a newer one does not
    assert m.select_platform(index(index_entry(D1, "linux", "arm", "v6")), Platform("linux", "arm", "v7")).digest == D1
    with pytest.raises(NotFound):
        m.select_platform(index(index_entry(D1, "linux", "arm", "v7")), Platform("linux", "arm", "v6"))


def test_attestations_and_unknown_platforms_are_skipped():
    idx = index(
        index_entry(D1, "unknown", "unknown"),
        index_entry(D2, "linux", "amd64", annotations={"vnd.docker.reference.type": "attestation-manifest"}),
        index_entry(D3, "linux", "amd64"),
    )
    assert m.select_platform(idx, Platform("linux", "amd64")).digest == D3


def test_no_match_lists_available_platforms():
    idx = index(
        index_entry(D1, "linux", "arm64", "v8"),
        index_entry(D2, "windows", "amd64"),
        index_entry(D3, "unknown", "unknown"),
    )
    with pytest.raises(NotFound) as exc:
        m.select_platform(idx, Platform("linux", "amd64"))
    text = str(exc.value)
    assert "linux/amd64" in text and "linux/arm64/v8" in text and "windows/amd64" in text
    assert "unknown" not in text


@pytest.mark.parametrize(
    "machine, expected",
    [
        ("x86_64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("i686", Platform("linux", "386")),
        ("ppc64le", Platform("linux", "ppc64le")),
        ("s390x", Platform("linux", "s390x")),
        ("riscv64", Platform("linux", "riscv64")),
    ],
)
def test_host_platform(monkeypatch, machine, expected):
    monkeypatch.setattr(m._platform, "machine", lambda: machine)
    monkeypatch.setattr(m._platform, "system", lambda: "Linux")
    assert m.host_platform() == expected


def config_doc(**overrides) -> dict:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "author": "me",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/bin", "A=b"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": None,
            "WorkingDir": "/work",
            "Labels": {"l": "v"},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGQUIT",
        },
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
    }
    doc.update(overrides)
    return doc


def test_parse_image_config():
    cfg = m.parse_image_config(body(config_doc()))
    assert cfg.platform == Platform("linux", "amd64")
    assert cfg.created == "2024-01-02T03:04:05Z" and cfg.author == "me"
    assert cfg.user == "1000:1000"
    assert cfg.env == ["PATH=/bin", "A=b"]
    assert cfg.entrypoint == ["/bin/sh", "-c"]
    assert cfg.cmd is None
    assert cfg.working_dir == "/work"
    assert cfg.labels == {"l": "v"}
    assert cfg.exposed_ports == ["53/udp", "80/tcp"]
    assert cfg.volumes == ["/data"]
    assert cfg.stop_signal == "SIGQUIT"
    assert cfg.diff_ids == [D1, D2]
    assert cfg.raw["author"] == "me"


def test_config_without_container_config_section():
    cfg = m.parse_image_config(body(config_doc(config=None)))
    assert cfg.env == [] and cfg.entrypoint is None and cfg.cmd is None and cfg.labels == {}


def test_empty_cmd_list_stays_distinct_from_unset():
    doc = config_doc()
    doc["config"]["Cmd"] = []
    assert m.parse_image_config(body(doc)).cmd == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rootfs": {"type": "other", "diff_ids": []}}, "rootfs.type"),
        ({"rootfs": {"type": "layers", "diff_ids": ["nope"]}}, "diff_id 'nope'"),
        ({"rootfs": None}, "rootfs"),
        ({"os": 3}, "'os' must be a string"),
        ({"config": {"Env": "A=b"}}, "'Env'"),
        ({"config": {"Labels": {"a": 1}}}, "'Labels'"),
    ],
)
def test_malformed_config(overrides, message):
    with pytest.raises(InvalidArgument, match=message):
        m.parse_image_config(body(config_doc(**overrides)))


def test_check_config_matches_counts_layers():
    manifest = m.parse_manifest(m.OCI_MANIFEST, body(oci_manifest()))
    m.check_config_matches(manifest, m.parse_image_config(body(config_doc())))
    with pytest.raises(InvalidArgument, match="1 diff_ids but the manifest has 2 layers"):
        m.check_config_matches(manifest, m.parse_image_config(body(config_doc(rootfs={"type": "layers", "diff_ids": [D1]}))))


def test_digest_of_and_layer_compression():
    assert m.digest_of(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert m.digest_of(b"x", "sha512") == "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert m.is_digest(m.digest_of(b"x")) and not m.is_digest("sha256:xyz")
    assert m.layer_compression(m.DOCKER_LAYER_TAR_GZIP) == "gzip"
    assert m.layer_compression(m.OCI_LAYER_NONDIST_TAR_ZSTD) == "zstd"
    assert m.layer_compression(m.OCI_LAYER_TAR) == "none"
    with pytest.raises(Unimplemented):
        m.layer_compression("application/x-rar")
