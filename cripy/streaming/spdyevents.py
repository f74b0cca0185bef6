"""What a SPDY/3.1 peer's frames amount to: the events SpdyConnection.receive_data returns (spdy.py), one frozen
dataclass per kind, and the `Event` union of them. A half-close is reported twice, by design: in the ``fin`` flag
of the event that carried it and by a StreamEnded right after (use one or the other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamOpened:
    stream_id: int
    headers: dict[str, str]
    fin: bool
    unidirectional: bool
    associated_id: int
    priority: int


@dataclass(frozen=True)
class StreamReplied:
    stream_id: int
    headers: dict[str, str]
    fin: bool


@dataclass(frozen=True)
class DataReceived:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class StreamReset:
    stream_id: int
    status: int


@dataclass(frozen=True)
class PingReceived:
    """The peer pinged us; the answer is already queued."""

    ping_id: int


@dataclass(frozen=True)
class PingAcknowledged:
    """The peer answered a ping we sent with ``ping()``."""

    ping_id: int


@dataclass(frozen=True)
class GoAwayReceived:
    last_stream_id: int
    status: int


@dataclass(frozen=True)
class SettingsReceived:
    settings: dict[int, int]


@dataclass(frozen=True)
class HeadersReceived:
    stream_id: int
    headers: dict[str, str]
    fin: bool


@dataclass(frozen=True)
class StreamEnded:
    """The peer half-closed the stream (FIN seen); emitted once, right after the event carrying fin=True."""

    stream_id: int


Event = (
    StreamOpened | StreamReplied | DataReceived | StreamReset | PingReceived | PingAcknowledged
    | GoAwayReceived | SettingsReceived | HeadersReceived | StreamEnded
)
