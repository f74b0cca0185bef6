"""Running as a system service: telling systemd how start-up and shutdown go (sd_notify), and logging in the form
the log's destination wants: the journal's (a `<priority>` prefix per line, no timestamp: the journal adds its
own), JSON lines (one object per record, for log shippers), or plain text.

sd_notify is the datagram protocol of sd_notify(3): newline-separated KEY=VALUE assignments sent to the unix
socket named by $NOTIFY_SOCKET (a path, or an abstract name written with a leading "@"). The unit shipped in
contrib/systemd/ is Type=notify: systemd counts cripy as started at READY=1, sent once the CRI socket serves.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"


def notify(*assignments: str) -> bool:
    """Send assignments ("READY=1", "STATUS=...") to systemd; False when not started by systemd's notify
    machinery (no $NOTIFY_SOCKET) or when the message could not be sent (logged)."""
    address = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # an abstract socket
    elif address.startswith("/"):
        target = address
    else:
        log.warning("%s=%r: only unix socket paths and abstract names are supported; systemd is not told", 
                    NOTIFY_SOCKET_ENV, address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall("\n".join(assignments).encode())
    except OSError as e:
        log.warning("telling systemd %s failed: %s", ", ".join(assignments), e)
        return False
    return True


# ---- logging ---------------------------------------------------------------------------------------------------

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# syslog priorities, which the journal reads from a "<N>" line prefix (sd-daemon(3)).
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<6>cripy.pods.manager: pod ... ready`: the priority for the journal, no timestamp (the journal's own)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # Every line of a multi-line record (a traceback) carries the priority, or the journal files it at info.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message; error with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def _rfc3339(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1e6):06d}Z"


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the journal stream it connected stdout/stderr to."""
    expected = os.environ.get(JOURNAL_STREAM_ENV, "")
    if not expected:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure_logging(level: str, log_format: str = "auto") -> str:
    """Log to stderr at `level` in `log_format` (auto, text, json, journal); the format chosen."""
    chosen = ("journal" if stderr_is_journal() else "text") if log_format == "auto" else log_format
    handler = logging.StreamHandler(sys.stderr)
    if chosen == "journal":
        handler.setFormatter(JournalFormatter())
    elif chosen == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("hpack").setLevel(logging.INFO)  # its debug output is per-header noise
    return chosen


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
