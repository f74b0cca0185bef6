"""Layer unpacking: one OCI/Docker layer blob (a file, or the chunks of a download in progress) becomes one
directory in overlayfs form.

Owns the unpacking as a whole: a temporary sibling directory renamed into place only when the blob ended, the
uncompressed digest (diff_id) matched and every entry was created; nothing left behind on failure; the size and
inode count of the result. The bytes-to-tar plumbing is in layerstream.py, the rules for each entry in
layerentries.py.

Everything here is blocking; the daemon runs `unpack_layer` / `unpack_stream` in a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cripy import errors, faults
from cripy.images.layerentries import Extractor, LayerError, remove_tree
from cripy.images.layerstream import ChunkSource, FileChunks, TarInput, layer_tar_input

log = logging.getLogger(__name__)

_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class UnpackedLayer:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream (including bytes after the end-of-archive)
    size: int  # apparent bytes of regular-file content in the layer directory (each inode counted once)
    inodes: int  # distinct inodes below the layer directory (hard links count once, the directory itself not)


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
        return _unpack_checked(FileChunks(raw), dest, media_type, expected, str(blob))


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
    reader = layer_tar_input(source, media_type, algorithms, name)
    extractor = Extractor(str(tmp), name)
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


def _check_digest(reader: TarInput, expected: tuple[str, str], name: str,
                  cause: BaseException | None = None) -> None:
    algorithm, wanted = expected
    actual = reader.hexdigest(algorithm)
    if actual != wanted:
        raise errors.DataLoss(f"layer {name}: uncompressed digest mismatch: expected {algorithm}:{wanted}, "
                              f"got {algorithm}:{actual}") from cause



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
