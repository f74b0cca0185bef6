"""RFC 6455 WebSocket framing as a sans-IO state machine: bytes in -> events, method calls -> bytes out.

Owns the frame layer only (after the HTTP/1.1 upgrade, which the server does; ``accept_key`` computes the
``Sec-WebSocket-Accept`` value it needs). Server role by default: incoming frames MUST be masked, outgoing are
not; ``is_client=True`` flips both (for ``cripy ctl`` and tests).

Behaviour:
- Fragmented messages are reassembled; control frames may arrive between fragments. Text messages must be
  valid UTF-8 (else close 1007). A message larger than ``max_message_size`` fails with 1009 as soon as a
  frame header announces it, before the payload is buffered.
- Protocol violations (unmasked client frame, reserved bits, unknown opcode, fragmented or oversized control
  frame, stray continuation, bad close payload) queue a Close frame with the matching code, emit
  ``ProtocolError(code, reason)`` as the last event and stop parsing; ``closed`` is then True: flush
  ``data_to_send()`` and drop the transport.
- Ping is answered with a Pong automatically. A received Close is answered (echoing its code) unless we sent
  one already; once both Close frames have crossed, ``closed`` is True and the server should close TCP.
- ``close()`` is idempotent; after it, sends are dropped silently (an output pump racing with the close
  handshake must not crash).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_CONTROL_PAYLOAD = 125


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire
    ABNORMAL = 1006  # never on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011


class WebSocketError(Exception):
    """The caller misused the connection (e.g. a control payload over 125 bytes)."""


def accept_key(sec_websocket_key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a client's ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1((sec_websocket_key.strip() + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Message:
    opcode: int  # Opcode.TEXT or Opcode.BINARY; data stays bytes (UTF-8 already checked for text)
    data: bytes


@dataclass(frozen=True)
class CloseReceived:
    code: int | None  # None when the peer's Close frame had no status code
    reason: str


@dataclass(frozen=True)
class PingReceived:
    data: bytes


@dataclass(frozen=True)
class PongReceived:
    data: bytes


@dataclass(frozen=True)
class ProtocolError:
    """We failed the connection: a Close with this code is queued; nothing more will be parsed."""

    code: int
    reason: str


Event = Message | CloseReceived | PingReceived | PongReceived | ProtocolError


# --------------------------------------------------------------------------------------------- framing


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR data with the 4-byte masking key (masking and unmasking are the same operation)."""
    n = len(data)
    if n == 0:
        return b""
    # One big-integer XOR instead of a per-byte Python loop: 10 MiB takes milliseconds.
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """One frame; masked when a 4-byte mask_key is given (client to server)."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    n = len(payload)
    if n < 126:
        header = struct.pack(">BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack(">BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack(">BBQ", first, mask_bit | 127, n)
    if mask_key is None:
        return header + payload
    return header + mask_key + apply_mask(payload, mask_key)


def _close_payload(code: int | None, reason: str) -> bytes:
    if code is None:
        return b""
    raw_reason = reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    # Cutting may split a UTF-8 sequence; drop the broken tail so the peer does not fail us with 1007.
    raw_reason = raw_reason.decode("utf-8", "ignore").encode("utf-8")
    return struct.pack(">H", code) + raw_reason


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


class _Failure(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# ------------------------------------------------------------------------------------------ connection


class WebSocketConnection:
    """One WebSocket connection after the handshake."""

    def __init__(
        self,
        *,
        is_client: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.is_client = is_client
        self.max_message_size = max_message_size
        self._random_bytes = random_bytes
        self._inbuf = bytearray()
        self._out = bytearray()
        self._message_opcode: int | None = None  # opcode of the fragmented message being reassembled
        self._fragments = bytearray()
        self._close_sent = False
        self._close_received = False
        self._failed = False
        self.close_code: int | None = None  # what the peer sent, once close_received
        self.close_reason = ""

    # ------------------------------------------------------------------------------- properties

    @property
    def close_sent(self) -> bool:
        return self._close_sent

    @property
    def close_received(self) -> bool:
        return self._close_received

    @property
    def closed(self) -> bool:
        """Nothing more will be exchanged: both Close frames crossed, or we failed the connection."""
        return self._failed or (self._close_sent and self._close_received)

    # ---------------------------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_binary(self, data: bytes) -> None:
        self.send_message(Opcode.BINARY, data)

    def send_text(self, text: str) -> None:
        self.send_message(Opcode.TEXT, text.encode("utf-8"))

    def send_message(self, opcode: int, data: bytes, *, fragment_size: int | None = None) -> None:
        """A data message, optionally cut into frames of fragment_size bytes."""
        if opcode not in (Opcode.TEXT, Opcode.BINARY):
            raise WebSocketError(f"opcode {opcode} is not a data opcode")
        if self._close_sent:
            return
        if not fragment_size or len(data) <= fragment_size:
            self._queue_frame(opcode, data)
            return
        pieces = [data[i:i + fragment_size] for i in range(0, len(data), fragment_size)]
        for index, piece in enumerate(pieces):
            self._queue_frame(opcode if index == 0 else Opcode.CONTINUATION, piece, fin=index == len(pieces) - 1)

    def send_ping(self, data: bytes = b"") -> None:
        self._send_control(Opcode.PING, data)

    def send_pong(self, data: bytes = b"") -> None:
        self._send_control(Opcode.PONG, data)

    def close(self, code: int | None = CloseCode.NORMAL, reason: str = "") -> None:
        """Start (or finish) the closing handshake. Idempotent."""
        if self._close_sent:
            return
        self._queue_frame(Opcode.CLOSE, _close_payload(code, reason))
        self._close_sent = True

    # ----------------------------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> list[Event]:
        if self._failed or self._close_received:
            return []
        self._inbuf += data
        events: list[Event] = []
        try:
            while not self._close_received and self._parse_one_frame(events):
                pass
        except _Failure as failure:
            self._fail(failure.code, failure.reason, events)
        return events

    # --------------------------------------------------------------------------------- helpers

    def _queue_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        mask_key = self._random_bytes(4) if self.is_client else None
        self._out += encode_frame(opcode, payload, fin=fin, mask_key=mask_key)

    def _send_control(self, opcode: int, data: bytes) -> None:
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise WebSocketError(f"control frame payload of {len(data)} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        if self._close_sent:
            return
        self._queue_frame(opcode, data)

    def _fail(self, code: int, reason: str, events: list[Event]) -> None:
        self._failed = True
        self._inbuf.clear()
        self._fragments.clear()
        self.close(code, reason)
        events.append(ProtocolError(code, reason))

    def _parse_one_frame(self, events: list[Event]) -> bool:
        """Consume one complete frame from the buffer; False when more bytes are needed."""
        buf = self._inbuf
        if len(buf) < 2:
            return False
        fin = bool(buf[0] & 0x80)
        if buf[0] & 0x70:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
        opcode = buf[0] & 0x0F
        masked = bool(buf[1] & 0x80)
        length = buf[1] & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return False
            length = struct.unpack(">H", buf[2:4])[0]
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return False
            length = struct.unpack(">Q", buf[2:10])[0]
            if length >> 63:
                raise _Failure(CloseCode.PROTOCOL_ERROR, "64-bit payload length with the top bit set")
            pos = 10
        self._check_header(fin, opcode, masked, length)
        mask_key = b""
        if masked:
            if len(buf) < pos + 4:
                return False
            mask_key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + length:
            return False
        payload = bytes(buf[pos:pos + length])
        del buf[:pos + length]
        if masked:
            payload = apply_mask(payload, mask_key)
        self._dispatch(fin, opcode, payload, events)
        return True

    def _check_header(self, fin: bool, opcode: int, masked: bool, length: int) -> None:
        if masked == self.is_client:
            expected = "unmasked" if self.is_client else "masked"
            raise _Failure(CloseCode.PROTOCOL_ERROR, f"frames from the {'server' if self.is_client else 'client'} must be {expected}")
        if opcode >= 0x8:
            if opcode not in (Opcode.CLOSE, Opcode.PING, Opcode.PONG):
                raise _Failure(CloseCode.PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not fin:
                raise _Failure(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise _Failure(CloseCode.PROTOCOL_ERROR, f"control frame payload of {length} bytes")
            return
        if opcode not in (Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY):
            raise _Failure(CloseCode.PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")
        if opcode == Opcode.CONTINUATION and self._message_opcode is None:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
        if opcode != Opcode.CONTINUATION and self._message_opcode is not None:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "new message started before the fragmented one ended")
        if len(self._fragments) + length > self.max_message_size:
            raise _Failure(
                CloseCode.MESSAGE_TOO_BIG,
                f"message exceeds the limit of {self.max_message_size} bytes",
            )

    def _dispatch(self, fin: bool, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == Opcode.PING:
            if not self._close_sent:
                self._queue_frame(Opcode.PONG, payload)
            events.append(PingReceived(payload))
        elif opcode == Opcode.PONG:
            events.append(PongReceived(payload))
        elif opcode == Opcode.CLOSE:
            self._on_close(payload, events)
        else:
            self._on_data(fin, opcode, payload, events)

    def _on_data(self, fin: bool, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode != Opcode.CONTINUATION:
            if fin:
                self._emit_message(opcode, payload, events)
                return
            self._message_opcode = opcode
        self._fragments += payload
        if fin:
            message_opcode = self._message_opcode
            data = bytes(self._fragments)
            self._fragments.clear()
            self._message_opcode = None
            assert message_opcode is not None
            self._emit_message(message_opcode, data, events)

    def _emit_message(self, opcode: int, data: bytes, events: list[Event]) -> None:
        if opcode == Opcode.TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Failure(CloseCode.INVALID_DATA, f"text message is not valid UTF-8: {exc.reason}") from exc
        events.append(Message(opcode, data))

    def _on_close(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) == 1:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code: int | None = None
        reason = ""
        if payload:
            code = struct.unpack(">H", payload[:2])[0]
            if not _valid_close_code(code):
                raise _Failure(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Failure(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from exc
        self._close_received = True
        self.close_code = code
        self.close_reason = reason
        self._inbuf.clear()
        if not self._close_sent:
            self.close(code, "")
        events.append(CloseReceived(code, reason))
