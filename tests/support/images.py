"""Test image builder: OCI and Docker schema2 images, indexes and layers, built in memory from busybox-static.

Everything here is deterministic (fixed mtimes, compact sorted JSON, gzip without timestamps) so the same scenario
always yields the same digests, and needs no network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import secrets
import subprocess
import tarfile
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import zstandard

Compression = Literal["gzip", "zstd", "none"]
ImageFormat = Literal["oci", "docker"]

BUSYBOX_PATH = Path("/bin/busybox")
# A fixed timestamp (2023-11-14) for every tar member and the image "created" field.
FIXED_MTIME = 1_700_000_000
FIXED_CREATED = "2023-11-14T22:13:20Z"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = {
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "none": "application/vnd.docker.image.rootfs.diff.tar",
}

# Applets linked into /bin of the busybox rootfs (only those the installed busybox provides are linked).
BUSYBOX_APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "sleep", "id", "stat", "httpd", "nc", "wget", "stty", "true", "false", "env",
    "hostname", "grep", "ps", "head", "tail", "mkdir", "touch", "rm", "rmdir", "cp", "mv", "ln", "chmod", "chown",
    "readlink", "realpath", "pwd", "whoami", "groups", "kill", "sed", "awk", "test", "[", "printf", "uname", "mount",
    "umount", "dd", "yes", "seq", "wc", "sort", "date", "du", "df", "find", "xargs", "tee", "cut", "tr", "basename",
    "dirname", "mktemp", "nslookup", "ip", "ifconfig", "netstat", "ping", "top", "free", "vi", "od", "hexdump",
    "sha256sum", "md5sum", "sync", "usleep", "timeout", "nohup", "nproc", "uptime", "which", "tty", "mkfifo",
    "truncate", "diff", "tar", "gzip", "gunzip", "xxd", "setsid", "unshare", "nsenter", "su", "chroot", "pidof",
)

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    "app:x:1000:\n"
    "extra:x:2000:app\n"
    "nobody:x:65534:\n"
)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Compact, key-sorted JSON: the same object always serializes (and therefore digests) the same way."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def host_platform() -> dict[str, str]:
    """The OCI platform (os, architecture, maybe variant) of this machine."""
    machine = platform.machine().lower()
    arch_map = {
        "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
        "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    }
    arch, variant = arch_map.get(machine, (machine, ""))
    result = {"os": "linux", "architecture": arch}
    if variant:
        result["variant"] = variant
    return result


def host_arch() -> str:
    return host_platform()["architecture"]


# --------------------------------------------------------------------------------------------------------------
# Layers


_compressed_cache: dict[tuple[str, str], bytes] = {}


def compress(data: bytes, compression: Compression) -> bytes:
    """Deterministic compression; memoized because the 2 MB busybox layer is compressed by many tests."""
    key = (hashlib.sha256(data).hexdigest(), compression)
    cached = _compressed_cache.get(key)
    if cached is not None:
        return cached
    if compression == "gzip":
        out = gzip.compress(data, compresslevel=6, mtime=0)
    elif compression == "zstd":
        out = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    elif compression == "none":
        out = data
    else:
        raise ValueError(f"unknown compression {compression!r}")
    _compressed_cache[key] = out
    return out


@dataclass
class Layer:
    """One layer: the uncompressed tar plus how it is shipped. `fmt` picks OCI or Docker media types."""

    tar_bytes: bytes
    compression: Compression = "gzip"
    fmt: ImageFormat = "oci"

    @cached_property
    def blob(self) -> bytes:
        return compress(self.tar_bytes, self.compression)

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.blob)

    @cached_property
    def diff_id(self) -> str:
        return sha256_digest(self.tar_bytes)

    @property
    def size(self) -> int:
        return len(self.blob)

    @property
    def media_type(self) -> str:
        table = OCI_LAYER if self.fmt == "oci" else DOCKER_LAYER
        if self.compression not in table:
            raise ValueError(f"compression {self.compression!r} has no {self.fmt} layer media type")
        return table[self.compression]

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _member_name(path: str) -> str:
    name = path.strip("/")
    if not name:
        raise ValueError(f"empty tar member path {path!r}")
    return name


class LayerBuilder:
    """Collects tar members in order and writes a deterministic PAX tar. Parent directories are NOT implied:
    add them explicitly (tests want to control exactly what a layer contains)."""

    def __init__(self) -> None:
        self._members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def _info(self, path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(_member_name(path))
        info.type = kind
        info.mode = mode
        info.uid = uid
        info.gid = gid
        info.uname = ""
        info.gname = ""
        info.mtime = FIXED_MTIME
        return info

    def add_dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> LayerBuilder:
        self._members.append((self._info(path, tarfile.DIRTYPE, mode, uid, gid), None))
        return self

    def add_file(self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0,
                 xattrs: dict[str, bytes | str] | None = None) -> LayerBuilder:
        payload = data.encode() if isinstance(data, str) else data
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(payload)
        if xattrs:
            info.pax_headers = {
                f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
                for name, value in sorted(xattrs.items())
            }
        self._members.append((info, payload))
        return self

    def add_symlink(self, path: str, target: str) -> LayerBuilder:
        info = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0)
        info.linkname = target
        self._members.append((info, None))
        return self

    def add_hardlink(self, path: str, target: str) -> LayerBuilder:
        """`target` is a member name of this or an earlier layer (relative to the rootfs), as tar stores it."""
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = target.lstrip("/")
        self._members.append((info, None))
        return self

    def add_whiteout(self, path: str) -> LayerBuilder:
        """Deletes `path` of a lower layer (AUFS-style `.wh.<name>` marker)."""
        parent, _, name = _member_name(path).rpartition("/")
        marker = f"{parent}/.wh.{name}" if parent else f".wh.{name}"
        return self.add_file(marker, b"", mode=0o644)

    def add_opaque(self, directory: str) -> LayerBuilder:
        """Hides everything lower layers put in `directory` (`.wh..wh..opq` marker)."""
        return self.add_file(f"{_member_name(directory)}/.wh..wh..opq", b"", mode=0o644)

    def add_raw(self, info: tarfile.TarInfo, data: bytes | None = None) -> LayerBuilder:
        """Adds a member exactly as given (no name normalization): for malformed or hostile layers."""
        if data is not None:
            info.size = len(data)
        self._members.append((info, data))
        return self

    def build(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self._members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    def layer(self, compression: Compression = "gzip", fmt: ImageFormat = "oci") -> Layer:
        return Layer(self.build(), compression, fmt)


def busybox_applets() -> list[str]:
    """The applets of BUSYBOX_APPLETS the installed busybox actually provides."""
    listed = set(subprocess.run([str(BUSYBOX_PATH), "--list"], check=True, capture_output=True,
                                text=True).stdout.split())
    return [name for name in dict.fromkeys(BUSYBOX_APPLETS) if name in listed]


_busybox_binary: bytes | None = None


def _busybox_bytes() -> bytes:
    global _busybox_binary
    if _busybox_binary is None:
        _busybox_binary = BUSYBOX_PATH.read_bytes()
    return _busybox_binary


def busybox_rootfs_layer() -> LayerBuilder:
    """A minimal root filesystem: /bin/busybox with applet symlinks, users root/app/nobody, /tmp, homes."""
    b = LayerBuilder()
    b.add_dir("bin")
    b.add_file("bin/busybox", _busybox_bytes(), mode=0o755)
    for applet in busybox_applets():
        b.add_symlink(f"bin/{applet}", "busybox")
    b.add_dir("etc")
    b.add_file("etc/passwd", PASSWD)
    b.add_file("etc/group", GROUP)
    for d in ("dev", "proc", "sys", "run", "var", "usr"):
        b.add_dir(d)
    b.add_dir("tmp", mode=0o1777)
    b.add_dir("root", mode=0o700)
    b.add_dir("home")
    b.add_dir("home/app", mode=0o755, uid=1000, gid=1000)
    return b


# --------------------------------------------------------------------------------------------------------------
# Images and indexes


@dataclass
class BuiltImage:
    manifest_bytes: bytes
    manifest_media_type: str
    manifest_digest: str
    config_bytes: bytes
    config_digest: str
    layers: list[Layer]
    blobs: dict[str, bytes] = field(default_factory=dict)
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_bytes)

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_bytes)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.manifest_media_type, "digest": self.manifest_digest,
                "size": len(self.manifest_bytes)}


@dataclass
class BuiltIndex:
    index_bytes: bytes
    media_type: str
    digest: str
    images: list[tuple[dict[str, str], BuiltImage]]

    @property
    def index(self) -> dict[str, Any]:
        return json.loads(self.index_bytes)


def make_config(diff_ids: list[str], *, config: dict[str, Any] | None, architecture: str, os_name: str,
                variant: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    runtime_config: dict[str, Any] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
    }
    runtime_config.update(config or {})
    result: dict[str, Any] = {
        "created": FIXED_CREATED,
        "architecture": architecture,
        "os": os_name,
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if variant:
        result["variant"] = variant
    return result


def build_image(layers: list[Layer], *, fmt: ImageFormat = "oci", config: dict[str, Any] | None = None,
                architecture: str | None = None, os: str = "linux", variant: str = "",
                diff_ids: list[str] | None = None) -> BuiltImage:
    """An image manifest + config over `layers`. `diff_ids` overrides the config's rootfs (to build bad images)."""
    arch = architecture or host_arch()
    shipped = [replace(layer, fmt=fmt) if layer.fmt != fmt else layer for layer in layers]
    history = [{"created": FIXED_CREATED, "created_by": f"cripy tests: layer {i}"} for i in range(len(shipped))]
    cfg = make_config(diff_ids if diff_ids is not None else [layer.diff_id for layer in shipped], config=config,
                      architecture=arch, os_name=os, variant=variant, history=history)
    config_bytes = canonical_json(cfg)
    config_digest = sha256_digest(config_bytes)
    media_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [layer.descriptor() for layer in shipped],
    }
    manifest_bytes = canonical_json(manifest)
    blobs = {config_digest: config_bytes}
    for layer in shipped:
        blobs[layer.digest] = layer.blob
    plat = {"os": os, "architecture": arch}
    if variant:
        plat["variant"] = variant
    return BuiltImage(manifest_bytes, media_type, sha256_digest(manifest_bytes), config_bytes, config_digest,
                      shipped, blobs, plat)


def build_index(images: list[tuple[dict[str, str], BuiltImage]], fmt: ImageFormat = "oci") -> BuiltIndex:
    """An OCI image index (or Docker manifest list) over already built images, each with its platform dict."""
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_MANIFEST_LIST
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{**image.descriptor(), "platform": dict(plat)} for plat, image in images],
    }
    index_bytes = canonical_json(index)
    return BuiltIndex(index_bytes, media_type, sha256_digest(index_bytes), list(images))


# --------------------------------------------------------------------------------------------------------------
# Ready-made scenarios


def busybox_layer(compression: Compression = "gzip", fmt: ImageFormat = "oci") -> Layer:
    return busybox_rootfs_layer().layer(compression, fmt)


def busybox_image(fmt: ImageFormat = "oci", compression: Compression = "gzip",
                  config: dict[str, Any] | None = None) -> BuiltImage:
    return build_image([busybox_layer(compression, fmt)], fmt=fmt, config=config)


def multilayer_whiteout_image() -> BuiltImage:
    """Three layers. Expected merged view: /data/b, /data/dir/x, /opq/new present; /data/a and /opq/old1 gone."""
    layer2 = (LayerBuilder()
              .add_dir("data").add_file("data/a", "a\n").add_file("data/b", "b\n")
              .add_dir("data/dir").add_file("data/dir/x", "x\n")
              .add_dir("opq").add_file("opq/old1", "old1\n"))
    layer3 = (LayerBuilder()
              .add_dir("data").add_whiteout("data/a")
              .add_dir("opq").add_opaque("opq").add_file("opq/new", "new\n"))
    return build_image([busybox_layer(), layer2.layer(), layer3.layer()])


def volume_data_image(marker: str = "") -> BuiltImage:
    """A data image for image volumes (no shell: nothing runs from it). Two layers, merged: /data/a, /data/b
    (/data/old whited out), /conf/settings, /marker (`marker`), /abs-link -> /data (absolute: it means the image's
    /data) and /escape -> ../../../../etc (the image has no /etc: it must not reach the host's)."""
    lower = (LayerBuilder()
             .add_dir("data").add_file("data/a", "a\n").add_file("data/old", "old\n")
             .add_dir("conf").add_file("conf/settings", "x=1\n")
             .add_file("marker", marker + "\n")
             .add_symlink("abs-link", "/data")
             .add_symlink("escape", "../../../../etc"))
    upper = LayerBuilder().add_dir("data").add_whiteout("data/old").add_file("data/b", "b\n")
    return build_image([lower.layer(), upper.layer()], config={"Cmd": []})


def other_arch(arch: str | None = None) -> str:
    return "arm64" if (arch or host_arch()) == "amd64" else "amd64"


def multiarch_index(fmt: ImageFormat = "oci") -> BuiltIndex:
    """Host arch and one other arch; each image's /arch holds its architecture name followed by a newline."""
    entries: list[tuple[dict[str, str], BuiltImage]] = []
    host = host_platform()
    for plat in (host, {"os": "linux", "architecture": other_arch()}):
        marker = LayerBuilder().add_file("arch", plat["architecture"] + "\n").layer(fmt=fmt)
        image = build_image([busybox_layer(fmt=fmt), marker], fmt=fmt, architecture=plat["architecture"],
                            variant=plat.get("variant", ""))
        entries.append((plat, image))
    return build_index(entries, fmt=fmt)


def zstd_image() -> BuiltImage:
    return busybox_image(compression="zstd")


def docker_schema2_image() -> BuiltImage:
    return busybox_image(fmt="docker")


def user_image(user: str = "app") -> BuiltImage:
    """busybox with config User `user` ("app" resolves to 1000:1000 plus supplementary group 2000; or "1000:2000")."""
    return busybox_image(config={"User": user, "WorkingDir": "/home/app"})


@dataclass
class EscapeScenario:
    """A hostile image. After pulling/unpacking it, `escaped()` must be False; call `cleanup()` afterwards."""

    image: BuiltImage
    kind: str
    forbidden_path: Path          # must never exist on the host
    canary_path: Path | None      # host file a hostile hardlink points at: must stay unlinked and unchanged
    canary_content: bytes = b""

    def escaped(self) -> bool:
        if os.path.lexists(self.forbidden_path):
            return True
        if self.canary_path is not None:
            st = os.lstat(self.canary_path)
            return st.st_nlink != 1 or self.canary_path.read_bytes() != self.canary_content
        return False

    def cleanup(self) -> None:
        for path in (self.forbidden_path, self.canary_path):
            if path is not None and os.path.lexists(path):
                os.unlink(path)


# Enough ".." to climb out of any unpack directory up to "/" (extra ".." at "/" stay at "/").
_CLIMB = "../" * 32


def escape_image(kind: Literal["dotdot", "symlink", "hardlink"], tmp_dir: Path = Path("/tmp")) -> EscapeScenario:
    """A busybox image plus a layer that tries to write outside its rootfs:
    dotdot:   member "../../…/tmp/cripy-escape-<rand>" (climbs out with "..")
    symlink:  "link" -> tmp_dir, then member "link/cripy-escape-<rand>" (writes through the symlink)
    hardlink: "h" hardlinked to "../../…/tmp/cripy-canary-<rand>" (a host file created here), then a regular file
              "h" with new content (a naive unpacker would link to and overwrite the host file)."""
    token = secrets.token_hex(6)
    forbidden = tmp_dir / f"cripy-escape-{token}"
    rel_tmp = str(tmp_dir).strip("/")
    canary: Path | None = None
    canary_content = b""
    b = LayerBuilder()
    if kind == "dotdot":
        info = tarfile.TarInfo(f"{_CLIMB}{rel_tmp}/{forbidden.name}")
        info.mtime, info.mode = FIXED_MTIME, 0o644
        b.add_raw(info, b"escaped\n")
    elif kind == "symlink":
        b.add_symlink("link", str(tmp_dir))
        info = tarfile.TarInfo(f"link/{forbidden.name}")
        info.mtime, info.mode = FIXED_MTIME, 0o644
        b.add_raw(info, b"escaped\n")
    elif kind == "hardlink":
        canary = tmp_dir / f"cripy-canary-{token}"
        canary_content = b"canary\n"
        canary.write_bytes(canary_content)
        link = tarfile.TarInfo("h")
        link.type, link.linkname, link.mtime, link.mode = tarfile.LNKTYPE, f"{_CLIMB}{rel_tmp}/{canary.name}", \
            FIXED_MTIME, 0o644
        b.add_raw(link)
        overwrite = tarfile.TarInfo("h")
        overwrite.mtime, overwrite.mode = FIXED_MTIME, 0o644
        b.add_raw(overwrite, b"overwritten\n")
    else:
        raise ValueError(f"unknown escape kind {kind!r}")
    image = build_image([busybox_layer(), b.layer()])
    return EscapeScenario(image, kind, forbidden, canary, canary_content)


def corrupt_diffid_image() -> BuiltImage:
    """Blobs match the manifest, but the config's diff_id for the second layer is not the digest of its tar."""
    extra = LayerBuilder().add_file("marker", "diffid\n").layer()
    wrong = sha256_digest(b"not the layer\n")
    return build_image([busybox_layer(), extra], diff_ids=[busybox_layer().diff_id, wrong])


def write_oci_layout(directory: Path, image: BuiltImage | BuiltIndex, tag: str = "latest") -> None:
    """Writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) for tools that read one."""
    blobs_dir = directory / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> None:
        (blobs_dir / sha256_digest(data).split(":", 1)[1]).write_bytes(data)

    images = [img for _, img in image.images] if isinstance(image, BuiltIndex) else [image]
    for img in images:
        for blob in img.blobs.values():
            put(blob)
        put(img.manifest_bytes)
    if isinstance(image, BuiltIndex):
        put(image.index_bytes)
        top = {"mediaType": image.media_type, "digest": image.digest, "size": len(image.index_bytes)}
    else:
        top = image.descriptor()
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (directory / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [top]}))
