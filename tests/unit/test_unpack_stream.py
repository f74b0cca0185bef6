"""cripy.images.unpack.unpack_stream: a layer arriving in chunks of any size unpacks exactly like the same blob
from a file; failures of the source or of the stream leave nothing behind."""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from cripy import errors
from cripy.images.layerentries import remove_tree
from cripy.images.unpack import unpack_layer, unpack_stream
from tests.unit.test_unpack import GZIP_MT, TAR_MT, ZSTD_MT, diff_id_of, entry, make_tar


class Chunks:
    """A ChunkSource over bytes, `size` at a time; optionally raising once `fail_after` bytes were handed out."""

    def __init__(self, data: bytes, size: int, fail_after: int | None = None) -> None:
        self.data = data
        self.size = size
        self.fail_after = fail_after
        self.offset = 0

    def read_chunk(self) -> bytes:
        if self.fail_after is not None and self.offset >= self.fail_after:
            raise errors.Unavailable("the download stopped: connection reset")
        chunk = self.data[self.offset:self.offset + self.size]
        self.offset += len(chunk)
        return chunk


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    directory = tmp_path / "layers"
    directory.mkdir()
    yield directory
    remove_tree(directory)


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


TAR = make_tar([
    entry("d/", tarfile.DIRTYPE),
    entry("d/small", data=b"small\n"),
    entry("d/big", data=os.urandom(300_000)),
    entry("d/zeros", data=bytes(200_000) + b"end"),
    entry("link", tarfile.SYMTYPE, linkname="d/small"),
])


def gzip_members_with_padding(data: bytes) -> bytes:
    cut = len(data) // 3
    return gzip.compress(data[:cut]) + gzip.compress(data[cut:]) + bytes(7)


def zstd_frames_with_skippable(data: bytes) -> bytes:
    c = zstandard.ZstdCompressor(write_checksum=True)
    cut = len(data) // 2
    skippable = b"\x50\x2a\x4d\x18" + struct.pack("<I", 3) + b"abc"
    return c.compress(data[:cut]) + skippable + c.compress(data[cut:])


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("blob, media_type", [
    (gzip_members_with_padding(TAR), GZIP_MT),
    (zstd_frames_with_skippable(TAR), ZSTD_MT),
    (TAR, TAR_MT),
], ids=["gzip", "zstd", "none"])
def test_any_chunking_unpacks_like_the_file(parent: Path, tmp_path: Path, chunk: int, blob: bytes,
                                            media_type: str) -> None:
    if chunk == 1 and len(blob) > 200_000 and media_type == TAR_MT:
        chunk = 3  # keeps the run short; still splits every header
    blob_file = tmp_path / "blob"
    blob_file.write_bytes(blob)
    from_file = unpack_layer(blob_file, parent / "file", media_type, diff_id_of(TAR))
    streamed = unpack_stream(Chunks(blob, chunk), parent / "stream", media_type, diff_id_of(TAR), name="L")
    assert streamed == from_file
    assert tree(parent / "stream") == tree(parent / "file")
    assert (parent / "stream/d/zeros").read_bytes() == bytes(200_000) + b"end"
    assert sorted(os.listdir(parent)) == ["file", "stream"]


@pytest.mark.parametrize("blob, media_type", [
    (gzip.compress(TAR), GZIP_MT),
    (zstandard.ZstdCompressor().compress(TAR), ZSTD_MT),
    (TAR, TAR_MT),
], ids=["gzip", "zstd", "none"])
def test_a_failing_source_leaves_nothing(parent: Path, blob: bytes, media_type: str) -> None:
    with pytest.raises(errors.Unavailable, match="connection reset"):
        unpack_stream(Chunks(blob, 4096, fail_after=len(blob) // 2), parent / "diff", media_type,
                      diff_id_of(TAR), name="L")
    assert os.listdir(parent) == []


def test_a_source_failing_after_the_last_byte_still_leaves_nothing(parent: Path) -> None:
    # The tar and its diff_id are complete, but the source never confirms the end (its digest check failed).
    blob = gzip.compress(TAR)
    with pytest.raises(errors.Unavailable):
        unpack_stream(Chunks(blob, 4096, fail_after=len(blob)), parent / "diff", GZIP_MT, diff_id_of(TAR), name="L")
    assert os.listdir(parent) == []


def test_garbage_after_a_gzip_member_is_data_loss(parent: Path) -> None:
    with pytest.raises(errors.DataLoss, match="layer L: corrupt or truncated compressed stream"):
        unpack_stream(Chunks(gzip.compress(TAR) + b"not gzip at all", 1000), parent / "diff", GZIP_MT, name="L")
    assert os.listdir(parent) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_empty_compressed_blob_is_data_loss(parent: Path, compression: str) -> None:
    media_type = GZIP_MT if compression == "gzip" else ZSTD_MT
    with pytest.raises(errors.DataLoss, match=f"empty blob, but a {compression} stream was expected"):
        unpack_stream(Chunks(b"", 10), parent / "diff", media_type, name="L")
    assert os.listdir(parent) == []


def test_highly_compressed_data_comes_out_whole_and_sparse(parent: Path) -> None:
    # 64 MiB of zeros in a file: gzip shrinks it to ~64 KiB; the file must come out whole (and sparse).
    tar = make_tar([entry("zeros", data=bytes(64 << 20))])
    result = unpack_stream(Chunks(gzip.compress(tar), 1 << 20), parent / "diff", GZIP_MT, diff_id_of(tar), name="L")
    assert result.size == 64 << 20
    st = os.stat(parent / "diff/zeros")
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < (1 << 20)
