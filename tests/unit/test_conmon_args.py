"""conmon's command line, sync-pipe messages and control-fifo messages; inotify event decoding; exit files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cripy.errors import DataLoss, InvalidArgument
from cripy.oci import conmon
from cripy.oci.exits import parse_exit_code, read_exit_file, read_oom_file
from cripy.oci.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, InotifyEvent, parse_events
from cripy.oci.runtime import validate_container_id


def _args(**overrides: object) -> conmon.ConmonCreateArgs:
    values: dict = dict(
        conmon_path="/usr/bin/conmon", runtime_path="/usr/bin/runc", runtime_root=Path("/run/cripy/runc"),
        ctr_id="abc123", bundle=Path("/run/cripy/containers/abc123"),
        container_pidfile=Path("/run/cripy/containers/abc123/pidfile"),
        conmon_pidfile=Path("/run/cripy/containers/abc123/conmon-pidfile"),
        log_path=Path("/var/log/pods/p/c/0.log"), exits_dir=Path("/run/cripy/exits"),
        persist_dir=Path("/var/lib/cripy/containers/abc123/userdata"), socket_dir=Path("/run/cripy/attach"))
    values.update(overrides)
    return conmon.ConmonCreateArgs(**values)


def _option(argv: list[str], name: str) -> list[str]:
    """Every value given for ``name`` in argv."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]


def test_create_argv_carries_ids_paths_and_runtime() -> None:
    argv = conmon.build_create_argv(_args())
    assert argv[0] == "/usr/bin/conmon"
    assert _option(argv, "--api-version") == ["1"]
    assert _option(argv, "--cid") == ["abc123"] and _option(argv, "--cuuid") == ["abc123"]
    assert _option(argv, "--runtime") == ["/usr/bin/runc"]
    assert _option(argv, "--bundle") == ["/run/cripy/containers/abc123"]
    assert _option(argv, "--container-pidfile") == ["/run/cripy/containers/abc123/pidfile"]
    assert _option(argv, "--conmon-pidfile") == ["/run/cripy/containers/abc123/conmon-pidfile"]
    assert _option(argv, "--log-path") == ["k8s-file:/var/log/pods/p/c/0.log"]
    assert _option(argv, "--exit-dir") == ["/run/cripy/exits"]
    assert _option(argv, "--persist-dir") == ["/var/lib/cripy/containers/abc123/userdata"]
    assert _option(argv, "--socket-dir-path") == ["/run/cripy/attach"]
    assert _option(argv, "--runtime-arg") == ["--root=/run/cripy/runc"]
    assert _option(argv, "--log-level") == ["info"]
    # conmon must daemonize: never ask it to stay our child.
    assert "--sync" not in argv


def test_create_argv_defaults_leave_out_stdio_flags() -> None:
    argv = conmon.build_create_argv(_args())
    for flag in ("--terminal", "--stdin", "--leave-stdin-open", "--log-size-max", "--full-attach"):
        assert flag not in argv


@pytest.mark.parametrize("stdin_once, expect_leave_open", [(False, True), (True, False)])
def test_stdin_is_left_open_unless_stdin_once(stdin_once: bool, expect_leave_open: bool) -> None:
    argv = conmon.build_create_argv(_args(stdin=True, stdin_once=stdin_once, terminal=True))
    assert "--stdin" in argv and "--terminal" in argv
    assert ("--leave-stdin-open" in argv) is expect_leave_open


def test_leave_stdin_open_needs_stdin() -> None:
    argv = conmon.build_create_argv(_args(stdin=False, stdin_once=False))
    assert "--leave-stdin-open" not in argv


def test_log_size_max_only_when_positive() -> None:
    assert _option(conmon.build_create_argv(_args(log_size_max=1048576)), "--log-size-max") == ["1048576"]
    assert "--log-size-max" not in conmon.build_create_argv(_args(log_size_max=0))


def test_name_defaults_to_id() -> None:
    assert _option(conmon.build_create_argv(_args()), "--name") == ["abc123"]
    assert _option(conmon.build_create_argv(_args(name="web")), "--name") == ["web"]


def test_attach_and_ctl_paths_live_under_the_socket_dir_symlink() -> None:
    assert conmon.attach_socket_path(Path("/run/cripy/attach"), "abc") == Path("/run/cripy/attach/abc/attach")
    assert conmon.ctl_fifo_path(Path("/run/cripy/attach"), "abc") == Path("/run/cripy/attach/abc/ctl")


def test_socket_path_length_check() -> None:
    assert conmon.check_socket_path_fits(Path("/run/cripy/attach"), "a" * 64) is None
    # conmon gets half the id: a socket directory of 60 characters still fits, one of 70 does not
    assert conmon.check_socket_path_fits(Path("/" + "d" * 59), "a" * 64) is None
    problem = conmon.check_socket_path_fits(Path("/" + "d" * 70), "a" * 64)
    assert problem is not None and "107" in problem


def test_monitor_directory_of_this_and_older_versions(tmp_path: Path) -> None:
    ctr_id = "0123456789abcdef" * 4
    assert conmon.monitor_id(ctr_id) == ctr_id[:32] and conmon.monitor_id("x-infra") == "x-infra"
    assert conmon.attach_socket_path(tmp_path, ctr_id) == tmp_path / ctr_id[:32] / "attach"
    (tmp_path / ctr_id).symlink_to(tmp_path)  # a monitor an older cripy started with the whole id
    assert conmon.ctl_fifo_path(tmp_path, ctr_id) == tmp_path / ctr_id / "ctl"


# ---- sync pipe -----------------------------------------------------------------------------------------------


def test_sync_message_with_pid() -> None:
    msg = conmon.parse_sync_message(b'{"data": 4242}\n')
    assert msg == conmon.SyncMessage(4242) and not msg.failed


def test_sync_message_with_error_from_runc() -> None:
    line = (b'{"data": -1, "message": "time=\\"2026-01-01T00:00:00Z\\" level=error msg=\\"runc create failed: '
            b'unable to start container process: exec: \\\\\\"/x\\\\\\": stat /x: no such file or directory\\"\\n"}\n')
    msg = conmon.parse_sync_message(line)
    assert msg.failed and msg.data == -1
    assert conmon.runtime_error_text(msg.message) == \
        'runc create failed: unable to start container process: exec: "/x": stat /x: no such file or directory'


def test_sync_message_tolerates_raw_control_characters() -> None:
    # Older conmons do not escape every control character inside "message".
    msg = conmon.parse_sync_message(b'{"data": -1, "message": "bad\rthing\x01"}\n')
    assert msg.failed and msg.message == "bad\rthing\x01"


def test_sync_message_legacy_keys() -> None:
    assert conmon.parse_sync_message(b'{"pid": 7}') == conmon.SyncMessage(7)
    assert conmon.parse_sync_message(b'{"exit_code": 3}') == conmon.SyncMessage(3)


@pytest.mark.parametrize("line", [b"not json", b"[1]", b'{"data": "x"}', b'{"message": "m"}', b'{"data": true}'])
def test_sync_message_rejects_garbage(line: bytes) -> None:
    with pytest.raises(conmon.SyncProtocolError):
        conmon.parse_sync_message(line)


def test_runtime_error_text_without_logfmt_is_the_text() -> None:
    assert conmon.runtime_error_text("  container does not exist\n") == "container does not exist"


# ---- control fifo --------------------------------------------------------------------------------------------


def test_ctl_messages() -> None:
    assert conmon.reopen_log_message() == b"2 0 0\n"
    assert conmon.resize_message(40, 120) == b"1 40 120\n"
    with pytest.raises(ValueError):
        conmon.resize_message(1001, 10)
    with pytest.raises(ValueError):
        conmon.resize_message(10, -1)


# ---- ids, inotify, exit files --------------------------------------------------------------------------------


@pytest.mark.parametrize("ctr_id", ["abc", "a" * 64, "A-b_9"])
def test_valid_container_ids(ctr_id: str) -> None:
    validate_container_id(ctr_id)


@pytest.mark.parametrize("ctr_id", ["", "a.b", "../x", "a/b", "-x", "a" * 129])
def test_invalid_container_ids(ctr_id: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_container_id(ctr_id)


def _raw_event(wd: int, mask: int, cookie: int, name: bytes) -> bytes:
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


def test_parse_inotify_events() -> None:
    buf = _raw_event(1, IN_MOVED_TO, 77, b"abc") + _raw_event(1, IN_CLOSE_WRITE, 0, b"") + \
        _raw_event(2, IN_CLOSE_WRITE, 0, b"x" * 16)
    assert parse_events(buf) == [InotifyEvent(1, IN_MOVED_TO, 77, "abc"), InotifyEvent(1, IN_CLOSE_WRITE, 0, ""),
                                 InotifyEvent(2, IN_CLOSE_WRITE, 0, "x" * 16)]


def test_parse_inotify_events_rejects_truncation() -> None:
    buf = _raw_event(1, IN_MOVED_TO, 0, b"abc")
    with pytest.raises(ValueError):
        parse_events(buf[:-4])
    with pytest.raises(ValueError):
        parse_events(buf + b"\0\0")


def test_exit_files(tmp_path: Path) -> None:
    assert read_exit_file(tmp_path / "missing") is None
    (tmp_path / "exit").write_text("137")
    assert read_exit_file(tmp_path / "exit") == 137
    (tmp_path / "bad").write_text("oops")
    with pytest.raises(DataLoss):
        read_exit_file(tmp_path / "bad")
    assert parse_exit_code("-1\n", "x") == -1
    assert read_oom_file(tmp_path) is False
    (tmp_path / "oom").touch()
    assert read_oom_file(tmp_path) is True



def test_handler_global_flags_follow_the_root_as_runtime_args() -> None:
    argv = conmon.build_create_argv(_args(runtime_args=("--platform=ptrace", "--network=host")))
    assert _option(argv, "--runtime-arg") == ["--root=/run/cripy/runc", "--platform=ptrace", "--network=host"]
