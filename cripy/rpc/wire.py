"""gRPC over HTTP/2, the protocol's own pieces, sans I/O: status codes, length-prefixed messages, the
grpc-timeout header, the metadata a call carries and the trailers that end it (gRPC's PROTOCOL-HTTP2.md).
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

CONTENT_TYPE = "application/grpc"
PREFIX = 5  # a message's flag byte and its 4-byte length
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Request headers that are HTTP/2's or gRPC's own, not the caller's metadata.
_RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
                       "grpc-message-type", "content-length", "connection", "host"})


class StatusCode(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ProtocolViolation(Exception):
    """The request breaks gRPC's framing; it ends with `code` and this message, under HTTP status `http_status`."""

    def __init__(self, code: StatusCode, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class Request:
    """What a call's headers say."""
    path: str
    timeout: float | None  # seconds
    metadata: tuple[tuple[str, str | bytes], ...]


def parse_request(headers: list[tuple[str, str]]) -> Request:
    """The call a request's headers open; ProtocolViolation when they are not a gRPC request."""
    fields: dict[str, str] = {}
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name.startswith(":") or name in _RESERVED:
            fields.setdefault(name, value)
        else:
            metadata.append((name, _metadata_value(name, value)))
    if fields.get(":method") != "POST":
        raise ProtocolViolation(StatusCode.UNIMPLEMENTED, f"HTTP method {fields.get(':method')!r} is not gRPC's POST")
    content_type = fields.get("content-type", "")
    if not (content_type == CONTENT_TYPE or content_type.startswith(CONTENT_TYPE + "+")
            or content_type.startswith(CONTENT_TYPE + ";")):
        # 415 Unsupported Media Type, as gRPC's PROTOCOL-HTTP2.md asks of a server
        raise ProtocolViolation(StatusCode.UNKNOWN, f"content-type {content_type!r} is not gRPC's", http_status=415)
    path = fields.get(":path", "")
    timeout = parse_timeout(fields["grpc-timeout"]) if "grpc-timeout" in fields else None
    return Request(path=path, timeout=timeout, metadata=tuple(metadata))


def parse_timeout(value: str) -> float:
    """grpc-timeout: at most 8 digits and a unit (H, M, S, m, u, n), in seconds."""
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= 8 and digits.isascii() and digits.isdigit() and unit in _TIMEOUT_UNITS):
        raise ProtocolViolation(StatusCode.INVALID_ARGUMENT, f"malformed grpc-timeout {value[:20]!r}")
    return int(digits) * _TIMEOUT_UNITS[unit]


def _metadata_value(name: str, value: str) -> str | bytes:
    if not name.endswith("-bin"):
        return value
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation(StatusCode.INVALID_ARGUMENT, f"metadata {name[:100]!r} is not base64") from None


class MessageReader:
    """Length-prefixed messages out of a request's DATA, none larger than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= PREFIX:
            compressed, length = self._buffer[0], int.from_bytes(self._buffer[1:PREFIX], "big")
            if compressed:
                raise ProtocolViolation(StatusCode.UNIMPLEMENTED,
                                        "a compressed message (this server offers no grpc-encoding)")
            if length > self._limit:
                raise ProtocolViolation(StatusCode.RESOURCE_EXHAUSTED,
                                        f"received a message of {length} bytes, over the limit of {self._limit}")
            if len(self._buffer) < PREFIX + length:
                break
            messages.append(bytes(self._buffer[PREFIX:PREFIX + length]))
            del self._buffer[:PREFIX + length]
        return messages

    @property
    def partial(self) -> bool:
        """Whether part of a message is still waiting for the rest of it."""
        return bool(self._buffer)


def message(payload: bytes) -> bytes:
    return prefix(len(payload)) + payload


def prefix(length: int) -> bytes:
    """The length prefix of an uncompressed message of `length` bytes."""
    return b"\0" + length.to_bytes(4, "big")


def response_headers(http_status: int = 200) -> list[tuple[str, str]]:
    return [(":status", str(http_status)), ("content-type", CONTENT_TYPE)]


RESPONSE_HEADERS = response_headers()
OK_TRAILERS = [("grpc-status", "0")]


def trailers_only(code: StatusCode, details: str, http_status: int = 200) -> list[tuple[str, str]]:
    """A response of one header block that is both its headers and its trailers: a call ended before an answer."""
    return response_headers(http_status) + status_trailers(code, details)


def status_trailers(code: StatusCode, details: str) -> list[tuple[str, str]]:
    trailers = [("grpc-status", str(int(code)))]
    if details:
        trailers.append(("grpc-message", percent_encode(details)))
    return trailers


def percent_encode(text: str) -> str:
    """grpc-message's encoding: UTF-8, with '%' and every byte outside printable ASCII as %XX. Text that came from
    undecodable bytes (a path's lone surrogates) is written with backslashes rather than fail the answer."""
    if text.isascii() and text.isprintable() and "%" not in text:
        return text
    encoded = text.encode("utf-8", "backslashreplace")
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in encoded)
