"""The user a container process runs as: uid, gid, supplementary gids and HOME.

Follows kubelet / CRI-O semantics: run_as_user wins, then run_as_username, else the image's User
("name", "uid", "name:group", "uid:gid", "uid:groupname", ...). Names are looked up in the container's
own /etc/passwd and /etc/group, read through a resolver that keeps every symlink inside the rootfs
(an absolute link is taken relative to the rootfs root, ".." never climbs above it), so an image cannot
make the daemon read host files. Blocking (file reads): call from a thread in async code.

Supplementary groups follow the SupplementalGroupsPolicy: Merge (the default) adds the groups the image's
/etc/group lists the user in to the requested ones (kubelet passes the pod's supplemental groups and fsGroup with
each container); Strict takes the requested ones alone.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cripy.containers.model import GroupsPolicy
from cripy.errors import InvalidArgument

_MAX_SYMLINKS = 40
_MAX_ID = 2**32 - 2


@dataclass
class ProcessUser:
    """Credentials of a container process (process.user in the OCI spec) plus its HOME.

    additional_gids is every group the process holds: the primary gid first, then the supplementary ones.
    """

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"
    username: str = ""


@dataclass
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass
class GroupEntry:
    name: str
    gid: int
    members: list[str]


def resolve_in_root(root: Path, path: str) -> Path:
    """Host path of `path` as seen inside `root`, following symlinks without ever leaving `root`.

    The last component may be missing (the result then names a non-existent file inside root).
    """
    root = Path(os.path.abspath(root))
    pending = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {path} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = [p for p in target.split("/") if p] + pending
    return root.joinpath(*resolved)


def read_file_in_root(root: Path, path: str) -> str | None:
    """Text of `path` inside `root` (symlinks kept inside root), or None when it does not exist."""
    try:
        host_path = resolve_in_root(root, path)
        # O_NOFOLLOW: resolve_in_root already followed every link; a link appearing now is a race, not a file.
        fd = os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path} of the image (rootfs {root}): {exc.strerror or exc}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
        return f.read()


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of an /etc/passwd file; malformed lines are skipped like libc does."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or not fields[0] or line.startswith("#"):
            continue
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(name=fields[0], uid=uid, gid=gid, home=fields[5]))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of an /etc/group file; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[0] or line.startswith("#"):
            continue
        gid = _parse_id(fields[2])
        if gid is None:
            continue
        members = [m.strip() for m in fields[3].split(",") if m.strip()]
        entries.append(GroupEntry(name=fields[0], gid=gid, members=members))
    return entries


def _parse_id(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def resolve_user(
    rootfs: Path,
    *,
    run_as_user: int | None,
    run_as_group: int | None,
    run_as_username: str,
    image_user: str,
    supplemental_groups: list[int],
    supplemental_groups_policy: GroupsPolicy = "merge",
) -> ProcessUser:
    """Decide the process credentials of a container from its security context and its image's User."""
    if run_as_group is not None and run_as_user is None and not run_as_username:
        raise InvalidArgument("run_as_group is set but neither run_as_user nor run_as_username is")
    users = _Accounts(rootfs)
    if run_as_user is not None:
        user_part, group_part = str(run_as_user), None
    elif run_as_username:
        user_part, group_part = run_as_username, None
    else:
        user_part, group_part = _split_image_user(image_user)

    entry = users.find_user(user_part)
    if entry is None and not user_part.isdigit():
        raise InvalidArgument(
            f"user {user_part!r} not found in /etc/passwd of the image (rootfs {rootfs})"
            if users.has_passwd
            else f"user {user_part!r} cannot be resolved: the image has no /etc/passwd (rootfs {rootfs})"
        )
    uid = entry.uid if entry else _checked_id(user_part, "user")
    if run_as_group is not None:
        gid = run_as_group
    elif group_part:
        gid = users.find_group_id(group_part)
    else:
        gid = entry.gid if entry else 0

    # Merge: the groups the image's /etc/group gives the user, then the requested ones. Strict: the requested ones
    # alone, whatever the image says. The primary gid leads the list, as containerd and CRI-O set it: the process
    # keeps it as a supplementary group, and ContainerStatus reports the list as the process holds it.
    groups = [gid]
    if entry is not None and supplemental_groups_policy == "merge":
        groups.extend(g.gid for g in users.groups() if entry.name in g.members)
    groups.extend(supplemental_groups)
    return ProcessUser(
        uid=uid,
        gid=gid,
        additional_gids=_dedupe(groups),
        home=(entry.home if entry and entry.home else "/"),
        username=entry.name if entry else "",
    )


def _split_image_user(image_user: str) -> tuple[str, str | None]:
    if not image_user:
        return "0", None
    user_part, sep, group_part = image_user.partition(":")
    if not user_part or (sep and not group_part):
        raise InvalidArgument(f"image user {image_user!r} is malformed: expected user[:group]")
    return user_part, group_part or None


def _checked_id(text: str, what: str) -> int:
    value = int(text)
    if value > _MAX_ID:
        raise InvalidArgument(f"{what} id {value} is out of range [0, {_MAX_ID}]")
    return value


def _dedupe(values: list[int]) -> list[int]:
    seen: set[int] = set()
    result = []
    for value in values:
        if value not in seen:
            seen.add(value)
            result.append(value)
    return result


class _Accounts:
    """Lazy view of the passwd and group databases of one rootfs."""

    def __init__(self, rootfs: Path) -> None:
        self._rootfs = rootfs
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None
        self.has_passwd = False

    def passwd(self) -> list[PasswdEntry]:
        if self._passwd is None:
            text = read_file_in_root(self._rootfs, "/etc/passwd")
            self.has_passwd = text is not None
            self._passwd = parse_passwd(text or "")
        return self._passwd

    def groups(self) -> list[GroupEntry]:
        if self._group is None:
            self._group = parse_group(read_file_in_root(self._rootfs, "/etc/group") or "")
        return self._group

    def find_user(self, user: str) -> PasswdEntry | None:
        """Entry by uid when `user` is numeric (first match wins), else by name."""
        numeric = user.isdigit()
        for entry in self.passwd():
            if (numeric and entry.uid == int(user)) or (not numeric and entry.name == user):
                return entry
        return None

    def find_group_id(self, group: str) -> int:
        if group.isdigit():
            return _checked_id(group, "group")
        for entry in self.groups():
            if entry.name == group:
                return entry.gid
        raise InvalidArgument(f"group {group!r} not found in /etc/group of the image (rootfs {self._rootfs})")
