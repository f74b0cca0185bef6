"""Layer unpacking: one OCI/Docker layer blob (a file, or the chunks of a download in progress) becomes one
directory in overlayfs form.

Owns decompression (gzip, zstd, none), the uncompressed digest check (diff_id), the tar reading, the safety rules
(nothing is written outside the layer directory, never through a symlink), and the translation of OCI whiteouts
(`.wh.<name>`, `.wh..wh..opq`) into overlayfs whiteouts (char device 0:0, xattr `trusted.overlay.opaque=y`).

Everything here is blocking; the daemon runs `unpack_layer` / `unpack_stream` in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Protocol

import zstandard

from cripy import errors, faults

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zstd skippable frames: magic 0x184D2A50..0x184D2A5F, little endian.
_ZSTD_SKIPPABLE_TAIL = b"\x2a\x4d\x18"
_ZSTD_MAX_WINDOW = 1 << 31

_WHITEOUT_PREFIX = ".wh."
_WHITEOUT_META_PREFIX = ".wh..wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_OVERLAY_XATTR_PREFIX = "trusted.overlay."
_PAX_XATTR_PREFIX = "SCHILY.xattr."

_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
# errnos that a layer's own content can provoke (over-long names, values the kernel rejects, ...).
_CONTENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.ERANGE, errno.E2BIG, errno.ELOOP, errno.ENOTDIR,
                   errno.EEXIST}


@dataclass(frozen=True)
class UnpackedLayer:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream (including bytes after the end-of-archive)
    size: int  # apparent bytes of regular-file content in the layer directory (each inode counted once)
    inodes: int  # distinct inodes below the layer directory (hard links count once, the directory itself not)


class LayerError(errors.InvalidArgument):
    """The layer's content is malformed or tries something unsafe (escaping the layer, writing via a symlink)."""


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


class _FileChunks:
    """A blob on disk as a ChunkSource."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read_chunk(self) -> bytes:
        return self._file.read(_CHUNK)


def unpack_layer(blob: Path, dest: Path, media_type: str = "", expected_diff_id: str | None = None) -> UnpackedLayer:
    """Unpack the layer `blob` (a file) into the new directory `dest`, in overlayfs form; see unpack_stream.

    Raises NotFound (no blob) besides what unpack_stream raises.
    """
    blob, dest = Path(blob), Path(dest)
    expected = _parse_digest(expected_diff_id) if expected_diff_id is not None else None
    _check_destination(dest, str(blob))
    try:
        raw = open(blob, "rb")
    except FileNotFoundError:
        raise errors.NotFound(f"layer blob {blob} does not exist") from None
    except OSError as e:
        raise errors.Internal(f"opening layer blob {blob}: {e}") from e
    with raw:
        return _unpack_checked(_FileChunks(raw), dest, media_type, expected, str(blob))


def unpack_stream(source: ChunkSource, dest: Path, media_type: str = "", expected_diff_id: str | None = None,
                  *, name: str = "") -> UnpackedLayer:
    """Unpack the layer blob that `source` delivers into the new directory `dest`, in overlayfs form.

    Decompression, the diff_id hash and extraction run as the bytes arrive, in big chunks. Extraction happens in
    a temporary sibling of `dest` that is renamed to `dest` only after `source` reported the end of the blob
    (a download reports it only once the compressed digest is verified), the whole stream was read and its digest
    matched `expected_diff_id` (when given). On any failure, including one raised by `source`, nothing is left
    behind. `name` names the layer in errors (e.g. its blob digest).
    Raises LayerError (bad or malicious content), DataLoss (digest mismatch, corrupt compressed stream),
    AlreadyExists (dest exists), Internal (the filesystem failed us), or whatever `source` raises.
    Ownership is only restored when running as root (like tar's --same-owner default).
    """
    dest = Path(dest)
    expected = _parse_digest(expected_diff_id) if expected_diff_id is not None else None
    name = name or str(dest)
    _check_destination(dest, name)
    return _unpack_checked(source, dest, media_type, expected, name)


def _check_destination(dest: Path, name: str) -> None:
    if os.path.lexists(dest):
        raise errors.AlreadyExists(f"unpacking layer {name}: destination {dest} already exists")
    if not dest.parent.is_dir():
        raise errors.FailedPrecondition(f"unpacking layer {name}: parent directory of {dest} does not exist")


def _unpack_checked(source: ChunkSource, dest: Path, media_type: str, expected: tuple[str, str] | None,
                    name: str) -> UnpackedLayer:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    except OSError as e:
        raise errors.os_failure(f"unpacking layer {name}: creating a temporary directory next to {dest}", e) from e
    try:
        return _unpack_into(source, name, tmp, dest, media_type, expected)
    except BaseException as exc:
        _cleanup_after_failure(tmp)
        if isinstance(exc, (errors.CripyError, KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, tarfile.TarError):
            raise LayerError(f"layer {name}: malformed tar stream: {exc}") from exc
        if isinstance(exc, OSError):
            raise errors.os_failure(f"unpacking layer {name} into {dest}", exc) from exc
        raise


def _unpack_into(source: ChunkSource, name: str, tmp: Path, dest: Path, media_type: str,
                 expected: tuple[str, str] | None) -> UnpackedLayer:
    algorithms = ["sha256"] + ([expected[0]] if expected and expected[0] != "sha256" else [])
    reader = _TarInput(_decompressed_chunks(_RawInput(source), media_type, name), algorithms, name)
    extractor = _Extractor(str(tmp), name)
    try:
        extractor.extract(reader)
    except LayerError as bad_content:
        if expected is not None:
            # Bad content that also misses its digest is damaged data (worth fetching again), not a bad image.
            reader.drain()
            _check_digest(reader, expected, name, cause=bad_content)
        raise
    reader.drain()
    diff_id = f"sha256:{reader.hexdigest('sha256')}"
    if expected is not None:
        _check_digest(reader, expected, name)
    size, inodes = _measure_tree(str(tmp))
    extractor.finish()  # directory modes and times last: measuring the tree above reads (and atime-touches) dirs
    _rename_into_place(tmp, dest, name)
    return UnpackedLayer(diff_id=diff_id, size=size, inodes=inodes)


def _check_digest(reader: _TarInput, expected: tuple[str, str], name: str,
                  cause: BaseException | None = None) -> None:
    algorithm, wanted = expected
    actual = reader.hexdigest(algorithm)
    if actual != wanted:
        raise errors.DataLoss(f"layer {name}: uncompressed digest mismatch: expected {algorithm}:{wanted}, "
                              f"got {algorithm}:{actual}") from cause


def remove_tree(path: Path | str) -> None:
    """Remove a directory tree an unpacked layer may contain: dirs without permissions, devices, deep nesting.

    Never follows symlinks; iterative so a deep tree cannot exhaust the recursion limit.
    """
    stack: list[tuple[str, bool]] = [(str(path), False)]
    while stack:
        current, emptied = stack.pop()
        if emptied:
            os.rmdir(current)
            continue
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(current)
            continue
        if st.st_mode & 0o700 != 0o700:
            os.chmod(current, 0o700)  # a real directory (lstat above), so chmod cannot be redirected
        stack.append((current, True))
        with os.scandir(current) as entries:
            stack.extend((entry.path, False) for entry in entries)


def _cleanup_after_failure(tmp: Path) -> None:
    try:
        remove_tree(tmp)
    except OSError as e:
        log.error("could not remove temporary layer directory %s: %s", tmp, e)


def _parse_digest(digest: str) -> tuple[str, str]:
    algorithm, sep, hexpart = digest.partition(":")
    if not sep or algorithm not in _DIGEST_HEX_LENGTHS:
        raise errors.InvalidArgument(f"expected diff_id {digest!r}: not an 'algorithm:hex' digest "
                                     f"with algorithm one of {sorted(_DIGEST_HEX_LENGTHS)}")
    if len(hexpart) != _DIGEST_HEX_LENGTHS[algorithm] or any(c not in "0123456789abcdef" for c in hexpart):
        raise errors.InvalidArgument(f"expected diff_id {digest!r}: bad {algorithm} hex value")
    return algorithm, hexpart


def _rename_into_place(tmp: Path, dest: Path, name: str) -> None:
    if os.path.lexists(dest):
        raise errors.AlreadyExists(f"unpacking layer {name}: destination {dest} appeared meanwhile")
    try:
        os.rename(tmp, dest)
        faults.point("layer.renamed")  # in place, not yet recorded in the database
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise errors.AlreadyExists(f"unpacking layer {name}: destination {dest} appeared meanwhile") from e
        raise


def _measure_tree(root: str) -> tuple[int, int]:
    """Apparent regular-file bytes and distinct inodes below `root` (hard links counted once)."""
    size = 0
    inodes = 0
    linked: set[int] = set()
    pending = [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                elif st.st_nlink > 1:
                    if st.st_ino in linked:
                        continue
                    linked.add(st.st_ino)
                inodes += 1
                if stat.S_ISREG(st.st_mode):
                    size += st.st_size
    return size, inodes


# --- the uncompressed stream ---------------------------------------------------------------------------------
#
# Bytes travel in chunks of up to _CHUNK from the source through the decompressor to the tar reader: every
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
        reader = decompressor.stream_reader(_FramingCheckedFile(raw, framing), read_size=_CHUNK,
                                            read_across_frames=True, closefd=False)
        return lambda: reader.read(_CHUNK)
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
            out = self._inflater.decompress(data, _CHUNK)  # bounded: a tiny blob may inflate enormously
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


class _TarInput:
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


class _StrictTarStream(tarfile.TarFile):
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
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            member = None  # a zero block, or the stream ends at a header boundary (accepted like Go's reader)
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"at offset {self.offset}: {e}") from None
        if member is None:
            self._loaded = True
        return member


# --- extraction ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    uid: int
    gid: int
    mode: int
    atime_ns: int
    mtime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _pax_time_ns(text: str) -> int:
    """A PAX decimal time ("1700000000.123456789", maybe negative) in nanoseconds, without float rounding."""
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("+-").partition(".")
    if not (whole or fraction) or not (whole or "0").isdigit() or not (fraction or "0").isdigit():
        raise ValueError(f"bad PAX time {text!r}")
    ns = int(whole or "0") * 1_000_000_000 + int((fraction + "000000000")[:9])
    return -ns if negative else ns


def _meta_of(member: tarfile.TarInfo) -> _Meta:
    pax = member.pax_headers
    mtime_ns = _pax_time_ns(pax["mtime"]) if "mtime" in pax else int(member.mtime) * 1_000_000_000
    atime_ns = _pax_time_ns(pax["atime"]) if "atime" in pax else mtime_ns
    xattrs = {key[len(_PAX_XATTR_PREFIX):]: value.encode("utf-8", "surrogateescape")
              for key, value in pax.items() if key.startswith(_PAX_XATTR_PREFIX)}
    return _Meta(uid=member.uid, gid=member.gid, mode=member.mode & 0o7777, atime_ns=atime_ns,
                 mtime_ns=mtime_ns, xattrs=xattrs)


def _member_parts(name: str) -> tuple[str, ...]:
    """Split a member name into path components, dropping a leading "/" and "." components (as Docker does).

    Any ".." is refused, even one that would stay inside the layer: legitimate layers never need it.
    Raises ValueError, which the extractor reports as a LayerError naming the entry.
    """
    if "\0" in name:
        raise ValueError(f"path {name!r} contains a NUL byte")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError(f"path {name!r} has '..' components, which are refused (could escape the layer)")
    return parts


class _Extractor:
    """Creates the entries of one tar stream below `root`, refusing anything that would leave it."""

    def __init__(self, root: str, name: str) -> None:
        self._root = root
        self._blob = name
        self._preserve_owner = os.geteuid() == 0
        self._known_dirs: set[str] = {""}  # real directories below root; closed under prefixes
        self._pending_dirs: dict[str, _Meta] = {}  # modes and times applied once all children exist
        self._entry = ""

    def extract(self, stream: _TarInput) -> None:
        self._input = stream
        try:
            tar = _StrictTarStream(fileobj=stream, mode="r", encoding="utf-8", errors="surrogateescape")
            while (member := tar.next()) is not None:
                self._entry = member.name
                self._extract_one(tar, member)
        except tarfile.TarError as e:
            where = f"at or after entry {self._entry!r}" if self._entry else "at the first entry"
            raise LayerError(f"layer {self._blob}: malformed tar stream {where}: {e}") from e

    def _extract_one(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        try:
            self._extract_member(tar, member)
        except LayerError:
            raise
        except (ValueError, OverflowError) as e:
            raise self._error(str(e)) from e
        except OSError as e:
            if e.errno in _CONTENT_ERRNOS:
                raise self._error(str(e)) from e
            raise errors.os_failure(f"layer {self._blob}: entry {member.name!r}", e) from e

    def finish(self) -> None:
        """Apply directory modes and times, deepest first, after every child has been written."""
        if "" not in self._pending_dirs:
            os.chmod(self._root, 0o755)
        for rel in sorted(self._pending_dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            meta = self._pending_dirs[rel]
            path = self._path(rel)
            os.chmod(path, meta.mode)
            os.utime(path, ns=(meta.atime_ns, meta.mtime_ns), follow_symlinks=False)

    # --- per member ---

    def _extract_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _member_parts(member.name)
        if not parts:
            if not member.isdir():
                raise self._error("the layer root can only be a directory")
            self._make_dir("", _meta_of(member))
            return
        base = parts[-1]
        if base == _OPAQUE_MARKER:
            self._make_opaque(parts[:-1])
        elif base.startswith(_WHITEOUT_META_PREFIX) or parts[0].startswith(_WHITEOUT_META_PREFIX):
            log.debug("layer %s: ignoring whiteout metadata entry %r", self._blob, member.name)
        elif base.startswith(_WHITEOUT_PREFIX):
            self._make_whiteout(parts[:-1], base[len(_WHITEOUT_PREFIX):])
        elif member.isdir():
            self._ensure_parents(parts)
            self._make_dir("/".join(parts), _meta_of(member))
        elif member.isreg():
            self._make_file(parts, tar, member)
        elif member.issym():
            self._make_symlink(parts, member)
        elif member.islnk():
            self._make_hardlink(parts, member)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._make_node(parts, member)
        else:
            raise self._error(f"unsupported tar entry type {member.type!r}")

    def _make_dir(self, rel: str, meta: _Meta) -> None:
        path = self._path(rel)
        if not self._clear_for(rel, new_is_dir=True):
            os.mkdir(path, 0o700)
        self._chown(path, meta)
        self._set_xattrs(path, meta, xattr_user_ok=True)
        self._known_dirs.add(rel)
        self._pending_dirs[rel] = meta

    def _make_file(self, parts: tuple[str, ...], tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = self._prepare(parts)
        meta = _meta_of(member)
        fd = os.open(self._path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if member.sparse is None:  # the common case: straight from the stream's chunks to the file
                self._input.seek(member.offset_data)
                self._input.copy_to(fd, member.size)
            else:
                source = tar.extractfile(member)
                assert source is not None  # regular members always have a data stream
                _copy_content(source, fd)
            if self._preserve_owner:
                os.fchown(fd, meta.uid, meta.gid)
            os.fchmod(fd, meta.mode)  # after chown: chown clears setuid/setgid
            self._set_xattrs(fd, meta, xattr_user_ok=True)  # after chown: chown clears security.capability
            os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
        finally:
            os.close(fd)

    def _make_symlink(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        if not member.linkname:
            raise self._error("symlink with an empty target")
        rel = self._prepare(parts)
        path = self._path(rel)
        meta = _meta_of(member)
        os.symlink(member.linkname, path)  # the target is stored verbatim and never followed
        self._chown(path, meta)
        self._set_xattrs(path, meta, xattr_user_ok=False)
        os.utime(path, ns=(meta.atime_ns, meta.mtime_ns), follow_symlinks=False)

    def _make_hardlink(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        target_parts = _member_parts(member.linkname)
        if not target_parts:
            raise self._error("hard link to the layer root")
        if target_parts == parts:
            raise self._error("hard link to itself")
        self._ensure_parents(target_parts, must_exist=f"hard link target {member.linkname!r}")
        target = self._path("/".join(target_parts))
        try:
            target_st = os.lstat(target)
        except FileNotFoundError:
            raise self._error(f"hard link target {member.linkname!r} was not extracted earlier in this "
                              "layer") from None
        if stat.S_ISDIR(target_st.st_mode):
            raise self._error(f"hard link target {member.linkname!r} is a directory")
        rel = self._prepare(parts)
        try:
            # The link shares its target's inode, so it keeps the target's owner, mode, times and xattrs;
            # re-applying the header's would e.g. clear the target's file capabilities with the chown.
            os.link(target, self._path(rel), follow_symlinks=False)
        except FileNotFoundError:  # the target lived inside the entry this link replaced
            raise self._error(f"hard link target {member.linkname!r} was removed by this entry") from None

    def _make_node(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        rel = self._prepare(parts)
        path = self._path(rel)
        meta = _meta_of(member)
        if member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        self._chown(path, meta)
        os.chmod(path, meta.mode)  # path is the node just created, not a symlink
        self._set_xattrs(path, meta, xattr_user_ok=False)
        os.utime(path, ns=(meta.atime_ns, meta.mtime_ns), follow_symlinks=False)

    def _make_whiteout(self, parent: tuple[str, ...], name: str) -> None:
        if name in ("", ".", ".."):
            raise self._error("whiteout without a valid name to hide")
        rel = self._prepare((*parent, name))
        os.mknod(self._path(rel), stat.S_IFCHR, os.makedev(0, 0))  # overlayfs's whiteout

    def _make_opaque(self, dir_parts: tuple[str, ...]) -> None:
        if dir_parts:
            self._ensure_parents(dir_parts)
            rel = "/".join(dir_parts)
            if not self._clear_for(rel, new_is_dir=True):
                self._make_implicit_dir(rel)
        else:
            rel = ""
        os.setxattr(self._path(rel), _OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)

    # --- paths and safety ---

    def _path(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def _error(self, why: str) -> LayerError:
        return LayerError(f"layer {self._blob}: entry {self._entry!r}: {why}")

    def _prepare(self, parts: tuple[str, ...]) -> str:
        """Make `parts` creatable for a non-directory: real parent directories, nothing in the way."""
        self._ensure_parents(parts)
        rel = "/".join(parts)
        self._clear_for(rel, new_is_dir=False)
        return rel

    def _ensure_parents(self, parts: tuple[str, ...], must_exist: str = "") -> None:
        """Every parent of `parts` must be a real directory below root. Missing ones are created (0755), or,
        when `must_exist` names what needs them (a hard link target), refused."""
        if "/".join(parts[:-1]) in self._known_dirs:
            return
        what = f"{must_exist}: path component" if must_exist else "parent"
        for depth in range(1, len(parts)):
            rel = "/".join(parts[:depth])
            if rel in self._known_dirs:
                continue
            try:
                st = os.lstat(self._path(rel))
            except FileNotFoundError:
                if must_exist:
                    raise self._error(f"{must_exist}: {rel!r} does not exist in this layer") from None
                self._make_implicit_dir(rel)
                continue
            self._require_real_dir(rel, st, what)
            self._known_dirs.add(rel)

    def _require_real_dir(self, rel: str, st: os.stat_result, what: str) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise self._error(f"{what} {rel!r} is a symlink; refusing to write through it")
        if not stat.S_ISDIR(st.st_mode):
            raise self._error(f"{what} {rel!r} is not a directory")

    def _make_implicit_dir(self, rel: str) -> None:
        path = self._path(rel)
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # independent of the process umask
        self._known_dirs.add(rel)

    def _clear_for(self, rel: str, new_is_dir: bool) -> bool:
        """Remove what an earlier entry put at `rel`, unless a directory meets a directory (merged).

        Returns True when an existing directory is kept.
        """
        path = self._path(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if new_is_dir:
                return True
            if not rel:
                raise self._error("cannot replace the layer root")
            self._forget_dirs_under(rel)
            remove_tree(path)
            return False
        os.unlink(path)
        return False

    def _forget_dirs_under(self, rel: str) -> None:
        prefix = rel + "/"
        self._known_dirs = {d for d in self._known_dirs if d != rel and not d.startswith(prefix)}
        for d in [d for d in self._pending_dirs if d == rel or d.startswith(prefix)]:
            del self._pending_dirs[d]

    # --- metadata ---

    def _chown(self, path: str, meta: _Meta) -> None:
        if self._preserve_owner:
            os.chown(path, meta.uid, meta.gid, follow_symlinks=False)

    def _set_xattrs(self, target: str | int, meta: _Meta, xattr_user_ok: bool) -> None:
        follow = {} if isinstance(target, int) else {"follow_symlinks": False}
        for name, value in meta.xattrs.items():
            if name.startswith(_OVERLAY_XATTR_PREFIX):
                # The layer must not forge overlayfs metadata (opaque, redirect, metacopy): only whiteouts do.
                log.warning("layer %s: entry %r: dropping xattr %s", self._blob, self._entry, name)
                continue
            try:
                os.setxattr(target, name, value, **follow)
            except OSError as e:
                unsupported = e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
                # Linux allows user.* xattrs only on regular files and directories.
                user_on_special = e.errno == errno.EPERM and name.startswith("user.") and not xattr_user_ok
                if unsupported or user_on_special:
                    log.warning("layer %s: entry %r: cannot set xattr %s: %s", self._blob, self._entry, name, e)
                    continue
                if e.errno in _CONTENT_ERRNOS:
                    raise self._error(f"xattr {name}: {e}") from e
                raise


def _copy_content(source: BinaryIO, fd: int) -> None:
    """Copy a member's data; all-zero chunks become holes (sparse files stay sparse)."""
    total = 0
    ends_in_hole = False
    while chunk := source.read(_CHUNK):
        total += len(chunk)
        if chunk[0] == 0 and chunk[-1] == 0 and chunk.count(0) == len(chunk):
            os.lseek(fd, len(chunk), os.SEEK_CUR)
            ends_in_hole = True
            continue
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        ends_in_hole = False
    if ends_in_hole:
        os.ftruncate(fd, total)
