"""The HTTP side of a streaming request, without I/O: the request head, the route to an endpoint, and the upgrade
negotiation kubelet's streaming server performs.

Owns parsing one HTTP/1.1 request head (HttpError for anything malformed, with the status to answer), routing
``/exec/<token>``, ``/attach/<token>`` and ``/portforward/<token>``, and choosing the transport and sub-protocol:
SPDY/3.1 with ``X-Stream-Protocol-Version``, or WebSocket (version 13) with ``Sec-WebSocket-Protocol``, down to the
101 response.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from cripy.streaming import channels, websocket

KIND_EXEC = "exec"
KIND_ATTACH = "attach"
KIND_PORTFORWARD = "portforward"
KINDS = (KIND_EXEC, KIND_ATTACH, KIND_PORTFORWARD)

SPDY_UPGRADE = "SPDY/3.1"
PROTOCOL_HEADER = channels.HEADER_PROTOCOL_VERSION
ACCEPTED_PROTOCOLS_HEADER = channels.HEADER_ACCEPTED_PROTOCOL_VERSIONS
WEBSOCKET_VERSION = "13"


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
