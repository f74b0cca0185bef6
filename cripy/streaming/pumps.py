"""Connection pumps: the sans-IO codecs (spdy.py, websocket.py) carried over an upgraded socket for a session.

Owns reading the client's bytes into the codec and queueing its events for the session (CLOSED last), flushing
what the codec queued, back-pressure both ways (a sender waits while the peer's SPDY window holds too much back;
reading pauses while a consumer's InputPipe is full), and the WebSocket channel framing of the Kubernetes channel
protocols. A session (commandsession.py, portforward.py) sees a Pump and never the socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cripy.streaming import channels, spdy, spdyevents, websocket

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# How much outgoing data may wait in the SPDY codec (window exhausted) before a sender pauses.
MAX_PENDING_BYTES = 256 * 1024
# Client input that may wait for a slow consumer (per stream) before the connection stops being read.
INPUT_LIMIT_BYTES = 1024 * 1024


class ClientGone(Exception):
    """The client closed or broke the connection (or sent GOAWAY / a close frame)."""


CLOSED = object()  # the last item of a pump's event queue


class InputPipe:
    """Bytes from the client for one consumer (a process's stdin, a pod socket), in order, with an end.

    ``feed`` never blocks (the pump's reader calls it); when more than ``limit`` bytes wait, the pump is asked to
    stop reading (``pause``) until the consumer caught up. ``on_consumed`` returns consumed bytes to the
    peer's flow-control window (SPDY).
    """

    def __init__(self, *, limit: int = INPUT_LIMIT_BYTES, pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None,
                 on_consumed: Callable[[int], Awaitable[None]] | None = None) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._ready = asyncio.Event()
        self._limit = limit
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._on_consumed = on_consumed

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def feed(self, data: bytes) -> None:
        if self._eof or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._ready.set()
        if self._buffered > self._limit and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()

    def feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    async def read(self) -> bytes | None:
        """The next chunk, or None at the end."""
        while not self._chunks:
            if self._eof:
                return None
            self._ready.clear()
            await self._ready.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= self._limit // 2:
            self._paused = False
            if self._resume is not None:
                self._resume()
        if self._on_consumed is not None:
            with contextlib.suppress(ClientGone):
                await self._on_consumed(len(chunk))
        return chunk

    def close(self) -> None:
        """The consumer is gone: drop what waits and never pause the pump again."""
        self._chunks.clear()
        self._buffered = 0
        self._eof = True
        self._ready.set()
        if self._paused and self._resume is not None:
            self._paused = False
            self._resume()


class _Connection:
    """What both transports share: the socket, an event queue for the session, reading that a session can pause
    while its input buffers are full, and flushing what the codec queued."""

    codec: Any

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 query: dict[str, list[str]] | None) -> None:
        self.protocol = protocol
        self.query = query or {}
        self._reader = reader
        self._writer = writer
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._pauses = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.closed = asyncio.Event()

    def pause_reading(self) -> None:
        self._pauses += 1
        self._resumed.clear()

    def resume_reading(self) -> None:
        self._pauses = max(0, self._pauses - 1)
        if self._pauses == 0:
            self._resumed.set()

    async def read_loop(self) -> None:
        """Feed the client's bytes to the codec until it leaves or the connection must end; then queue CLOSED."""
        try:
            while not self.closed.is_set():
                await self._resumed.wait()
                data = await self._reader.read(READ_CHUNK)
                if not data or await self._receive(data):
                    break
        except (ConnectionError, OSError, ClientGone):
            pass
        finally:
            self.closed.set()
            self._events.put_nowait(CLOSED)
            self._on_closed()

    async def _receive(self, data: bytes) -> bool:
        """Feed ``data`` to the codec, queue its events and flush; True when the connection must end."""
        raise NotImplementedError

    def _on_closed(self) -> None:
        """Wake whatever waits for the connection besides ``next_event``."""

    async def next_event(self) -> Any:
        event = await self._events.get()
        if event is CLOSED:
            self._events.put_nowait(CLOSED)  # later callers see the end too
        return event

    async def flush(self) -> None:
        data = self.codec.data_to_send()
        if data:
            if self._writer.is_closing():
                raise ClientGone("the connection is closed")
            self._writer.write(data)
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as err:
                self.closed.set()
                raise ClientGone(str(err)) from None


class SpdyPump(_Connection):
    """One SPDY/3.1 connection: a reader task feeding the codec, and flow-controlled senders.

    Events (spdyevents.StreamOpened, DataReceived, StreamReset, ...) are queued for the session; ``next_event`` returns
    CLOSED after the connection ended. Incoming data is acknowledged (WINDOW_UPDATE) only once the session has
    consumed it, so a peer that honours windows never has more than a window outstanding; for peers that do not
    (moby/spdystream), a session pauses reading (``pause_reading``) while its input buffers are full.
    """

    transport = "spdy"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 query: dict[str, list[str]] | None = None) -> None:
        super().__init__(reader, writer, protocol, query)
        self.codec = spdy.SpdyConnection(is_server=True, auto_acknowledge=False)
        self._progress = asyncio.Event()

    async def _receive(self, data: bytes) -> bool:
        try:
            events = self.codec.receive_data(data)
        except spdy.SpdyError as err:
            log.info("streaming: closing a SPDY connection after a protocol error: %s", err)
            self._queue_events(err.events)
            await self.flush()
            return True
        self._queue_events(events)
        self._wake_senders()
        await self.flush()
        return False

    def _on_closed(self) -> None:
        self._wake_senders()

    def _queue_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, spdyevents.GoAwayReceived):
                self.closed.set()
            self._events.put_nowait(event)

    def _wake_senders(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def reply(self, stream_id: int) -> None:
        self.codec.reply(stream_id, {})
        await self.flush()

    async def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Send data on a stream, waiting while too much of it is held back by the peer's window."""
        if self.closed.is_set():
            raise ClientGone("the connection is closed")
        self.codec.send_data(stream_id, data, fin=fin)
        await self.flush()
        while self.codec.pending(stream_id) > MAX_PENDING_BYTES:
            if self.closed.is_set():
                raise ClientGone("the connection closed while data was waiting for the peer's window")
            await self._progress.wait()

    async def end(self, stream_id: int) -> None:
        self.codec.end_stream(stream_id)
        await self.flush()

    async def drain_stream(self, stream_id: int) -> None:
        """Wait until everything sent on the stream left the codec (the peer opened its window for it)."""
        while self.codec.pending(stream_id) > 0:
            if self.closed.is_set():
                raise ClientGone("the connection closed before all data was delivered")
            await self._progress.wait()

    async def reset(self, stream_id: int, status: int = spdy.RstStatus.CANCEL) -> None:
        self.codec.reset(stream_id, status)
        await self.flush()

    async def acknowledge(self, stream_id: int, nbytes: int) -> None:
        if nbytes > 0 and not self.closed.is_set():
            self.codec.acknowledge(stream_id, nbytes)
            await self.flush()

    async def go_away(self) -> None:
        with contextlib.suppress(ClientGone, spdy.SpdyError):
            self.codec.go_away()
            await self.flush()


@dataclass(frozen=True)
class ChannelMessage:
    channel: int
    data: bytes


@dataclass(frozen=True)
class ChannelClosed:
    """v5's close signal: the client will send nothing more on ``channel``."""

    channel: int


class WebSocketPump(_Connection):
    """One WebSocket connection speaking a Kubernetes channel protocol: one channel id per message."""

    transport = "websocket"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 query: dict[str, list[str]] | None = None) -> None:
        super().__init__(reader, writer, protocol, query)
        self.codec = websocket.WebSocketConnection()
        self._close_sent = False

    async def _receive(self, data: bytes) -> bool:
        for event in self.codec.receive_data(data):
            if isinstance(event, websocket.Message):
                self._dispatch(event)
            elif isinstance(event, websocket.ProtocolError):
                log.info("streaming: closing a WebSocket after a protocol error: %s %s", event.code, event.reason)
        await self.flush()  # pongs, the answer to a close
        return self.codec.close_received or self.codec.closed

    def _dispatch(self, message: Any) -> None:
        try:
            channel, data = channels.decode(self.protocol, message.opcode, message.data)
            closed = channels.is_close_signal(self.protocol, channel, data)
        except ValueError as err:
            log.info("streaming: ignoring an undecodable WebSocket message: %s", err)
            return
        self._events.put_nowait(ChannelClosed(closed) if closed is not None else ChannelMessage(channel, data))

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed.is_set():
            raise ClientGone("the connection is closed")
        opcode, payload = channels.encode(self.protocol, channel, data)
        self.codec.send_message(opcode, payload)
        await self.flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close_sent:
            return
        self._close_sent = True
        with contextlib.suppress(ClientGone, websocket.WebSocketError):
            self.codec.close(code, reason)
            await self.flush()


Pump = SpdyPump | WebSocketPump
