"""The Kubernetes streaming sub-protocols: names, negotiation, channel framing, exec status, resize, ports.

Owns what rides on top of the transports in cripy/streaming/spdy.py and cripy/streaming/websocket.py, as
kubelet's streaming server (pkg/kubelet/cri/streaming, k8s.io/apimachinery util/remotecommand and
util/httpstream/wsstream) defines it. Pure functions, no I/O.

Remote command (exec/attach) protocol versions:
- ``channel.k8s.io`` (v1): streams stdin, stdout, stderr, error. The error stream carries the failure as
  plain text (nothing on success). The first, buggy version: kubelet resets the error stream right after
  writing the status.
- ``v2.channel.k8s.io``: same streams, fixed stream handling: only the streams asked for (query parameters
  stdin/stdout/stderr/tty) are created, and the error stream is read independently of the others. Still
  plain-text errors. With tty=true there is no stderr stream.
- ``v3.channel.k8s.io``: adds the ``resize`` stream (a sequence of JSON ``{"Width": w, "Height": h}``
  objects, see ResizeDecoder), used when tty=true.
- ``v4.channel.k8s.io``: the error stream carries one JSON metav1.Status: ``{"metadata":{},"status":"Success"}``
  or a Failure; a non-zero exit code is reason ``NonZeroExitCode`` with details.causes
  ``[{"reason": "ExitCode", "message": "<code>"}]`` (see exit_status_json).
- ``v5.channel.k8s.io`` (WebSocket only): v4 plus the close signal: a message ``[255, channel]`` from the
  client half-closes that channel (stdin EOF), which plain WebSocket messages cannot express otherwise.

Negotiation (k8s.io/apimachinery/pkg/util/httpstream.Handshake): over SPDY the client sends one
``X-Stream-Protocol-Version`` header per version; the server picks the FIRST client entry it supports
(client order wins) and answers it in the 101 response; with no match kubelet answers ``403 Forbidden`` with
one ``X-Accepted-Stream-Protocol-Versions`` header per supported version (missing header: 400/403 with
"X-Stream-Protocol-Version is required"). Over WebSocket the same rule applies to ``Sec-WebSocket-Protocol``;
a request with no subprotocol at all is accepted as binary ``channel.k8s.io`` (``negotiate`` returns "").

WebSocket channel framing (wsstream): every message is one channel byte + payload; the channel numbers are
0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (all five always exist; unrequested ones are ignored).
Binary protocols use binary frames and the raw byte. ``base64.*`` protocols use text frames: the channel is
the ASCII character ``'0' + channel`` and the payload is standard base64. kubelet accepts either frame type on
input and skips empty messages. Right after the upgrade kubelet writes one EMPTY message (channel byte only)
on the lowest writable channel (stdout, else stderr, else error) so the client knows the session is up.
WebSocket subprotocols kubelet accepts for exec/attach: v5.channel.k8s.io, v4.channel.k8s.io,
v4.base64.channel.k8s.io, channel.k8s.io, base64.channel.k8s.io (and none). v4/v5 write the JSON status on
channel 3, the others the plain text form. There is no v2/v3 and no v5 base64 over WebSocket.

Port-forward: over SPDY the protocol is ``portforward.k8s.io``; the client opens, per forwarded connection,
an ``error`` stream then a ``data`` stream, both with headers ``port`` and ``requestid`` (same request id).
Over WebSocket (kubelet portforward/websocket.go, subprotocols v4.channel.k8s.io, v4.base64.channel.k8s.io or
none) the ports come from the ``port`` query parameters (repeatable, each a comma-separated list); port i uses
channel 2*i for data (read/write) and 2*i+1 for errors (write); the server's FIRST message on each of the two
channels is the port as an unsigned 16-bit LITTLE-endian integer (2 bytes), before any data. One WebSocket
carries exactly one connection per port. (kubectl >= 1.30 may also tunnel SPDY inside WebSocket with the
subprotocol ``SPDY/3.1+portforward.k8s.io`` - to the API server; kubelet itself does not offer it.)
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cripy.streaming.websocket import Opcode

# ------------------------------------------------------------------------------------ protocol names

STREAM_PROTOCOL_V1 = "channel.k8s.io"
STREAM_PROTOCOL_V2 = "v2.channel.k8s.io"
STREAM_PROTOCOL_V3 = "v3.channel.k8s.io"
STREAM_PROTOCOL_V4 = "v4.channel.k8s.io"
STREAM_PROTOCOL_V5 = "v5.channel.k8s.io"
BASE64_CHANNEL_PROTOCOL = "base64.channel.k8s.io"
V4_BASE64_CHANNEL_PROTOCOL = "v4.base64.channel.k8s.io"
PORT_FORWARD_PROTOCOL_V1 = "portforward.k8s.io"

# Remote command over SPDY (X-Stream-Protocol-Version), newest first.
SPDY_REMOTE_COMMAND_PROTOCOLS: tuple[str, ...] = (
    STREAM_PROTOCOL_V4, STREAM_PROTOCOL_V3, STREAM_PROTOCOL_V2, STREAM_PROTOCOL_V1,
)
# Port-forward over SPDY.
SPDY_PORT_FORWARD_PROTOCOLS: tuple[str, ...] = (PORT_FORWARD_PROTOCOL_V1,)
# Remote command over WebSocket (Sec-WebSocket-Protocol), newest first.
CHANNEL_PROTOCOLS: tuple[str, ...] = (
    STREAM_PROTOCOL_V5, STREAM_PROTOCOL_V4, V4_BASE64_CHANNEL_PROTOCOL, STREAM_PROTOCOL_V1, BASE64_CHANNEL_PROTOCOL,
)
# Port-forward over WebSocket.
PORT_FORWARD_CHANNEL_PROTOCOLS: tuple[str, ...] = (STREAM_PROTOCOL_V4, V4_BASE64_CHANNEL_PROTOCOL)

HEADER_PROTOCOL_VERSION = "X-Stream-Protocol-Version"
HEADER_ACCEPTED_PROTOCOL_VERSIONS = "X-Accepted-Stream-Protocol-Versions"

# SPDY stream headers (lower case as they arrive over SPDY; Go writes "streamType", "requestID").
STREAM_TYPE_HEADER = "streamtype"
PORT_HEADER = "port"
REQUEST_ID_HEADER = "requestid"
STREAM_TYPE_STDIN = "stdin"
STREAM_TYPE_STDOUT = "stdout"
STREAM_TYPE_STDERR = "stderr"
STREAM_TYPE_ERROR = "error"
STREAM_TYPE_RESIZE = "resize"
STREAM_TYPE_DATA = "data"

# WebSocket channel numbers for remote command.
STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE_SIGNAL = 255  # v5: [255, channel] half-closes channel

NON_ZERO_EXIT_CODE_REASON = "NonZeroExitCode"
EXIT_CODE_CAUSE_TYPE = "ExitCode"


# -------------------------------------------------------------------------------------- negotiation


def parse_protocol_header(values: Iterable[str]) -> list[str]:
    """Protocols offered in one or more header lines, also when an HTTP stack folded them with commas."""
    offered: list[str] = []
    for value in values:
        offered += [item.strip() for item in value.split(",") if item.strip()]
    return offered


def negotiate(offered: Sequence[str], supported: Sequence[str] = CHANNEL_PROTOCOLS, *,
              allow_none: bool = True) -> str | None:
    """The protocol to answer with: the first OFFERED one we support (client order wins, as in kubelet).

    With nothing offered: "" when ``allow_none`` (WebSocket: binary channel.k8s.io without a
    Sec-WebSocket-Protocol answer), else None. None also means: no common protocol, refuse the upgrade.
    """
    if not offered:
        return "" if allow_none else None
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def is_base64(protocol: str) -> bool:
    return protocol in (BASE64_CHANNEL_PROTOCOL, V4_BASE64_CHANNEL_PROTOCOL)


def supports_close_signal(protocol: str) -> bool:
    return protocol == STREAM_PROTOCOL_V5


def uses_status_json(protocol: str) -> bool:
    """Whether the error stream/channel carries a JSON metav1.Status (v4, v5) or plain text (older)."""
    return protocol in (STREAM_PROTOCOL_V4, V4_BASE64_CHANNEL_PROTOCOL, STREAM_PROTOCOL_V5)


def supports_resize(protocol: str, *, websocket: bool) -> bool:
    """SPDY: v3 and later have a resize stream. WebSocket: channel 4 exists in every variant."""
    return websocket or protocol not in (STREAM_PROTOCOL_V1, STREAM_PROTOCOL_V2)


# ------------------------------------------------------------------------------- channel framing


def encode(protocol: str, channel: int, data: bytes) -> tuple[int, bytes]:
    """One WebSocket message for channel: (opcode, payload)."""
    if is_base64(protocol):
        if not 0 <= channel <= 255 - ord("0"):
            raise ValueError(f"channel {channel} cannot be written as a base64 channel character")
        return Opcode.TEXT, bytes([ord("0") + channel]) + base64.b64encode(data)
    if not 0 <= channel <= 255:
        raise ValueError(f"channel {channel} does not fit in one byte")
    return Opcode.BINARY, bytes([channel]) + data


def decode(protocol: str, opcode: int, payload: bytes) -> tuple[int, bytes]:
    """(channel, data) of a received message; ValueError for an empty or undecodable one.

    A v5 close signal decodes as (CLOSE_SIGNAL, bytes([channel])); check it with is_close_signal.
    """
    if opcode not in (Opcode.TEXT, Opcode.BINARY):
        raise ValueError(f"opcode {opcode} does not carry channel data")
    if not payload:
        raise ValueError("empty message carries no channel byte")
    if supports_close_signal(protocol) and payload[0] == CLOSE_SIGNAL:
        return CLOSE_SIGNAL, payload[1:]
    if is_base64(protocol):
        channel = payload[0] - ord("0")
        if channel < 0:
            raise ValueError(f"base64 channel character {payload[:1]!r} is below '0'")
        try:
            return channel, base64.b64decode(payload[1:], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"channel {channel}: payload is not valid base64: {exc}") from exc
    return payload[0], payload[1:]


def is_close_signal(protocol: str, channel: int, data: bytes) -> int | None:
    """The channel a v5 close signal half-closes, or None when (channel, data) is ordinary data."""
    if not supports_close_signal(protocol) or channel != CLOSE_SIGNAL:
        return None
    if len(data) != 1:
        raise ValueError(f"close signal must name exactly one channel, got {len(data)} bytes")
    return data[0]


def encode_close_signal(channel: int) -> tuple[int, bytes]:
    """The client's v5 half-close of a channel (for cripy ctl and tests)."""
    return Opcode.BINARY, bytes([CLOSE_SIGNAL, channel])


# ---------------------------------------------------------------------------------- port-forward


def parse_port_query(values: Sequence[str]) -> list[int]:
    """Ports from the ``port`` query parameters (each may be a comma-separated list), in order."""
    if not values:
        raise ValueError('query parameter "port" is required')
    ports: list[int] = []
    for value in values:
        if not value:
            raise ValueError('query parameter "port" cannot be empty')
        for item in value.split(","):
            if not item.isdigit() or not 1 <= int(item) <= 65535:
                raise ValueError(f"unable to parse {value!r} as a port: {item!r} is not in 1..65535")
            ports.append(int(item))
    return ports


def port_forward_channels(index: int) -> tuple[int, int]:
    """(data channel, error channel) of the index-th port of a WebSocket port-forward."""
    return 2 * index, 2 * index + 1


def port_index_of_channel(channel: int) -> tuple[int, bool]:
    """(port index, is_error_channel) of a WebSocket port-forward channel."""
    return channel // 2, channel % 2 == 1


def port_prefix(port: int) -> bytes:
    """The first message the server writes on a port's data and error channel: the port, u16 little-endian."""
    return struct.pack("<H", port)


def parse_port_prefix(data: bytes) -> int:
    """The port from the first message of a port-forward channel (client side)."""
    if len(data) < 2:
        raise ValueError(f"port prefix needs 2 bytes, got {len(data)}")
    return struct.unpack("<H", data[:2])[0]


# ----------------------------------------------------------------------------------- exec status


def exit_status(exit_code: int | None, error: str | None) -> dict[str, object]:
    """The metav1.Status kubelet writes after an exec: Success, NonZeroExitCode, or InternalError."""
    if error is not None:
        return {
            "metadata": {},
            "status": "Failure",
            "message": f"Internal error occurred: {error}",
            "reason": "InternalError",
            "details": {"causes": [{"message": error}]},
            "code": 500,
        }
    if not exit_code:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": NON_ZERO_EXIT_CODE_REASON,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE_TYPE, "message": str(exit_code)}]},
    }


def exit_status_json(exit_code: int | None, error: str | None = None) -> bytes:
    """v4/v5 error-stream payload: one compact JSON metav1.Status."""
    return json.dumps(exit_status(exit_code, error), separators=(",", ":")).encode("utf-8")


def exit_status_text(exit_code: int | None, error: str | None = None) -> bytes:
    """channel.k8s.io..v3 error-stream payload: the failure message as text, empty on success."""
    status = exit_status(exit_code, error)
    if status["status"] == "Success":
        return b""
    return str(status["message"]).encode("utf-8")


def status_payload(protocol: str, exit_code: int | None, error: str | None = None) -> bytes:
    """What to write on the error stream/channel for this protocol (may be empty: then write nothing)."""
    if uses_status_json(protocol):
        return exit_status_json(exit_code, error)
    return exit_status_text(exit_code, error)


def parse_exit_status(protocol: str, payload: bytes) -> tuple[int, str | None]:
    """Client side: (exit code, error message or None) from what arrived on the error stream."""
    if not uses_status_json(protocol):
        return (0, None) if not payload else (1, payload.decode("utf-8", "replace"))
    if not payload:
        return 0, None
    status = json.loads(payload)
    if status.get("status") == "Success":
        return 0, None
    if status.get("reason") == NON_ZERO_EXIT_CODE_REASON:
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == EXIT_CODE_CAUSE_TYPE:
                return int(cause["message"]), None
    return 1, str(status.get("message", "unknown error"))


# ----------------------------------------------------------------------------------------- resize


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


def encode_resize(width: int, height: int) -> bytes:
    """One resize event as client-go writes it (remotecommand.TerminalSize has no JSON tags)."""
    return json.dumps({"Width": width, "Height": height}).encode("utf-8") + b"\n"


class ResizeDecoder:
    """Turns a byte stream of concatenated JSON TerminalSize objects into sizes (SPDY resize stream, or
    WebSocket channel 4 messages fed one after another)."""

    _MAX_PENDING = 64 * 1024

    def __init__(self) -> None:
        self._pending = ""
        self._undecoded = b""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[TerminalSize]:
        raw = self._undecoded + data
        try:
            text = raw.decode("utf-8")
            self._undecoded = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(raw) - 3:
                raise ValueError("resize stream is not valid UTF-8") from exc
            # An incomplete UTF-8 sequence at the end of this chunk: keep it for the next one.
            text = raw[:exc.start].decode("utf-8")
            self._undecoded = raw[exc.start:]
        self._pending += text
        sizes: list[TerminalSize] = []
        while True:
            stripped = self._pending.lstrip()
            self._pending = stripped
            if not stripped:
                break
            try:
                obj, end = self._decoder.raw_decode(stripped)
            except json.JSONDecodeError as exc:
                # TerminalSize is a flat object: without a closing brace it is merely incomplete.
                if stripped.startswith("{") and "}" not in stripped and len(stripped) <= self._MAX_PENDING:
                    break
                raise ValueError(f"malformed resize event: {exc.msg}") from exc
            self._pending = stripped[end:]
            sizes.append(self._size_of(obj))
        return sizes

    @staticmethod
    def _size_of(obj: object) -> TerminalSize:
        if not isinstance(obj, dict):
            raise ValueError(f"resize event must be a JSON object, not {type(obj).__name__}")
        width, height = obj.get("Width", obj.get("width")), obj.get("Height", obj.get("height"))
        if not isinstance(width, int) or not isinstance(height, int) or width < 0 or height < 0:
            raise ValueError(f"resize event needs non-negative integer Width and Height: {obj!r}")
        return TerminalSize(width, height)
