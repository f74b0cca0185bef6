"""SPDY/3.1 framing, sans-IO: frame layouts, status codes and settings ids, name/value header blocks and their
zlib compression with the SPDY/3 dictionary. No state beyond one connection's two zlib contexts; the session
(streams, windows, events) is in spdy.py.

Wire facts (SPDY draft 3 / 3.1):
- Control frame: ``1|version(15)=3|type(16)|flags(8)|length(24)|payload``; data frame:
  ``0|stream-id(31)|flags(8)|length(24)|data``. Flags: FIN=0x01, UNIDIRECTIONAL=0x02 (SYN_STREAM only).
- Name/value header blocks: ``u32 count`` then ``u32 len, name, u32 len, value`` per pair, names lower case,
  several values joined by NUL in one value. The block is zlib-compressed with the SPDY/3 dictionary
  (``HEADER_DICTIONARY``, 1423 bytes, Adler-32 0xE3C6A7C2 - the dict id every SPDY/3 peer puts in its zlib
  header); ONE zlib stream per direction per connection, Z_SYNC_FLUSH after every block. Every header block
  received must be inflated, even for a stream that is refused, or the context desynchronizes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any

SPDY_VERSION = 3
MAX_FRAME_LENGTH = (1 << 24) - 1
# Upper bound on one inflated header block, against zlib bombs.
MAX_HEADER_BLOCK = 1024 * 1024

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

STREAM_ID_MASK = 0x7FFFFFFF


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


SETTINGS_UPLOAD_BANDWIDTH = 1
SETTINGS_DOWNLOAD_BANDWIDTH = 2
SETTINGS_ROUND_TRIP_TIME = 3
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_CURRENT_CWND = 5
SETTINGS_DOWNLOAD_RETRANS_RATE = 6
SETTINGS_INITIAL_WINDOW_SIZE = 7


def _build_dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1), byte for byte.

    It is a run of length-prefixed (u32, big endian) words followed by a raw tail; spelled this way so a
    reader can check it against the spec instead of against 178 lines of hex.
    """
    words = [
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
        "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
        "content-base", "content-encoding", "content-language", "content-length", "content-location",
        "content-md5", "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
        "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
        "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
        "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
        "warning", "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
        "public", "set-cookie", "keep-alive", "origin",
    ]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in words) + tail.encode("ascii")


HEADER_DICTIONARY = _build_dictionary()
HEADER_DICTIONARY_ID = 0xE3C6A7C2
assert len(HEADER_DICTIONARY) == 1423 and zlib.adler32(HEADER_DICTIONARY) == HEADER_DICTIONARY_ID



class SpdyError(Exception):
    """The peer broke the SPDY protocol, or the caller misused the connection.

    ``events`` holds the events (spdyevents.Event) decoded from the same ``receive_data`` call before the fault; the
    framing knows no events, hence Any.
    """

    def __init__(self, message: str, events: list[Any] | None = None) -> None:
        super().__init__(message)
        self.events: list[Any] = events or []



HeaderValue = str | Sequence[str]


# --------------------------------------------------------------------------------------- header blocks


def split_header_values(value: str) -> list[str]:
    """The individual values of a header received with several NUL-separated values."""
    return value.split("\x00")


def encode_header_block(headers: Mapping[str, HeaderValue]) -> bytes:
    """The uncompressed name/value block: names lower-cased, list values joined with NUL."""
    merged: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if not key:
            raise SpdyError("SPDY header names must not be empty")
        text = value if isinstance(value, str) else "\x00".join(value)
        merged[key] = f"{merged[key]}\x00{text}" if key in merged else text
    parts = [struct.pack(">I", len(merged))]
    for name, value in merged.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8", "surrogateescape")
        parts += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(block: bytes) -> dict[str, str]:
    """Parse an uncompressed name/value block; duplicate names are merged NUL-separated, names lower-cased."""

    def take(pos: int, n: int) -> tuple[bytes, int]:
        if pos + n > len(block):
            raise SpdyError(f"truncated header block ({len(block)} bytes, needed {pos + n})")
        return block[pos:pos + n], pos + n

    raw, pos = take(0, 4)
    (count,) = struct.unpack(">I", raw)
    headers: dict[str, str] = {}
    for _ in range(count):
        raw, pos = take(pos, 4)
        name_bytes, pos = take(pos, struct.unpack(">I", raw)[0])
        raw, pos = take(pos, 4)
        value_bytes, pos = take(pos, struct.unpack(">I", raw)[0])
        name = name_bytes.decode("utf-8", "surrogateescape").lower()
        value = value_bytes.decode("utf-8", "surrogateescape")
        headers[name] = f"{headers[name]}\x00{value}" if name in headers else value
    if pos != len(block):
        raise SpdyError(f"header block has {len(block) - pos} trailing bytes")
    return headers


class HeaderCompressor:
    """The sending half of the header compression context (one per connection)."""

    def __init__(self) -> None:
        # Chromium's parameters (level 9, 2 KiB window, memLevel 1): tiny state per connection, and any
        # inflater accepts a smaller window than its own.
        self._deflater = zlib.compressobj(9, zlib.DEFLATED, 11, 1, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)

    def compress(self, headers: Mapping[str, HeaderValue]) -> bytes:
        block = encode_header_block(headers)
        return self._deflater.compress(block) + self._deflater.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The receiving half of the header compression context (one per connection)."""

    def __init__(self, max_block: int = MAX_HEADER_BLOCK) -> None:
        self._inflater = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._max_block = max_block

    def decompress(self, compressed: bytes) -> dict[str, str]:
        if not compressed:
            return {}
        try:
            block = self._inflater.decompress(compressed, self._max_block + 1)
        except zlib.error as exc:
            raise SpdyError(f"cannot inflate SPDY header block: {exc}") from exc
        if len(block) > self._max_block or self._inflater.unconsumed_tail:
            raise SpdyError(f"SPDY header block inflates beyond {self._max_block} bytes")
        return decode_header_block(block)



# --------------------------------------------------------------------------------------------- framing


def control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise SpdyError(f"control frame payload of {len(payload)} bytes exceeds 2^24-1")
    return struct.pack(">HHI", 0x8000 | SPDY_VERSION, frame_type, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, *, fin: bool = False) -> bytes:
    if not 0 < stream_id <= STREAM_ID_MASK:
        raise SpdyError(f"invalid stream id {stream_id} for a DATA frame")
    if len(data) > MAX_FRAME_LENGTH:
        raise SpdyError(f"DATA frame of {len(data)} bytes exceeds 2^24-1")
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream_id, (flags << 24) | len(data)) + data


def rst_stream_frame(stream_id: int, status: int) -> bytes:
    return control_frame(FrameType.RST_STREAM, 0, struct.pack(">II", stream_id & STREAM_ID_MASK, status))


def settings_frame(settings: Mapping[int, int], *, flags: int = 0) -> bytes:
    body = b"".join(struct.pack(">II", key & 0xFFFFFF, value) for key, value in settings.items())
    return control_frame(FrameType.SETTINGS, flags, struct.pack(">I", len(settings)) + body)


def ping_frame(ping_id: int) -> bytes:
    return control_frame(FrameType.PING, 0, struct.pack(">I", ping_id))


def goaway_frame(last_stream_id: int, status: int) -> bytes:
    return control_frame(FrameType.GOAWAY, 0, struct.pack(">II", last_stream_id & STREAM_ID_MASK, status))


def window_update_frame(stream_id: int, delta: int) -> bytes:
    return control_frame(
        FrameType.WINDOW_UPDATE, 0, struct.pack(">II", stream_id & STREAM_ID_MASK, delta & STREAM_ID_MASK)
    )
