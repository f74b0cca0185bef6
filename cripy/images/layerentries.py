"""The rules for a layer's tar entries, and their creation below the layer directory in overlayfs form.

Owns what an entry may be (directories, files, links, devices, fifos; nothing else), path confinement (no '..',
nothing written outside the layer or through a symlink, hard links only to entries of the same layer), the
translation of OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) into overlayfs whiteouts (char device 0:0, xattr
`trusted.overlay.opaque=y`), and ownership, modes, times and xattrs (never forged overlayfs ones).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from cripy import errors
from cripy.images.layerstream import CHUNK_SIZE, StrictTarStream, TarInput

log = logging.getLogger(__name__)

_WHITEOUT_PREFIX = ".wh."
_WHITEOUT_META_PREFIX = ".wh..wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_OVERLAY_XATTR_PREFIX = "trusted.overlay."
_PAX_XATTR_PREFIX = "SCHILY.xattr."

# errnos that a layer's own content can provoke (over-long names, values the kernel rejects, ...).
_CONTENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.ERANGE, errno.E2BIG, errno.ELOOP, errno.ENOTDIR,
                   errno.EEXIST}


class LayerError(errors.InvalidArgument):
    """The layer's content is malformed or tries something unsafe (escaping the layer, writing via a symlink)."""


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


class Extractor:
    """Creates the entries of one tar stream below `root`, refusing anything that would leave it."""

    def __init__(self, root: str, name: str) -> None:
        self._root = root
        self._blob = name
        self._preserve_owner = os.geteuid() == 0
        self._known_dirs: set[str] = {""}  # real directories below root; closed under prefixes
        self._pending_dirs: dict[str, _Meta] = {}  # modes and times applied once all children exist
        self._entry = ""

    def extract(self, stream: TarInput) -> None:
        self._input = stream
        try:
            tar = StrictTarStream(fileobj=cast(BinaryIO, stream), mode="r", encoding="utf-8", errors="surrogateescape")
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
                _copy_content(cast(BinaryIO, source), fd)
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
    while chunk := source.read(CHUNK_SIZE):
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

