"""Image manifests, indexes and configs: media types, parsing, validation and platform selection.

Pure functions over bytes and dataclasses; no I/O. Understands OCI image-spec v1 (manifest, index, config) and
Docker schema 2 (manifest, manifest list, container config). Docker schema 1 is refused.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from cripy.errors import InvalidArgument, NotFound, Unimplemented

# --- media types -----------------------------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_TAR_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_TAR_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFEST_TYPES: frozenset[str] = frozenset({OCI_MANIFEST, DOCKER_MANIFEST_V2})
INDEX_TYPES: frozenset[str] = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES: frozenset[str] = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_TYPES: frozenset[str] = frozenset({DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED})

# Order matters: it is the preference order sent in the Accept header (indexes first so a multi-arch tag resolves
# to its index rather than a registry-chosen platform).
ALL_MANIFEST_TYPES: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST_V2)

_LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_NONDIST_TAR: "none",
    OCI_LAYER_TAR_GZIP: "gzip",
    OCI_LAYER_NONDIST_TAR_GZIP: "gzip",
    DOCKER_LAYER_TAR_GZIP: "gzip",
    DOCKER_FOREIGN_LAYER_TAR_GZIP: "gzip",
    OCI_LAYER_TAR_ZSTD: "zstd",
    OCI_LAYER_NONDIST_TAR_ZSTD: "zstd",
}
LAYER_TYPES: frozenset[str] = frozenset(_LAYER_COMPRESSION)

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_VALUE = "attestation-manifest"


def layer_compression(media_type: str) -> str:
    """'none', 'gzip' or 'zstd' for a layer media type; Unimplemented for anything that is not a known layer."""
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise Unimplemented(f"layer media type {media_type!r} is not supported") from None


# --- digests ---------------------------------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def is_digest(value: str) -> bool:
    """True for a well-formed 'sha256:<64 hex>' or 'sha512:<128 hex>' (lowercase hex, as the spec requires)."""
    return bool(_DIGEST_RE.match(value))


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The content digest of data, e.g. 'sha256:e3b0...'."""
    if algorithm not in ("sha256", "sha512"):
        raise InvalidArgument(f"digest algorithm {algorithm!r} is not supported (sha256, sha512)")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def hasher_for(digest: str) -> "hashlib._Hash":
    """A fresh hash object of the algorithm the digest names (validated first)."""
    if not is_digest(digest):
        raise InvalidArgument(f"malformed digest {digest!r}: expected sha256:<64 hex> or sha512:<128 hex>")
    return hashlib.new(digest.split(":", 1)[0])


# --- domain objects --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    # Excluded from the hash (dicts are unhashable); still compared for equality.
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageIndex:
    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageConfig:
    architecture: str
    os: str
    variant: str = ""
    created: str | None = None
    author: str = ""
    user: str = ""
    env: list[str] = field(default_factory=list)
    # None and [] differ: None means "not set" (inherit/CRI decides), [] means explicitly empty.
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    stop_signal: str = ""
    diff_ids: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


# --- host platform and matching --------------------------------------------------------------------------------

_MACHINE_TO_PLATFORM: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
    "mips64el": ("mips64le", ""),
    "loongarch64": ("loong64", ""),
}


def host_platform() -> Platform:
    """The platform of this machine in OCI terms (GOARCH names), e.g. linux/amd64 or linux/arm64/v8."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINE_TO_PLATFORM.get(machine, (machine, ""))
    return Platform(os=_platform.system().lower() or "linux", architecture=arch, variant=variant)


def _normalized_variant(arch: str, variant: str) -> str:
    # An arm64 entry without variant means v8; a 32-bit arm one without variant is v7 by convention (containerd).
    if variant:
        return variant
    return {"arm64": "v8", "arm": "v7"}.get(arch, "")


def _variant_number(variant: str) -> int | None:
    m = re.fullmatch(r"v(\d+)", variant)
    return int(m.group(1)) if m else None


def _variant_rank(arch: str, candidate: str, want: str) -> int | None:
    """0 = exact, 1 = unspecified, 2+ = an older compatible variant (closer is better); None = not runnable."""
    cand_n, want_n = _normalized_variant(arch, candidate), _normalized_variant(arch, want)
    if cand_n == want_n:
        return 0
    if not candidate:
        return 1
    if not want_n:
        return None
    c, w = _variant_number(cand_n), _variant_number(want_n)
    # Newer CPUs run code built for older variants of the same family (arm v6 on v7, amd64 v2 on v3).
    if arch in ("arm", "amd64") and c is not None and w is not None and c < w:
        return 2 + (w - c)
    return None


def _is_attestation_or_unknown(desc: Descriptor) -> bool:
    if desc.annotations.get(ATTESTATION_ANNOTATION) == ATTESTATION_VALUE:
        return True
    p = desc.platform
    return p is not None and p.os == "unknown" and p.architecture == "unknown"


def select_platform(index: ImageIndex, want: Platform) -> Descriptor:
    """The index entry to run on `want`: same os and architecture, the best variant; NotFound if there is none."""
    best: tuple[int, int, Descriptor] | None = None
    for position, desc in enumerate(index.manifests):
        p = desc.platform
        if p is None or _is_attestation_or_unknown(desc):
            continue
        if p.os != want.os or p.architecture != want.architecture:
            continue
        rank = _variant_rank(p.architecture, p.variant, want.variant)
        if rank is None:
            continue
        if best is None or (rank, position) < best[:2]:
            best = (rank, position, desc)
    if best is not None:
        return best[2]
    available = sorted(
        {str(d.platform) for d in index.manifests if d.platform is not None and not _is_attestation_or_unknown(d)}
    )
    raise NotFound(
        f"image index has no manifest for platform {want}; available: {', '.join(available) or 'none'}"
    )


# --- parsing ---------------------------------------------------------------------------------------------------


def _malformed(what: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"malformed {what}: {why}")


def _load_json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _malformed(what, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _malformed(what, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _str_field(doc: Mapping[str, Any], key: str, what: str, *, required: bool = False) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise _malformed(what, f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise _malformed(what, f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _str_map(value: Any, what: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _malformed(what, f"{key!r} must be an object of strings")
    return dict(value)


def _str_list(value: Any, what: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _malformed(what, f"{key!r} must be a list of strings")
    return list(value)


def _parse_platform(value: Any, what: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _malformed(what, "'platform' must be an object")
    return Platform(
        os=_str_field(value, "os", what, required=True),
        architecture=_str_field(value, "architecture", what, required=True),
        variant=_str_field(value, "variant", what),
    )


def parse_descriptor(value: Any, what: str) -> Descriptor:
    """A validated Descriptor from its JSON form; InvalidArgument naming `what` when malformed."""
    if not isinstance(value, dict):
        raise _malformed(what, "descriptor must be an object")
    digest = _str_field(value, "digest", what, required=True)
    if not is_digest(digest):
        raise _malformed(what, f"digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _malformed(what, f"size {size!r} of {digest} is not a non-negative integer")
    urls = _str_list(value["urls"], what, "urls") if value.get("urls") is not None else []
    return Descriptor(
        media_type=_str_field(value, "mediaType", what, required=True),
        digest=digest,
        size=size,
        urls=tuple(urls),
        platform=_parse_platform(value.get("platform"), what),
        annotations=_str_map(value.get("annotations"), what, "annotations"),
    )


def _clean_media_type(header: str) -> str:
    # Content-Type may carry parameters ("...+json; charset=utf-8").
    return header.split(";", 1)[0].strip().lower()


def _effective_media_type(doc: Mapping[str, Any], header: str) -> str:
    body_type = doc.get("mediaType")
    if body_type is not None:
        if not isinstance(body_type, str):
            raise _malformed("manifest", "'mediaType' must be a string")
        return body_type
    header_type = _clean_media_type(header)
    if header_type in IMAGE_MANIFEST_TYPES | INDEX_TYPES | SCHEMA1_TYPES:
        return header_type
    # Old OCI documents omit mediaType and registries may answer a generic Content-Type: infer from the shape.
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    return header_type


def parse_manifest(media_type_header: str, body: bytes) -> ImageManifest | ImageIndex:
    """Parse and validate a manifest or index. The body's mediaType wins over the Content-Type header."""
    doc = _load_json_object(body, "manifest")
    media_type = _effective_media_type(doc, media_type_header)
    if media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise Unimplemented(
            "Docker image manifest schema 1 is deprecated and not supported by cripy; "
            "push the image again with a current client (schema 2 or OCI)"
        )
    if doc.get("schemaVersion") != 2:
        raise _malformed("manifest", f"schemaVersion must be 2, got {doc.get('schemaVersion')!r}")
    annotations = _str_map(doc.get("annotations"), "manifest", "annotations")
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _malformed("image index", "'manifests' must be a list")
        manifests = [parse_descriptor(e, f"image index entry {i}") for i, e in enumerate(entries)]
        return ImageIndex(media_type=media_type, manifests=manifests, annotations=annotations)
    if media_type in IMAGE_MANIFEST_TYPES:
        config = parse_descriptor(doc.get("config"), "image manifest config")
        if config.media_type not in CONFIG_TYPES:
            raise Unimplemented(
                f"manifest config media type {config.media_type!r} is not a container image config "
                f"(an OCI artifact?); expected one of {sorted(CONFIG_TYPES)}"
            )
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list) or not raw_layers:
            raise _malformed("image manifest", "'layers' must be a non-empty list")
        layers = [parse_descriptor(e, f"image manifest layer {i}") for i, e in enumerate(raw_layers)]
        return ImageManifest(media_type=media_type, config=config, layers=layers, annotations=annotations)
    raise Unimplemented(f"manifest media type {media_type!r} is not supported")


def _key_list(value: Any, what: str, key: str) -> list[str]:
    # ExposedPorts and Volumes are JSON objects used as sets ({"80/tcp": {}}).
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _malformed(what, f"{key!r} must be an object")
    return sorted(value)


def _optional_str_list(value: Any, what: str, key: str) -> list[str] | None:
    return None if value is None else _str_list(value, what, key)


def parse_image_config(body: bytes) -> ImageConfig:
    """Parse an image config blob (OCI or Docker); InvalidArgument when malformed."""
    what = "image config"
    doc = _load_json_object(body, what)
    container = doc.get("config")
    if container is None:
        container = {}
    if not isinstance(container, dict):
        raise _malformed(what, "'config' must be an object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise _malformed(what, "'rootfs' is missing or not an object")
    if rootfs.get("type") != "layers":
        raise _malformed(what, f"rootfs.type must be 'layers', got {rootfs.get('type')!r}")
    diff_ids = _str_list(rootfs.get("diff_ids"), what, "rootfs.diff_ids")
    for d in diff_ids:
        if not is_digest(d):
            raise _malformed(what, f"diff_id {d!r} is not sha256:<64 hex> or sha512:<128 hex>")
    env = container.get("Env")
    return ImageConfig(
        architecture=_str_field(doc, "architecture", what, required=True),
        os=_str_field(doc, "os", what, required=True),
        variant=_str_field(doc, "variant", what),
        created=_str_field(doc, "created", what) or None,
        author=_str_field(doc, "author", what),
        user=_str_field(container, "User", what),
        env=[] if env is None else _str_list(env, what, "Env"),
        entrypoint=_optional_str_list(container.get("Entrypoint"), what, "Entrypoint"),
        cmd=_optional_str_list(container.get("Cmd"), what, "Cmd"),
        working_dir=_str_field(container, "WorkingDir", what),
        labels=_str_map(container.get("Labels"), what, "Labels"),
        exposed_ports=_key_list(container.get("ExposedPorts"), what, "ExposedPorts"),
        volumes=_key_list(container.get("Volumes"), what, "Volumes"),
        stop_signal=_str_field(container, "StopSignal", what),
        diff_ids=diff_ids,
        raw=doc,
    )


def check_config_matches(manifest: ImageManifest, config: ImageConfig) -> None:
    """InvalidArgument unless the config lists one diff_id per manifest layer."""
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"image config {manifest.config.digest} lists {len(config.diff_ids)} diff_ids "
            f"but the manifest has {len(manifest.layers)} layers"
        )
