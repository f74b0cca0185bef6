"""Port-forward sessions: TCP connections into a pod's network namespace, carried over SPDY or WebSocket.

Owns:
* the request a token stands for (PortForwardRequest) and its validation;
* connecting to ``localhost:<port>`` inside the pod: the socket is created by a thread of a pool used for nothing
  else, which enters the pod's network namespace only for the ``socket()`` call (a socket stays in the namespace
  it was created in), then connected and used from the event loop;
* SPDY (``portforward.k8s.io``): one forwarded connection per pair of ``data``/``error`` streams with the same
  ``requestid`` header (older clients without it: paired by stream id, as kubelet does); many pairs at once;
* WebSocket (``v4.channel.k8s.io``): one connection per port from the ``port`` query parameters (or, without
  them, the ports of the CRI request), data on channel 2i and errors on 2i+1, each first carrying the port
  (u16 little-endian).
A port nothing listens on is reported on that request's error stream/channel; the connection stays usable.
Data flows both ways; the client's half-close (FIN) half-closes the pod connection, and a forwarded connection
ends when the pod side ends it or the client resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cripy.errors import FailedPrecondition, InvalidArgument
from cripy.linux.namespaces import in_netns
from cripy.pods.model import STATE_READY
from cripy.streaming import channels, spdy, spdyevents
from cripy.streaming.pumps import (CLOSED, ChannelMessage, ClientGone, InputPipe, Pump, SpdyPump, WebSocketPump)

if TYPE_CHECKING:
    from cripy.pods.manager import PodManager

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
PAIR_TIMEOUT = 30.0  # how long the first stream of a pair waits for the second
READ_CHUNK = 32 * 1024
LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))

# Threads that enter pod network namespaces; never used for anything else (see in_netns).
_netns_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cripy-netns")


@dataclass(frozen=True)
class PortForwardRequest:
    pod_id: str
    ports: tuple[int, ...] = ()


def validate_port_forward(request: PortForwardRequest) -> None:
    if not request.pod_id:
        raise InvalidArgument("port-forward: the pod sandbox id is empty")
    for port in request.ports:
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"port-forward to pod {request.pod_id}: port {port} is outside 1..65535")


class PortForwardError(Exception):
    """A forwarded connection could not be made; the message goes to the client's error stream."""


# ---- connections into the pod ---------------------------------------------------------------------------------


def _socket_in_netns(netns: Path, family: int) -> socket.socket:
    with in_netns(netns):
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


async def connect_in_pod(netns: Path | None, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to localhost:``port`` in the namespace (None: the host's, for host-network pods)."""
    loop = asyncio.get_running_loop()
    problems = []
    for family, host in LOOPBACKS:
        try:
            if netns is None:
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            else:
                sock = await loop.run_in_executor(_netns_threads, _socket_in_netns, netns, family)
        except OSError as err:
            problems.append(f"{host}: cannot create a socket in the pod: {err.strerror or err}")
            continue
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
        except TimeoutError:
            sock.close()
            problems.append(f"{host}: no answer within {CONNECT_TIMEOUT:g}s")
            continue
        except OSError as err:
            sock.close()
            problems.append(f"{host}: {os.strerror(err.errno) if err.errno else err}")
            continue
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=READ_CHUNK * 2)
    raise PortForwardError(f"nothing accepts connections on localhost:{port} in the pod ({'; '.join(problems)})")


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inbound: InputPipe,
                send: Callable[[bytes], Awaitable[None]]) -> None:
    """Copy client input to the pod and pod output to the client until the pod side ends (or fails).

    The end of the client's input half-closes the pod connection; the pod's answer still flows back.
    """
    upstream = asyncio.create_task(_client_to_pod(inbound, writer))
    try:
        while data := await reader.read(READ_CHUNK):
            await send(data)
    except (ConnectionError, OSError):
        pass  # the pod reset the connection: that is its end
    finally:
        upstream.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await upstream


async def _client_to_pod(inbound: InputPipe, writer: asyncio.StreamWriter) -> None:
    while (data := await inbound.read()) is not None:
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def forward_error(port: int, pod_id: str, err: Exception) -> str:
    return f"error forwarding port {port} to pod {pod_id}: {err}"


# ---- SPDY -------------------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    request_id: str
    port: int | None = None
    data_id: int | None = None
    error_id: int | None = None
    inbound: InputPipe | None = None
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def complete(self) -> bool:
        return self.data_id is not None and self.error_id is not None


class SpdyPortForwardSession:
    def __init__(self, pump: SpdyPump, pod_id: str, netns: Path | None) -> None:
        self.pump = pump
        self.pod_id = pod_id
        self.netns = netns
        self.pairs: dict[str, _Pair] = {}  # pairs waiting for their second stream, by request id
        self.by_stream: dict[int, _Pair] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while (event := await self.pump.next_event()) is not CLOSED:
                await self._handle(event)
        finally:
            for pair in list(self.pairs.values()):
                self._discard(pair)
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, event: object) -> None:
        if isinstance(event, spdyevents.StreamOpened):
            await self._open(event)
        elif isinstance(event, spdyevents.DataReceived):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None and event.stream_id == pair.data_id and pair.inbound is not None:
                pair.inbound.feed(event.data)
            else:
                await self.pump.acknowledge(event.stream_id, len(event.data))
        elif isinstance(event, spdyevents.StreamEnded):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None and event.stream_id == pair.data_id and pair.inbound is not None:
                pair.inbound.feed_eof()
        elif isinstance(event, spdyevents.StreamReset):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None:
                await self._abandon(pair)

    async def _open(self, event: spdyevents.StreamOpened) -> None:
        headers = event.headers  # names lower-cased by the codec
        kind = headers.get(channels.STREAM_TYPE_HEADER, "")
        await self.pump.reply(event.stream_id)
        try:
            port = _parse_port_header(headers.get(channels.PORT_HEADER))
            if kind not in (channels.STREAM_TYPE_DATA, channels.STREAM_TYPE_ERROR):
                raise ValueError(f"unexpected stream type {kind!r}")
        except ValueError as err:
            log.info("streaming: port-forward to pod %s: refusing a stream: %s", self.pod_id, err)
            await self.pump.reset(event.stream_id, spdy.RstStatus.REFUSED_STREAM)
            return
        request_id = headers.get(channels.REQUEST_ID_HEADER) or _legacy_request_id(kind, event.stream_id)
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(request_id, port=port)
            pair.timer = asyncio.get_running_loop().call_later(
                PAIR_TIMEOUT, lambda: asyncio.ensure_future(self._abandon(pair)))
        if (kind == channels.STREAM_TYPE_DATA and pair.data_id is not None) or \
                (kind == channels.STREAM_TYPE_ERROR and pair.error_id is not None) or pair.port != port:
            log.info("streaming: port-forward to pod %s: request %s: duplicate or mismatched %s stream",
                     self.pod_id, request_id, kind)
            await self.pump.reset(event.stream_id, spdy.RstStatus.PROTOCOL_ERROR)
            return
        if kind == channels.STREAM_TYPE_DATA:
            pair.data_id = event.stream_id
            pair.inbound = InputPipe(pause=self.pump.pause_reading, resume=self.pump.resume_reading,
                                     on_consumed=functools.partial(self.pump.acknowledge, event.stream_id))
            if event.fin:
                pair.inbound.feed_eof()
        else:
            pair.error_id = event.stream_id
        self.by_stream[event.stream_id] = pair
        if pair.complete:
            if pair.timer is not None:
                pair.timer.cancel()
            del self.pairs[request_id]  # the id may be reused once this pair is running
            pair.task = asyncio.create_task(self._forward(pair), name=f"portforward-{port}-{request_id}")
            self.tasks.add(pair.task)
            pair.task.add_done_callback(self.tasks.discard)

    async def _forward(self, pair: _Pair) -> None:
        assert pair.port is not None and pair.data_id is not None and pair.error_id is not None
        assert pair.inbound is not None
        data_id, error_id = pair.data_id, pair.error_id
        try:
            try:
                reader, writer = await connect_in_pod(self.netns, pair.port)
            except PortForwardError as err:
                await self.pump.send(error_id, forward_error(pair.port, self.pod_id, err).encode())
                return
            try:
                await relay(reader, writer, pair.inbound, lambda data: self.pump.send(data_id, data))
            finally:
                await close_writer(writer)
        except ClientGone:
            pass
        finally:
            pair.inbound.close()
            with contextlib.suppress(ClientGone, spdy.SpdyError):
                await self.pump.end(data_id)
                await self.pump.end(error_id)
            self.by_stream.pop(data_id, None)
            self.by_stream.pop(error_id, None)

    async def _abandon(self, pair: _Pair) -> None:
        """A pair the client reset, or whose second stream never came: stop it and forget it."""
        self._discard(pair)
        if pair.task is not None:
            pair.task.cancel()
        for stream_id in (pair.data_id, pair.error_id):
            if stream_id is not None:
                self.by_stream.pop(stream_id, None)
                with contextlib.suppress(ClientGone):
                    await self.pump.reset(stream_id, spdy.RstStatus.CANCEL)

    def _discard(self, pair: _Pair) -> None:
        if pair.timer is not None:
            pair.timer.cancel()
        if self.pairs.get(pair.request_id) is pair:
            del self.pairs[pair.request_id]
        if pair.inbound is not None:
            pair.inbound.close()


def _parse_port_header(value: str | None) -> int:
    if not value:
        raise ValueError('the "port" header is required')
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"unable to parse {value!r} as a port")
    return int(value)


def _legacy_request_id(kind: str, stream_id: int) -> str:
    """kubelet's pairing for clients that send no request id: error stream n, data stream n + 2."""
    return str(stream_id if kind == channels.STREAM_TYPE_ERROR else stream_id - 2)


# ---- WebSocket ----------------------------------------------------------------------------------------------


@dataclass
class _WsPort:
    index: int
    port: int
    inbound: InputPipe
    task: asyncio.Task[None] | None = None


class WebSocketPortForwardSession:
    def __init__(self, pump: WebSocketPump, pod_id: str, netns: Path | None, ports: list[int]) -> None:
        self.pump = pump
        self.pod_id = pod_id
        self.netns = netns
        self.ports = [_WsPort(i, port, InputPipe(pause=pump.pause_reading, resume=pump.resume_reading))
                      for i, port in enumerate(ports)]

    async def run(self) -> None:
        for entry in self.ports:
            data_channel, error_channel = channels.port_forward_channels(entry.index)
            await self.pump.send(data_channel, channels.port_prefix(entry.port))
            await self.pump.send(error_channel, channels.port_prefix(entry.port))
        for entry in self.ports:
            entry.task = asyncio.create_task(self._forward(entry), name=f"portforward-ws-{entry.port}")
        dispatcher = asyncio.create_task(self._dispatch())
        tasks = [entry.task for entry in self.ports if entry.task is not None]
        try:
            waiting: list[asyncio.Future[Any]] = [dispatcher, asyncio.gather(*tasks, return_exceptions=True)]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [dispatcher, *tasks]:
                task.cancel()
            await asyncio.gather(dispatcher, *tasks, return_exceptions=True)
            for entry in self.ports:
                entry.inbound.close()
            await self.pump.close()

    async def _dispatch(self) -> None:
        while (event := await self.pump.next_event()) is not CLOSED:
            if isinstance(event, ChannelMessage):
                index, is_error = channels.port_index_of_channel(event.channel)
                if not is_error and index < len(self.ports):
                    self.ports[index].inbound.feed(event.data)

    async def _forward(self, entry: _WsPort) -> None:
        data_channel, error_channel = channels.port_forward_channels(entry.index)
        try:
            reader, writer = await connect_in_pod(self.netns, entry.port)
        except PortForwardError as err:
            with contextlib.suppress(ClientGone):
                await self.pump.send(error_channel, forward_error(entry.port, self.pod_id, err).encode())
            return
        try:
            await relay(reader, writer, entry.inbound, lambda data: self.pump.send(data_channel, data))
        except ClientGone:
            pass
        finally:
            await close_writer(writer)


# ---- the session handler the server calls ---------------------------------------------------------------------


class PortForwardHandler:
    """Serves /portforward/<token>."""

    def __init__(self, pods: "PodManager") -> None:
        self.pods = pods

    async def prepare(self, request: PortForwardRequest) -> None:
        validate_port_forward(request)
        pod = await self.pods.get(request.pod_id)
        if pod.state != STATE_READY:
            raise FailedPrecondition(f"cannot port-forward to pod sandbox {pod.id}: it is {pod.state}, not ready")

    async def serve(self, pump: Pump, request: PortForwardRequest) -> None:
        pod = await self.pods.get(request.pod_id)
        if pod.state != STATE_READY:
            raise ClientGone(f"pod sandbox {pod.id} is no longer ready")
        if isinstance(pump, SpdyPump):
            await SpdyPortForwardSession(pump, pod.id, pod.netns).run()
            return
        try:
            query_ports = pump.query.get(channels.PORT_HEADER, [])
            ports = channels.parse_port_query(query_ports) if query_ports else list(request.ports)
        except ValueError as err:
            await pump.close(1008, str(err)[:120])
            return
        if not ports:
            await pump.close(1008, 'query parameter "port" is required')
            return
        await WebSocketPortForwardSession(pump, pod.id, pod.netns, ports).run()
