"""Errors at the CRI edge: a full disk is RESOURCE_EXHAUSTED however deep it was raised, and only then."""

from __future__ import annotations

import errno
import sqlite3

from cripy import errors
from cripy.cri.errors import disk_full


def test_a_full_disk_is_found_through_the_chain_of_causes() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise errors.Internal("unpacking layer x") from e
    except errors.Internal as wrapped:
        assert disk_full(wrapped)
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(errors.Internal("runc create failed"))


def test_os_failure_names_the_kind() -> None:
    full = errors.os_failure("writing layer y", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, errors.ResourceExhausted) and "no space left" in str(full)
    other = errors.os_failure("writing layer y", OSError(errno.EIO, "Input/output error"))
    assert isinstance(other, errors.Internal) and "writing layer y" in str(other)
