"""A fault-injecting HTTP reverse proxy for registry tests.

It forwards every request to an upstream registry (Range, auth and Host headers included, 3xx answers passed back
unchanged, bodies streamed) and applies switchable faults to requests whose path matches a regex:

  status    answer `status` (with `headers`/`body`) without asking upstream, e.g. 503 twice then pass
  reset     close the connection without answering
  delay     wait `delay` seconds before forwarding
  truncate  forward the headers (with the full Content-Length) and the first half of the body, then close
  corrupt   flip one byte in the middle of the body
  trickle   send the body at `rate` bytes per second

Body faults (truncate, corrupt, trickle) only count for GET-like answers that have a body (200/206, not HEAD).
A fault applies `times` times (None = always) and records its `hits`. Every proxied request is recorded.
The Host header is forwarded as the client sent it, so the registry's Location URLs point back at the proxy.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import aiohttp
from aiohttp import web

from tests.support.aiothread import BackgroundHTTPServer, unused_port

if TYPE_CHECKING:
    from tests.support.registry import Registry

__all__ = ["Fault", "FaultKind", "FaultProxy", "ProxiedRequest", "unused_port"]

FaultKind = Literal["status", "reset", "delay", "truncate", "corrupt", "trickle"]
REQUEST_FAULTS = frozenset({"status", "reset", "delay"})
BODY_FAULTS = frozenset({"truncate", "corrupt", "trickle"})
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Content-Length"))
CHUNK = 64 * 1024


@dataclass
class Fault:
    kind: FaultKind
    path_regex: str = ".*"
    times: int | None = 1
    method: str | None = None
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    rate: int = 1024
    delay: float = 0.0
    hits: int = 0

    def matches(self, method: str, path_qs: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path_regex, path_qs) is not None

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass
class ProxiedRequest:
    method: str
    path: str                  # path and query string
    headers: dict[str, str]    # request headers as the client sent them
    status: int = 0            # what the client was answered (0 = connection closed without an answer)
    fault: str | None = None   # the fault applied, if any

    @property
    def range(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "range"), None)


class FaultProxy:
    """Reverse proxy on 127.0.0.1:<random> in front of `upstream` (a Registry or a base URL)."""

    def __init__(self, upstream: Registry | str, *, upstream_ssl: ssl.SSLContext | bool | None = None) -> None:
        if isinstance(upstream, str):
            self.upstream_url = upstream.rstrip("/")
            self._upstream_ssl: ssl.SSLContext | bool | None = upstream_ssl
        else:
            self.upstream_url = upstream.url
            self._upstream_ssl = upstream_ssl if upstream_ssl is not None else upstream.ssl_context()
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: list[ProxiedRequest] = []
        self._session: aiohttp.ClientSession | None = None
        self._server = BackgroundHTTPServer(self._make_app, name="cripy-test-fault-proxy")

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        if self._session is not None:
            self._server.call(self._session.close())
            self._session = None
        self._server.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    # -- faults ----------------------------------------------------------------------------------------------

    def add_fault(self, kind: FaultKind, path_regex: str = ".*", *, times: int | None = 1,
                  method: str | None = None, status: int = 503, headers: dict[str, str] | None = None,
                  body: bytes = b"", rate: int = 1024, delay: float = 0.0) -> Fault:
        if kind not in REQUEST_FAULTS | BODY_FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, path_regex, times, method, status, dict(headers or {}), body, rate, delay)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_status(self, path_regex: str, status: int = 503, *, times: int | None = 1,
                    headers: dict[str, str] | None = None, body: bytes = b"") -> Fault:
        return self.add_fault("status", path_regex, times=times, status=status, headers=headers, body=body)

    def truncate(self, path_regex: str, *, times: int | None = 1) -> Fault:
        return self.add_fault("truncate", path_regex, times=times)

    def corrupt(self, path_regex: str, *, times: int | None = 1) -> Fault:
        return self.add_fault("corrupt", path_regex, times=times)

    def trickle(self, path_regex: str, rate: int, *, times: int | None = None) -> Fault:
        return self.add_fault("trickle", path_regex, times=times, rate=rate)

    def reset(self, path_regex: str, *, times: int | None = 1) -> Fault:
        return self.add_fault("reset", path_regex, times=times)

    def delay(self, path_regex: str, seconds: float, *, times: int | None = 1) -> Fault:
        return self.add_fault("delay", path_regex, times=times, delay=seconds)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _take_fault(self, kinds: frozenset[str], method: str, path_qs: str) -> Fault | None:
        """The first live matching fault of `kinds`, counted as used."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, path_qs):
                    fault.hits += 1
                    return fault
        return None

    # -- proxying --------------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 31)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = ProxiedRequest(request.method, request.path_qs, dict(request.headers.items()))
        with self._lock:
            self._requests.append(record)
        fault = self._take_fault(REQUEST_FAULTS, request.method, request.path_qs)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "status":
                record.status = fault.status
                return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
            if fault.kind == "reset":
                record.status = 0
                return self._drop_connection(request)
            await asyncio.sleep(fault.delay)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        session = await self._client()
        async with session.request(request.method, self.upstream_url + request.path_qs, headers=headers,
                                   data=body if body else None, allow_redirects=False,
                                   ssl=self._upstream_ssl if self._upstream_ssl is not None else True) as up:
            record.status = up.status
            response = web.StreamResponse(status=up.status, reason=up.reason)
            for key, value in up.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            if up.content_length is not None:
                response.content_length = up.content_length
            has_body = request.method != "HEAD" and up.status in (200, 206)
            body_fault = self._take_fault(BODY_FAULTS, request.method, request.path_qs) if has_body else None
            if body_fault is None:
                await response.prepare(request)
                async for chunk in up.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
            record.fault = body_fault.kind
            return await self._faulty_body(request, response, up, body_fault)

    async def _faulty_body(self, request: web.Request, response: web.StreamResponse,
                           up: aiohttp.ClientResponse, fault: Fault) -> web.StreamResponse:
        if fault.kind == "trickle":
            await response.prepare(request)
            step = max(1, fault.rate // 10)
            async for piece in _rechunk(up.content.iter_chunked(CHUNK), step):
                await response.write(piece)
                await asyncio.sleep(len(piece) / fault.rate)
            await response.write_eof()
            return response
        data = await up.read()  # the fault position depends on the total length
        if fault.kind == "corrupt":
            mutable = bytearray(data)
            if mutable:
                mutable[len(mutable) // 2] ^= 0xFF
            response.content_length = len(mutable)
            await response.prepare(request)
            await response.write(bytes(mutable))
            await response.write_eof()
            return response
        # truncate: promise the full length, deliver half, hang up.
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        return self._drop_connection(request, response)

    @staticmethod
    def _drop_connection(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
        """Closes the client connection after flushing what was written. aiohttp's attempt to finish the returned
        response then fails with a ConnectionError, which it treats as a client that went away (no log noise)."""
        transport = request.transport
        if transport is not None:
            transport.close()
        return response if response is not None else web.Response(status=502)


async def _rechunk(source: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    async for chunk in source:
        for start in range(0, len(chunk), size):
            yield chunk[start:start + size]
