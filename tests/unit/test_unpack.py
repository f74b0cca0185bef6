"""Tests for cripy.images.unpack (with layerstream and layerentries): layer extraction into overlayfs form,
digests, whiteouts, and the safety rules."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import struct
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from cripy import errors
from cripy.images.layerentries import LayerError, remove_tree
from cripy.images.layerstream import _ZstdFraming, detect_compression
from cripy.images.unpack import UnpackedLayer, unpack_layer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, trusted.* xattrs)")

MTIME = 1_600_000_000
GZIP_MT = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_MT = "application/vnd.oci.image.layer.v1.tar+zstd"
TAR_MT = "application/vnd.oci.image.layer.v1.tar"


# --- building layers -------------------------------------------------------------------------------------------


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644, uid: int = 0,
          gid: int = 0, linkname: str = "", mtime: float = MTIME, pax: dict[str, str] | None = None,
          devmajor: int = 0, devminor: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = devmajor, devminor
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        info.pax_headers = pax
    return info, data


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def media_type_for(compression: str) -> str:
    return {"gzip": GZIP_MT, "zstd": ZSTD_MT, "none": TAR_MT}[compression]


def diff_id_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layers:
    """Writes blobs and unpacks them into tmp_path/layers/<name>."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.parent = tmp_path / "layers"
        self.parent.mkdir()
        self.count = 0

    def blob(self, content: bytes) -> Path:
        self.count += 1
        path = self.tmp_path / f"blob{self.count}"
        path.write_bytes(content)
        return path

    def unpack(self, tar_bytes: bytes, compression: str = "gzip", *, check_digest: bool = True,
               name: str = "diff") -> tuple[Path, UnpackedLayer]:
        blob = self.blob(compress(tar_bytes, compression))
        dest = self.parent / name
        expected = diff_id_of(tar_bytes) if check_digest else None
        return dest, unpack_layer(blob, dest, media_type_for(compression), expected)

    def leftovers(self) -> list[str]:
        return sorted(os.listdir(self.parent))


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    yield Layers(tmp_path)
    remove_tree(tmp_path / "layers")  # unpacked trees may hold 0000 dirs; pytest's cleanup would trip on them


# --- detect_compression ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type, head, expected", [
    (GZIP_MT, b"\x1f\x8b\x08\x00", "gzip"),
    (ZSTD_MT, b"\x1f\x8b\x08\x00", "gzip"),  # magic wins over the media type
    (GZIP_MT, b"\x28\xb5\x2f\xfd", "zstd"),
    ("", b"\x5e\x2a\x4d\x18", "zstd"),  # a zstd skippable frame
    (GZIP_MT, b"etc/passwd\x00\x00", "none"),  # enough bytes and no magic: not compressed
    (ZSTD_MT, b"", "zstd"),  # nothing to look at: trust the media type
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", b"\x1f", "gzip"),
    (TAR_MT, b"", "none"),
    ("", b"", "none"),
])
def test_detect_compression(media_type: str, head: bytes, expected: str) -> None:
    assert detect_compression(media_type, head) == expected


# --- contents --------------------------------------------------------------------------------------------------


BASIC = [
    entry("./", tarfile.DIRTYPE, mode=0o755),
    entry("etc/", tarfile.DIRTYPE, mode=0o755),
    entry("etc/hostname", data=b"box\n"),
    entry("/usr/bin/tool", data=b"#!/bin/sh\necho hi\n", mode=0o755),  # leading "/" is stripped
    entry("./usr/lib/empty"),
    entry("bin", tarfile.SYMTYPE, linkname="/usr/bin"),
    entry("etc/rel", tarfile.SYMTYPE, linkname="../usr/bin/tool"),
    entry("long/" + "n" * 200 + "/" + "x" * 150, data=b"long", mode=0o600),  # needs a PAX path record
]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_unpacks_files_dirs_and_symlinks(layers: Layers, compression: str) -> None:
    tar_bytes = make_tar(BASIC)
    dest, result = layers.unpack(tar_bytes, compression)

    assert result.diff_id == diff_id_of(tar_bytes)
    assert (dest / "etc/hostname").read_bytes() == b"box\n"
    assert (dest / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (dest / "usr/lib/empty").read_bytes() == b""
    assert os.readlink(dest / "bin") == "/usr/bin"
    assert os.readlink(dest / "etc/rel") == "../usr/bin/tool"
    assert stat.S_IMODE(os.lstat(dest / "usr/bin/tool").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(dest / "etc/hostname").st_mode) == 0o644
    assert (dest / "long" / ("n" * 200) / ("x" * 150)).read_bytes() == b"long"
    # etc, etc/hostname, etc/rel, usr, usr/bin, usr/bin/tool, usr/lib, usr/lib/empty, bin, long, long/n*, x*
    assert result.inodes == 12
    assert result.size == len(b"box\n") + len(b"#!/bin/sh\necho hi\n") + len(b"long")
    assert layers.leftovers() == ["diff"]


def test_missing_parents_are_created_0755(layers: Layers) -> None:
    dest, _ = layers.unpack(make_tar([entry("a/b/c", data=b"x")]))
    assert stat.S_IMODE(os.lstat(dest / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(dest / "a/b").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o755


def test_large_and_sparse_content_round_trips(layers: Layers) -> None:
    big = os.urandom(3 << 20) + bytes(2 << 20) + b"tail" + bytes(1 << 20)
    dest, result = layers.unpack(make_tar([entry("big", data=big)]), "zstd")
    assert (dest / "big").read_bytes() == big
    assert result.size == len(big)


def test_absolute_symlink_target_is_not_followed(layers: Layers, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest, _ = layers.unpack(make_tar([
        entry("link", tarfile.SYMTYPE, linkname=str(outside / "file")),
        entry("link", data=b"replaced"),  # replaces the symlink itself, never writes through it
    ]))
    assert not os.path.islink(dest / "link")
    assert (dest / "link").read_bytes() == b"replaced"
    assert list(outside.iterdir()) == []


# --- metadata (root) -------------------------------------------------------------------------------------------


@needs_root
def test_owners_modes_and_special_bits(layers: Layers) -> None:
    dest, _ = layers.unpack(make_tar([
        entry("bin/", tarfile.DIRTYPE, mode=0o755),
        entry("bin/su", data=b"su", mode=0o4755, uid=0, gid=0),
        entry("bin/wall", data=b"wall", mode=0o2755, uid=1234, gid=5678),  # chown must not drop setgid
        entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
        entry("shared/", tarfile.DIRTYPE, mode=0o2775, uid=100, gid=200),
        entry("home/u/", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
        entry("home/u/f", data=b"f", mode=0o600, uid=1000, gid=1000),
        entry("home/u/l", tarfile.SYMTYPE, linkname="f", uid=1000, gid=1001),
    ]))
    su = os.lstat(dest / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    wall = os.lstat(dest / "bin/wall")
    assert (wall.st_uid, wall.st_gid, stat.S_IMODE(wall.st_mode)) == (1234, 5678, 0o2755)
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    shared = os.lstat(dest / "shared")
    assert (shared.st_uid, shared.st_gid, stat.S_IMODE(shared.st_mode)) == (100, 200, 0o2775)
    f = os.lstat(dest / "home/u/f")
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode)) == (1000, 1000, 0o600)
    link = os.lstat(dest / "home/u/l")
    assert (link.st_uid, link.st_gid) == (1000, 1001)


def test_times_of_files_symlinks_and_dirs(layers: Layers) -> None:
    dest, _ = layers.unpack(make_tar([
        entry("d/", tarfile.DIRTYPE, mode=0o755, mtime=1_000_000_000),
        entry("d/f", data=b"x", mtime=1_100_000_000),  # written after d: d's time must still hold
        entry("d/l", tarfile.SYMTYPE, linkname="/nonexistent", mtime=1_200_000_000),
        entry("p", data=b"y", pax={"mtime": "1300000000.123456789", "atime": "1300000001.5"}),
    ]))
    assert os.lstat(dest / "d").st_mtime_ns == 1_000_000_000 * 10**9
    assert os.lstat(dest / "d/f").st_mtime_ns == 1_100_000_000 * 10**9
    assert os.lstat(dest / "d/l").st_mtime_ns == 1_200_000_000 * 10**9
    p = os.lstat(dest / "p")
    assert p.st_mtime_ns == 1_300_000_000_123_456_789
    assert p.st_atime_ns == 1_300_000_001_500_000_000


def test_directory_without_write_permission_gets_its_children(layers: Layers) -> None:
    dest, _ = layers.unpack(make_tar([
        entry("ro/", tarfile.DIRTYPE, mode=0o555),
        entry("ro/inner/", tarfile.DIRTYPE, mode=0o500),
        entry("ro/inner/file", data=b"data", mode=0o400),
    ]))
    assert (dest / "ro/inner/file").read_bytes() == b"data"
    assert stat.S_IMODE(os.lstat(dest / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(dest / "ro/inner").st_mode) == 0o500


@needs_root
def test_xattrs_and_file_capabilities_survive_chown(layers: Layers) -> None:
    # VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = CAP_NET_BIND_SERVICE (bit 10)
    capability = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
    binary_value = b"\x00\xff\xfe binary\n="
    dest, _ = layers.unpack(make_tar([
        entry("ping", data=b"ELF", mode=0o755, uid=1000, gid=1000, pax={
            "SCHILY.xattr.security.capability": capability.decode("utf-8", "surrogateescape"),
            "SCHILY.xattr.user.comment": "hello",
        }),
        entry("d/", tarfile.DIRTYPE, pax={
            "SCHILY.xattr.user.bin": binary_value.decode("utf-8", "surrogateescape"),
            "SCHILY.xattr.trusted.overlay.redirect": "/elsewhere",  # forged overlay metadata is dropped
        }),
    ]))
    ping = dest / "ping"
    assert os.lstat(ping).st_uid == 1000
    assert os.getxattr(ping, "security.capability") == capability
    assert os.getxattr(ping, "user.comment") == b"hello"
    assert os.getxattr(dest / "d", "user.bin") == binary_value
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "d")


# --- links and special files -----------------------------------------------------------------------------------


def test_hard_links_share_the_inode(layers: Layers) -> None:
    dest, result = layers.unpack(make_tar([
        entry("usr/bin/busybox", data=b"B" * 1000, mode=0o755),
        entry("bin/sh", tarfile.LNKTYPE, linkname="usr/bin/busybox"),
        entry("bin/ls", tarfile.LNKTYPE, linkname="/usr/bin/busybox"),
        entry("lnk", tarfile.SYMTYPE, linkname="/does/not/exist"),
        entry("lnk-hard", tarfile.LNKTYPE, linkname="lnk"),  # hard link to the symlink itself
    ]))
    original = os.lstat(dest / "usr/bin/busybox")
    assert os.lstat(dest / "bin/sh").st_ino == original.st_ino
    assert os.lstat(dest / "bin/ls").st_ino == original.st_ino
    assert original.st_nlink == 3
    assert os.lstat(dest / "lnk-hard").st_ino == os.lstat(dest / "lnk").st_ino
    assert os.readlink(dest / "lnk-hard") == "/does/not/exist"
    assert result.size == 1000  # one inode, counted once
    assert result.inodes == 5  # usr, usr/bin, busybox, bin, lnk


@needs_root
def test_device_nodes_and_fifos(layers: Layers) -> None:
    dest, _ = layers.unpack(make_tar([
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        entry("dev/loop9", tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=7, devminor=9),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
    ]))
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(dest / "dev/loop9")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 9)
    assert loop.st_gid == 6
    fifo = os.lstat(dest / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620


# --- whiteouts -------------------------------------------------------------------------------------------------


@needs_root
def test_whiteouts_become_overlay_whiteouts(layers: Layers) -> None:
    dest, result = layers.unpack(make_tar([
        entry("etc/", tarfile.DIRTYPE),
        entry("etc/.wh.passwd", data=b""),
        entry(".wh.gone-dir"),
        entry("opaque/", tarfile.DIRTYPE),
        entry("opaque/.wh..wh..opq"),
        entry("opaque/kept", data=b"k"),
        entry("implicit/deeper/.wh..wh..opq"),  # opaque dir never declared: created
        entry(".wh..wh.plnk/", tarfile.DIRTYPE),  # AUFS metadata: ignored
        entry(".wh..wh.plnk/123.456", data=b"x"),
        entry("etc/.wh..wh.aufs", data=b""),
    ]))
    for rel in ("etc/passwd", "gone-dir"):
        st = os.lstat(dest / rel)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), rel
    assert not os.path.lexists(dest / "etc/.wh.passwd")
    assert os.getxattr(dest / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(dest / "implicit/deeper", "trusted.overlay.opaque") == b"y"
    assert (dest / "opaque/kept").read_bytes() == b"k"
    assert not os.path.lexists(dest / ".wh..wh.plnk")
    assert not os.path.lexists(dest / "etc/.wh..wh.aufs")
    assert not os.path.lexists(dest / "opaque/.wh..wh..opq")
    assert sorted(os.listdir(dest)) == ["etc", "gone-dir", "implicit", "opaque"]
    assert result.inodes == 7  # etc, etc/passwd, gone-dir, opaque, opaque/kept, implicit, implicit/deeper


@pytest.mark.parametrize("name", [".wh.", "a/.wh..", "a/.wh..."])
def test_whiteout_without_a_name_is_refused(layers: Layers, name: str) -> None:
    with pytest.raises(LayerError):
        layers.unpack(make_tar([entry(name)]))
    assert layers.leftovers() == []


# --- entries listed twice --------------------------------------------------------------------------------------


def test_later_entry_wins(layers: Layers) -> None:
    dest, result = layers.unpack(make_tar([
        entry("file", data=b"first"),
        entry("file", data=b"second"),
        entry("was-dir/", tarfile.DIRTYPE),
        entry("was-dir/child", data=b"c"),
        entry("was-dir", data=b"now a file"),
        entry("was-file", data=b"f"),
        entry("was-file/", tarfile.DIRTYPE, mode=0o750),
        entry("merged/", tarfile.DIRTYPE, mode=0o700),
        entry("merged/a", data=b"a"),
        entry("merged/", tarfile.DIRTYPE, mode=0o755),
        entry("merged/b", data=b"b"),
    ]))
    assert (dest / "file").read_bytes() == b"second"
    assert (dest / "was-dir").read_bytes() == b"now a file"
    assert stat.S_ISDIR(os.lstat(dest / "was-file").st_mode)
    assert stat.S_IMODE(os.lstat(dest / "was-file").st_mode) == 0o750
    assert sorted(os.listdir(dest / "merged")) == ["a", "b"]
    assert stat.S_IMODE(os.lstat(dest / "merged").st_mode) == 0o755
    assert result.inodes == 6
    assert result.size == len(b"second") + len(b"now a file") + 2


# --- digests and corruption ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_wrong_diff_id_is_data_loss_and_leaves_nothing(layers: Layers, compression: str) -> None:
    tar_bytes = make_tar(BASIC + [entry("d/", tarfile.DIRTYPE, mode=0o000), entry("d/f", data=b"x", mode=0)])
    blob = layers.blob(compress(tar_bytes, compression))
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errors.DataLoss) as info:
        unpack_layer(blob, layers.parent / "diff", media_type_for(compression), wrong)
    assert wrong in str(info.value) and diff_id_of(tar_bytes) in str(info.value)
    assert layers.leftovers() == []


def test_bytes_after_the_tar_end_are_part_of_the_diff_id(layers: Layers) -> None:
    stream = make_tar([entry("f", data=b"x")]) + b"trailing junk"
    blob = layers.blob(gzip.compress(stream))
    result = unpack_layer(blob, layers.parent / "diff", GZIP_MT, diff_id_of(stream))
    assert result.diff_id == diff_id_of(stream)
    with pytest.raises(errors.DataLoss):
        unpack_layer(blob, layers.parent / "other", GZIP_MT, diff_id_of(stream[:-len(b"trailing junk")]))
    assert layers.leftovers() == ["diff"]


def test_sha512_diff_id_is_accepted(layers: Layers) -> None:
    tar_bytes = make_tar([entry("f", data=b"x")])
    blob = layers.blob(tar_bytes)
    result = unpack_layer(blob, layers.parent / "diff", TAR_MT, "sha512:" + hashlib.sha512(tar_bytes).hexdigest())
    assert result.diff_id == diff_id_of(tar_bytes)


def test_malformed_expected_diff_id_is_invalid_argument(layers: Layers) -> None:
    blob = layers.blob(make_tar([entry("f")]))
    with pytest.raises(errors.InvalidArgument):
        unpack_layer(blob, layers.parent / "diff", TAR_MT, "md5:abc")
    assert layers.leftovers() == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.99])
def test_truncated_compressed_stream_fails_and_leaves_nothing(layers: Layers, compression: str,
                                                              keep: float) -> None:
    tar_bytes = make_tar([entry(f"f{i}", data=os.urandom(20_000)) for i in range(10)])
    compressed = compress(tar_bytes, compression)
    blob = layers.blob(compressed[:int(len(compressed) * keep)])
    with pytest.raises((errors.DataLoss, LayerError)):
        unpack_layer(blob, layers.parent / "diff", media_type_for(compression))  # no diff_id to save us
    assert layers.leftovers() == []


def test_truncated_plain_tar_is_refused(layers: Layers) -> None:
    tar_bytes = make_tar([entry("f", data=os.urandom(5000)), entry("g", data=b"g")])
    blob = layers.blob(tar_bytes[:3000])
    with pytest.raises(LayerError) as info:
        unpack_layer(blob, layers.parent / "diff", TAR_MT)
    assert "'f'" in str(info.value)
    assert layers.leftovers() == []


def test_bad_content_that_misses_its_diff_id_is_data_loss(layers: Layers) -> None:
    good = make_tar([entry("f", data=b"x" * 5000), entry("g", data=b"g")])
    blob = layers.blob(gzip.compress(good[:3000]))  # damaged: cut inside f's data, still a valid gzip stream
    with pytest.raises(errors.DataLoss):
        unpack_layer(blob, layers.parent / "diff", GZIP_MT, diff_id_of(good))
    assert layers.leftovers() == []


def test_malicious_content_with_matching_diff_id_is_layer_error(layers: Layers) -> None:
    with pytest.raises(LayerError):
        layers.unpack(make_tar([entry("../evil", data=b"x")]), check_digest=True)
    assert layers.leftovers() == []


def test_corrupt_header_after_first_member_is_refused(layers: Layers) -> None:
    tar_bytes = bytearray(make_tar([entry("f", data=b"x" * 10), entry("g", data=b"g")]))
    # Flipping a byte of the last member's name breaks its header checksum; the stock tarfile would silently
    # treat that as the end of the archive.
    last_ustar = tar_bytes.rindex(b"ustar\x0000") - 257
    tar_bytes[last_ustar + 1] ^= 0xFF
    blob = layers.blob(bytes(tar_bytes))
    with pytest.raises(LayerError):
        unpack_layer(blob, layers.parent / "diff", TAR_MT)
    assert layers.leftovers() == []


def test_multi_frame_zstd_with_skippable_frame(layers: Layers) -> None:
    tar_bytes = make_tar([entry("a", data=b"A" * 70_000), entry("b", data=os.urandom(50_000))])
    c = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + struct.pack("<I", 5) + b"hello"
    blob_bytes = c.compress(tar_bytes[:40_000]) + skippable + c.compress(tar_bytes[40_000:])
    blob = layers.blob(blob_bytes)
    result = unpack_layer(blob, layers.parent / "diff", ZSTD_MT, diff_id_of(tar_bytes))
    assert (layers.parent / "diff/a").read_bytes() == b"A" * 70_000
    assert result.diff_id == diff_id_of(tar_bytes)


def test_zstd_truncated_at_a_frame_holding_only_the_tar_end_is_data_loss(layers: Layers) -> None:
    # The decompressor reports a cut-off final frame as a clean end, and the tar reader accepts a stream that
    # ends at a header boundary; only the framing check notices.
    tar_bytes = make_tar([entry("f", data=b"x" * 1000)])
    body, end_marker = tar_bytes[:512 + 1024], tar_bytes[512 + 1024:]  # header + padded data | zero blocks
    assert body and not end_marker.strip(b"\0")
    c = zstandard.ZstdCompressor(write_checksum=True)
    blob = layers.blob(c.compress(body) + c.compress(end_marker)[:-6])
    with pytest.raises(errors.DataLoss):
        unpack_layer(blob, layers.parent / "diff", ZSTD_MT)
    assert layers.leftovers() == []


def _verify_zstd_framing(raw: BinaryIO, blob: Path) -> None:
    """Fail with DataLoss unless the zstd blob in `raw` ends exactly at a frame boundary."""
    framing = _ZstdFraming(str(blob))
    raw.seek(0)
    while chunk := raw.read(1 << 20):
        framing.feed(chunk)
    framing.finish()


def test_zstd_framing_check_accepts_complete_and_rejects_truncated(tmp_path: Path) -> None:
    complete = zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(300_000))
    path = tmp_path / "z"
    path.write_bytes(complete)
    with open(path, "rb") as f:
        _verify_zstd_framing(f, path)
    path.write_bytes(complete[:-1])
    with open(path, "rb") as f, pytest.raises(errors.DataLoss):
        _verify_zstd_framing(f, path)


# --- escapes ---------------------------------------------------------------------------------------------------


def assert_nothing_escaped(tmp_path: Path) -> None:
    assert not list(tmp_path.rglob("evil*"))
    assert not os.path.lexists("/tmp/evil-cripy-unpack-test")


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "a/../b", "/../evil", "./../evil"])
def test_dotdot_names_are_refused(layers: Layers, tmp_path: Path, name: str) -> None:
    with pytest.raises(LayerError) as info:
        layers.unpack(make_tar([entry("ok", data=b"fine"), entry(name, data=b"pwned")]))
    assert name in str(info.value)
    assert layers.leftovers() == []
    assert_nothing_escaped(tmp_path)


def test_writing_through_an_absolute_symlink_is_refused(layers: Layers, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(LayerError) as info:
        layers.unpack(make_tar([
            entry("link", tarfile.SYMTYPE, linkname=str(outside)),
            entry("link/evil", data=b"pwned"),
        ]))
    assert "symlink" in str(info.value)
    assert list(outside.iterdir()) == []
    assert layers.leftovers() == []


@pytest.mark.parametrize("kind", [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.REGTYPE])
def test_writing_through_a_relative_symlink_is_refused(layers: Layers, tmp_path: Path, kind: bytes) -> None:
    with pytest.raises(LayerError):
        layers.unpack(make_tar([
            entry("up", tarfile.SYMTYPE, linkname="../.."),
            entry("up/evil", kind, linkname="x"),
        ]))
    assert layers.leftovers() == []
    assert_nothing_escaped(tmp_path)


@pytest.mark.parametrize("entries", [
    [entry("evil", tarfile.LNKTYPE, linkname="../../etc/passwd")],
    [entry("evil", tarfile.LNKTYPE, linkname="/etc/passwd")],  # normalized to etc/passwd: not in this layer
    [entry("evil", tarfile.LNKTYPE, linkname="missing")],
    [entry("dir/", tarfile.DIRTYPE), entry("evil", tarfile.LNKTYPE, linkname="dir")],
    [entry("evil", tarfile.LNKTYPE, linkname="evil")],
    [entry("s", tarfile.SYMTYPE, linkname="/etc"), entry("evil", tarfile.LNKTYPE, linkname="s/passwd")],
    [entry("d/f", data=b"x"), entry("d", tarfile.LNKTYPE, linkname="d/f")],  # the link replaces its target
], ids=["dotdot", "absolute-outside-layer", "missing", "directory", "itself", "through-symlink", "replaced"])
def test_bad_hard_links_are_refused(layers: Layers, tmp_path: Path,
                                    entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with pytest.raises(LayerError):
        layers.unpack(make_tar(entries))
    assert layers.leftovers() == []
    assert_nothing_escaped(tmp_path)


def test_parent_that_is_a_file_is_refused(layers: Layers) -> None:
    with pytest.raises(LayerError):
        layers.unpack(make_tar([entry("f", data=b"x"), entry("f/child", data=b"y")]))
    assert layers.leftovers() == []


def test_unknown_entry_type_is_refused(layers: Layers) -> None:
    with pytest.raises(LayerError) as info:
        layers.unpack(make_tar([entry("vol", b"V")]))
    assert "vol" in str(info.value)
    assert layers.leftovers() == []


# --- destination handling --------------------------------------------------------------------------------------


def test_existing_destination_is_refused(layers: Layers) -> None:
    (layers.parent / "diff").mkdir()
    blob = layers.blob(make_tar([entry("f")]))
    with pytest.raises(errors.AlreadyExists):
        unpack_layer(blob, layers.parent / "diff", TAR_MT)
    assert layers.leftovers() == ["diff"]
    assert os.listdir(layers.parent / "diff") == []


def test_missing_blob_is_not_found(layers: Layers) -> None:
    with pytest.raises(errors.NotFound):
        unpack_layer(layers.tmp_path / "nope", layers.parent / "diff", TAR_MT)
    assert layers.leftovers() == []


def test_empty_layer(layers: Layers) -> None:
    dest, result = layers.unpack(make_tar([]), "gzip")
    assert os.listdir(dest) == []
    assert (result.size, result.inodes) == (0, 0)


# --- remove_tree -----------------------------------------------------------------------------------------------


def test_remove_tree_handles_locked_dirs_symlinks_and_depth(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    root = tmp_path / "tree"
    deep = root
    root.mkdir()
    for _ in range(1200):  # deeper than the recursion limit
        deep = deep / "d"
        os.mkdir(deep)
    (root / "locked").mkdir()
    (root / "locked/file").write_bytes(b"x")
    (root / "link").symlink_to(outside)
    os.chmod(root / "locked", 0)
    remove_tree(root)
    assert not root.exists()
    assert (outside / "keep").read_bytes() == b"k"
