"""SPDY/3.1 sessions as a sans-IO state machine: bytes in -> events, method calls -> bytes out.

Owns the session side of the transport that kubectl/crictl/kubelet (Go, moby/spdystream over the SPDY/3 framer
of golang.org/x/net) use after ``Upgrade: SPDY/3.1``: streams and their half-closes, flow-control windows, the
events a peer's frames amount to (their types are in spdyevents.py); no sockets, no asyncio here. The frames
and header blocks themselves are in spdyframing.py.

Flow control (SPDY/3.1): a 64 KiB window per stream and one for the session (stream id 0 in WINDOW_UPDATE);
SETTINGS_INITIAL_WINDOW_SIZE (id 7) changes stream windows (existing ones by the delta).

Interop with moby/spdystream (what every Kubernetes client uses) - checked in its source, issue #2
"Implement flow control" is open: spdystream never sends WINDOW_UPDATE or SETTINGS and ignores the ones it
receives (its frame handler drops them). A strict SPDY/3.1 sender would stall for ever after 64 KiB towards
kubectl. Hence ``enforce_peer_window``:
- ``None`` (default, "auto"): data is sent at once while the peer has shown no sign of flow control; as soon
  as it sends a WINDOW_UPDATE or a SETTINGS_INITIAL_WINDOW_SIZE, its windows are enforced (they are tracked
  all along, so the accounting stays exact) and data beyond them waits in a per-stream queue.
- ``True``: strict SPDY/3.1 from the first byte. ``False``: never queue.
Receiving: we never fail a peer that overruns our window (spdystream ignores windows as a sender too). With
``auto_acknowledge=True`` (default) received bytes are counted as consumed at once and WINDOW_UPDATEs (stream
and session) are queued each time half a window has accumulated; with ``False`` the application calls
``acknowledge(stream_id, n)`` once it has consumed n bytes (real back-pressure for strict peers).
Another spdystream fact: it silently DROPS data on a stream it opened until it has received our SYN_REPLY, so
``send_data`` on a peer-initiated stream before ``reply`` raises SpdyError instead of losing bytes.

Errors: a broken connection (bad version, undecodable frame, zlib failure) queues GOAWAY(PROTOCOL_ERROR) and
raises SpdyError (its ``events`` attribute holds the events decoded before the fault); flush
``data_to_send()`` and close the transport. Per-stream faults (data on an unknown stream, a reused stream id,
data after FIN) queue RST_STREAM and do not raise. Half-close: FIN is reported both in the ``fin`` flag of
StreamOpened/StreamReplied/DataReceived/HeadersReceived and by a StreamEnded event emitted right after it
(once per stream) - use one or the other, not both.

Kubernetes usage (for the streaming server; see also cripy/streaming/channels.py):
- Handshake: the client sends ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and one
  ``X-Stream-Protocol-Version`` header per protocol it speaks (remote command: v4.channel.k8s.io,
  v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io; port-forward: portforward.k8s.io). The server answers
  ``101 Switching Protocols`` with ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and the chosen
  ``X-Stream-Protocol-Version``; then both sides speak SPDY on the raw socket (server: is_server=True).
- The client opens every stream (odd ids 1, 3, 5 ...); the server answers each SYN_STREAM with a SYN_REPLY
  (empty headers are fine) before writing to it. The stream kind is in the header ``streamtype`` (Go sends
  ``streamType``; SPDY lowercases names): ``error``, ``stdin``, ``stdout``, ``stderr``, ``resize`` for
  exec/attach; ``data`` and ``error`` for port-forward, which also carry ``port`` (decimal) and ``requestid``
  (pairs a data and an error stream; one pair per forwarded connection).
- stdin: the client half-closes with FIN when its input ends; stdout/stderr/error: the server writes, then
  ends them with FIN (``end_stream``); the exec result is written on the error stream (see
  channels.exit_status_json) before the streams are closed; resize carries JSON TerminalSize objects.
- Closing: ending every stream then GOAWAY (or just closing the socket) is what kubelet does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cripy.streaming.spdyevents import (
    DataReceived,
    Event,
    GoAwayReceived,
    HeadersReceived,
    PingAcknowledged,
    PingReceived,
    SettingsReceived,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
)
from cripy.streaming.spdyframing import (
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    MAX_HEADER_BLOCK,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SPDY_VERSION,
    STREAM_ID_MASK,
    FrameType,
    GoAwayStatus,
    HeaderCompressor,
    HeaderDecompressor,
    HeaderValue,
    RstStatus,
    SpdyError,
    control_frame,
    data_frame,
    goaway_frame,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)

DEFAULT_INITIAL_WINDOW = 64 * 1024
# Frame payload size we cut outgoing data into: small enough to interleave streams, large enough for speed.
MAX_DATA_CHUNK = 32 * 1024


# ------------------------------------------------------------------------------------------ connection


@dataclass
class _Stream:
    stream_id: int
    local: bool  # opened by us
    send_window: int
    replied: bool = False  # peer stream: we sent SYN_REPLY; our stream: we received it
    fin_requested: bool = False  # the application asked to end our half
    local_closed: bool = False  # our FIN is on the wire (in the output buffer)
    remote_closed: bool = False
    reset: bool = False
    pending: bytearray = field(default_factory=bytearray)
    unacked: int = 0  # bytes consumed but not yet returned to the peer by WINDOW_UPDATE

    @property
    def finished(self) -> bool:
        return self.reset or (self.local_closed and self.remote_closed)


class SpdyConnection:
    """One SPDY/3.1 session, either side. See the module docstring for the semantics."""

    def __init__(
        self,
        *,
        is_server: bool,
        enforce_peer_window: bool | None = None,
        auto_acknowledge: bool = True,
        max_header_block: int = MAX_HEADER_BLOCK,
    ) -> None:
        self.is_server = is_server
        self._enforce_mode = enforce_peer_window
        self._peer_does_flow_control = False
        self._auto_ack = auto_acknowledge
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor(max_header_block)
        self._inbuf = bytearray()
        self._out = bytearray()
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 2 if is_server else 1
        self._last_peer_stream_id = 0
        self._next_ping_id = 2 if is_server else 1
        self._outstanding_pings: set[int] = set()
        self._peer_initial_window = DEFAULT_INITIAL_WINDOW
        self._session_send_window = DEFAULT_INITIAL_WINDOW
        self._session_unacked = 0
        # Our receive windows stay at the default (we never send SETTINGS); update after half is used.
        self._ack_threshold = DEFAULT_INITIAL_WINDOW // 2
        self._went_away = False
        self._peer_went_away = False
        self._failed = False

    # ------------------------------------------------------------------------------- properties

    @property
    def flow_control_active(self) -> bool:
        """Whether the peer's windows currently hold back our data."""
        if self._enforce_mode is None:
            return self._peer_does_flow_control
        return self._enforce_mode

    @property
    def went_away(self) -> bool:
        return self._went_away

    @property
    def peer_went_away(self) -> bool:
        return self._peer_went_away

    @property
    def session_send_window(self) -> int:
        return self._session_send_window

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.send_window if stream else 0

    def pending(self, stream_id: int) -> int:
        """Bytes queued for the stream, waiting for the peer's window."""
        stream = self._streams.get(stream_id)
        return len(stream.pending) if stream else 0

    def is_closed(self, stream_id: int) -> bool:
        """True when the stream was reset or both halves are closed (or it is not open at all)."""
        stream = self._streams.get(stream_id)
        return stream is None or stream.finished

    def is_remote_closed(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        return stream is None or stream.reset or stream.remote_closed

    def open_stream_ids(self) -> list[int]:
        return [sid for sid, st in self._streams.items() if not st.finished]

    # ---------------------------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def open_stream(
        self,
        headers: Mapping[str, HeaderValue],
        *,
        fin: bool = False,
        priority: int = 0,
        unidirectional: bool = False,
        associated_id: int = 0,
    ) -> int:
        """Send SYN_STREAM; returns the new stream id (even for a server, odd for a client)."""
        if self._peer_went_away or self._went_away:
            raise SpdyError("cannot open a stream after GOAWAY")
        if not 0 <= priority <= 7:
            raise SpdyError(f"SPDY/3 priority must be 0..7, not {priority}")
        stream_id = self._next_stream_id
        if stream_id > STREAM_ID_MASK:
            raise SpdyError("stream ids exhausted on this connection")
        self._next_stream_id += 2
        flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
        block = self._compressor.compress(headers)
        payload = struct.pack(">IIBB", stream_id, associated_id & STREAM_ID_MASK, priority << 5, 0) + block
        self._out += control_frame(FrameType.SYN_STREAM, flags, payload)
        stream = _Stream(stream_id, local=True, send_window=self._peer_initial_window)
        stream.fin_requested = stream.local_closed = fin
        # The peer cannot answer on a unidirectional stream: its half is closed from the start.
        stream.remote_closed = unidirectional
        self._streams[stream_id] = stream
        return stream_id

    def reply(self, stream_id: int, headers: Mapping[str, HeaderValue], *, fin: bool = False) -> None:
        """Send SYN_REPLY to a stream the peer opened (required before any data on it)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local:
            raise SpdyError(f"stream {stream_id} is not an open stream initiated by the peer")
        if stream.replied:
            raise SpdyError(f"stream {stream_id} was already replied to")
        if stream.reset:
            return
        block = self._compressor.compress(headers)
        self._out += control_frame(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + block)
        stream.replied = True
        if fin:
            stream.fin_requested = stream.local_closed = True
            self._forget_if_finished(stream)

    def send_headers(self, stream_id: int, headers: Mapping[str, HeaderValue], *, fin: bool = False) -> None:
        stream = self._writable_stream(stream_id)
        if stream is None:
            return
        block = self._compressor.compress(headers)
        self._out += control_frame(FrameType.HEADERS, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + block)
        if fin:
            stream.fin_requested = stream.local_closed = True
            self._forget_if_finished(stream)

    def send_data(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        """Queue data; it goes out at once unless the peer's window (when enforced) holds it back.

        Data for a stream that was reset (by either side) is dropped silently: the reset already told
        everyone. Writing after ``end_stream``/fin, or on an unreplied peer stream, raises SpdyError.
        """
        stream = self._writable_stream(stream_id)
        if stream is None:
            return
        stream.pending += data
        if fin:
            stream.fin_requested = True
        self._flush_stream(stream)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (empty DATA with FIN, after any queued data). Idempotent."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset or stream.fin_requested:
            return
        if not stream.local and not stream.replied:
            raise SpdyError(f"stream {stream_id}: reply before ending it")
        stream.fin_requested = True
        self._flush_stream(stream)

    def reset(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        """Send RST_STREAM and drop anything queued for the stream. Idempotent."""
        stream = self._streams.get(stream_id)
        if (stream is not None and stream.reset) or (stream is None and self._was_used(stream_id)):
            return
        self._out += rst_stream_frame(stream_id, status)
        if stream is not None:
            stream.reset = True
            stream.pending.clear()
            self._forget_if_finished(stream)

    def acknowledge(self, stream_id: int, nbytes: int) -> None:
        """The application consumed nbytes of the stream: return them to the peer by WINDOW_UPDATE.

        Only with ``auto_acknowledge=False``; with the default it is a no-op (received data counts as
        consumed on arrival).
        """
        if self._auto_ack or nbytes <= 0:
            return
        self._count_consumed(self._streams.get(stream_id), nbytes)

    def ping(self) -> int:
        ping_id = self._next_ping_id
        self._next_ping_id = self._next_ping_id + 2 if self._next_ping_id < 0xFFFFFFFD else (2 if self.is_server else 1)
        self._outstanding_pings.add(ping_id)
        self._out += ping_frame(ping_id)
        return ping_id

    def go_away(self, status: int = GoAwayStatus.OK) -> None:
        """Send GOAWAY naming the last peer stream we accepted. Idempotent."""
        if self._went_away:
            return
        self._went_away = True
        self._out += goaway_frame(self._last_peer_stream_id, status)

    def send_settings(self, settings: Mapping[int, int]) -> None:
        self._out += settings_frame(settings)

    # ----------------------------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the transport; returns the events of every complete frame."""
        if self._failed:
            return []
        self._inbuf += data
        events: list[Event] = []
        try:
            while len(self._inbuf) >= 8:
                length = int.from_bytes(self._inbuf[5:8], "big")
                if len(self._inbuf) < 8 + length:
                    break
                frame = bytes(self._inbuf[:8 + length])
                del self._inbuf[:8 + length]
                if frame[0] & 0x80:
                    self._handle_control(frame, events)
                else:
                    self._handle_data(frame, events)
        except SpdyError as exc:
            self._failed = True
            self._inbuf.clear()
            if not self._went_away:
                self._went_away = True
                self._out += goaway_frame(self._last_peer_stream_id, GoAwayStatus.PROTOCOL_ERROR)
            exc.events = events
            raise
        return events

    # --------------------------------------------------------------------------------- helpers

    def _is_peer_id(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.is_server

    def _was_used(self, stream_id: int) -> bool:
        if self._is_peer_id(stream_id):
            return stream_id <= self._last_peer_stream_id
        return stream_id < self._next_stream_id

    def _writable_stream(self, stream_id: int) -> _Stream | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._was_used(stream_id):
                return None  # closed and forgotten (e.g. reset): same as a reset stream
            raise SpdyError(f"stream {stream_id} was never opened")
        if stream.reset:
            return None
        if stream.fin_requested:
            raise SpdyError(f"stream {stream_id} is already half-closed by us")
        if not stream.local and not stream.replied:
            raise SpdyError(f"stream {stream_id}: send SYN_REPLY before data (spdystream drops it otherwise)")
        return stream

    def _forget_if_finished(self, stream: _Stream) -> None:
        if stream.finished and not stream.pending:
            self._streams.pop(stream.stream_id, None)

    def _flush_stream(self, stream: _Stream) -> None:
        enforce = self.flow_control_active
        while stream.pending:
            allowance = len(stream.pending)
            if enforce:
                allowance = min(allowance, stream.send_window, self._session_send_window)
            if allowance <= 0:
                break
            n = min(allowance, MAX_DATA_CHUNK)
            chunk = bytes(stream.pending[:n])
            del stream.pending[:n]
            last = not stream.pending and stream.fin_requested
            self._out += data_frame(stream.stream_id, chunk, fin=last)
            stream.send_window -= n
            self._session_send_window -= n
            if last:
                stream.local_closed = True
        if not stream.pending and stream.fin_requested and not stream.local_closed:
            self._out += data_frame(stream.stream_id, b"", fin=True)
            stream.local_closed = True
        self._forget_if_finished(stream)

    def _flush_all(self) -> None:
        for stream in list(self._streams.values()):
            if stream.pending:
                self._flush_stream(stream)

    def _peer_shows_flow_control(self) -> None:
        self._peer_does_flow_control = True

    def _count_consumed(self, stream: _Stream | None, nbytes: int) -> None:
        self._session_unacked += nbytes
        if self._session_unacked >= self._ack_threshold:
            self._out += window_update_frame(0, self._session_unacked)
            self._session_unacked = 0
        if stream is None or stream.remote_closed or stream.reset:
            return
        stream.unacked += nbytes
        if stream.unacked >= self._ack_threshold:
            self._out += window_update_frame(stream.stream_id, stream.unacked)
            stream.unacked = 0

    def _mark_remote_fin(self, stream: _Stream, events: list[Event]) -> None:
        if stream.remote_closed:
            return
        stream.remote_closed = True
        events.append(StreamEnded(stream.stream_id))
        self._forget_if_finished(stream)

    # ------------------------------------------------------------------------------ frame input

    def _handle_data(self, frame: bytes, events: list[Event]) -> None:
        stream_id = int.from_bytes(frame[0:4], "big") & STREAM_ID_MASK
        fin = bool(frame[4] & FLAG_FIN)
        payload = frame[8:]
        if stream_id == 0:
            raise SpdyError("DATA frame on stream 0")
        stream = self._streams.get(stream_id)
        if stream is None:
            if not self._was_used(stream_id):
                self._out += rst_stream_frame(stream_id, RstStatus.INVALID_STREAM)
            # Session window still counts bytes on streams that are gone.
            if self._auto_ack:
                self._count_consumed(None, len(payload))
            return
        if stream.reset:
            if self._auto_ack:
                self._count_consumed(None, len(payload))
            return
        if stream.remote_closed:
            self.reset(stream_id, RstStatus.STREAM_ALREADY_CLOSED)
            return
        if self._auto_ack and payload:
            # The last frame of a stream only needs returning to the session window.
            self._count_consumed(None if fin else stream, len(payload))
        events.append(DataReceived(stream_id, payload, fin))
        if fin:
            self._mark_remote_fin(stream, events)

    def _handle_control(self, frame: bytes, events: list[Event]) -> None:
        version = int.from_bytes(frame[0:2], "big") & 0x7FFF
        frame_type = int.from_bytes(frame[2:4], "big")
        flags = frame[4]
        payload = frame[8:]
        if version != SPDY_VERSION:
            raise SpdyError(f"unsupported SPDY version {version} (only 3 is spoken)")
        handlers: dict[int, Callable[[int, bytes, list[Event]], None]] = {
            FrameType.SYN_STREAM: self._on_syn_stream,
            FrameType.SYN_REPLY: self._on_syn_reply,
            FrameType.RST_STREAM: self._on_rst_stream,
            FrameType.SETTINGS: self._on_settings,
            FrameType.PING: self._on_ping,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.HEADERS: self._on_headers,
            FrameType.WINDOW_UPDATE: self._on_window_update,
        }
        handler = handlers.get(frame_type)
        if handler is None:
            return  # the spec says unknown control frames are ignored
        handler(flags, payload, events)

    @staticmethod
    def _require_length(payload: bytes, minimum: int, what: str) -> None:
        if len(payload) < minimum:
            raise SpdyError(f"{what} frame too short ({len(payload)} bytes, at least {minimum} expected)")

    def _on_syn_stream(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 10, "SYN_STREAM")
        stream_id, associated, priority_byte = struct.unpack(">IIB", payload[:9])
        stream_id &= STREAM_ID_MASK
        headers = self._decompressor.decompress(payload[10:])  # always, to keep the zlib context in step
        if stream_id == 0:
            raise SpdyError("SYN_STREAM with stream id 0")
        if not self._is_peer_id(stream_id) or stream_id <= self._last_peer_stream_id:
            self._out += rst_stream_frame(stream_id, RstStatus.PROTOCOL_ERROR)
            return
        self._last_peer_stream_id = stream_id
        if self._went_away:
            self._out += rst_stream_frame(stream_id, RstStatus.REFUSED_STREAM)
            return
        fin = bool(flags & FLAG_FIN)
        unidirectional = bool(flags & FLAG_UNIDIRECTIONAL)
        stream = _Stream(stream_id, local=False, send_window=self._peer_initial_window)
        if unidirectional:
            stream.fin_requested = stream.local_closed = True
        self._streams[stream_id] = stream
        events.append(
            StreamOpened(stream_id, headers, fin, unidirectional, associated & STREAM_ID_MASK, priority_byte >> 5)
        )
        if fin:
            self._mark_remote_fin(stream, events)

    def _on_syn_reply(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 4, "SYN_REPLY")
        stream_id = int.from_bytes(payload[:4], "big") & STREAM_ID_MASK
        headers = self._decompressor.decompress(payload[4:])
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local:
            if stream is None and self._was_used(stream_id):
                return
            self._out += rst_stream_frame(stream_id, RstStatus.INVALID_STREAM)
            return
        if stream.replied:
            self.reset(stream_id, RstStatus.STREAM_IN_USE)
            return
        stream.replied = True
        fin = bool(flags & FLAG_FIN)
        events.append(StreamReplied(stream_id, headers, fin))
        if fin:
            self._mark_remote_fin(stream, events)

    def _on_headers(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 4, "HEADERS")
        stream_id = int.from_bytes(payload[:4], "big") & STREAM_ID_MASK
        headers = self._decompressor.decompress(payload[4:])
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset:
            if stream is None and not self._was_used(stream_id):
                self._out += rst_stream_frame(stream_id, RstStatus.INVALID_STREAM)
            return
        fin = bool(flags & FLAG_FIN)
        events.append(HeadersReceived(stream_id, headers, fin))
        if fin:
            self._mark_remote_fin(stream, events)

    def _on_rst_stream(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 8, "RST_STREAM")
        stream_id, status = struct.unpack(">II", payload[:8])
        stream_id &= STREAM_ID_MASK
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset:
            return  # never answer a reset with a reset
        stream.reset = True
        stream.pending.clear()
        events.append(StreamReset(stream_id, status))
        self._forget_if_finished(stream)

    def _on_settings(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 4, "SETTINGS")
        (count,) = struct.unpack(">I", payload[:4])
        if len(payload) < 4 + 8 * count:
            raise SpdyError(f"SETTINGS frame announces {count} entries but holds {(len(payload) - 4) // 8}")
        settings: dict[int, int] = {}
        for i in range(count):
            id_word, value = struct.unpack(">II", payload[4 + 8 * i:12 + 8 * i])
            settings[id_word & 0xFFFFFF] = value
        new_window = settings.get(SETTINGS_INITIAL_WINDOW_SIZE)
        if new_window is not None:
            delta = new_window - self._peer_initial_window
            self._peer_initial_window = new_window
            for stream in self._streams.values():
                stream.send_window += delta
            self._peer_shows_flow_control()
        events.append(SettingsReceived(settings))
        self._flush_all()

    def _on_ping(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 4, "PING")
        (ping_id,) = struct.unpack(">I", payload[:4])
        ours = (ping_id % 2 == 0) == self.is_server
        if ours:
            if ping_id in self._outstanding_pings:
                self._outstanding_pings.discard(ping_id)
                events.append(PingAcknowledged(ping_id))
            return
        self._out += ping_frame(ping_id)
        events.append(PingReceived(ping_id))

    def _on_goaway(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 4, "GOAWAY")
        last = int.from_bytes(payload[:4], "big") & STREAM_ID_MASK
        # SPDY/3 adds a status word; tolerate its absence rather than killing a closing session.
        status = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else 0
        self._peer_went_away = True
        events.append(GoAwayReceived(last, status))

    def _on_window_update(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._require_length(payload, 8, "WINDOW_UPDATE")
        stream_id, delta = struct.unpack(">II", payload[:8])
        stream_id &= STREAM_ID_MASK
        delta &= STREAM_ID_MASK
        self._peer_shows_flow_control()
        if delta == 0:
            return
        if stream_id == 0:
            self._session_send_window += delta
            self._flush_all()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.send_window += delta
        if stream.pending:
            self._flush_stream(stream)
