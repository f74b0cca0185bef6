"""cripy.linux.child: programs spawned with posix_spawn, read on the event loop and reaped through a pidfd."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from cripy.linux import child


def run(argv: list[str], stdin: bytes | None = None) -> child.Finished:
    return asyncio.run(child.run(argv, stdin=stdin))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def gone(pid: int) -> bool:
    """True once the pid is no longer a process of ours, zombie or not."""
    try:
        return f"\nPPid:\t{os.getpid()}\n" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_output_and_exit_code_are_collected() -> None:
    assert run(["sh", "-c", "echo out; echo err >&2; exit 3"]) == child.Finished(3, b"out\n", b"err\n")


def test_a_program_killed_by_a_signal_has_minus_the_signal_as_its_code() -> None:
    assert run(["sh", "-c", "kill -TERM $$"]).returncode == -signal.SIGTERM


def test_stdin_larger_than_a_pipe_is_fed_while_the_output_is_read() -> None:
    data = os.urandom(3 << 20)
    assert run(["cat"], stdin=data) == child.Finished(0, data, b"")


def test_a_program_that_stops_reading_its_stdin_does_not_fail_the_run() -> None:
    assert run(["head", "-c", "4"], stdin=b"x" * (1 << 20)) == child.Finished(0, b"xxxx", b"")


def test_without_stdin_the_program_reads_dev_null() -> None:
    assert run(["cat"]).stdout == b""


def test_output_past_the_cap_is_read_and_dropped() -> None:
    async def main() -> tuple[int, bytes]:
        spawned = child.Child.spawn(["head", "-c", str(1 << 20), "/dev/zero"], cap=1000)
        try:
            return await spawned.wait(), (await spawned.output())[0]
        finally:
            spawned.close()

    assert asyncio.run(main()) == (0, b"\0" * 1000)


def test_the_program_starts_with_default_signals_and_only_the_standard_streams() -> None:
    """Python ignores SIGPIPE, and the daemon may inherit descriptors; neither reaches the program."""
    stray = os.open(os.devnull, os.O_RDONLY)  # inheritable, as a parent's leaked descriptor is
    os.set_inheritable(stray, True)
    try:
        assert child.keep_descriptors_from_children() >= 1
        assert not os.get_inheritable(stray)
        fds = run(["ls", "/proc/self/fd"]).stdout.split()
        status = run(["cat", "/proc/self/status"]).stdout.decode()
    finally:
        os.close(stray)
    assert fds == [b"0", b"1", b"2", b"3"]  # 3: the listing's own
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1))
    assert blocked == 0


def test_a_new_session_is_made_on_request() -> None:
    async def main() -> tuple[int, bytes]:
        spawned = child.Child.spawn(["sh", "-c", "ps -o sid= -p $$"], new_session=True)
        await spawned.wait()
        return spawned.pid, (await spawned.output())[0]

    pid, out = asyncio.run(main())
    assert int(out) == pid


def test_a_missing_program_raises_and_leaves_no_descriptor() -> None:
    before = open_fds()

    async def main() -> None:
        child.Child.spawn(["/nonexistent/program"])

    with pytest.raises(FileNotFoundError):
        asyncio.run(main())
    assert open_fds() == before


def test_descriptors_are_closed_and_the_child_reaped_after_a_run() -> None:
    async def main() -> int:
        spawned = child.Child.spawn(["true"])
        await spawned.wait()
        await spawned.output()
        return spawned.pid

    before = open_fds()
    pid = asyncio.run(main())
    assert open_fds() == before
    assert gone(pid)


def test_a_cancelled_caller_leaves_the_program_to_finish_and_reaps_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    done = tmp_path / "done"
    spawned: list[child.Child] = []
    spawn = child.Child.spawn

    def recorded(*args: object, **kwargs: object) -> child.Child:
        spawned.append(spawn(*args, **kwargs))  # type: ignore[arg-type]
        return spawned[-1]

    monkeypatch.setattr(child.Child, "spawn", recorded)

    async def main() -> None:
        task = asyncio.create_task(child.run(["sh", "-c", f"sleep 0.3; echo > {done}"]))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await spawned[0].wait() == 0
        await asyncio.sleep(0)

    asyncio.run(main())
    assert done.exists()
    assert gone(spawned[0].pid)


def test_output_with_a_grace_returns_what_came_while_a_background_process_holds_the_pipe() -> None:
    async def main() -> tuple[int, bytes, float]:
        spawned = child.Child.spawn(["sh", "-c", "sleep 30 & echo $!"], new_session=True)
        try:
            code = await spawned.wait()
            begin = time.monotonic()
            out, _ = await spawned.output(grace=0.2)
            return code, out, time.monotonic() - begin
        finally:
            spawned.close()
            os.killpg(spawned.pid, signal.SIGKILL)

    code, out, waited = asyncio.run(main())
    assert code == 0 and out.strip().isdigit()
    assert 0.15 < waited < 5


def test_without_pidfds_a_thread_waits_for_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    assert run(["sh", "-c", "echo x; exit 7"]) == child.Finished(7, b"x\n", b"")
