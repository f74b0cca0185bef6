"""The streaming server: the HTTP/1.1 endpoint behind the URLs that Exec, Attach and PortForward hand out.

Owns: listening (plain or TLS), reading one request head per connection, routing ``/exec/<token>``,
``/attach/<token>`` and ``/portforward/<token>`` (anything else, and unknown, used or expired tokens: 404),
the upgrade negotiation kubelet's streaming server performs (handshake.py), and the connection pumps that carry
the sans-IO codecs over the socket (pumps.py). What happens on an upgraded connection belongs to a
session handler per kind (remotecommand.py for exec and attach, portforward.py); the server only guarantees that
a connection's handler task is cancelled and its socket closed when the client goes away or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cripy.errors import InvalidArgument
from cripy.streaming.handshake import (KIND_ATTACH, KIND_EXEC, KIND_PORTFORWARD, KINDS, HttpError, negotiate,
                                       parse_request_head, route)
from cripy.streaming.pumps import ClientGone, Pump, SpdyPump, WebSocketPump
from cripy.streaming.tokens import TokenCache

log = logging.getLogger(__name__)

# The kinds name what a StreamingServer serves: callers (the daemon, the CRI servicer) take them from here.
__all__ = ["KIND_ATTACH", "KIND_EXEC", "KIND_PORTFORWARD", "KINDS", "ServerSettings", "SessionHandler",
           "StreamingServer", "server_ssl_context"]

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0


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
