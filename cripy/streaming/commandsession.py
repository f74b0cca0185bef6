"""The transport side of an exec or attach session: the streams a runner sees, carried over SPDY or WebSocket.

Owns:
* the transport-neutral streams a runner sees (CommandIO: stdin, stdout, stderr, terminal resizes) and their two
  carriers: SPDY streams typed by the ``streamtype`` header (stdin, stdout, stderr, error, resize) and WebSocket
  channels (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5's close signal ends stdin);
* a session's life: the client's streams set up (within STREAM_CREATION_TIMEOUT), the runner run until it ends or
  the client goes away (the runner is then cancelled), the streams ended;
* the result on the error stream as each protocol version defines it (v4/v5: a metav1.Status JSON, also on
  success; older versions: the failure message as text, nothing on success).
What runs (runc exec, conmon's attach socket) is in remotecommand.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from cripy.errors import CripyError
from cripy.streaming import channels, spdy, spdyevents
from cripy.streaming.channels import ResizeDecoder, TerminalSize
from cripy.streaming.pumps import (CLOSED, ChannelClosed, ChannelMessage, ClientGone, InputPipe, Pump, SpdyPump,
                                   WebSocketPump)

log = logging.getLogger(__name__)

STDIN, STDOUT, STDERR, ERROR, RESIZE = channels.STDIN, channels.STDOUT, channels.STDERR, channels.ERROR, channels.RESIZE
STREAM_TYPES = {channels.STREAM_TYPE_STDIN: STDIN, channels.STREAM_TYPE_STDOUT: STDOUT,
                channels.STREAM_TYPE_STDERR: STDERR, channels.STREAM_TYPE_ERROR: ERROR,
                channels.STREAM_TYPE_RESIZE: RESIZE}

STREAM_CREATION_TIMEOUT = 30.0


# ---- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a session ended: an exit code (exec), or neither (attach: success), or an error message."""

    exit_code: int | None = None
    error: str = ""


def status_payload(protocol: str, outcome: Outcome) -> bytes:
    """What the error stream carries at the end (empty: nothing), as the protocol version defines it."""
    return channels.status_payload(protocol, outcome.exit_code, outcome.error or None)


def decode_resizes(decoder: ResizeDecoder, data: bytes) -> list[TerminalSize]:
    try:
        return decoder.feed(data)
    except ValueError as err:
        log.info("streaming: ignoring a malformed resize event: %s", err)
        return []


# ---- transport-neutral streams ------------------------------------------------------------------------------


@dataclass
class CommandIO:
    """What a runner reads and writes; the transport session behind it decides where bytes go."""

    stdin: InputPipe | None
    stdout: bool
    stderr: bool
    write: Callable[[int, bytes], Awaitable[None]]
    resizes: asyncio.Queue[TerminalSize] = field(default_factory=asyncio.Queue)
    resizable: bool = False  # a terminal was asked for over a protocol that carries its size

    async def write_output(self, channel: int, data: bytes) -> None:
        if data and (self.stdout if channel == STDOUT else self.stderr):
            await self.write(channel, data)


Runner = Callable[[CommandIO], Coroutine[Any, Any, Outcome]]


class _Session:
    """Runs a runner against a transport until it ends or the client goes away (the runner is then cancelled)."""

    def __init__(self, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.tty = tty
        self.want = {STDIN: stdin, STDOUT: stdout, STDERR: stderr}

    async def run(self, runner: Runner) -> None:
        io = await self.open()
        dispatcher = asyncio.create_task(self.dispatch(io), name="streaming-dispatch")
        work = asyncio.create_task(runner(io), name="streaming-runner")
        try:
            done, _ = await asyncio.wait({dispatcher, work}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                # The client went away (or broke the protocol) first: stop the command.
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientGone):
                    await work
                return
            try:
                outcome = work.result()
            except ClientGone:
                return
            except CripyError as err:
                outcome = Outcome(error=str(err))
            await self.finish(outcome)
        finally:
            for task in (work, dispatcher):
                task.cancel()
            for task in (work, dispatcher):
                with contextlib.suppress(asyncio.CancelledError, ClientGone, Exception):
                    await task
            if io.stdin is not None:
                io.stdin.close()

    async def open(self) -> CommandIO:
        raise NotImplementedError

    async def dispatch(self, io: CommandIO) -> None:
        raise NotImplementedError

    async def finish(self, outcome: Outcome) -> None:
        raise NotImplementedError


class SpdyCommandSession(_Session):
    def __init__(self, pump: SpdyPump, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        super().__init__(tty, stdin, stdout, stderr)
        self.pump = pump
        self.streams: dict[int, int] = {}  # channel -> stream id
        self.roles: dict[int, int] = {}  # stream id -> channel
        self.resize_decoder = ResizeDecoder()
        self._early: list[object] = []
        self._stdin: InputPipe | None = None

    def _required(self) -> set[int]:
        required = {ERROR} | {channel for channel, wanted in self.want.items() if wanted}
        if self.tty and channels.supports_resize(self.pump.protocol, websocket=False):
            required.add(RESIZE)
        return required

    async def open(self) -> CommandIO:
        if self.want[STDIN]:
            self._stdin = InputPipe(pause=self.pump.pause_reading, resume=self.pump.resume_reading,
                                    on_consumed=self._acknowledge_stdin)
        required = self._required()
        try:
            async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
                while not required <= set(self.streams):
                    event = await self.pump.next_event()
                    if event is CLOSED:
                        raise ClientGone("the client left before creating its streams")
                    if isinstance(event, spdyevents.StreamOpened):
                        await self._accept_stream(event)
                    else:
                        self._early.append(event)
        except TimeoutError:
            log.info("streaming: client did not create the %s streams within %ss",
                     sorted(required - set(self.streams)), STREAM_CREATION_TIMEOUT)
            raise ClientGone("timed out waiting for the client to create streams") from None
        return CommandIO(stdin=self._stdin, stdout=self.want[STDOUT], stderr=self.want[STDERR], write=self._write,
                         resizable=RESIZE in required)

    async def _accept_stream(self, event: spdyevents.StreamOpened) -> None:
        kind = event.headers.get(channels.STREAM_TYPE_HEADER, "")  # the codec lower-cases header names
        channel = STREAM_TYPES.get(kind)
        await self.pump.reply(event.stream_id)
        if channel is None or channel in self.streams:
            log.info("streaming: refusing an unexpected %r stream", kind)
            await self.pump.reset(event.stream_id, spdy.RstStatus.REFUSED_STREAM)
            return
        self.streams[channel] = event.stream_id
        self.roles[event.stream_id] = channel

    async def _acknowledge_stdin(self, nbytes: int) -> None:
        stream_id = self.streams.get(STDIN)
        if stream_id is not None:
            await self.pump.acknowledge(stream_id, nbytes)

    async def _write(self, channel: int, data: bytes) -> None:
        stream_id = self.streams.get(channel)
        if stream_id is not None:
            await self.pump.send(stream_id, data)

    async def dispatch(self, io: CommandIO) -> None:
        for event in self._early:
            await self._handle(event, io)
        self._early.clear()
        while True:
            event = await self.pump.next_event()
            if event is CLOSED:
                return
            await self._handle(event, io)

    async def _handle(self, event: object, io: CommandIO) -> None:
        if isinstance(event, spdyevents.StreamOpened):
            await self._accept_stream(event)
        elif isinstance(event, spdyevents.DataReceived):
            channel = self.roles.get(event.stream_id)
            if channel == STDIN and io.stdin is not None:
                io.stdin.feed(event.data)
                return
            await self.pump.acknowledge(event.stream_id, len(event.data))
            if channel == RESIZE:
                for size in decode_resizes(self.resize_decoder, event.data):
                    io.resizes.put_nowait(size)
        elif isinstance(event, (spdyevents.StreamEnded, spdyevents.StreamReset)):
            if self.roles.get(event.stream_id) == STDIN and io.stdin is not None:
                io.stdin.feed_eof()

    async def finish(self, outcome: Outcome) -> None:
        payload = status_payload(self.pump.protocol, outcome)
        error_stream = self.streams.get(ERROR)
        for channel in (STDOUT, STDERR):
            if channel in self.streams:
                await self.pump.end(self.streams[channel])
        if error_stream is not None:
            if payload:
                await self.pump.send(error_stream, payload)
            await self.pump.end(error_stream)
        for channel in (STDOUT, STDERR, ERROR):
            if channel in self.streams:
                await self.pump.drain_stream(self.streams[channel])
        await self.pump.go_away()


class WebSocketCommandSession(_Session):
    def __init__(self, pump: WebSocketPump, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        super().__init__(tty, stdin, stdout, stderr)
        self.pump = pump
        self.resize_decoder = ResizeDecoder()

    async def open(self) -> CommandIO:
        stdin = InputPipe(pause=self.pump.pause_reading, resume=self.pump.resume_reading) \
            if self.want[STDIN] else None
        # kubelet tells the client the streams are ready with an empty message on the first output channel.
        first = STDOUT if self.want[STDOUT] else STDERR if self.want[STDERR] else ERROR
        await self.pump.send(first, b"")
        return CommandIO(stdin=stdin, stdout=self.want[STDOUT], stderr=self.want[STDERR], write=self.pump.send,
                         resizable=self.tty)

    async def dispatch(self, io: CommandIO) -> None:
        while True:
            event = await self.pump.next_event()
            if event is CLOSED:
                return
            if isinstance(event, ChannelClosed):
                if event.channel == STDIN and io.stdin is not None:
                    io.stdin.feed_eof()
            elif isinstance(event, ChannelMessage):
                if event.channel == STDIN and io.stdin is not None:
                    io.stdin.feed(event.data)
                elif event.channel == RESIZE:
                    for size in decode_resizes(self.resize_decoder, event.data):
                        io.resizes.put_nowait(size)

    async def finish(self, outcome: Outcome) -> None:
        payload = status_payload(self.pump.protocol, outcome)
        if payload:
            await self.pump.send(ERROR, payload)
        await self.pump.close()


def command_session(pump: Pump, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> _Session:
    if isinstance(pump, SpdyPump):
        return SpdyCommandSession(pump, tty, stdin, stdout, stderr)
    return WebSocketCommandSession(pump, tty, stdin, stdout, stderr)
