"""conmon's interface, as pure functions: its command line, its sync-pipe messages, its control fifo.

Facts about conmon 2.1.6 this module encodes (checked against conmon's source and by experiment):

* conmon forks once and the parent exits (writing the monitor's pid to ``--conmon-pidfile``), so the caller
  reaps its direct child right away and is never the parent of the monitor or of the container.
* ``_OCI_SYNCPIPE=<fd>``: with ``--api-version 1`` conmon writes one JSON line ``{"data": N}`` per event, N being
  the container pid once ``runtime create`` succeeded, or ``{"data": -1, "message": "<runtime stderr>"}`` when it
  failed. For ``--exec`` a second line carries the exit code. Old conmons escape only a few characters in
  ``message``, so the parser accepts raw control characters.
* ``_OCI_STARTPIPE=<fd>``: conmon blocks reading it before forking, so the caller can move it into a cgroup.
* The control fifo ``<bundle>/ctl`` takes lines ``"<type> <height> <width>\\n"``: type 1 resizes the terminal,
  type 2 reopens the log files (height/width are still required, 0 0 is fine).
* Without ``--full-attach`` conmon symlinks ``<socket-dir>/<cuuid>`` to the bundle and serves the attach socket
  as ``<socket-dir>/<cuuid>/attach``, a path that must fit ``sun_path`` (108 bytes). The cuuid cripy gives is the
  first half of a container's id (128 random bits still), so that a run root of up to 54 characters fits
  (a pod's infra id, 38 characters, is the longest); the
  monitors of containers started by a cripy that gave the whole id keep theirs (`monitor_dir` finds either).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

WIN_RESIZE_EVENT = 1
REOPEN_LOGS_EVENT = 2
MAX_WINDOW_DIMENSION = 1000  # conmon rejects larger terminal sizes

SYNC_PIPE_ENV = "_OCI_SYNCPIPE"
START_PIPE_ENV = "_OCI_STARTPIPE"

# Unix socket paths must fit struct sockaddr_un.sun_path (108 bytes with the terminating NUL).
SUN_PATH_MAX = 107
# The longest cuuid cripy gives conmon: a pod's infra id, "<32 hex>-infra" (containers' ids are halved to 32).
LONGEST_MONITOR_ID = 32 + len("-infra")
# The longest socket directory whose attach sockets, <dir>/<cuuid>/attach, all fit.
SOCKET_DIR_MAX = SUN_PATH_MAX - len("/") - LONGEST_MONITOR_ID - len("/attach")


@dataclass(frozen=True)
class ConmonCreateArgs:
    """Everything conmon needs to create one container (all paths absolute)."""
    conmon_path: str
    runtime_path: str
    runtime_root: Path
    ctr_id: str
    bundle: Path
    container_pidfile: Path
    conmon_pidfile: Path
    log_path: Path
    exits_dir: Path
    persist_dir: Path
    socket_dir: Path
    name: str = ""
    log_level: str = "info"
    terminal: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_size_max: int = -1
    syslog: bool = True
    runtime_args: tuple[str, ...] = ()


def build_create_argv(a: ConmonCreateArgs) -> list[str]:
    """conmon's argv for ``runtime create`` of a container."""
    argv = [
        a.conmon_path,
        "--api-version", "1",
        "--cid", a.ctr_id,
        "--cuuid", monitor_id(a.ctr_id),
        "--name", a.name or a.ctr_id,
        "--runtime", a.runtime_path,
        "--bundle", str(a.bundle),
        "--container-pidfile", str(a.container_pidfile),
        "--conmon-pidfile", str(a.conmon_pidfile),
        "--log-path", f"k8s-file:{a.log_path}",
        "--exit-dir", str(a.exits_dir),
        "--persist-dir", str(a.persist_dir),
        "--socket-dir-path", str(a.socket_dir),
        "--runtime-arg", f"--root={a.runtime_root}",
        *[part for arg in a.runtime_args for part in ("--runtime-arg", arg)],
        "--log-level", a.log_level,
    ]
    if a.syslog:
        argv.append("--syslog")
    if a.terminal:
        argv.append("--terminal")
    if a.stdin:
        argv.append("--stdin")
        if not a.stdin_once:
            argv.append("--leave-stdin-open")
    if a.log_size_max > 0:
        argv += ["--log-size-max", str(a.log_size_max)]
    return argv


def monitor_id(ctr_id: str) -> str:
    """The cuuid conmon gets: half of a 64-hex container id (see the module docstring), other ids as they are."""
    return ctr_id[:32] if len(ctr_id) == 64 else ctr_id


def monitor_dir(socket_dir: Path, ctr_id: str) -> Path:
    """conmon's symlink to the container's bundle (the whole id for monitors started by older cripy versions)."""
    short = socket_dir / monitor_id(ctr_id)
    if not short.is_symlink() and (socket_dir / ctr_id).is_symlink():
        return socket_dir / ctr_id
    return short


def attach_socket_path(socket_dir: Path, ctr_id: str) -> Path:
    """Where a client connects to attach."""
    return monitor_dir(socket_dir, ctr_id) / "attach"


def ctl_fifo_path(socket_dir: Path, ctr_id: str) -> Path:
    return monitor_dir(socket_dir, ctr_id) / "ctl"


def monitor_argv(pid: int) -> list[bytes] | None:
    """The command line of process `pid` if it is a conmon (its arguments name what it monitors), else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return argv if argv and b"conmon" in os.path.basename(argv[0]) else None


def is_monitor_of(pid: int, ctr_id: str) -> bool:
    """Whether `pid` is a conmon monitoring this container (a guard against pid reuse)."""
    argv = monitor_argv(pid) if pid > 0 else None
    return argv is not None and ctr_id.encode() in argv


def check_socket_path_fits(socket_dir: Path, ctr_id: str) -> str | None:
    """An explanation when the attach socket path would not fit ``sun_path``, else None."""
    path = str(socket_dir / monitor_id(ctr_id) / "attach")
    if len(path.encode()) > SUN_PATH_MAX:
        return f"attach socket path {path} is {len(path.encode())} bytes, more than the {SUN_PATH_MAX} a unix " \
               f"socket address holds; use a shorter socket directory"
    return None


@dataclass(frozen=True)
class SyncMessage:
    """One line conmon wrote on the sync pipe."""
    data: int
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.data < 0


class SyncProtocolError(ValueError):
    """conmon wrote something on the sync pipe that is not a sync message."""


def parse_sync_message(line: bytes) -> SyncMessage:
    """Decode ``{"data": N[, "message": "..."]}`` (also the pre-api-version-1 keys ``pid``/``exit_code``)."""
    text = line.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text, strict=False)
    except json.JSONDecodeError as err:
        raise SyncProtocolError(f"conmon sent a malformed sync message {text[:200]!r}: {err}") from None
    if not isinstance(obj, dict):
        raise SyncProtocolError(f"conmon sent a sync message that is not an object: {text[:200]!r}")
    for key in ("data", "pid", "exit_code"):
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            message = obj.get("message", "")
            return SyncMessage(value, message if isinstance(message, str) else str(message))
    raise SyncProtocolError(f"conmon sent a sync message without a number: {text[:200]!r}")


_LOGFMT_MSG = re.compile(r'(?:^|\s)msg="((?:[^"\\]|\\.)*)"')


def runtime_error_text(stderr: str) -> str:
    """The human part of runc's error output: its logfmt ``msg="..."`` fields, else the text itself."""
    messages = []
    for match in _LOGFMT_MSG.finditer(stderr):
        try:
            messages.append(json.loads(f'"{match.group(1)}"'))
        except json.JSONDecodeError:
            messages.append(match.group(1))
    text = "; ".join(messages) if messages else stderr
    return text.strip()


def ctl_message(event: int, height: int = 0, width: int = 0) -> bytes:
    if not (0 <= height <= MAX_WINDOW_DIMENSION and 0 <= width <= MAX_WINDOW_DIMENSION):
        raise ValueError(f"window size {height}x{width} is outside 0..{MAX_WINDOW_DIMENSION}")
    return f"{event} {height} {width}\n".encode()


def reopen_log_message() -> bytes:
    return ctl_message(REOPEN_LOGS_EVENT)


def resize_message(height: int, width: int) -> bytes:
    return ctl_message(WIN_RESIZE_EVENT, height, width)
