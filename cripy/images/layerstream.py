"""A layer blob's bytes as the tar stream inside it: compression detection, decompression, the diff_id hash.

Owns the plumbing between a ChunkSource (a file, or a download in progress) and the tar reader: gzip members
inflated with zlib, zstd frames (with a check that the stream ends at a frame boundary), the forward-only file
the tar reader reads from (hashing every uncompressed byte once, mapping decompression failures to DataLoss), and
a stream-mode TarFile that reports a corrupt header instead of taking it for the end. Knows nothing of what the
entries become on disk (layerentries.py).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from typing import Any, BinaryIO, Callable, Protocol, cast

import zstandard

from cripy import errors

CHUNK_SIZE = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zstd skippable frames: magic 0x184D2A50..0x184D2A5F, little endian.
_ZSTD_SKIPPABLE_TAIL = b"\x2a\x4d\x18"
_ZSTD_MAX_WINDOW = 1 << 31


def detect_compression(media_type: str, head: bytes) -> str:
    """Return "gzip", "zstd" or "none" for a blob whose first bytes are `head`.

    The magic bytes decide whenever there are enough of them to look at; the media type only helps when the head
    is too short to tell (registries and old tools are known to mislabel layers).
    """
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or _is_zstd_skippable_magic(head):
        return "zstd"
    if len(head) >= len(_ZSTD_MAGIC):
        return "none"
    return _compression_from_media_type(media_type)


def _is_zstd_skippable_magic(head: bytes) -> bool:
    return len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == _ZSTD_SKIPPABLE_TAIL


def _compression_from_media_type(media_type: str) -> str:
    mt = media_type.strip().lower()
    # OCI uses "+gzip"/"+zstd" suffixes, Docker schema 2 uses ".tar.gzip".
    if mt.endswith(("+gzip", ".gzip", "+gz")):
        return "gzip"
    if mt.endswith(("+zstd", ".zstd")):
        return "zstd"
    return "none"



class ChunkSource(Protocol):
    """Where a layer's compressed bytes come from, in order: a file, or a download still in progress."""

    def read_chunk(self) -> bytes:
        """The next piece of the blob (any length); b"" once the blob is complete. May block."""
        ...


class FileChunks:
    """A blob on disk as a ChunkSource."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read_chunk(self) -> bytes:
        return self._file.read(CHUNK_SIZE)



def layer_tar_input(source: ChunkSource, media_type: str, algorithms: list[str], name: str) -> TarInput:
    """The uncompressed tar stream of the blob `source` delivers, hashed with each of `algorithms`."""
    return TarInput(_decompressed_chunks(_RawInput(source), media_type, name), algorithms, name)


# --- the uncompressed stream ---------------------------------------------------------------------------------
#
# Bytes travel in chunks of up to CHUNK_SIZE from the source through the decompressor to the tar reader: every
# hash update, zlib call and file write works on a big buffer (which also releases the GIL for its duration),
# and the tar reader slices headers out of a chunk without copying the rest of it.


class _RawInput:
    """The compressed bytes of a ChunkSource, with push-back (for magic detection and gzip member ends)."""

    def __init__(self, source: ChunkSource) -> None:
        self._source = source
        self._pushed: list[bytes] = []
        self.total = 0  # bytes taken from the source so far

    def read_chunk(self) -> bytes:
        if self._pushed:
            return self._pushed.pop()
        chunk = self._source.read_chunk()
        self.total += len(chunk)
        return chunk

    def push_back(self, data: bytes) -> None:
        if data:
            self._pushed.append(data)

    def peek(self, n: int) -> bytes:
        """At least n bytes from the start of what is left (fewer only at the end), without consuming them."""
        parts: list[bytes] = []
        have = 0
        while have < n:
            chunk = self.read_chunk()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        head = b"".join(parts)
        self.push_back(head)
        return head

    def skip_zero_padding(self) -> None:
        while chunk := self.read_chunk():
            rest = chunk.lstrip(b"\0")
            if rest:
                self.push_back(rest)
                return


def _decompressed_chunks(raw: _RawInput, media_type: str, name: str) -> Callable[[], bytes]:
    """A function returning the next chunk of uncompressed tar stream, b"" at its end."""
    head = raw.peek(len(_ZSTD_MAGIC))
    compression = detect_compression(media_type, head)
    if compression != "none" and not head:
        raise errors.DataLoss(f"layer {name}: empty blob, but a {compression} stream was expected")
    if compression == "gzip":
        return _GzipChunks(raw, name).read_chunk
    if compression == "zstd":
        framing = _ZstdFraming(name)
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        reader = decompressor.stream_reader(cast(BinaryIO, _FramingCheckedFile(raw, framing)), read_size=CHUNK_SIZE,
                                            read_across_frames=True, closefd=False)
        return lambda: reader.read(CHUNK_SIZE)
    return raw.read_chunk


class _GzipChunks:
    """gzip members (one or more, zero padding allowed between and after them) decompressed with zlib directly.

    zlib checks each member's CRC-32 and length trailer; a stream that ends inside a member is DataLoss.
    """

    def __init__(self, raw: _RawInput, name: str) -> None:
        self._raw = raw
        self._name = name
        self._inflater: Any = None
        self._members = 0

    def read_chunk(self) -> bytes:
        while True:
            if self._inflater is None:
                if self._members:
                    self._raw.skip_zero_padding()
                data = self._raw.read_chunk()
                if not data:
                    return b""  # a clean end between members (an empty blob was refused up front)
                self._inflater = zlib.decompressobj(wbits=31)
                self._members += 1
            else:
                data = self._inflater.unconsumed_tail or self._raw.read_chunk()
                if not data:
                    raise errors.DataLoss(f"layer {self._name}: corrupt or truncated compressed stream: "
                                          f"the gzip stream ends inside member {self._members}")
            out = self._inflater.decompress(data, CHUNK_SIZE)  # bounded: a tiny blob may inflate enormously
            if self._inflater.eof:
                self._raw.push_back(self._inflater.unused_data)
                self._inflater = None
            if out:
                return out


class _FramingCheckedFile:
    """The file zstandard's stream reader reads from: raw chunks, each passed through the framing check."""

    def __init__(self, raw: _RawInput, framing: _ZstdFraming) -> None:
        self._raw = raw
        self._framing = framing
        self._chunk = b""
        self._start = 0

    def read(self, size: int = -1) -> bytes:
        if self._start >= len(self._chunk):
            chunk = self._raw.read_chunk()
            if not chunk:
                self._framing.finish()
                return b""
            self._framing.feed(chunk)
            self._chunk, self._start = chunk, 0
        start = self._start
        end = len(self._chunk) if size < 0 else min(len(self._chunk), start + size)
        self._start = end
        return self._chunk if (start, end) == (0, len(self._chunk)) else self._chunk[start:end]


class _ZstdFraming:
    """Walks zstd frame and block headers as the compressed bytes stream past, and fails unless the stream
    ends exactly at a frame boundary: zstandard's stream reader reports a truncated final frame as a clean end.
    Only headers are looked at; block contents are skipped."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._offset = 0  # stream offset of the start of self._header
        self._header = bytearray()  # bytes of the header being parsed
        self._skip = 0  # content bytes to pass over before the next header
        self._state = "magic"  # the header expected next: magic, skippable-length, frame-descriptor, frame-rest,
        # block, or checksum
        self._need = 4
        self._has_checksum = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                self._offset += n
                view = view[n:]
                continue
            take = min(self._need - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == self._need:
                self._offset += self._need
                header = bytes(self._header)
                self._header.clear()
                self._parse(header)

    def _parse(self, header: bytes) -> None:
        at = self._offset - len(header)
        if self._state == "magic":
            if header == _ZSTD_MAGIC:
                self._state, self._need = "frame-descriptor", 1
            elif _is_zstd_skippable_magic(header):
                self._state, self._need = "skippable-length", 4
            else:
                raise errors.DataLoss(f"layer {self._name}: no zstd frame at offset {at} (corrupt or trailing data)")
        elif self._state == "skippable-length":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4
        elif self._state == "frame-descriptor":
            fhd = header[0]
            single_segment = (fhd >> 5) & 1
            self._has_checksum = bool((fhd >> 2) & 1)
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + (single_segment, 2, 4, 8)[fhd >> 6]
            self._state, self._need = "block", 3
            self._skip = rest
        elif self._state == "block":
            value = int.from_bytes(header, "little")
            last, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
            if block_type == 3:
                raise errors.DataLoss(f"layer {self._name}: zstd block at offset {at} has the reserved type")
            self._skip = 1 if block_type == 1 else block_size  # an RLE block stores one byte
            if last:
                self._skip += 4 if self._has_checksum else 0
                self._state, self._need = "magic", 4

    def finish(self) -> None:
        if self._state != "magic" or self._header or self._skip:
            raise errors.DataLoss(f"layer {self._name}: zstd stream is truncated "
                                  f"({self._offset + len(self._header)} bytes, inside a frame)")


class TarInput:
    """The uncompressed stream as the file the tar reader reads from (forward only), hashing every byte once,
    chunk by chunk; maps decompression failures to DataLoss."""

    def __init__(self, next_chunk: Callable[[], bytes], algorithms: list[str], name: str) -> None:
        self._next_chunk = next_chunk
        self._hashes = [hashlib.new(algorithm) for algorithm in algorithms]
        self._algorithms = algorithms
        self._name = name
        self._chunk = b""
        self._start = 0  # unread bytes are self._chunk[self._start:]
        self._position = 0  # stream offset of self._chunk[self._start]
        self._eof = False

    def _fill(self) -> bool:
        """Load the next chunk once the current one is used up; False at the end of the stream."""
        if self._start < len(self._chunk):
            return True
        if self._eof:
            return False
        try:
            chunk = self._next_chunk()
        except (EOFError, zlib.error, zstandard.ZstdError) as e:
            raise errors.DataLoss(f"layer {self._name}: corrupt or truncated compressed stream: {e}") from e
        if not chunk:
            self._eof = True
            return False
        for h in self._hashes:
            h.update(chunk)
        self._chunk, self._start = chunk, 0
        return True

    def _take(self, n: int) -> tuple[bytes, int, int]:
        """(chunk, start, end) of up to n next bytes, consumed; end == start at the end of the stream."""
        if not self._fill():
            return self._chunk, self._start, self._start
        start = self._start
        end = min(len(self._chunk), start + n)
        self._start = end
        self._position += end - start
        return self._chunk, start, end

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        parts: list[bytes] = []
        while size > 0:
            chunk, start, end = self._take(size)
            if end == start:
                break
            parts.append(chunk if (start, end) == (0, len(chunk)) else chunk[start:end])
            size -= end - start
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence != os.SEEK_SET:
            raise tarfile.ReadError("the layer stream can only seek forward")
        if offset < self._position:
            raise tarfile.ReadError(f"the layer stream cannot seek back from {self._position} to {offset}")
        while self._position < offset:
            _, start, end = self._take(offset - self._position)
            if end == start:
                raise tarfile.ReadError("unexpected end of data")
        return self._position

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next `size` bytes to fd; all-zero pieces become holes (sparse files stay sparse)."""
        left = size
        ends_in_hole = False
        while left > 0:
            chunk, start, end = self._take(left)
            if end == start:
                raise tarfile.ReadError("unexpected end of data")
            left -= end - start
            if chunk[start] == 0 and chunk[end - 1] == 0 and chunk.count(0, start, end) == end - start:
                os.lseek(fd, end - start, os.SEEK_CUR)
                ends_in_hole = True
                continue
            view = memoryview(chunk)[start:end]
            while view:
                view = view[os.write(fd, view):]
            ends_in_hole = False
        if ends_in_hole:
            os.ftruncate(fd, size)

    def drain(self) -> None:
        """Read to EOF: the diff_id covers bytes after the tar end-of-archive marker too."""
        while self._fill():
            self._position += len(self._chunk) - self._start
            self._start = len(self._chunk)

    def hexdigest(self, algorithm: str) -> str:
        return self._hashes[self._algorithms.index(algorithm)].hexdigest()


class StrictTarStream(tarfile.TarFile):
    """A stream-mode TarFile that reports a corrupt or truncated header instead of treating it as the end.

    The stock next() ends the archive silently on an invalid header after the first member, and keeps every
    member in memory. This follows its CPython 3.11 structure (offset/firstmember bookkeeping) but only treats a
    zero block or a clean EOF at a header boundary as the end, and keeps no member list.
    """

    def next(self) -> tarfile.TarInfo | None:
        self._check("ra")  # type: ignore[attr-defined]
        if self.firstmember is not None:  # type: ignore[has-type]
            first: tarfile.TarInfo = self.firstmember  # type: ignore[has-type]
            self.firstmember = None
            return first
        if self.offset != self.fileobj.tell():  # skip the unread data of the previous member
            if self.offset == 0:
                return None
            self.fileobj.seek(self.offset - 1)
            if not self.fileobj.read(1):
                raise tarfile.ReadError("unexpected end of data")
        try:
            member = self.tarinfo.fromtarfile(self)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):  # type: ignore[attr-defined]  # not in typeshed
            member = None  # a zero block, or the stream ends at a header boundary (accepted like Go's reader)
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"at offset {self.offset}: {e}") from None
        if member is None:
            self._loaded = True
        return member
