"""Short-lived programs run by the daemon (runc's verbs, an ExecSync's `runc exec`) on its event loop.

Owns: spawning a program with posix_spawn, feeding its stdin, reading its stdout and stderr on the loop, and
learning of its exit through a pidfd, with the child reaped in every case, also when the caller is cancelled.

Why not asyncio's subprocess: its transports, protocols, stream readers and child watcher cost about 0.5 ms of the
event loop per program (a `/bin/echo` ran in 2.9-3.0 ms through `asyncio.create_subprocess_exec` with a task per
stream, in 2.3-2.5 ms here; docs/benchmarks-analysis.md, ExecSync), and the daemon runs a program on every
container start, stop and exec. posix_spawn is vfork-based in glibc, as subprocess's own spawn is.

posix_spawn closes only the descriptors marked close-on-exec. Every descriptor Python opens is one (PEP 446; the
conmon spawn passes its two pipes with subprocess's pass_fds, which never makes them inheritable in the daemon),
and the daemon marks those it inherited at its start (`keep_descriptors_from_children`), so a child gets exactly
its three standard streams. The signals Python ignores (SIGPIPE, SIGXFSZ) get their default action back, as
subprocess gives them, and the child starts with no signal blocked.

Where the kernel (before 5.3) or a seccomp filter refuses pidfd_open, a thread of the child's own waits for it, as
Python 3.11's default child watcher does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

READ_CHUNK = 64 * 1024
_DEFAULT_ACTION_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True)
class Finished:
    """A program that ran to its end: its exit code (minus the signal that killed it) and what it printed."""

    returncode: int
    stdout: bytes
    stderr: bytes


def keep_descriptors_from_children() -> int:
    """Mark every descriptor this process inherited, past stdin, stdout and stderr, close-on-exec (a socket of
    its service manager, a descriptor its shell leaked), so that no program it spawns gets one; how many were."""
    marked = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                marked += 1
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return marked


async def run(argv: Sequence[str], stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> Finished:
    """Run a program to its end. A caller cancelled meanwhile leaves the program to finish (a runc verb stopped
    half-way would leave its container half-changed): it is read to its end and reaped all the same."""
    child = Child.spawn(argv, stdin=stdin, env=env)
    returncode = await child.wait()
    stdout, stderr = await child.output()
    return Finished(returncode, stdout, stderr)


class Child:
    """A spawned program, its output collected as it comes (each stream up to ``cap`` bytes; more is read and
    dropped, so a chatty child never blocks on a full pipe)."""

    def __init__(self, pid: int, stdout_fd: int, stderr_fd: int, cap: int | None) -> None:
        self.pid = pid
        self._loop = asyncio.get_running_loop()
        self._cap = cap
        self._streams: dict[int, bytearray] = {stdout_fd: bytearray(), stderr_fd: bytearray()}
        self._out, self._err = self._streams[stdout_fd], self._streams[stderr_fd]
        self._open = set(self._streams)
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._output_read: asyncio.Future[None] = self._loop.create_future()
        for fd in self._streams:
            self._loop.add_reader(fd, self._read, fd)
        self._watch_exit()

    @classmethod
    def spawn(cls, argv: Sequence[str], *, stdin: bytes | None = None, env: Mapping[str, str] | None = None,
              new_session: bool = False, cap: int | None = None) -> Child:
        """Start ``argv`` (its program looked up on PATH) with its stdin fed ``stdin`` (or /dev/null when None).
        Raises OSError when the program cannot be started."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
        try:
            pid = os.posix_spawnp(argv[0], list(argv), os.environ if env is None else env,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                                                (os.POSIX_SPAWN_DUP2, err_w, 2)],
                                  setsid=new_session, setsigdef=_DEFAULT_ACTION_SIGNALS, setsigmask=())
        except BaseException:
            _close(out_r, err_r, in_w)
            raise
        finally:
            _close(out_w, err_w, in_r)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        child = cls(pid, out_r, err_r, cap)
        if in_w >= 0:
            _Feeder(child._loop, in_w, stdin or b"")
        return child

    async def wait(self) -> int:
        """The exit code, once the program has exited (it is reaped by then); minus the signal that killed it."""
        return await asyncio.shield(self._exited)

    @property
    def returncode(self) -> int | None:
        """The exit code once the program is reaped, else None: until then its pid is still its own."""
        return self._exited.result() if self._exited.done() else None

    async def output(self, grace: float | None = None) -> tuple[bytes, bytes]:
        """Stdout and stderr once both are at their end; with a ``grace``, what came within it (a background process
        the program left behind can hold its pipes open for ever)."""
        if self._output_read.done():
            pass  # the usual case, both pipes at their end by the exit: no trip through the loop
        elif grace is None:
            await asyncio.shield(self._output_read)
        else:
            await asyncio.wait([self._output_read], timeout=grace)
        return bytes(self._out), bytes(self._err)

    def close(self) -> None:
        """Stop reading the output. The exit is still watched: the child is reaped whenever it ends."""
        for fd in list(self._open):
            self._end_stream(fd)

    # ---- the loop's callbacks --------------------------------------------------------------------------------

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._end_stream(fd)
            return
        into = self._streams[fd]
        if self._cap is None:
            into += chunk
        elif len(into) < self._cap:
            into += chunk[:self._cap - len(into)]

    def _end_stream(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        os.close(fd)
        self._open.discard(fd)
        if not self._open and not self._output_read.done():
            self._output_read.set_result(None)

    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            threading.Thread(target=self._wait_in_thread, name=f"wait-{self.pid}", daemon=True).start()
            return
        self._loop.add_reader(pidfd, self._reap, pidfd)

    def _reap(self, pidfd: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(self.pid, 0)  # the pidfd is readable: the child is a zombie, this does not block
        self._settle(os.waitstatus_to_exitcode(status))

    def _wait_in_thread(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        try:
            self._loop.call_soon_threadsafe(self._settle, os.waitstatus_to_exitcode(status))
        except RuntimeError:
            pass  # the loop was closed meanwhile (the daemon is stopping): nobody waits for the answer

    def _settle(self, returncode: int) -> None:
        if not self._exited.done():
            self._exited.set_result(returncode)


class _Feeder:
    """Writes a child's stdin without blocking the loop, then closes it. A child that closes its stdin first (the
    write fails with EPIPE) has had what it wanted: the rest is dropped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
        self._loop, self._fd, self._data = loop, fd, memoryview(data)
        self._waiting = False
        os.set_blocking(fd, False)
        self._pump()

    def _pump(self) -> None:
        try:
            while self._data:
                self._data = self._data[os.write(self._fd, self._data):]
        except (BlockingIOError, InterruptedError):
            if not self._waiting:
                self._loop.add_writer(self._fd, self._pump)
                self._waiting = True
            return
        except OSError:
            pass
        if self._waiting:
            self._loop.remove_writer(self._fd)
        os.close(self._fd)


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)
