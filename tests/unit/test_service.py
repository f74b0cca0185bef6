"""cripy/service.py: sd_notify over a datagram socket the test listens on, and the journal, JSON and text log
formats."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cripy import service


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_notify_sends_the_assignments_in_one_datagram(listener: socket.socket, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert service.notify("READY=1", "STATUS=serving CRI")
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving CRI"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cripy-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert service.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_systemd_notify_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not service.notify("READY=1")


def test_a_notify_socket_that_is_gone_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not service.notify("READY=1")
    assert "telling systemd READY=1 failed" in caplog.text


def _record(level: int, message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("cripy.pods.manager", level, __file__, 1, message, (), exc_info)


def test_the_journal_format_prefixes_every_line_with_the_syslog_priority() -> None:
    formatter = service.JournalFormatter()
    assert formatter.format(_record(logging.INFO, "pod ready")) == "<6>cripy.pods.manager: pod ready"
    assert formatter.format(_record(logging.WARNING, "slow")).startswith("<4>")
    text = formatter.format(_record(logging.ERROR, "failed", exc=True))
    lines = text.splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert "ValueError: boom" in text


def test_the_json_format_is_one_object_per_record() -> None:
    text = service.JSONFormatter().format(_record(logging.ERROR, "undo failed: \"x\"\nsecond line", exc=True))
    assert "\n" not in text
    document = json.loads(text)
    assert document["level"] == "error"
    assert document["logger"] == "cripy.pods.manager"
    assert document["message"] == "undo failed: \"x\"\nsecond line"
    assert "ValueError: boom" in document["error"]
    assert document["time"].endswith("Z") and "T" in document["time"]


def test_auto_picks_the_journal_format_when_stderr_is_the_journal_stream(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stream = open(tmp_path / "stderr", "w")
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert service.configure_logging("info", "auto") == "text"
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # another stream: not ours
        assert service.configure_logging("info", "auto") == "text"
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert service.configure_logging("info", "auto") == "journal"
        logging.getLogger("cripy.test").warning("hello")
        assert service.configure_logging("debug", "json") == "json"
        logging.getLogger("cripy.test").debug("world")
        stream.flush()
        lines = (tmp_path / "stderr").read_text().splitlines()
        assert lines[0] == "<4>cripy.test: hello"
        assert json.loads(lines[1])["message"] == "world"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        stream.close()


def test_text_format_has_time_level_and_logger() -> None:
    handler_output = io.StringIO()
    handler = logging.StreamHandler(handler_output)
    handler.setFormatter(logging.Formatter(service.TEXT_FORMAT))
    handler.emit(_record(logging.INFO, "started"))
    assert " INFO cripy.pods.manager: started" in handler_output.getvalue()
