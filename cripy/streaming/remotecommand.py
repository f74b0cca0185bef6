"""Exec and attach: the requests a token stands for, what runs them, and the handlers the streaming server calls.

Owns:
* the requests a token stands for (ExecRequest, AttachRequest) and their validation;
* exec: ``runc exec`` with pipes, or with a terminal: runc then runs on a host pseudo-terminal we own (its slave is
  runc's controlling terminal) and proxies it to the container's; resizing our master (TIOCSWINSZ) makes the
  kernel signal runc (SIGWINCH), which resizes the container's terminal - CRI-O's approach, and runc reports the
  exit code as its own. A client that goes away gets its process killed.
* attach: conmon's attach socket (SOCK_SEQPACKET; conmon prefixes each output packet with one byte naming the
  pipe, 2 stdout and 3 stderr, and takes raw stdin packets), resizes through conmon's control fifo. Detaching
  only closes our socket: the container keeps running;
* the handlers of /exec/<token> and /attach/<token>: the checks before the upgrade, then a runner in a session.
The streams a runner reads and writes, and their SPDY and WebSocket carriers, are in commandsession.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import termios
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cripy.containers.container import STATE_RUNNING
from cripy.errors import CripyError, FailedPrecondition, Internal, InvalidArgument, Unimplemented
from cripy.oci.bundle import read_config
from cripy.oci.runtime import remove_later
from cripy.streaming.channels import TerminalSize
from cripy.streaming.commandsession import STDERR, STDOUT, CommandIO, Outcome, command_session
from cripy.streaming.pumps import InputPipe, Pump

if TYPE_CHECKING:
    from cripy.containers.container import Container
    from cripy.containers.manager import ContainerManager
    from cripy.oci.runtime import OCIRuntime

log = logging.getLogger(__name__)

READ_CHUNK = 32 * 1024
# After the exec'd command exited, how long its output pipes may stay open (a background child holding them)
# before the session ends with what it has.
OUTPUT_DRAIN_GRACE = 2.0
INITIAL_SIZE_WAIT = 0.5  # seconds a terminal exec waits for the client's first terminal size
# conmon reads at most this much of one stdin packet (CONN_SOCK_BUF_SIZE - 1); larger packets would be cut.
ATTACH_STDIN_PACKET = 8192
ATTACH_RECV_SIZE = 64 * 1024 + 1
ATTACH_PIPE_STDOUT = 2
ATTACH_PIPE_STDERR = 3
SETSID = "/usr/bin/setsid"


# ---- requests -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


def validate_streams(what: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if not (stdin or stdout or stderr):
        raise InvalidArgument(f"{what}: one of stdin, stdout and stderr must be requested")
    if tty and stderr:
        raise InvalidArgument(f"{what}: tty and stderr cannot both be requested (a terminal has one output "
                              f"stream: ask for stdout only)")


def validate_exec(request: ExecRequest) -> None:
    if not request.container_id:
        raise InvalidArgument("exec: the container id is empty")
    if not request.cmd or not request.cmd[0]:
        raise InvalidArgument(f"exec in container {request.container_id}: the command is empty")
    validate_streams(f"exec in container {request.container_id}", request.tty, request.stdin, request.stdout,
                     request.stderr)


def validate_attach(request: AttachRequest) -> None:
    if not request.container_id:
        raise InvalidArgument("attach: the container id is empty")
    validate_streams(f"attach to container {request.container_id}", request.tty, request.stdin, request.stdout,
                     request.stderr)

# ---- exec -----------------------------------------------------------------------------------------------------


def runc_exec_argv(runtime: "OCIRuntime", ctr_id: str, cmd: tuple[str, ...], tty: bool, pidfile: Path,
                   process_file: Path | None = None) -> list[str]:
    argv = [*runtime.runc_command(), "exec", "--pid-file", str(pidfile)]
    if process_file is not None:
        return [*argv, "--process", str(process_file), ctr_id]
    if tty:
        argv.append("--tty")
    return [*argv, ctr_id, *cmd]


def write_terminal_process(bundle: Path, cmd: tuple[str, ...], size: TerminalSize, path: Path) -> None:
    """The process runc would make for `runc exec --tty` (the container's own process with these args), plus the
    terminal's size: runc sizes the terminal before the command starts only when the process file says so."""
    try:
        process = read_config(bundle)["process"]
    except (OSError, ValueError, KeyError) as err:
        raise Internal(f"cannot read the process of the container's bundle {bundle}: {err}") from err
    process.update(args=list(cmd), terminal=True, consoleSize={"height": size.height, "width": size.width})
    path.write_text(json.dumps(process))


async def run_exec(runtime: "OCIRuntime", ctr_id: str, cmd: tuple[str, ...], tty: bool, io: CommandIO,
                   bundle: Path) -> Outcome:
    """Run ``cmd`` in the container with the session's streams; its exit code, or an error."""
    scratch = Path(await asyncio.to_thread(lambda: tempfile.mkdtemp(prefix="stream-", dir=runtime.ensure_exec_dir())))
    try:
        if not tty:
            return await _exec_with_pipes(runc_exec_argv(runtime, ctr_id, cmd, False, scratch / "pid"),
                                          scratch / "pid", io, runtime.prime_cgroup_move)
        # The client sends its terminal's size as soon as the streams are up. Wait a moment for it: a command
        # that asks at once (stty, a full-screen program) would otherwise see 0x0, runc sizing the terminal only
        # after the command started unless the process file gives the size.
        process_file = None
        first = await _first_size(io)
        if first is not None:
            process_file = scratch / "process.json"
            await asyncio.to_thread(write_terminal_process, bundle, cmd, first, process_file)
        argv = runc_exec_argv(runtime, ctr_id, cmd, True, scratch / "pid", process_file)
        return await _exec_with_terminal(argv, scratch / "pid", io, first, runtime.prime_cgroup_move)
    finally:
        remove_later(shutil.rmtree, scratch, True)


async def _exec_with_pipes(argv: list[str], pidfile: Path, io: CommandIO, spawned: Callable[[], None]) -> Outcome:
    """``spawned`` is called as soon as runc is (the cgroup-move primer: OCIRuntime.prime_cgroup_move says why)."""
    pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=pipe if io.stdin is not None else devnull, stdout=pipe if io.stdout else devnull,
            stderr=pipe if io.stderr else devnull, start_new_session=True)
    except OSError as err:
        raise Internal(f"cannot run {argv[0]}: {err}") from err
    spawned()
    tasks = [asyncio.create_task(_copy_reader(proc.stdout, io, STDOUT)),
             asyncio.create_task(_copy_reader(proc.stderr, io, STDERR))]
    feeder = asyncio.create_task(_feed_process_stdin(proc, io.stdin)) if io.stdin is not None else None
    try:
        code = await proc.wait()
        await _wait_output(tasks)
        return Outcome(exit_code=code)
    finally:
        await _stop_process(proc, pidfile)
        for task in [*tasks, *([feeder] if feeder else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *([feeder] if feeder else []), return_exceptions=True)


async def _copy_reader(stream: asyncio.StreamReader | None, io: CommandIO, channel: int) -> None:
    if stream is None:
        return
    while data := await stream.read(READ_CHUNK):
        await io.write_output(channel, data)


async def _feed_process_stdin(proc: asyncio.subprocess.Process, stdin: InputPipe) -> None:
    assert proc.stdin is not None
    try:
        while (data := await stdin.read()) is not None:
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command stopped reading; the rest of stdin has nowhere to go


async def _wait_output(tasks: list[asyncio.Task[None]]) -> None:
    """Let the output copies finish; a background child holding a pipe gets OUTPUT_DRAIN_GRACE, then is cut."""
    done, pending = await asyncio.wait(tasks, timeout=OUTPUT_DRAIN_GRACE)
    for task in done:
        task.result()  # ClientGone propagates: nobody to report to
    if pending:
        log.info("streaming: exec output still open %ss after the command exited; ending the session",
                 OUTPUT_DRAIN_GRACE)


async def _stop_process(proc: asyncio.subprocess.Process, pidfile: Path) -> None:
    """Kill the exec'd command and runc if still there.

    The command is found by the pid runc recorded and, because runc writes that file only after the command
    started (a client may leave in between), also as runc's child; runc itself goes by process group.
    """
    if proc.returncode is None:
        for pid in {*_children(proc.pid), *_pidfile_pid(pidfile)}:
            _kill_quietly(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        for pid in _pidfile_pid(pidfile):
            _kill_quietly(pid)


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


def _pidfile_pid(pidfile: Path) -> list[int]:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return []
    return [int(text)] if text.isdigit() else []


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


async def _exec_with_terminal(argv: list[str], pidfile: Path, io: CommandIO, size: TerminalSize | None,
                              spawned: Callable[[], None]) -> Outcome:
    """``spawned`` is called as soon as runc is, as for _exec_with_pipes."""
    master, slave = os.openpty()
    try:
        # Raw from the start: runc sets this itself, but only once it runs, and input arriving earlier would be
        # echoed (and ^C turned into a signal) by our side's line discipline.
        tty.setraw(slave)
        if size is not None:
            _set_size(slave, size)  # what runc passes on at its next SIGWINCH: the same size, no change
        try:
            # setsid --ctty: runc leads a new session whose controlling terminal is our pty's slave, so it
            # receives SIGWINCH when the master is resized.
            proc = await asyncio.create_subprocess_exec(SETSID, "--ctty", *argv, stdin=slave, stdout=slave,
                                                        stderr=slave)
        except OSError as err:
            raise Internal(f"cannot run {argv[0]} on a terminal: {err}") from err
        finally:
            os.close(slave)
        spawned()
        terminal = PtyMaster(master)
        master = -1  # owned by terminal now
        tasks = [asyncio.create_task(_copy_terminal_output(terminal, io)),
                 asyncio.create_task(_apply_resizes(io, terminal.resize))]
        if io.stdin is not None:
            tasks.append(asyncio.create_task(_feed_terminal(terminal, io.stdin)))
        try:
            code = await proc.wait()
            await _wait_output(tasks[:1])
            return Outcome(exit_code=code)
        finally:
            await _stop_process(proc, pidfile)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            terminal.close()
    finally:
        if master >= 0:
            os.close(master)


class PtyMaster:
    """The master side of a pseudo-terminal, read and written without blocking the event loop."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._loop = asyncio.get_running_loop()

    async def read(self) -> bytes:
        """Output, or b"" once every slave is closed (EIO)."""
        while True:
            try:
                return os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                await self._wait(self._loop.add_reader, self._loop.remove_reader)
            except OSError as err:
                if err.errno == errno.EIO:
                    return b""
                raise

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
                view = view[written:]
            except BlockingIOError:
                await self._wait(self._loop.add_writer, self._loop.remove_writer)

    async def resize(self, size: TerminalSize) -> None:
        _set_size(self.fd, size)

    async def _wait(self, add: Callable[..., None], remove: Callable[[int], bool]) -> None:
        ready = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        add(self.fd, wake)
        try:
            await ready
        finally:
            remove(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def _copy_terminal_output(terminal: PtyMaster, io: CommandIO) -> None:
    while data := await terminal.read():
        await io.write_output(STDOUT, data)


async def _feed_terminal(terminal: PtyMaster, stdin: InputPipe) -> None:
    # The end of the client's input does not end a terminal session (as with CRI-O): the user types exit.
    while (data := await stdin.read()) is not None:
        await terminal.write(data)


async def _first_size(io: CommandIO) -> TerminalSize | None:
    if not io.resizable:
        return None
    try:
        async with asyncio.timeout(INITIAL_SIZE_WAIT):
            size = await io.resizes.get()
    except TimeoutError:
        return None
    while not io.resizes.empty():  # several already queued: the latest counts
        size = io.resizes.get_nowait()
    return size


def _set_size(fd: int, size: TerminalSize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


async def _apply_resizes(io: CommandIO, resize: Callable[[TerminalSize], Awaitable[None]]) -> None:
    while True:
        size = await io.resizes.get()
        try:
            await resize(size)
        except (OSError, CripyError) as err:
            log.info("streaming: resizing the terminal to %sx%s failed: %s", size.width, size.height, err)


# ---- attach ---------------------------------------------------------------------------------------------------


async def run_attach(runtime: "OCIRuntime", container: "Container", io: CommandIO) -> Outcome:
    """Relay the container's stdio through conmon's attach socket until it closes or the client leaves."""
    path = runtime.attach_socket_path(container.id)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    tty = container.request.tty
    try:
        try:
            await loop.sock_connect(sock, str(path))
        except OSError as err:
            raise FailedPrecondition(f"cannot attach to container {container.id}: its attach socket {path}: "
                                     f"{err.strerror or err}") from None
        tasks = [asyncio.create_task(_apply_resizes(io, lambda size: runtime.resize(
            container.id, min(size.height, 1000), min(size.width, 1000))))] if tty else []
        if io.stdin is not None:
            tasks.append(asyncio.create_task(_feed_attach(sock, io.stdin, close_on_eof=container.request.stdin_once
                                                          and not tty)))
        try:
            await _copy_attach_output(sock, io)
            return Outcome()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sock.close()


async def _copy_attach_output(sock: socket.socket, io: CommandIO) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            packet = await loop.sock_recv(sock, ATTACH_RECV_SIZE)
        except ConnectionError:
            return
        if not packet:
            return  # conmon closed: the container exited
        pipe, data = packet[0], packet[1:]
        await io.write_output(STDERR if pipe == ATTACH_PIPE_STDERR else STDOUT, data)


async def _feed_attach(sock: socket.socket, stdin: InputPipe, close_on_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    try:
        while (data := await stdin.read()) is not None:
            for start in range(0, len(data), ATTACH_STDIN_PACKET):
                await loop.sock_sendall(sock, data[start:start + ATTACH_STDIN_PACKET])
        if close_on_eof:
            # conmon closes the container's stdin when an attached client shuts down its side (stdin_once).
            sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionError):
        pass


# ---- the session handlers the server calls ------------------------------------------------------------------


async def running_container(containers: "ContainerManager", ctr_id: str, action: str) -> "Container":
    container = await containers.get(ctr_id)
    if container.state != STATE_RUNNING:
        raise FailedPrecondition(f"cannot {action} container {container.id}: it is {container.state}, not running")
    return container


class ExecHandler:
    """Serves /exec/<token>."""

    def __init__(self, containers: "ContainerManager") -> None:
        self.containers = containers

    async def prepare(self, request: ExecRequest) -> None:
        validate_exec(request)
        container = await running_container(self.containers, request.container_id, "exec in")
        runtime = await self.containers.runtime_of(container)
        if request.tty and runtime.sandboxed:
            raise Unimplemented(f"exec in container {container.id}: runtime handler {runtime.handler.name!r} (gVisor) "
                                "cannot give an exec a terminal: runsc exec has no --tty")

    async def serve(self, pump: Pump, request: ExecRequest) -> None:
        session = command_session(pump, request.tty, request.stdin, request.stdout, request.stderr)

        async def runner(io: CommandIO) -> Outcome:
            container = await running_container(self.containers, request.container_id, "exec in")
            runtime = await self.containers.runtime_of(container)
            return await run_exec(runtime, container.id, request.cmd, request.tty, io,
                                  self.containers.bundle_dir(container.id))

        await session.run(runner)


class AttachHandler:
    """Serves /attach/<token>."""

    def __init__(self, containers: "ContainerManager") -> None:
        self.containers = containers

    async def prepare(self, request: AttachRequest) -> None:
        validate_attach(request)
        container = await running_container(self.containers, request.container_id, "attach to")
        if request.stdin and not container.request.stdin:
            raise FailedPrecondition(f"cannot attach to the stdin of container {container.id}: it was not created "
                                     f"with stdin")
        if request.tty and not container.request.tty:
            raise InvalidArgument(f"cannot attach with a terminal to container {container.id}: it was not created "
                                  f"with tty")

    async def serve(self, pump: Pump, request: AttachRequest) -> None:
        session = command_session(pump, request.tty, request.stdin, request.stdout, request.stderr)

        async def runner(io: CommandIO) -> Outcome:
            container = await running_container(self.containers, request.container_id, "attach to")
            runtime = await self.containers.runtime_of(container)
            return await run_attach(runtime, container, io)

        await session.run(runner)
