"""A small HTTP/1.1 client for registry traffic: h11 (the sans-IO protocol machine) on asyncio streams.

What the registry client needs and no more: one request at a time per connection, idle connections kept per
(scheme, host, port, TLS settings) for reuse, bodies read in chunks as they arrive (a layer is streamed, never held),
redirects left to the caller (credentials must not follow them off the registry's origin), and no decompression. A
connect deadline and an idle-read deadline keep a silent server from holding a pull forever.

It replaces aiohttp, whose import alone cost the daemon some 14 MiB that it kept after the first pull (measured in
docs/benchmarks.md); h11 costs well under one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import overload
from urllib.parse import urlencode, urljoin, urlsplit

import h11

from cripy.errors import DataLoss

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 120.0  # seconds without a byte from the server
MAX_IDLE_PER_HOST = 4
# An idle connection is closed after this long: registries drop them themselves, and a pull's TLS context (part of
# the key) is its own, so a later pull would never take it.
IDLE_SECONDS = 30.0
# A layer arrives in chunks of up to this, and a connection buffers at most twice as much. 1 MiB chunks left the
# daemon 4 MiB more heap after the bench's pulls (RSS 46.9-47.3 MiB against 43.0-43.1 with 256 KiB, 43.7-44.0 with
# 128 KiB): freed large buffers that later allocations kept apart. The pulls took as long with each.
_READ_SIZE = 256 * 1024


class HTTPError(Exception):
    """The exchange failed below HTTP: connecting, TLS, a reset, a malformed or cut response."""


class TLSError(HTTPError):
    def __init__(self, message: str, *, verification: str = "") -> None:
        super().__init__(message)
        self.verification = verification  # why the certificate was not trusted, when that was the problem


# ---------------------------------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class URL:
    """An absolute http(s) URL, split once."""

    text: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.text)
        if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
            raise ValueError(f"{self.text!r} is not an absolute http(s) URL")

    @property
    def scheme(self) -> str:
        return urlsplit(self.text).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.text).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.text)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def explicit_port(self) -> bool:
        return urlsplit(self.text).port is not None

    @property
    def path(self) -> str:
        return urlsplit(self.text).path

    @property
    def netloc(self) -> str:
        return urlsplit(self.text).netloc

    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host.lower(), self.port

    def target(self) -> str:
        """What the request line carries: the path and query."""
        parts = urlsplit(self.text)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def join(self, reference: str) -> URL:
        return URL(urljoin(self.text, reference))

    def with_query(self, query: Mapping[str, str]) -> URL:
        parts = urlsplit(self.text)
        return URL(parts._replace(query=urlencode(dict(query))).geturl())

    def without_query(self) -> str:
        """For messages: a query may carry tokens."""
        return urlsplit(self.text)._replace(query="", fragment="").geturl()

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------------- responses


class Headers:
    """Response headers: case-insensitive, repeated names kept in order."""

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        self._pairs = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in pairs]

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        return next((value for key, value in self._pairs if key == name), default)

    def getall(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._pairs if key == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class Response:
    """A response whose body is read in chunks; `release()` (body read) returns the connection to the pool,
    `close()` drops it."""

    def __init__(self, status: int, headers: Headers, connection: _Connection, pool: Pool) -> None:
        self.status = status
        self.headers = headers
        self._connection: _Connection | None = connection
        self._pool = pool
        self._buffer = bytearray()
        self._ended = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.strip().isdigit() else None

    async def read(self, limit: int = _READ_SIZE) -> bytes:
        """Up to `limit` bytes of the body; b"" once it has all been read."""
        while not self._buffer and not self._ended:
            data = await self._next_data()
            if data and len(data) <= limit:
                return bytes(data)  # a layer's bytes, handed on without a copy through the buffer
            self._buffer += data
        chunk = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return chunk

    async def _next_data(self) -> bytes:
        """The body's next bytes as h11 parsed them (b"" for none, and at the end of the body)."""
        connection = self._connection
        if connection is None:
            raise HTTPError("the response was closed")
        event = await connection.next_event()
        if isinstance(event, h11.Data):
            return event.data
        if isinstance(event, h11.EndOfMessage):
            self._ended = True
            self._finish_message()
            return b""
        if isinstance(event, h11.ConnectionClosed):
            raise HTTPError("the connection closed in the middle of the response body")
        raise HTTPError(f"unexpected HTTP event {type(event).__name__} in a response body")

    def _finish_message(self) -> None:
        connection = self._connection
        if connection is not None and connection.ready_for_next():
            self._connection = None
            self._pool.put_back(connection)

    def release(self) -> None:
        """Done with the response: a fully read one frees its connection for reuse, any other is closed."""
        if self._ended and not self._buffer and self._connection is None:
            return
        self.close()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


# ---------------------------------------------------------------------------------------------------- connections


class _Connection:
    def __init__(self, key: tuple, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 read_timeout: float) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.read_timeout = read_timeout
        self.protocol = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.protocol.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.protocol.next_event()
            except h11.RemoteProtocolError as e:
                raise HTTPError(f"malformed HTTP response: {e}") from None
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # mypy does not narrow h11's sentinels by identity
            async with asyncio.timeout(self.read_timeout):
                data = await self.reader.read(_READ_SIZE)
            self.protocol.receive_data(data)  # b"": the end of the stream, which h11 turns into the right event

    def ready_for_next(self) -> bool:
        if self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE:
            self.protocol.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Idle connections by (scheme, host, port, TLS context), each kept at most IDLE_SECONDS."""

    def __init__(self) -> None:
        self._idle: dict[tuple, list[tuple[float, _Connection]]] = {}

    def take(self, key: tuple) -> _Connection | None:
        self._expire()
        idle = self._idle.get(key)
        while idle:
            _, connection = idle.pop()
            if not connection.writer.is_closing() and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    def put_back(self, connection: _Connection) -> None:
        self._expire()
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            connection.close()
        else:
            idle.append((time.monotonic(), connection))

    def _expire(self) -> None:
        horizon = time.monotonic() - IDLE_SECONDS
        for key, idle in list(self._idle.items()):
            while idle and idle[0][0] < horizon:
                idle.pop(0)[1].close()
            if not idle:
                del self._idle[key]

    def close(self) -> None:
        for idle in self._idle.values():
            for _, connection in idle:
                connection.close()
        self._idle.clear()


class Client:
    """Requests over pooled HTTP/1.1 connections; `ssl` is the context for https URLs (None: the system's)."""

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 user_agent: str = "cripy") -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._pool = Pool()
        self._default_ssl: ssl.SSLContext | None = None
        self.closed = False

    async def request(self, method: str, url: URL, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None, *, ssl_context: ssl.SSLContext | None = None) -> Response:
        """Send one request and read the response's head; the caller reads the body and releases the response.
        A reused connection that the server closed meanwhile is replaced once, as browsers do."""
        if self.closed:
            raise HTTPError("the HTTP client is closed")
        context = self._context(url, ssl_context)
        key = (url.scheme, url.host.lower(), url.port, id(context))
        for attempt in (1, 2):
            connection = self._pool.take(key)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(key, url, context)
            try:
                return await self._exchange(connection, method, url, headers or {}, body)
            except (HTTPError, ConnectionError, OSError) as e:
                connection.close()
                if reused and attempt == 1 and not isinstance(e, TLSError):
                    continue  # a kept-alive connection the server had already dropped
                raise _transport_error(e, url) from None
            except BaseException:
                connection.close()
                raise
        raise AssertionError("unreachable")

    def _context(self, url: URL, given: ssl.SSLContext | None) -> ssl.SSLContext | None:
        if url.scheme != "https":
            return None
        if given is not None:
            return given
        if self._default_ssl is None:
            self._default_ssl = ssl.create_default_context()
        return self._default_ssl

    async def _connect(self, key: tuple, url: URL, context: ssl.SSLContext | None) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    url.host, url.port, ssl=context, server_hostname=url.host if context else None,
                    limit=_READ_SIZE)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS handshake with {url.host}:{url.port} failed: {e}",
                           verification=e.verify_message or str(e)) from None
        except ssl.SSLError as e:
            raise TLSError(f"TLS handshake with {url.host}:{url.port} failed: {e}") from None
        except TimeoutError:
            raise TimeoutError(f"connecting to {url.host}:{url.port} took longer than {self.connect_timeout:g}s") \
                from None
        except OSError as e:
            raise HTTPError(f"cannot connect to {url.host}:{url.port}: {e.strerror or e}") from None
        return _Connection(key, reader, writer, self.read_timeout)

    async def _exchange(self, connection: _Connection, method: str, url: URL, headers: Mapping[str, str],
                        body: bytes | None) -> Response:
        sent = [("Host", url.netloc)]
        if not any(name.lower() == "user-agent" for name in headers):
            sent.append(("User-Agent", self.user_agent))
        sent += [(name, value) for name, value in headers.items() if name.lower() != "host"]
        if body is not None:
            sent.append(("Content-Length", str(len(body))))
        try:
            # A target or header h11 cannot encode (a registry redirected to a non-ASCII Location) is refused
            # here, as the exchange's failure, not as an exception of its own.
            events: list[h11.Event] = [h11.Request(method=method, target=url.target(), headers=sent)]
            if body:
                events.append(h11.Data(data=body))
            events.append(h11.EndOfMessage())
            await connection.send(*events)
        except (h11.LocalProtocolError, UnicodeEncodeError) as e:
            raise HTTPError(f"cannot send {method} {str(url.without_query())[:200]}: {e}") from None
        while True:
            event = await connection.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return Response(event.status_code, Headers(event.headers), connection, self._pool)
            if isinstance(event, h11.ConnectionClosed):
                raise HTTPError("the server closed the connection before answering")
            raise HTTPError(f"unexpected HTTP event {type(event).__name__} before the response")

    async def close(self) -> None:
        self.closed = True
        self._pool.close()


def _transport_error(error: BaseException, url: URL) -> BaseException:
    if isinstance(error, (HTTPError, TimeoutError)):
        return error
    return HTTPError(f"{url.host}:{url.port}: {error}")


def form_body(fields: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """An application/x-www-form-urlencoded body and its header."""
    return urlencode(dict(fields)).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


async def get_following_redirects(client: Client, url: URL, headers: Mapping[str, str] | None = None, *,
                                  ssl_context: ssl.SSLContext | None = None, max_redirects: int = 10) -> Response:
    """GET, following redirects (for servers that hold no credentials of ours: lookaside signature stores)."""
    for _ in range(max_redirects + 1):
        response = await client.request("GET", url, headers, ssl_context=ssl_context if url.scheme == "https" else None)
        location = response.headers.get("location")
        if response.status not in (301, 302, 303, 307, 308) or not location:
            return response
        response.close()
        url = url.join(location)
        if url.scheme not in ("http", "https"):
            raise HTTPError(f"redirected to an unsupported URL scheme {url.scheme!r}")
    raise HTTPError(f"GET {url.without_query()}: more than {max_redirects} redirects")


async def read_limited(resp: Response, limit: int, what: str, *, truncate: bool) -> bytes:
    """The body, at most `limit` bytes: longer bodies are cut (truncate) or refused with DataLoss. With truncate,
    a connection failing mid-body gives what had arrived (an error body is read for its message only)."""
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = await resp.read(65536)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                if truncate:
                    break
                raise DataLoss(f"{what}: the response is larger than the {limit} byte limit")
    except (HTTPError, TimeoutError):
        if not truncate:
            raise
    return b"".join(parts)[:limit]
