"""Layer writers and the audit, kept apart across processes.

A layer's directory exists before its row: it is made, filled, renamed into place and only then recorded in the
database; a layer no image uses loses its row first and its directory after. An audit that listed the layer
directories in between would take such a directory for an orphan, and its repair would remove it under the pull
(the pull would then record a layer whose content is gone). The audit runs beside the daemon: `cripy audit
--repair` while it serves, and the daemon's own audit at start, beside its first pulls.

So whatever changes a layer's directory and row holds a shared flock(2) on `<root>/layers.lock` from before the
directory is made (or its row deleted) until the row is committed (or the directory is gone); the audit compares
directories with rows only under the exclusive lock, which it tries once and does not wait for: a long pull
would hold it up for minutes, and the next audit checks what this one could not. The audit holds it briefly: it
moves an orphaned layer out of layers/ under the lock and deletes it after; a writer that still waits a minute
gives up with an error naming the lock, rather than hang pulls behind a stopped `cripy audit`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from cripy.errors import Unavailable

RETRY_SECONDS = 0.05  # a writer waits for an audit's comparison in steps of this
WAIT_SECONDS = 60.0  # an audit holds the lock for a listing, a query and renames: longer means it is stuck


class LayerLockTimeout(Unavailable):
    """The audit's exclusive lock was held longer than a writer waits."""


class LayerLock:
    """The flock on one root's layers.lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @asynccontextmanager
    async def writing(self, wait: float = WAIT_SECONDS) -> AsyncIterator[None]:
        """Held by one layer's write or removal, shared with the others; waits (without a thread) while an audit
        holds the lock, `wait` seconds at most (LayerLockTimeout)."""
        fd = self._open()
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LayerLockTimeout(f"{self.path} has been held by an audit for more than {wait:g}s "
                                               "(`cripy audit` stopped or hung?)") from None
                    await asyncio.sleep(RETRY_SECONDS)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def auditing(self) -> Iterator[bool]:
        """The exclusive lock if no layer is being written or removed now: yields whether it was got."""
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                got = False
            yield got  # outside the except: the body's own exceptions are not chained to BlockingIOError
        finally:
            os.close(fd)
