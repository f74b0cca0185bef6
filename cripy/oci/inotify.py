"""A minimal inotify binding (ctypes) that plugs into an asyncio loop with ``loop.add_reader``.

Owns: the inotify file descriptor, watch registration, and decoding of the kernel's event records. Event
decoding (:func:`parse_events`) is pure so it can be tested without a kernel.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Event bits from <sys/inotify.h>.
IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_HEADER = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # empty for events on the watched object itself


def parse_events(buf: bytes) -> list[InotifyEvent]:
    """Decode a buffer returned by read(2) on an inotify fd into events (name padding NULs stripped)."""
    events: list[InotifyEvent] = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, cookie, name_len = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        if offset + name_len > len(buf):
            raise ValueError(f"truncated inotify event: name needs {name_len} bytes, {len(buf) - offset} left")
        raw_name = buf[offset:offset + name_len].split(b"\0", 1)[0]
        offset += name_len
        events.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw_name)))
    if offset != len(buf):
        raise ValueError(f"trailing {len(buf) - offset} bytes after the last inotify event")
    return events


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._libc.inotify_init1.argtypes = [ctypes.c_int]
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1 failed: {os.strerror(err)}")
        self.fd: int = fd
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_watch(self, path: Path | str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch on {path} failed: {os.strerror(err)}", str(path))
        return wd

    def read_events(self) -> list[InotifyEvent]:
        """Everything queued right now; an empty list when nothing is (never blocks)."""
        events: list[InotifyEvent] = []
        while True:
            try:
                buf = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            if not buf:
                return events
            events.extend(parse_events(buf))

    def attach(self, loop: asyncio.AbstractEventLoop, on_events: Callable[[list[InotifyEvent]], None]) -> None:
        """Call ``on_events`` from the loop whenever events are readable (no polling)."""
        self._loop = loop
        loop.add_reader(self.fd, lambda: on_events(self.read_events()))

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        self._loop = None
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def wait_for_path(path: Path, timeout: float, after_watch: Callable[[], None] | None = None) -> bool:
    """Wait until ``path`` exists (created or moved into its directory). True if it does within ``timeout``.

    ``after_watch`` runs once the watch is in place: an action that makes the path appear (e.g. asking conmon to
    reopen a log) cannot race with the watch.
    """
    loop = asyncio.get_running_loop()
    found = loop.create_future()
    with Inotify() as ino:
        ino.add_watch(path.parent, IN_CREATE | IN_MOVED_TO)

        def on_events(events: list[InotifyEvent]) -> None:
            if not found.done() and any(ev.name == path.name for ev in events):
                found.set_result(True)

        ino.attach(loop, on_events)
        if after_watch is not None:
            after_watch()
        if path.exists():
            return True
        try:
            async with asyncio.timeout(timeout):
                return await found
        except TimeoutError:
            return path.exists()
