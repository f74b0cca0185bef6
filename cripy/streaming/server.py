"""The streaming server: the HTTP/1.1 endpoint behind the URLs that Exec, Attach and PortForward hand out.

Owns: listening (plain or TLS), reading one request head per connection, routing ``/exec/<token>``,
``/attach/<token>`` and ``/portforward/<token>`` (anything else, and unknown, used or expired tokens: 404),
the upgrade negotiation kubelet's streaming server performs (SPDY/3.1 with ``X-Stream-Protocol-Version``, or
WebSocket with ``Sec-WebSocket-Protocol``), and the connection pumps that carry the sans-IO codecs
(cripy/streaming/spdy.py, websocket.py) over the socket. What happens on an upgraded connection belongs to a
session handler per kind (remotecommand.py for exec and attach, portforward.py); the server only guarantees that
a connection's handler task is cancelled and its socket closed when the client goes away or the server stops.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from cripy.errors import InvalidArgument
from cripy.streaming import channels, spdy, websocket
from cripy.streaming.tokens import TokenCache

log = logging.getLogger(__name__)

KIND_EXEC = "exec"
KIND_ATTACH = "attach"
KIND_PORTFORWARD = "portforward"
KINDS = (KIND_EXEC, KIND_ATTACH, KIND_PORTFORWARD)

SPDY_UPGRADE = "SPDY/3.1"
PROTOCOL_HEADER = channels.HEADER_PROTOCOL_VERSION
ACCEPTED_PROTOCOLS_HEADER = channels.HEADER_ACCEPTED_PROTOCOL_VERSIONS
WEBSOCKET_VERSION = "13"

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
READ_CHUNK = 64 * 1024
# How much outgoing data may wait in the SPDY codec (window exhausted) before a sender pauses.
MAX_PENDING_BYTES = 256 * 1024
# Client input that may wait for a slow consumer (per stream) before the connection stops being read.
INPUT_LIMIT_BYTES = 1024 * 1024


# ---- HTTP request heads -------------------------------------------------------------------------------------


class HttpError(Exception):
    """A request the server answers with an error status instead of upgrading."""

    def __init__(self, status: int, reason: str, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or []

    def response(self) -> bytes:
        body = (self.message + "\n").encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   ("Connection", "close"), *self.headers]
        return format_response_head(self.status, self.reason, headers) + body


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of a header (names compare case-insensitively)."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def header_list(self, name: str) -> list[str]:
        """All comma-separated items of every occurrence of a header, stripped, empty ones dropped."""
        wanted = name.lower()
        return channels.parse_protocol_header(value for key, value in self.headers if key.lower() == wanted)


def parse_request_head(head: bytes) -> HttpRequest:
    """Parse ``request-line CRLF *(header CRLF) CRLF``; HttpError 400 for anything malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "Bad Request", "the request head is not text") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(400, "Bad Request", "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "Bad Request", f"malformed request line {lines[0][:200]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "HTTP Version Not Supported", f"HTTP version {version[:20]!r} is not supported")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HttpError(400, "Bad Request", f"malformed header line {line[:200]!r}")
        headers.append((name, value.strip()))
    split = urlsplit(target)
    if not target.startswith("/"):
        raise HttpError(400, "Bad Request", f"request target {target[:200]!r} is not an absolute path")
    return HttpRequest(method=method, target=target, path=unquote(split.path),
                       query=parse_qs(split.query, keep_blank_values=True), version=version, headers=headers)


def format_response_head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def route(request: HttpRequest) -> tuple[str, str]:
    """(kind, token) of ``/<kind>/<token>``; HttpError 404 for any other path, 405 for a method not GET/POST."""
    parts = request.path.split("/")
    if len(parts) != 3 or parts[0] != "" or parts[1] not in KINDS or not parts[2]:
        raise HttpError(404, "Not Found", f"no streaming endpoint at {request.path[:200]!r}")
    if request.method not in ("GET", "POST"):
        raise HttpError(405, "Method Not Allowed", f"method {request.method[:20]} is not allowed here (GET or POST)",
                        [("Allow", "GET, POST")])
    return parts[1], parts[2]


# ---- upgrade negotiation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upgrade:
    """The outcome of a successful negotiation: the transport, the chosen protocol and the 101 response."""

    transport: str  # "spdy" or "websocket"
    protocol: str  # "" when a WebSocket client offered no sub-protocol (kubelet reads that as channel.k8s.io)
    response: bytes


def spdy_protocols(kind: str) -> tuple[str, ...]:
    if kind == KIND_PORTFORWARD:
        return channels.SPDY_PORT_FORWARD_PROTOCOLS
    return channels.SPDY_REMOTE_COMMAND_PROTOCOLS


def websocket_protocols(kind: str) -> tuple[str, ...]:
    if kind == KIND_PORTFORWARD:
        return channels.PORT_FORWARD_CHANNEL_PROTOCOLS
    return channels.CHANNEL_PROTOCOLS


def negotiate(request: HttpRequest, kind: str) -> Upgrade:
    """Choose the transport and protocol for ``request`` as kubelet does, or raise the HttpError to answer."""
    connection = [item.lower() for item in request.header_list("Connection")]
    upgrade = request.header("Upgrade") or ""
    if "upgrade" not in connection or not upgrade:
        raise HttpError(400, "Bad Request", "unable to upgrade: missing upgrade headers in request "
                                            f"(want Connection: Upgrade and Upgrade: {SPDY_UPGRADE} or websocket)")
    if upgrade.lower() == "websocket":
        return _negotiate_websocket(request, kind)
    if upgrade.lower() == SPDY_UPGRADE.lower():
        return _negotiate_spdy(request, kind)
    raise HttpError(400, "Bad Request", f"unable to upgrade: unsupported upgrade {upgrade[:100]!r} "
                                        f"(supported: {SPDY_UPGRADE}, websocket)")


def _negotiate_spdy(request: HttpRequest, kind: str) -> Upgrade:
    offered = request.header_list(PROTOCOL_HEADER)
    supported = spdy_protocols(kind)
    accepted = [(ACCEPTED_PROTOCOLS_HEADER, version) for version in supported]
    if not offered:
        raise HttpError(400, "Bad Request", f"unable to upgrade: the {PROTOCOL_HEADER} header is required; "
                                            f"this server accepts {', '.join(supported)}", accepted)
    chosen = channels.negotiate(offered, supported)
    if chosen is None:
        raise HttpError(403, "Forbidden", f"unable to upgrade: unable to negotiate protocol: client supports "
                                          f"{', '.join(offered)}; server accepts {', '.join(supported)}", accepted)
    response = format_response_head(101, "Switching Protocols", [
        ("Connection", "Upgrade"), ("Upgrade", SPDY_UPGRADE), (PROTOCOL_HEADER, chosen)])
    return Upgrade("spdy", chosen, response)


def _negotiate_websocket(request: HttpRequest, kind: str) -> Upgrade:
    version = request.header("Sec-WebSocket-Version")
    if version != WEBSOCKET_VERSION:
        raise HttpError(426, "Upgrade Required", f"WebSocket version {version!r} is not supported (only 13)",
                        [("Sec-WebSocket-Version", WEBSOCKET_VERSION)])
    key = request.header("Sec-WebSocket-Key") or ""
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HttpError(400, "Bad Request", "Sec-WebSocket-Key is missing or is not 16 bytes in base64")
    offered = request.header_list("Sec-WebSocket-Protocol")
    supported = websocket_protocols(kind)
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
               ("Sec-WebSocket-Accept", websocket.accept_key(key))]
    # kubelet serves a client that names no sub-protocol with the original binary channel protocol ("").
    chosen = channels.negotiate(offered, supported)
    if chosen == "":
        return Upgrade("websocket", "", format_response_head(101, "Switching Protocols", headers))
    if chosen is None:
        raise HttpError(403, "Forbidden", f"unable to upgrade: none of the requested WebSocket sub-protocols "
                                          f"{', '.join(offered)} is supported; supported: {', '.join(supported)}")
    headers.append(("Sec-WebSocket-Protocol", chosen))
    return Upgrade("websocket", chosen, format_response_head(101, "Switching Protocols", headers))


# ---- connection pumps ---------------------------------------------------------------------------------------


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

    Events (spdy.StreamOpened, DataReceived, StreamReset, ...) are queued for the session; ``next_event`` returns
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
            if isinstance(event, spdy.GoAwayReceived):
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


# ---- the server ---------------------------------------------------------------------------------------------


class SessionHandler(Protocol):
    """What serves one kind of request (exec, attach or port-forward)."""

    async def prepare(self, request: Any) -> None:
        """Check a request before a URL is handed out for it (domain errors for the CRI call)."""

    async def serve(self, pump: Pump, request: Any) -> None:
        """Run the session on an upgraded connection until it is done or the client went away."""


@dataclass(frozen=True)
class ServerSettings:
    address: str = "127.0.0.1"
    port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    token_ttl_seconds: float = 60.0


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise InvalidArgument(f"streaming server: cannot load TLS certificate {cert} / key {key}: {err}") from err
    context.set_alpn_protocols(["http/1.1"])
    return context


class StreamingServer:
    """Hands out URLs for requests (``url_for``) and serves them once each on its listening socket."""

    def __init__(self, settings: ServerSettings, handlers: Mapping[str, SessionHandler]) -> None:
        unknown = set(handlers) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown streaming kinds {sorted(unknown)}")
        self.settings = settings
        self.handlers = dict(handlers)
        self.tokens: TokenCache[tuple[str, Any]] = TokenCache(settings.token_ttl_seconds)
        self._ssl = server_ssl_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = settings.port

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl else "http"
        host = f"[{self.settings.address}]" if ":" in self.settings.address else self.settings.address
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.settings.address, self.settings.port,
                                                  ssl=self._ssl, limit=MAX_HEAD_BYTES, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def url_for(self, kind: str, request: Any) -> str:
        """Validate ``request`` with its handler and return the single-use URL that serves it."""
        handler = self.handlers.get(kind)
        if handler is None:
            raise ValueError(f"no handler for streaming kind {kind!r}")
        await handler.prepare(request)
        token = self.tokens.insert((kind, request))
        return f"{self.base_url}/{kind}/{token}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in a session must not take the server down
            log.exception("streaming: a connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            self._connections.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await self._read_head(reader, writer)
        if head is None:
            return
        try:
            request = parse_request_head(head)
            kind, token = route(request)
            entry = self.tokens.consume(token)
            if entry is None or entry[0] != kind:
                raise HttpError(404, "Not Found", f"unknown, used or expired {kind} token")
            upgrade = negotiate(request, kind)
        except HttpError as err:
            writer.write(err.response())
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            return
        writer.write(upgrade.response)
        await writer.drain()
        pump: Pump = (SpdyPump(reader, writer, upgrade.protocol, request.query) if upgrade.transport == "spdy"
                      else WebSocketPump(reader, writer, upgrade.protocol, request.query))
        await self._run_session(pump, self.handlers[kind], entry[1], kind)

    async def _read_head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SECONDS)
        except asyncio.LimitOverrunError:
            writer.write(HttpError(431, "Request Header Fields Too Large",
                                   f"the request head is larger than {MAX_HEAD_BYTES} bytes").response())
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError, ssl.SSLError):
            pass
        return None

    async def _run_session(self, pump: Pump, handler: SessionHandler, request: Any, kind: str) -> None:
        reader_task = asyncio.create_task(pump.read_loop(), name=f"streaming-{kind}-reader")
        try:
            await handler.serve(pump, request)
        except ClientGone:
            log.debug("streaming: %s client went away", kind)
        finally:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task
