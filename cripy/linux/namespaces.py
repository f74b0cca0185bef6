"""Linux namespaces: creating and pinning pod namespaces (user, net, ipc, uts), entering them, identifying them.

A pinned namespace is the namespace's nsfs file bind-mounted onto a regular file (pin_dir/<kind>), so it outlives
every process and can be handed to runc and CNI plugins by path. Creation uses util-linux unshare(1), which does the
unshare + bind in a short-lived child, so the daemon's own threads never change namespace for that.

A pod's user namespace is created in the same unshare(2) as its other namespaces, so the kernel makes it their
owner: root in the pod then holds CAP_NET_ADMIN, CAP_SYS_ADMIN... over the pod's network, IPC and UTS namespaces
(runc can mount sysfs and mqueue there) and over nothing of the node's. unshare(1) can only write id maps through
newuidmap(1), which needs /etc/subuid entries; instead the shell it starts waits on its stdin until the daemon has
written the maps into /proc/<pid>/uid_map and gid_map itself (root may write any mapping into a child namespace).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cripy.errors import Internal, InvalidArgument
from cripy.linux import mount as mnt
from cripy.linux.idmap import IDRange, map_text

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWCGROUP = 0x02000000

NAMESPACE_FLAGS: dict[str, int] = {
    "net": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "mnt": CLONE_NEWNS,
    "pid": CLONE_NEWPID,
    "user": CLONE_NEWUSER,
    "cgroup": CLONE_NEWCGROUP,
}

PINNABLE_KINDS = ("user", "net", "ipc", "uts")

# Sysctls whose state belongs to one of the namespaces a pod owns (the set Kubernetes calls namespaced).
_NAMESPACED_SYSCTL_PREFIXES: dict[str, str] = {
    "net.": "net",
    "kernel.shm": "ipc",
    "kernel.msg": "ipc",
    "kernel.sem": "ipc",
    "fs.mqueue.": "ipc",
}

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
_UNSHARE_TIMEOUT_S = 30.0
# Letters, digits, '_', '-' and '.': the name becomes a path inside the setup script, so nothing a shell reads.
_SYSCTL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
# The setup script's exit status when the kernel refuses a sysctl (no such knob, a value out of range).
_SYSCTL_REFUSED = 65

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


@dataclass(frozen=True)
class UserMaps:
    """The id maps of a user namespace (uid_map, gid_map)."""

    uids: tuple[IDRange, ...]
    gids: tuple[IDRange, ...]


def sysctl_namespace(name: str) -> str:
    """The namespace kind ("net" or "ipc") a sysctl belongs to; InvalidArgument when it is not namespaced."""
    if not _SYSCTL_NAME_RE.match(name) or ".." in name or name.endswith("."):
        raise InvalidArgument(f"sysctl {name[:100]!r} is not a valid dotted sysctl name")
    for prefix, kind in _NAMESPACED_SYSCTL_PREFIXES.items():
        if name.startswith(prefix):
            return kind
    raise InvalidArgument(f"sysctl {name!r} is not namespaced (allowed: net.*, kernel.shm*, kernel.msg*, "
                          "kernel.sem, fs.mqueue.*) and cannot be set for a pod")


def validate_sysctls(sysctls: Mapping[str, str], kinds: Sequence[str]) -> None:
    for name, value in sysctls.items():
        kind = sysctl_namespace(name)
        if kind not in kinds:
            raise InvalidArgument(f"sysctl {name!r} needs a private {kind} namespace, which this pod does not have")
        if "\n" in value or "\0" in value:
            raise InvalidArgument(f"sysctl {name!r} has a value with a newline or NUL byte")


def _validate_hostname(hostname: str) -> None:
    if not _HOSTNAME_RE.match(hostname):
        raise InvalidArgument(f"hostname {hostname!r} is not a valid host name "
                              "(1-63 letters, digits, '.', '-', starting with a letter or digit)")


def setup_script(hostname: str | None, sysctls: Mapping[str, str], *, sethostname: bool = False) -> tuple[str, list[str]]:
    """A /bin/sh script (and its positional arguments) that sets the hostname and sysctls of the namespaces it
    runs in. Values travel as arguments, never spliced into the script text. `sethostname`: through hostname(1)
    (the sethostname(2) call, allowed to root of the namespace's owner) rather than /proc/sys/kernel/hostname,
    which only the node's root may write."""
    lines = ["set -e"]
    args: list[str] = []
    if hostname is not None:
        args.append(hostname)
        if sethostname:
            lines.append(f'hostname "${{{len(args)}}}"')  # validated: never starts with '-'
        else:
            lines.append(f'printf "%s" "${{{len(args)}}}" > /proc/sys/kernel/hostname')
    for name, value in sysctls.items():
        args.append(value)
        # name was validated (letters, digits, '_', '-', '.'): safe to turn into a path inside the script
        path = f"/proc/sys/{name.replace('.', '/')}"
        refused = f'{{ echo "sysctl {name}: the kernel refused it (no such sysctl, or a value out of range)" >&2; ' \
                  f"exit {_SYSCTL_REFUSED}; }}"
        lines.append(f"[ -f {path} ] || {refused}")
        lines.append(f'printf "%s" "${{{len(args)}}}" 2>/dev/null > {path} || {refused}')
    return "\n".join(lines), args


def pin_namespaces(
    kinds: Sequence[str],
    pin_dir: Path,
    hostname: str | None = None,
    sysctls: Mapping[str, str] | None = None,
    user_maps: UserMaps | None = None,
) -> dict[str, Path]:
    """Create new namespaces of the given kinds, pin them at pin_dir/<kind>, set hostname and sysctls in them.

    A "user" kind needs `user_maps`; it owns the other namespaces created with it. Returns kind -> pinned path. On
    failure nothing stays behind (mounts and files undone) and Internal is raised with unshare's or the setup
    script's error output.
    """
    kinds = list(dict.fromkeys(kinds))
    for kind in kinds:
        if kind not in PINNABLE_KINDS:
            raise InvalidArgument(f"namespace kind {kind!r} cannot be pinned (only {', '.join(PINNABLE_KINDS)})")
    if ("user" in kinds) != (user_maps is not None):
        raise InvalidArgument("a user namespace needs id maps, and id maps need a user namespace")
    sysctls = dict(sysctls or {})
    validate_sysctls(sysctls, kinds)
    if hostname is not None:
        if "uts" not in kinds:
            raise InvalidArgument("a hostname can only be set in a private uts namespace")
        _validate_hostname(hostname)
    if not kinds:
        return {}

    pin_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: pin_dir / kind for kind in kinds}
    created: list[Path] = []
    try:
        for path in paths.values():
            with open(path, "x"):
                pass
            created.append(path)
        script, args = setup_script(hostname, sysctls, sethostname=user_maps is not None)
        if user_maps is None:
            command = ["unshare", *[f"--{kind}={path}" for kind, path in paths.items()], "--", "/bin/sh", "-c",
                       script, "cripy-ns-setup", *args]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=_UNSHARE_TIMEOUT_S)
            returncode, output = proc.returncode, proc.stderr.strip() or proc.stdout.strip()
        else:
            returncode, output = _create_with_maps(paths, user_maps)
            if returncode == 0 and (hostname is not None or sysctls):
                # The setup runs as root of the new user namespace (nsenter sets uid and gid 0 there): the IPC
                # sysctls are writable by that owner only, not even by the node's root.
                joined = [f"--{kind}={path}" for kind, path in paths.items()]
                proc = subprocess.run(["nsenter", *joined, "--", "/bin/sh", "-c", script, "cripy-ns-setup", *args],
                                      capture_output=True, text=True, timeout=_UNSHARE_TIMEOUT_S)
                returncode, output = proc.returncode, proc.stderr.strip() or proc.stdout.strip()
        if returncode == _SYSCTL_REFUSED:
            raise InvalidArgument(output[:500])
        if returncode != 0:
            raise Internal(f"creating {'/'.join(kinds)} namespaces in {pin_dir} failed (exit {returncode}): "
                           f"{output}")
        for kind, path in paths.items():
            if not mnt.is_mountpoint(path):
                raise Internal(f"unshare did not pin the {kind} namespace at {path}")
    except FileExistsError as exc:
        _undo_pins(created)
        raise Internal(f"cannot pin namespaces in {pin_dir}: {exc.filename} already exists") from exc
    except subprocess.TimeoutExpired as exc:
        _undo_pins(created)
        raise Internal(f"creating namespaces in {pin_dir} timed out after {_UNSHARE_TIMEOUT_S}s") from exc
    except BaseException:
        _undo_pins(created)
        raise
    return paths


def _create_with_maps(paths: Mapping[str, Path], user_maps: UserMaps) -> tuple[int, str]:
    """Create namespaces of the kinds in `paths` (user among them, owning the others) with unshare(1); once its
    shell waits, write `user_maps` into the user namespace and pin each namespace at its path.

    The daemon binds the namespaces itself: unshare(1) binds them from a helper child that, here, is refused
    (EPERM) the namespace files of a parent that has entered a new user namespace.
    """
    deadline = time.monotonic() + _UNSHARE_TIMEOUT_S
    command = ["unshare", *[f"--{kind}" for kind in paths], "--", "/bin/sh", "-c", "echo ready; read -r _; exit 0"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        if _read_line(proc.stdout.fileno(), deadline) == b"ready\n":
            Path(f"/proc/{proc.pid}/uid_map").write_text(map_text(user_maps.uids))
            Path(f"/proc/{proc.pid}/gid_map").write_text(map_text(user_maps.gids))
            for kind, path in paths.items():
                mnt.mount(f"/proc/{proc.pid}/ns/{kind}", path, flags=mnt.MS_BIND)
        proc.stdin.close()
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return proc.returncode, proc.stderr.read().decode(errors="replace").strip()  # a few lines: they fit the pipe
    except OSError as exc:
        raise Internal(f"cannot map and pin the namespaces of a new user namespace: {exc}") from exc
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


@contextmanager
def scratch_user_namespace(user_maps: UserMaps) -> Iterator[Path]:
    """A short-lived user namespace with `user_maps`, for checks (can this node id-map a mount?): yields its
    /proc/<pid>/ns/user path, held by a waiting shell that is ended on the way out."""
    deadline = time.monotonic() + _UNSHARE_TIMEOUT_S
    proc = subprocess.Popen(["unshare", "--user", "--", "/bin/sh", "-c", "echo ready; read -r _; exit 0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if _read_line(proc.stdout.fileno(), deadline) != b"ready\n":
            raise Internal(f"unshare --user failed: {proc.stderr.read().decode(errors='replace').strip()}"
                           if proc.stderr else "unshare --user failed")
        Path(f"/proc/{proc.pid}/uid_map").write_text(map_text(user_maps.uids))
        Path(f"/proc/{proc.pid}/gid_map").write_text(map_text(user_maps.gids))
        yield Path(f"/proc/{proc.pid}/ns/user")
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_line(fd: int, deadline: float) -> bytes:
    """One line from `fd` (b"" at its end); TimeoutExpired after `deadline`."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise subprocess.TimeoutExpired("unshare", _UNSHARE_TIMEOUT_S)
        chunk = os.read(fd, 64)
        if not chunk:
            break
        line += chunk
    return line


def _undo_pins(paths: Sequence[Path]) -> None:
    for path in paths:
        _unpin_file(path)


def _unpin_file(path: Path) -> None:
    # A file can carry several stacked bind mounts if something went wrong earlier; peel them all.
    for _ in range(8):
        try:
            mnt.umount(path, detach=True)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                break
            raise
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def unpin_namespaces(pin_dir: Path) -> None:
    """Release every namespace pinned in pin_dir (lazy unmount, then remove the file). Idempotent."""
    for kind in PINNABLE_KINDS:
        _unpin_file(pin_dir / kind)


def setns(path: Path, kind: str) -> None:
    """Move the calling thread into the namespace at path (kind checked by the kernel)."""
    try:
        flag = NAMESPACE_FLAGS[kind]
    except KeyError:
        raise InvalidArgument(f"unknown namespace kind {kind!r}") from None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns_fd(fd, flag, path)
    finally:
        os.close(fd)


def _setns_fd(fd: int, flag: int, path: Path | str) -> None:
    if _libc.setns(fd, flag) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {os.fspath(path)}: {os.strerror(err)}", os.fspath(path))


@contextmanager
def in_netns(path: Path) -> Iterator[None]:
    """Run the body with the calling thread inside the network namespace at path, then return to the original.

    Only valid in a dedicated thread (e.g. a worker of a thread pool used for nothing else while the body runs,
    or a threading.Thread of its own): the namespace is per thread, and asyncio or other code sharing the thread
    would silently run in the pod's namespace. Sockets created in the body stay in the pod's namespace after it.
    """
    if threading.current_thread() is threading.main_thread():
        # The main thread runs the event loop in the daemon; it must never wander into a pod netns.
        raise RuntimeError("in_netns must not be used in the main thread")
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(path, "net")
        try:
            yield
        finally:
            try:
                _setns_fd(original, CLONE_NEWNET, "/proc/thread-self/ns/net (original)")
            except OSError as exc:
                # The thread is stuck in the pod namespace; continuing would be wrong everywhere.
                raise Internal(f"cannot return to the original network namespace: {exc}") from exc
    finally:
        os.close(original)


def namespace_inode(path: Path | str) -> int:
    """The inode number identifying a namespace (what /proc/<pid>/ns/<kind> links show as kind:[inode])."""
    return os.stat(path).st_ino


def is_namespace_file(path: Path | str) -> bool:
    """True when path is a live namespace handle (an nsfs file, e.g. a pinned namespace), not a plain file."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False
