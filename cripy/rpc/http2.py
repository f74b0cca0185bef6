"""The server side of an HTTP/2 connection (RFC 9113), sans I/O: bytes in, events and bytes out.

Only what a gRPC server needs: streams opened by the client, headers (with CONTINUATION), data with flow control
both ways, resets, pings, settings and GOAWAY. No server push, no priorities, no upgrade from HTTP/1.1. What the
client sends is decoded by `hpackdecode`. What we send is a handful of short headers, written here as
never-indexed literals (RFC 7541 section 6.2.3): no dynamic table to keep in step, and no encoder's state per call.

Receiving, a stream's window is credited as its DATA arrives (the caller resets a stream whose message grows past
its limit), but the connection's window only as each request ends or its stream is reset: what a client can have
sent of requests it has not finished is one connection window, whatever the number of its streams, and a client
that sends past the window ends the connection (FLOW_CONTROL_ERROR). What requests give back is announced once it
reaches a sixteenth of the window, not after every request: a WINDOW_UPDATE ahead of each answer cost a write of
ours and a wake-up of the client's per call. What we send waits for the client's windows: `send_data` queues, and
the queue drains as WINDOW_UPDATE and SETTINGS frames open them.

A malformed frame from the client ends the connection: `receive` raises ConnectionError after queueing a GOAWAY
that names the error; the caller sends what `data_to_send` holds and closes.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import NoReturn

from cripy.rpc import hpackdecode

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MAX_FRAME_SIZE = 16_384  # what we accept: the protocol's default, never raised by our SETTINGS
LARGEST_FRAME_SIZE = 2**24 - 1
RECEIVE_WINDOW = 16 * 1024 * 1024  # the windows we grant at once, so large requests are not held up
MAX_HEADER_BLOCK = 256 * 1024  # bytes of HEADERS and CONTINUATION payload for one header block
DEFAULT_HEADER_TABLE = 4096
CREDIT_BATCHES = 16  # what requests give back of the connection's window is announced a sixteenth at a time
RECENT_RESETS = 1024  # streams we reset whose late frames are still ignored rather than taken for errors


class FrameType(enum.IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    SETTINGS_TIMEOUT = 4
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    CONNECT_ERROR = 10
    ENHANCE_YOUR_CALM = 11
    INADEQUATE_SECURITY = 12
    HTTP_1_1_REQUIRED = 13


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

Headers = list[tuple[str, str]]


class ConnectionError(Exception):  # noqa: A001 - HTTP/2's own name for it; never confused with the builtin here
    """The client broke the protocol; the connection must end (a GOAWAY naming `code` is already queued)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"HTTP/2 {code.name}: {reason}")
        self.code = code


# -------------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset the stream (it cancelled the call), or the connection reset it for a stream error."""
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class GoingAway:
    last_stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Data queued for some stream may have left; the caller looks at `buffered`."""


Event = RequestReceived | DataReceived | StreamReset | GoingAway | WindowOpened


# -------------------------------------------------------------------------------------------------------- frames


def frame(kind: FrameType, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    return _frame_header(kind, flags, stream_id, len(payload)) + payload


def _frame_header(kind: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    return length.to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")


def window_for(largest_request: int) -> int:
    """The connection receive window in which a request of `largest_request` bytes always arrives whole, with up to
    a batch of what earlier requests gave back not announced yet."""
    return min(max(RECEIVE_WINDOW, -(-largest_request * CREDIT_BATCHES // (CREDIT_BATCHES - 1))), MAX_WINDOW)


def _u32(data: bytes | bytearray | memoryview, at: int = 0) -> int:
    return int.from_bytes(data[at:at + 4], "big") & 0x7FFF_FFFF


def literal_block(headers: Headers) -> bytes:
    """A header block of never-indexed literals with literal names, no Huffman coding."""
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
        out += b"\x10" + _integer(len(raw_name), 7, 0) + raw_name + _integer(len(raw_value), 7, 0) + raw_value
    return bytes(out)


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """HPACK's integer with an N-bit prefix (RFC 7541 section 5.1); `flags` fills the first byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(slots=True)
class _Stream:
    send_window: int
    queued: deque[memoryview] = field(default_factory=deque)  # DATA payloads waiting for a window
    queued_bytes: int = 0
    trailers: bytes | None = None  # the closing header block, sent once `queued` is empty
    remote_closed: bool = False
    local_closed: bool = False
    held: int = 0  # the request's DATA bytes not yet given back to the connection's receive window


@dataclass(slots=True)
class _HeaderBlock:
    stream_id: int
    end_stream: bool
    fragments: bytearray


class ServerConnection:
    """One HTTP/2 connection, server side. Feed `receive` what the socket reads; send `data_to_send()`."""

    def __init__(self, max_concurrent_streams: int = 1000, max_header_list_size: int = 1024 * 1024,
                 receive_window: int = RECEIVE_WINDOW) -> None:
        """`receive_window`: the connection's; `window_for` the largest request the caller takes, or that request
        could never be sent whole. No less than the protocol's initial window, which a WINDOW_UPDATE cannot shrink."""
        if not DEFAULT_WINDOW <= receive_window <= MAX_WINDOW:
            raise ValueError(f"a receive window of {receive_window} bytes, not within {DEFAULT_WINDOW}..{MAX_WINDOW}")
        self._max_concurrent = max_concurrent_streams
        self._decoder = hpackdecode.HeaderDecoder(DEFAULT_HEADER_TABLE, max_header_list_size)
        self._table_size_update: int | None = None  # a smaller table the client asked for, announced in our next block
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._preface_seen = False
        self._settings_seen = False
        self._recently_reset: dict[int, None] = {}  # insertion-ordered: the oldest is forgotten first
        self._streams: dict[int, _Stream] = {}
        self._highest_stream_id = 0
        self._send_window = DEFAULT_WINDOW
        self._receive_window = receive_window  # what the client may still send before we give some back
        self._credit_batch = receive_window // CREDIT_BATCHES
        self._credit = 0  # given back to the receive window, not announced yet
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = MAX_FRAME_SIZE
        self._block: _HeaderBlock | None = None
        self._going_away = False
        settings = b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in (
            (Setting.MAX_CONCURRENT_STREAMS, max_concurrent_streams),
            (Setting.INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
            (Setting.MAX_HEADER_LIST_SIZE, max_header_list_size),
            (Setting.ENABLE_PUSH, 0),
        ))
        self._outbox += frame(FrameType.SETTINGS, 0, 0, settings)
        if receive_window > DEFAULT_WINDOW:
            self._outbox += frame(FrameType.WINDOW_UPDATE, 0, 0, (receive_window - DEFAULT_WINDOW).to_bytes(4, "big"))

    # ------------------------------------------------------------------------------------------------ receiving

    def receive(self, data: bytes) -> list[Event]:
        self._inbox += data
        events: list[Event] = []
        if not self._preface_seen:
            if len(self._inbox) < len(PREFACE):
                if not PREFACE.startswith(bytes(self._inbox)):
                    self._fail(ErrorCode.PROTOCOL_ERROR, "the client did not open with the HTTP/2 preface")
                return events
            if self._inbox[:len(PREFACE)] != PREFACE:
                self._fail(ErrorCode.PROTOCOL_ERROR, "the client did not open with the HTTP/2 preface")
            del self._inbox[:len(PREFACE)]
            self._preface_seen = True
        inbox = self._inbox
        offset = 0
        try:
            while len(inbox) - offset >= 9:
                length = int.from_bytes(inbox[offset:offset + 3], "big")
                if length > MAX_FRAME_SIZE:
                    self._fail(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes (at most {MAX_FRAME_SIZE})")
                if len(inbox) - offset < 9 + length:
                    break
                kind, flags = inbox[offset + 3], inbox[offset + 4]
                stream_id = _u32(inbox, offset + 5)
                payload = bytes(inbox[offset + 9:offset + 9 + length])
                offset += 9 + length
                if not self._settings_seen:
                    if kind != FrameType.SETTINGS:
                        self._fail(ErrorCode.PROTOCOL_ERROR, "the client's preface did not go on with SETTINGS")
                    self._settings_seen = True
                self._frame(kind, flags, stream_id, payload, events)
        finally:
            del inbox[:offset]
            self._announce_credit()
        return events

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._block is not None and kind != FrameType.CONTINUATION:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"frame type {kind} inside a header block")
        if kind == FrameType.DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == FrameType.HEADERS:
            self._headers(flags, stream_id, payload, events)
        elif kind == FrameType.CONTINUATION:
            self._continuation(flags, stream_id, payload, events)
        elif kind == FrameType.RST_STREAM:
            self._rst_stream(stream_id, payload, events)
        elif kind == FrameType.SETTINGS:
            self._settings(flags, stream_id, payload, events)
        elif kind == FrameType.PING:
            self._ping(flags, stream_id, payload)
        elif kind == FrameType.GOAWAY:
            if stream_id or len(payload) < 8:
                self._fail(ErrorCode.PROTOCOL_ERROR, "a malformed GOAWAY")
            events.append(GoingAway(_u32(payload), int.from_bytes(payload[4:8], "big")))
        elif kind == FrameType.WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == FrameType.PRIORITY:
            if not stream_id or len(payload) != 5:
                self._fail(ErrorCode.PROTOCOL_ERROR, "a malformed PRIORITY frame")
        elif kind == FrameType.PUSH_PROMISE:
            self._fail(ErrorCode.PROTOCOL_ERROR, "a client cannot push")
        # Frames of unknown types are ignored (RFC 9113 section 4.1).

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        data = self._unpad(payload, flags, FrameType.DATA)
        # Flow control counts the whole payload, padding and its length byte included (RFC 9113 6.1).
        if len(payload) > self._receive_window:
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, f"DATA of {len(payload)} bytes on stream {stream_id}, past the "
                       f"connection's receive window of {self._receive_window}")
        self._receive_window -= len(payload)
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._highest_stream_id:
                self._fail(ErrorCode.PROTOCOL_ERROR, f"DATA on stream {stream_id}, which was never opened")
            self._credit += len(payload)  # the rest of a request whose stream we reset or answered early
            return
        stream.held += len(payload)
        if stream.remote_closed:
            self._drop(stream_id)
            self._reset(stream_id, ErrorCode.STREAM_CLOSED)
            events.append(StreamReset(stream_id, ErrorCode.STREAM_CLOSED))
            return
        end = bool(flags & END_STREAM)
        if end:
            self._remote_closed(stream_id, stream)
        elif payload:
            self._outbox += frame(FrameType.WINDOW_UPDATE, 0, stream_id, len(payload).to_bytes(4, "big"))
        events.append(DataReceived(stream_id, data, end))

    def _headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = self._unpad(payload, flags, FrameType.HEADERS)
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            fragment = fragment[5:]
        self._block = _HeaderBlock(stream_id, bool(flags & END_STREAM), bytearray(fragment))
        if flags & END_HEADERS:
            self._header_block_done(events)

    def _unpad(self, payload: bytes, flags: int, kind: FrameType) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            self._fail(ErrorCode.PROTOCOL_ERROR, f"{kind.name} frame padded beyond its length")
        return payload[1:len(payload) - payload[0]]

    def _continuation(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        block = self._block
        if block is None or block.stream_id != stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without the HEADERS it continues")
        block.fragments += payload
        if len(block.fragments) > MAX_HEADER_BLOCK:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            self._header_block_done(events)

    def _header_block_done(self, events: list[Event]) -> None:
        block, self._block = self._block, None
        assert block is not None
        try:
            # Every block is decoded, even one for a stream we refuse: the decoder's table must follow the client's.
            headers = self._decoder.decode(bytes(block.fragments))
        except hpackdecode.OversizedHeaderList:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "a header list over the size we announced")
        except hpackdecode.DecodeError as e:
            self._fail(ErrorCode.COMPRESSION_ERROR, f"the header block does not decode: {e}")
        stream_id = block.stream_id
        if stream_id in self._recently_reset:
            return  # trailers that crossed our RST_STREAM (RFC 9113 section 5.1)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client: they must end its side of the stream
            if stream.remote_closed or not block.end_stream:
                self._fail(ErrorCode.PROTOCOL_ERROR, f"a second header block on stream {stream_id} that does not end it")
            self._remote_closed(stream_id, stream)
            events.append(DataReceived(stream_id, b"", True))
            return
        if stream_id % 2 == 0 or stream_id <= self._highest_stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS open stream {stream_id}, which is not a new client stream")
        self._highest_stream_id = stream_id
        if self._going_away or len(self._streams) >= self._max_concurrent:
            self._reset(stream_id, ErrorCode.REFUSED_STREAM)
            return
        stream = _Stream(send_window=self._peer_initial_window)
        self._streams[stream_id] = stream
        if block.end_stream:
            stream.remote_closed = True
        events.append(RequestReceived(stream_id, headers, block.end_stream))

    def _rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
        if not stream_id or stream_id > self._highest_stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, which was never opened")
        if self._drop(stream_id) is not None:
            events.append(StreamReset(stream_id, int.from_bytes(payload, "big")))

    def _settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not made of 6-byte entries")
        for at in range(0, len(payload), 6):
            key = int.from_bytes(payload[at:at + 2], "big")
            value = int.from_bytes(payload[at + 2:at + 6], "big")
            if key == Setting.HEADER_TABLE_SIZE:
                # Our blocks use no dynamic table, but a smaller table must be announced in the next one.
                self._table_size_update = min(value, DEFAULT_HEADER_TABLE)
            elif key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(ErrorCode.FLOW_CONTROL_ERROR, f"an initial window of {value} bytes")
                delta, self._peer_initial_window = value - self._peer_initial_window, value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        self._fail(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window beyond 2^31-1")
            elif key == Setting.MAX_FRAME_SIZE:
                if not MAX_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
                    self._fail(ErrorCode.PROTOCOL_ERROR, f"a maximum frame size of {value}")
                self._peer_max_frame = value
            elif key == Setting.ENABLE_PUSH and value > 1:
                self._fail(ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH set to {value}")
        self._outbox += frame(FrameType.SETTINGS, ACK, 0)
        self._flush_streams()
        events.append(WindowOpened())

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) != 8:
            self._fail(ErrorCode.PROTOCOL_ERROR if stream_id else ErrorCode.FRAME_SIZE_ERROR, "a malformed PING")
        if not flags & ACK:
            self._outbox += frame(FrameType.PING, ACK, 0, payload)

    def _window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = _u32(payload)
        if not stream_id:
            if not increment:
                self._fail(ErrorCode.PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                self._fail(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window beyond 2^31-1")
            self._flush_streams()
            events.append(WindowOpened())
            return
        if stream_id > self._highest_stream_id:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, which was never opened")
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream that just ended: its window no longer matters
        if not increment or stream.send_window + increment > MAX_WINDOW:
            self._drop(stream_id)
            code = ErrorCode.PROTOCOL_ERROR if not increment else ErrorCode.FLOW_CONTROL_ERROR
            self._reset(stream_id, code)
            events.append(StreamReset(stream_id, code))
            return
        stream.send_window += increment
        self._flush(stream_id, stream)
        events.append(WindowOpened())

    def _remote_closed(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        self._give_back(stream)
        if stream.local_closed:
            del self._streams[stream_id]

    def _drop(self, stream_id: int) -> _Stream | None:
        """Forget the stream, giving back to the connection's window what its unfinished request held."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._give_back(stream)
        return stream

    def _give_back(self, stream: _Stream) -> None:
        """What the stream's request held of the connection's window, credited (announced by `_announce_credit`)."""
        self._credit += stream.held
        stream.held = 0

    def _fail(self, code: ErrorCode, reason: str) -> NoReturn:
        self._block = None
        self._inbox.clear()
        self._outbox += frame(FrameType.GOAWAY, 0, 0, self._highest_stream_id.to_bytes(4, "big")
                              + int(code).to_bytes(4, "big") + reason.encode()[:256])
        raise ConnectionError(code, reason)

    # -------------------------------------------------------------------------------------------------- sending

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """The response's headers; with end_stream, a response of headers alone (gRPC's "trailers only")."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        self._outbox += self._header_frames(stream_id, headers, end_stream)
        if end_stream:
            self._local_closed(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, *more: bytes) -> None:
        """Queue `data` and `more` after it (a message's prefix and its body, never joined: a kept answer is tens
        of kB) and send what the windows let through."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        for piece in (data, *more):
            if piece:
                stream.queued.append(memoryview(piece))
                stream.queued_bytes += len(piece)
        self._flush(stream_id, stream)

    def send_trailers(self, stream_id: int, trailers: Headers) -> None:
        """End the stream with these trailers, after whatever data is still queued for it."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.trailers = self._header_frames(stream_id, trailers, True)
        self._flush(stream_id, stream)

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        if self._drop(stream_id) is not None:
            self._reset(stream_id, code)
            self._announce_credit()

    def go_away(self, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """Refuse new streams; those open are served to their end."""
        if not self._going_away:
            self._going_away = True
            self._outbox += frame(FrameType.GOAWAY, 0, 0, self._highest_stream_id.to_bytes(4, "big")
                                  + int(code).to_bytes(4, "big"))

    def buffered(self, stream_id: int) -> int:
        """Bytes of the stream's data still waiting for the client's window (0 once it is all sent or gone)."""
        stream = self._streams.get(stream_id)
        return stream.queued_bytes if stream is not None else 0

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def data_to_send(self) -> bytearray:
        """What to write, handed over (not copied): the connection goes on in a new buffer."""
        out, self._outbox = self._outbox, bytearray()
        return out

    def _header_frames(self, stream_id: int, headers: Headers, end_stream: bool) -> bytes:
        block = literal_block(headers)
        if self._table_size_update is not None:
            block = _integer(self._table_size_update, 5, 0x20) + block
            self._table_size_update = None
        limit = self._peer_max_frame
        first, rest = block[:limit], block[limit:]
        flags = (END_STREAM if end_stream else 0) | (0 if rest else END_HEADERS)
        out = bytearray(frame(FrameType.HEADERS, flags, stream_id, first))
        while rest:
            piece, rest = rest[:limit], rest[limit:]
            out += frame(FrameType.CONTINUATION, 0 if rest else END_HEADERS, stream_id, piece)
        return bytes(out)

    def _flush_streams(self) -> None:
        for stream_id, stream in list(self._streams.items()):
            if self._send_window <= 0:
                return
            if stream.queued or stream.trailers is not None:
                self._flush(stream_id, stream)

    def _flush(self, stream_id: int, stream: _Stream) -> None:
        while stream.queued:
            room = min(self._send_window, stream.send_window, self._peer_max_frame, stream.queued_bytes)
            if room <= 0:
                return
            # One frame takes as much of the queue as fits.
            self._outbox += _frame_header(FrameType.DATA, 0, stream_id, room)
            self._move_queued(stream, room)
            self._send_window -= room
            stream.send_window -= room
        if stream.trailers is not None:
            self._outbox += stream.trailers
            stream.trailers = None
            self._local_closed(stream_id, stream)

    def _move_queued(self, stream: _Stream, size: int) -> None:
        """Append the first `size` bytes queued for the stream to what we send, piece by piece: never joined first."""
        stream.queued_bytes -= size
        while size:
            chunk = stream.queued[0]
            if len(chunk) > size:
                stream.queued[0] = chunk[size:]
                chunk = chunk[:size]
            else:
                stream.queued.popleft()
            self._outbox += chunk
            size -= len(chunk)

    def _local_closed(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._streams.pop(stream_id, None)
        else:
            # The answer is complete before the request: the rest of the request is not wanted (RFC 9113 8.1).
            self.reset(stream_id, ErrorCode.NO_ERROR)

    def _announce_credit(self) -> None:
        """The connection WINDOW_UPDATE for what requests gave back, once that is a batch: looked at after each
        `receive`, and when the caller resets a stream."""
        if self._credit >= self._credit_batch:
            self._outbox += frame(FrameType.WINDOW_UPDATE, 0, 0, self._credit.to_bytes(4, "big"))
            self._receive_window += self._credit
            self._credit = 0

    def _reset(self, stream_id: int, code: ErrorCode) -> None:
        self._outbox += frame(FrameType.RST_STREAM, 0, stream_id, int(code).to_bytes(4, "big"))
        self._recently_reset[stream_id] = None
        if len(self._recently_reset) > RECENT_RESETS:
            del self._recently_reset[next(iter(self._recently_reset))]
