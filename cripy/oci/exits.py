"""Container exit notification: watches the exit directory conmon writes into and reports each exit once.

Owns: reading exit/oom files written by conmon, and :class:`ExitWatcher`, which turns new files in the exit
directory into ``on_exit(ctr_id, exit_code, exit_time)`` calls. conmon writes ``<exit_dir>/<ctr_id>`` (and
``<persist_dir>/exit``) containing the exit code as decimal text, atomically (temp file + rename); the file's mtime
is the exit time. Exits that happened while the daemon was down are reported when the watcher starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

from cripy.errors import DataLoss
from cripy.oci.inotify import (IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, Inotify,
                               InotifyEvent)

log = logging.getLogger(__name__)

OnExit = Callable[[str, int, datetime], Awaitable[None]]

# conmon (glib's g_file_set_contents) writes "<name>.XXXXXX" and renames it into place; container ids never
# contain a dot (OCIRuntime validates them), so dotted names are in-flight temp files.
_TEMP_MARKER = "."


def parse_exit_code(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataLoss(f"exit file {source} does not hold an exit code: {text[:64]!r}") from None


def read_exit_file(path: Path) -> int | None:
    """The exit code conmon recorded in ``path``; None when the file does not exist (yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_exit_code(text, str(path))


def read_oom_file(persist_dir: Path) -> bool:
    """Whether conmon saw the container's cgroup hit an OOM kill (it creates ``<persist_dir>/oom``)."""
    return (persist_dir / "oom").exists()


class ExitWatcher:
    """Reports container exits from ``exits_dir`` through an async callback, each file once."""

    def __init__(self, exits_dir: Path, on_exit: OnExit) -> None:
        self.exits_dir = exits_dir
        self._on_exit = on_exit
        self._inotify: Inotify | None = None
        self._reported: dict[str, tuple[int, int]] = {}  # name -> (inode, mtime_ns) already reported
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Watch for new exit files, then report the ones already present (the order avoids missing any)."""
        if self._inotify is not None:
            return
        self.exits_dir.mkdir(parents=True, exist_ok=True)
        ino = Inotify()
        try:
            ino.add_watch(self.exits_dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM)
            ino.attach(asyncio.get_running_loop(), self._on_events)
        except BaseException:
            ino.close()
            raise
        self._inotify = ino
        self._scan()

    async def stop(self) -> None:
        """Stop watching and wait for callbacks in flight."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def __aenter__(self) -> ExitWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def forget(self, ctr_id: str) -> None:
        """Drop the memory of a reported exit (its file was removed with the container)."""
        self._reported.pop(ctr_id, None)

    def _scan(self) -> None:
        for name in sorted(os.listdir(self.exits_dir)):
            self._consider(name)

    def _on_events(self, events: list[InotifyEvent]) -> None:
        for ev in events:
            if ev.mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed on %s; rescanning", self.exits_dir)
                self._scan()
            elif ev.mask & (IN_DELETE | IN_MOVED_FROM):
                self.forget(ev.name)
            elif ev.name:
                self._consider(ev.name)

    def _consider(self, name: str) -> None:
        if _TEMP_MARKER in name:
            return
        path = self.exits_dir / name
        try:
            st = path.stat()
            text = path.read_text()
        except (FileNotFoundError, IsADirectoryError):
            return
        identity = (st.st_ino, st.st_mtime_ns)
        if self._reported.get(name) == identity:
            return
        self._reported[name] = identity
        try:
            code = parse_exit_code(text, str(path))
        except DataLoss as err:
            log.warning("container %s: %s; reporting exit code -1", name, err)
            code = -1
        exit_time = datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=timezone.utc)
        task = asyncio.get_running_loop().create_task(self._report(name, code, exit_time))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, ctr_id: str, code: int, exit_time: datetime) -> None:
        try:
            await self._on_exit(ctr_id, code, exit_time)
        except Exception:
            log.exception("container %s: exit handler failed for exit code %d", ctr_id, code)
