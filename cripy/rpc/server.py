"""The gRPC server on asyncio: HTTP/2 connections on a unix socket (rpc/http2.py), gRPC calls on their streams
(rpc/wire.py), each call a task running its method's handler, or answered from memory at once (Method.at_once).

A method is a handler coroutine (unary) or async generator (server streaming) taking the request and a Context.
The context gives the caller's metadata and the time left, and `abort` ends the call with a status. A call is
cancelled when the client resets its stream, its connection goes, or its deadline passes (DEADLINE_EXCEEDED).
Everything runs on the event loop's thread: a request wakes one thread, not the three of grpcio's core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from cripy.rpc import http2, wire
from cripy.rpc.wire import StatusCode

log = logging.getLogger(__name__)

STREAM_HIGH_WATER = 1024 * 1024  # bytes a streaming call may have waiting for the client's window before it waits
STOP_POLL = 0.01  # seconds between looks at whether the connections have finished, while stopping


@dataclass(frozen=True, slots=True)
class Method:
    handler: Callable[[Any, Context], Any]  # a coroutine function, or an async generator function when streaming
    deserialize: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]
    streaming: bool = False
    # A unary method's answer from memory, tried before the handler: the response, or None to run the handler. It
    # answers in the step that received the request, without a task or a turn of the event loop.
    at_once: Callable[[Any, Context], Any] | None = None


class AbortError(Exception):
    """Raised by Context.abort: the call ends with the status the context holds."""


class Context:
    """What a handler knows of its call, and how it ends it with a status of its choosing."""

    __slots__ = ("_metadata", "_deadline", "_code", "_details")

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], deadline: float | None) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._code: StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    @property
    def deadline(self) -> float | None:
        """When the caller stops waiting, on time.monotonic(), which is also the event loop's clock."""
        return self._deadline

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: StatusCode, details: str = "") -> NoReturn:
        if code == StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")
        self._code, self._details = code, details
        raise AbortError(details)

    def code(self) -> StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details


class Server:
    """Serves `methods` (by path, "/package.Service/Method") on a unix socket. `on_idle`, when given, is called
    each time the last call in flight (on any connection) has ended."""

    def __init__(self, methods: dict[str, Method], max_message_bytes: int, max_concurrent_streams: int = 1000,
                 on_idle: Callable[[], None] | None = None) -> None:
        self._methods = methods
        self._max_message = max_message_bytes
        self._max_streams = max_concurrent_streams
        self._on_idle = on_idle
        self._listener: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, socket_path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_unix_server(lambda: _Connection(self), str(socket_path))

    async def stop(self, grace: float) -> None:
        """Stop listening and refuse new calls; let those in flight finish and their answers reach the clients
        for up to `grace` seconds; then cancel the rest, wait for them to end, and drop the connections."""
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(connection.busy() for connection in self._connections) and loop.time() < deadline:
            await asyncio.sleep(STOP_POLL)
        calls = [task for connection in self._connections for task in connection.calls()]
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        for connection in list(self._connections):
            connection.abort()
        if self._listener is not None:
            await self._listener.wait_closed()

    def _connected(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def _disconnected(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    def _call_ended(self) -> None:
        if self._on_idle is not None and not any(connection.handling() for connection in self._connections):
            self._on_idle()


@dataclass(slots=True)
class _Call:
    method: Method
    context: Context
    reader: wire.MessageReader
    request: bytes | None = None
    decoded: Any = None  # the request, once an answer from memory has decoded it
    task: asyncio.Task[None] | None = None
    answered: bool = False  # the response's headers are sent


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self._server = server
        # What a client's unfinished requests can hold of our memory is one window per connection.
        window = http2.window_for(server._max_message + wire.PREFIX)
        self._h2 = http2.ServerConnection(max_concurrent_streams=server._max_streams, receive_window=window)
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, _Call] = {}
        self._window_opened = asyncio.Event()
        self._writable = asyncio.Event()  # the transport's buffer is below its high-water mark
        self._writable.set()
        # Handlers still running, those of calls the client reset included: they count against the stream limit
        # until they end, so that opening and resetting streams cannot pile up work (HTTP/2 "rapid reset").
        self._running: set[asyncio.Task[None]] = set()
        self._read_paused_for: set[str] = set()

    # --------------------------------------------------------------------------------------------- the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connected(self)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive(data)
        except http2.ConnectionError as e:
            log.warning("closing a gRPC connection: %s", e)
            self._flush()
            self.close()
            return
        for event in events:
            if isinstance(event, http2.RequestReceived):
                self._request(event)
            elif isinstance(event, http2.DataReceived):
                self._data(event)
            elif isinstance(event, http2.StreamReset):
                self._cancel(event.stream_id)
            elif isinstance(event, http2.WindowOpened):
                self._window_opened.set()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._disconnected(self)
        self._transport = None
        for stream_id in list(self._calls):
            self._cancel(stream_id)
        self._window_opened.set()
        self._writable.set()

    def pause_writing(self) -> None:
        # A client that does not read what we send: stop reading it too, or its pings would queue answers forever.
        self._writable.clear()
        self._pause_reading("writing")

    def resume_writing(self) -> None:
        self._writable.set()
        self._resume_reading("writing")

    def _pause_reading(self, reason: str) -> None:
        if not self._read_paused_for and self._transport is not None:
            self._transport.pause_reading()
        self._read_paused_for.add(reason)

    def _resume_reading(self, reason: str) -> None:
        self._read_paused_for.discard(reason)
        if not self._read_paused_for and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def go_away(self) -> None:
        self._h2.go_away()
        self._flush()
        if not self._calls:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, whatever it still had to send (a client that stopped reading)."""
        if self._transport is not None:
            self._transport.abort()

    def busy(self) -> bool:
        """Whether a call is in flight, or an answer still waits for the client's window."""
        return bool(self._calls) or self._h2.open_streams > 0

    def handling(self) -> bool:
        """Whether a handler still runs, a reset call's included (asked at the end of every call: no copy)."""
        return bool(self._running)

    def calls(self) -> list[asyncio.Task[None]]:
        """The handlers still running, a reset call's among them."""
        return list(self._running)

    def _flush(self) -> None:
        out = self._h2.data_to_send()
        if out and self._transport is not None:
            self._transport.write(out)

    # ------------------------------------------------------------------------------------------------ requests

    def _request(self, event: http2.RequestReceived) -> None:
        try:
            request = wire.parse_request(event.headers)
        except wire.ProtocolViolation as e:
            self._trailers_only(event.stream_id, e.code, str(e), e.http_status)
            return
        method = self._server._methods.get(request.path)
        if method is None:
            self._trailers_only(event.stream_id, StatusCode.UNIMPLEMENTED, f"unknown method {request.path[:200]!r}")
            return
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        call = _Call(method, Context(request.metadata, deadline), wire.MessageReader(self._server._max_message))
        self._calls[event.stream_id] = call
        if event.end_stream:
            self._begin(event.stream_id, call)

    def _data(self, event: http2.DataReceived) -> None:
        call = self._calls.get(event.stream_id)
        if call is None or call.task is not None:
            return
        try:
            messages = call.reader.feed(event.data)
            if messages and (call.request is not None or len(messages) > 1):
                raise wire.ProtocolViolation(StatusCode.INVALID_ARGUMENT, "more than one request message in a call "
                                             "that takes one")
        except wire.ProtocolViolation as e:
            del self._calls[event.stream_id]
            self._trailers_only(event.stream_id, e.code, str(e))
            return
        if messages:
            call.request = messages[0]
        if event.end_stream:
            self._begin(event.stream_id, call)

    def _begin(self, stream_id: int, call: _Call) -> None:
        if call.request is None or call.reader.partial:
            del self._calls[stream_id]
            self._trailers_only(stream_id, StatusCode.INVALID_ARGUMENT,
                                "the call ended without a whole request message")
            return
        if call.method.at_once is not None and self._answered_at_once(stream_id, call):
            return
        call.task = task = asyncio.get_running_loop().create_task(self._run(stream_id, call))
        self._running.add(task)
        task.add_done_callback(self._ended)
        if len(self._running) >= self._server._max_streams:
            self._pause_reading("handlers")

    def _answered_at_once(self, stream_id: int, call: _Call) -> bool:
        """Whether the method's answer from memory answered the call (its trailers are queued with it). Anything
        but a response leaves the call to its handler, which meets the same request and answers it as it should."""
        assert call.method.at_once is not None
        try:
            call.decoded = call.method.deserialize(call.request or b"")
            response = call.method.at_once(call.decoded, call.context)
            if response is None:
                return False
            payload = self._payload(call, response)
        except Exception:  # noqa: BLE001 - see above: the handler reports what is wrong
            return False
        del self._calls[stream_id]
        self._send_payload(stream_id, call, payload, flush=False)
        self._h2.send_trailers(stream_id, wire.OK_TRAILERS)
        self._server._call_ended()
        return True

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if len(self._running) < self._server._max_streams:
            self._resume_reading("handlers")
        self._server._call_ended()

    def _cancel(self, stream_id: int) -> None:
        call = self._calls.pop(stream_id, None)
        if call is not None and call.task is not None:
            call.task.cancel()

    # ------------------------------------------------------------------------------------------------- answers

    async def _run(self, stream_id: int, call: _Call) -> None:
        code, details = StatusCode.OK, ""
        deadline = asyncio.timeout_at(call.context.deadline)
        try:
            try:
                request = call.decoded if call.decoded is not None else call.method.deserialize(call.request or b"")
            except Exception as e:  # noqa: BLE001 - any failure to decode is the request's fault
                code, details = StatusCode.INVALID_ARGUMENT, f"the request does not decode: {e}"
            else:
                async with deadline:
                    await self._answer(stream_id, call, request)
        except AbortError:
            code, details = call.context.code() or StatusCode.UNKNOWN, call.context.details()
        except wire.ProtocolViolation as e:
            code, details = e.code, str(e)
        except TimeoutError as e:
            if deadline.expired():
                code, details = StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            else:  # the handler's own timeout, not the client's deadline
                log.exception("gRPC handler failed")
                code, details = StatusCode.UNKNOWN, f"unexpected {type(e).__name__}: {e}"
        except asyncio.CancelledError:
            if stream_id in self._calls:  # not the client's doing: the server is stopping
                self._calls.pop(stream_id)
                self._h2.reset(stream_id, http2.ErrorCode.CANCEL)
                self._flush()
            raise
        except Exception as e:  # noqa: BLE001 - a handler's bug ends its call, never the connection
            log.exception("gRPC handler failed")
            code, details = StatusCode.UNKNOWN, f"unexpected {type(e).__name__}: {e}"
        if self._calls.pop(stream_id, None) is None:
            return
        if code == StatusCode.OK:
            self._h2.send_trailers(stream_id, wire.OK_TRAILERS)
        elif call.answered:
            self._h2.send_trailers(stream_id, wire.status_trailers(code, details))
        else:
            self._h2.send_headers(stream_id, wire.trailers_only(code, details), True)
        self._flush()

    async def _answer(self, stream_id: int, call: _Call, request: Any) -> None:
        if not call.method.streaming:
            self._send(stream_id, call, await call.method.handler(request, call.context), flush=False)
            return
        # aclosing: a call cancelled while it waits for the client ends its generator now, not at the next GC.
        async with contextlib.aclosing(call.method.handler(request, call.context)) as responses:
            async for response in responses:
                self._send(stream_id, call, response)
                await self._drained(stream_id)

    def _send(self, stream_id: int, call: _Call, response: Any, flush: bool = True) -> None:
        """Queue one response message; a unary answer is written with its trailers, in one write."""
        self._send_payload(stream_id, call, self._payload(call, response), flush)

    def _payload(self, call: _Call, response: Any) -> bytes:
        payload = call.method.serialize(response)
        if len(payload) > self._server._max_message:
            raise wire.ProtocolViolation(StatusCode.RESOURCE_EXHAUSTED, f"the response of {len(payload)} bytes is "
                                         f"over the limit of {self._server._max_message}")
        return payload

    def _send_payload(self, stream_id: int, call: _Call, payload: bytes, flush: bool) -> None:
        if not call.answered:
            self._h2.send_headers(stream_id, wire.RESPONSE_HEADERS)
            call.answered = True
        self._h2.send_data(stream_id, wire.prefix(len(payload)), payload)
        if flush:
            self._flush()

    async def _drained(self, stream_id: int) -> None:
        """Wait while the stream has more waiting for the client's window than it should hold, or the socket
        holds more than the client has read."""
        while self._transport is not None:
            if not self._writable.is_set():
                await self._writable.wait()
            elif self._h2.buffered(stream_id) > STREAM_HIGH_WATER:
                self._window_opened.clear()
                await self._window_opened.wait()
            else:
                return

    def _trailers_only(self, stream_id: int, code: StatusCode, details: str, http_status: int = 200) -> None:
        self._h2.send_headers(stream_id, wire.trailers_only(code, details, http_status), True)
