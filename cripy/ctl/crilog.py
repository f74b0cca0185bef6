"""Reading CRI container log files (`<RFC3339Nano timestamp> <stdout|stderr> <P|F> <message>` per line).

Owns the format (parsing, joining partial `P` chunks into one logical line per stream) and incremental reading of
a log file that may still grow, be truncated or be rotated (renamed and recreated) while it is followed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import BinaryIO

PARTIAL_TAG = b"P"
READ_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class LogRecord:
    """One physical line of a CRI log file."""

    timestamp: str
    stream: str
    partial: bool
    content: bytes


@dataclass(frozen=True)
class LogLine:
    """One logical line: partial chunks joined. `complete` is False for a line the writer never finished."""

    timestamp: str
    stream: str
    content: bytes
    complete: bool = True


_TIMESTAMP_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def display_timestamp(timestamp: str) -> str:
    """A record's timestamp as `logs -t` shows it (the kubelet's format): nine fraction digits, `Z` for UTC.
    A timestamp that is not RFC 3339 is shown as it is."""
    match = _TIMESTAMP_RE.fullmatch(timestamp)
    if match is None:
        return timestamp
    clock, fraction, offset = match.groups()
    return f"{clock}.{(fraction or '').ljust(9, '0')}{'Z' if offset in ('Z', '+00:00', '-00:00') else offset}"


def parse_record(raw: bytes) -> LogRecord | None:
    """Parse one line (without its newline); None when it is not in CRI log format."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return None
    timestamp, stream, tags = parts[0], parts[1], parts[2]
    # The tag field may carry more tags after ':'; the first one says partial or full.
    first_tag = tags.split(b":", 1)[0]
    content = parts[3] if len(parts) == 4 else b""
    return LogRecord(timestamp=timestamp.decode("ascii", "replace"), stream=stream.decode(),
                     partial=first_tag == PARTIAL_TAG, content=content)


@dataclass
class PartialJoiner:
    """Joins the `P` chunks of each stream until that stream's closing `F` record."""

    _pending: dict[str, tuple[str, list[bytes]]] = field(default_factory=dict)

    def feed(self, record: LogRecord) -> LogLine | None:
        timestamp, chunks = self._pending.pop(record.stream, (record.timestamp, []))
        chunks.append(record.content)
        if record.partial:
            self._pending[record.stream] = (timestamp, chunks)
            return None
        return LogLine(timestamp=timestamp, stream=record.stream, content=b"".join(chunks))

    def flush(self) -> list[LogLine]:
        """The lines still waiting for their final chunk, as incomplete lines."""
        lines = [LogLine(timestamp=timestamp, stream=stream, content=b"".join(chunks), complete=False)
                 for stream, (timestamp, chunks) in self._pending.items()]
        self._pending.clear()
        return lines


def parse_log_bytes(data: bytes) -> list[LogLine]:
    """All logical lines of a complete log (e.g. a whole file's content)."""
    joiner = PartialJoiner()
    lines: list[LogLine] = []
    for raw in data.splitlines():
        line = _feed_raw(joiner, raw)
        if line is not None:
            lines.append(line)
    return lines + joiner.flush()


def _feed_raw(joiner: PartialJoiner, raw: bytes) -> LogLine | None:
    record = parse_record(raw)
    if record is None:
        # Not CRI format (or a corrupt line): show it rather than hide it.
        return LogLine(timestamp="", stream="stdout", content=raw)
    return joiner.feed(record)


class LogFileReader:
    """Incremental reader of one CRI log file path, surviving truncation and rotation of the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._fragment = b""
        self._joiner = PartialJoiner()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> LogFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read_lines(self) -> list[LogLine]:
        """The logical lines completed since the last call (a missing file yields none yet)."""
        if self._file is None and not self._open():
            return []
        lines = self._drain()
        if self._rotated():
            # Everything written before the rename is read now; continue with the new file.
            lines += self._take_fragment()
            self.close()
            if self._open():
                lines += self._drain()
        return lines

    def finish(self) -> list[LogLine]:
        """Lines left over when the writer is gone: a last line without newline and unfinished partials."""
        lines = self.read_lines() + self._take_fragment()
        return lines + self._joiner.flush()

    def _take_fragment(self) -> list[LogLine]:
        """The last line of a file that did not end in a newline."""
        fragment, self._fragment = self._fragment, b""
        if not fragment:
            return []
        line = _feed_raw(self._joiner, fragment)
        return [] if line is None else [line]

    def _open(self) -> bool:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open across calls on purpose
        except FileNotFoundError:
            return False
        return True

    def _drain(self) -> list[LogLine]:
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._file.tell():
            # Truncated in place (copytruncate-style rotation): start over.
            self._file.seek(0)
            self._fragment = b""
        lines: list[LogLine] = []
        while chunk := self._file.read(READ_CHUNK_BYTES):
            data = self._fragment + chunk
            *complete, self._fragment = data.split(b"\n")
            for raw in complete:
                line = _feed_raw(self._joiner, raw)
                if line is not None:
                    lines.append(line)
        return lines

    def _rotated(self) -> bool:
        assert self._file is not None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(self._file.fileno())
        return (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev)
