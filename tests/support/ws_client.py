"""An independent client for the Kubernetes streaming protocols over WebSocket, for testing cripy's streaming server.

The WebSocket itself (RFC 6455 handshake and framing) is aiohttp's client; what this module implements, from the
Kubernetes protocol definitions and not from `cripy/streaming/`, is the channel layer on top:

- Channel sub-protocols (k8s.io/apiserver wsstream): every message starts with one channel byte (binary protocols
  `channel.k8s.io`, `v4.channel.k8s.io`, `v5.channel.k8s.io`, sent as binary messages), or with the channel as an
  ASCII digit followed by standard base64 of the payload (`base64.channel.k8s.io`, `v4.base64.channel.k8s.io`,
  sent as text messages). No sub-protocol at all means the legacy binary `channel.k8s.io` behaviour.
- remotecommand (exec/attach) channels: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (JSON
  `{"Width":w,"Height":h}`). v4 and v5 put a metav1.Status JSON on the error channel, older ones plain text. The
  server may send an empty message on the lowest writable channel right after the upgrade (kubelet does, to signal
  readiness); it carries no data. v5 adds the close signal: a message on channel 255 whose payload is the channel id
  to half-close (the client uses it for stdin); older protocols cannot half-close stdin.
- port-forward over WebSocket, as kubelet's cri/streaming/portforward/websocket.go does it (checked against that
  code): the ports come as `?port=N` query parameters (repeated, or comma-separated), the sub-protocols are
  `v4.channel.k8s.io` / `v4.base64.channel.k8s.io` (or none); port i gets data channel 2*i and error channel 2*i+1,
  and the server first writes the port number as 2 bytes little-endian on each of them. There is no per-channel end
  of stream: the connection closes when every port is done. (`portforward.k8s.io` is the SPDY sub-protocol; newer
  kubectl tunnels SPDY inside WebSocket as `SPDY/3.1+portforward.k8s.io` towards the API server, not the kubelet.)

Sync facade: each client owns an asyncio loop in a background thread (`LoopThread`); a reader task on it drains the
socket continuously into per-channel buffers, so tests call plain blocking methods with hang-guard timeouts. By
default the client is strict: a malformed message (no channel byte, bad base64, a text message under a binary
protocol or the reverse, a wrong port prefix, a negotiated protocol that was not offered) fails the connection, and
waiting calls raise `WsProtocolError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from tests.support.spdy_client import ExecResult, OutputBuffer, interpret_error_stream, terminal_size_message

__all__ = [
    "CLOSE_SIGNAL_CHANNEL", "LoopThread", "WS_PORTFORWARD_PROTOCOLS", "WS_REMOTECOMMAND_PROTOCOLS", "WsChannelConnection",
    "WsPortForwardChannel", "WsPortForwardClient", "WsProtocolError", "WsRemoteCommandClient", "WsUpgradeRefused",
    "decode_channel_message", "encode_channel_message",
]

T = TypeVar("T")

WS_REMOTECOMMAND_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
WS_PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io",)
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CHANNEL_NAMES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}
CLOSE_SIGNAL_CHANNEL = 255


class WsProtocolError(Exception):
    """The server broke the Kubernetes WebSocket channel protocol."""


class WsUpgradeRefused(Exception):
    """The server did not answer the WebSocket handshake with 101."""

    def __init__(self, url: str, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"WebSocket upgrade of {url} refused: {status} {message}")


def is_base64_protocol(protocol: str) -> bool:
    return "base64." in protocol


def encode_channel_message(channel: int, data: bytes, *, base64_codec: bool) -> bytes | str:
    """One outgoing message: channel byte + raw data, or channel digit + base64 text."""
    if base64_codec:
        if channel > 9:
            raise ValueError(f"channel {channel} has no single-digit form in the base64 protocols")
        return chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")
    return bytes([channel]) + data


def decode_channel_message(payload: bytes | str, *, base64_codec: bool) -> tuple[int, bytes]:
    """(channel, data) of one incoming message; raises WsProtocolError when it does not fit the protocol."""
    if base64_codec:
        if not isinstance(payload, str):
            raise WsProtocolError(f"binary message {bytes(payload[:50])!r} under a base64 protocol (text expected)")
        if not payload:
            raise WsProtocolError("empty text message: no channel digit")
        channel = ord(payload[0]) - ord("0")
        if not 0 <= channel <= 9:
            raise WsProtocolError(f"text message starts with {payload[0]!r}, not a channel digit")
        try:
            return channel, base64.b64decode(payload[1:].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise WsProtocolError(f"channel {channel} carries invalid base64 {payload[1:60]!r}: {exc}") from exc
    if isinstance(payload, str):
        raise WsProtocolError(f"text message {payload[:50]!r} under a binary channel protocol")
    if not payload:
        raise WsProtocolError("empty binary message: no channel byte")
    return payload[0], bytes(payload[1:])


class LoopThread:
    """An asyncio event loop in a daemon thread; `run` executes a coroutine there from any other thread."""

    def __init__(self, name: str = "ws-client-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Awaitable[T], timeout: float | None = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)


class WsChannelConnection:
    """One WebSocket with channel framing: thread-safe sends, per-channel receive buffers filled by a reader task."""

    def __init__(self, loop: LoopThread, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 protocol: str, *, strict: bool) -> None:
        self._loop = loop
        self._session = session
        self._ws = ws
        self.protocol = protocol
        self.base64_codec = is_base64_protocol(protocol)
        self.strict = strict
        self.condition = threading.Condition()
        self.buffers: dict[int, bytearray] = {}
        self.message_counts: dict[int, int] = {}   # messages per channel, empty ones included
        self.violations: list[str] = []
        self.error: BaseException | None = None
        self.closed = False
        self.close_code: int | None = None
        self.close_message: str = ""
        self.clean_close = False                   # the server sent a WebSocket close frame
        self._reader = asyncio.run_coroutine_threadsafe(self._read_loop(), loop.loop)

    @classmethod
    def connect(cls, url: str, protocols: Sequence[str], *, ssl_context: ssl.SSLContext | None = None,
                timeout: float = 10.0, strict: bool = True) -> WsChannelConnection:
        loop = LoopThread()
        try:
            session, ws = loop.run(_open_websocket(url, protocols, ssl_context), timeout)
        except BaseException:
            loop.stop()
            raise
        protocol = ws.protocol or ""
        if strict and protocols and protocol not in protocols:
            loop.run(_close_quietly(session, ws), timeout)
            loop.stop()
            raise WsProtocolError(f"{url}: server negotiated sub-protocol {protocol!r}, offered {list(protocols)}")
        return cls(loop, session, ws, protocol, strict=strict)

    # -- sending --------------------------------------------------------------------------------------------------

    def send(self, channel: int, data: bytes, timeout: float = 30.0) -> None:
        self._raise_if_failed()
        message = encode_channel_message(channel, data, base64_codec=self.base64_codec)
        if isinstance(message, str):
            self._loop.run(self._ws.send_str(message), timeout)
        else:
            self._loop.run(self._ws.send_bytes(message), timeout)

    def send_close_signal(self, channel: int, timeout: float = 30.0) -> None:
        """v5's half-close: channel 255 carrying the id of the channel we will not write to any more."""
        if not self.protocol.startswith("v5."):
            raise WsProtocolError(f"closing channel {channel} needs v5.channel.k8s.io; negotiated {self.protocol!r}")
        self.send(CLOSE_SIGNAL_CHANNEL, bytes([channel]), timeout)

    # -- receiving ------------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                if message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    self._on_message(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    self._fail(WsProtocolError(f"WebSocket error: {self._ws.exception()}"))
                    break
        except WsProtocolError as exc:
            self._fail(exc)
            await self._ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=str(exc)[:100].encode())
        except Exception as exc:  # the transport failed under us: report it to whoever waits
            self._fail(exc)
        finally:
            with self.condition:
                self.closed = True
                self.close_code = self._ws.close_code
                self.clean_close = self.close_code is not None and self.close_code != aiohttp.WSCloseCode.ABNORMAL_CLOSURE
                self.condition.notify_all()

    def _on_message(self, payload: bytes | str) -> None:
        try:
            channel, data = decode_channel_message(payload, base64_codec=self.base64_codec)
        except WsProtocolError as exc:
            self._violation(str(exc))
            return
        with self.condition:
            self.message_counts[channel] = self.message_counts.get(channel, 0) + 1
            self.buffers.setdefault(channel, bytearray()).extend(data)
            self.condition.notify_all()

    def _violation(self, message: str) -> None:
        with self.condition:
            self.violations.append(message)
        if self.strict:
            raise WsProtocolError(message)

    def _fail(self, exc: BaseException) -> None:
        with self.condition:
            if self.error is None:
                self.error = exc
            self.condition.notify_all()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise WsProtocolError(f"connection failed: {self.error}") from self.error

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> None:
        with self.condition:
            satisfied = self.condition.wait_for(lambda: predicate() or self.error is not None or self.closed, timeout)
            if predicate():
                return
            self._raise_if_failed()
            if not satisfied:
                raise TimeoutError(f"no {what} within {timeout}s (protocol {self.protocol!r})")
            raise EOFError(f"connection closed (code {self.close_code}) while waiting for {what}")

    def take(self, channel: int, size: int | None = None) -> bytes:
        """Removes and returns up to `size` buffered bytes of a channel (all if None)."""
        with self.condition:
            buffer = self.buffers.setdefault(channel, bytearray())
            count = len(buffer) if size is None else min(size, len(buffer))
            data = bytes(buffer[:count])
            del buffer[:count]
            return data

    def buffered(self, channel: int) -> int:
        with self.condition:
            return len(self.buffers.get(channel, b""))

    def recv(self, channel: int, timeout: float | None = 10.0) -> bytes:
        """Buffered bytes of the channel (waiting for some), or b"" once the connection has closed."""
        with self.condition:
            self.condition.wait_for(lambda: self.buffered(channel) > 0 or self.closed or self.error is not None,
                                    timeout)
            if self.buffered(channel):
                return self.take(channel)
            self._raise_if_failed()
            if self.closed:
                return b""
        raise TimeoutError(f"no data on channel {channel} within {timeout}s (protocol {self.protocol!r})")

    def wait_closed(self, timeout: float | None = 30.0) -> None:
        with self.condition:
            if not self.condition.wait_for(lambda: self.closed, timeout):
                raise TimeoutError(f"server did not close the WebSocket within {timeout}s")

    def close(self, timeout: float = 10.0) -> None:
        try:
            if not self._loop.loop.is_closed():
                self._loop.run(_close_quietly(self._session, self._ws), timeout)
                self._reader.result(timeout)
        finally:
            self._loop.stop()

    def abort(self, timeout: float = 10.0) -> None:
        """Drops the TCP connection without a WebSocket close frame."""
        async def drop() -> None:
            transport = self._ws._response.connection.transport if self._ws._response.connection else None
            if transport is not None:
                transport.abort()
            await _close_quietly(self._session, self._ws)
        try:
            self._loop.run(drop(), timeout)
        finally:
            self._loop.stop()


async def _open_websocket(url: str, protocols: Sequence[str], ssl_context: ssl.SSLContext | None
                          ) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(url, protocols=tuple(protocols), autoclose=True, autoping=True,
                                      max_msg_size=0, ssl=ssl_context if ssl_context is not None else True)
        return session, ws
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        raise WsUpgradeRefused(url, exc.status, exc.message) from exc
    except BaseException:
        await session.close()
        raise


async def _close_quietly(session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
    try:
        await ws.close()
    finally:
        await session.close()


# ---------------------------------------------------------------------------------------------------------------
# remotecommand (exec, attach)
# ---------------------------------------------------------------------------------------------------------------

class WsRemoteCommandClient:
    """Exec or attach over WebSocket channels; the same surface as spdy_client.RemoteCommandClient."""

    def __init__(self, connection: WsChannelConnection, *, stdin: bool, stdout: bool, stderr: bool,
                 tty: bool) -> None:
        self.connection = connection
        self.protocol = connection.protocol
        self.enabled = {"stdin": stdin, "stdout": stdout, "stderr": stderr and not tty, "error": True,
                        "resize": tty}
        self._outputs = {name: OutputBuffer() for name in ("stdout", "stderr", "error")}

    @classmethod
    def connect(cls, url: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True, tty: bool = False,
                protocols: Sequence[str] = WS_REMOTECOMMAND_PROTOCOLS, ssl_context: ssl.SSLContext | None = None,
                timeout: float = 10.0, strict: bool = True) -> WsRemoteCommandClient:
        connection = WsChannelConnection.connect(url, protocols, ssl_context=ssl_context, timeout=timeout,
                                                 strict=strict)
        return cls(connection, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)

    def send_stdin(self, data: bytes) -> None:
        self._require("stdin")
        self.connection.send(STDIN, data)

    def close_stdin(self) -> None:
        """v5 only: the close signal for channel 0, so the process sees EOF on stdin."""
        self._require("stdin")
        self.connection.send_close_signal(STDIN)

    def resize(self, width: int, height: int) -> None:
        self._require("resize")
        self.connection.send(RESIZE, terminal_size_message(width, height))

    def read_until(self, marker: bytes, *, stream: str = "stdout", timeout: float = 10.0) -> bytes:
        """Output of `stream` from the previous read_until's end through the first `marker` after it."""
        self._require(stream)
        buffer = self._outputs[stream]
        while (chunk := buffer.take_until(marker)) is None:
            data = self.connection.recv(CHANNEL_NAMES[stream], timeout)
            if not data:
                raise EOFError(f"connection closed before {marker!r} appeared on {stream}; unread: "
                               f"{bytes(buffer.data[buffer.cursor:])[-500:]!r}")
            buffer.data += data
        return chunk

    def read_until_exit(self, timeout: float = 30.0) -> ExecResult:
        """Waits for the server to close the WebSocket (it does once the process has ended), then interprets the
        error channel. Raises WsProtocolError if the session broke the protocol (strict mode)."""
        self.connection.wait_closed(timeout)
        self.connection._raise_if_failed()
        for name in ("stdout", "stderr", "error"):
            self._outputs[name].data += self.connection.take(CHANNEL_NAMES[name])
        error = bytes(self._outputs["error"].data)
        status, exit_code, problem = interpret_error_stream(self.protocol, error)
        return ExecResult(protocol=self.protocol, stdout=bytes(self._outputs["stdout"].data),
                          stderr=bytes(self._outputs["stderr"].data), error=error, status=status,
                          exit_code=exit_code, problem=problem, streams_finished=self.connection.clean_close)

    def unexpected_channels(self) -> list[int]:
        """Channels the server wrote to that it should not have (stdin, resize, disabled ones, unknown ids)."""
        allowed = {CHANNEL_NAMES[name] for name in ("stdout", "stderr", "error") if self.enabled[name]}
        return sorted(set(self.connection.message_counts) - allowed)

    def close(self) -> None:
        self.connection.close()

    def abort(self) -> None:
        self.connection.abort()

    def __enter__(self) -> WsRemoteCommandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self, stream: str) -> None:
        if not self.enabled[stream]:
            raise ValueError(f"{stream} is not part of this session (enabled: "
                             f"{[k for k, v in self.enabled.items() if v]})")


# ---------------------------------------------------------------------------------------------------------------
# port-forward
# ---------------------------------------------------------------------------------------------------------------

PORT_PREFIX_SIZE = 2


class WsPortForwardChannel:
    """The data/error channel pair of one port on a WebSocket port-forward connection."""

    def __init__(self, client: WsPortForwardClient, index: int, port: int) -> None:
        self._client = client
        self.index = index
        self.port = port
        self.data_channel = 2 * index
        self.error_channel = 2 * index + 1

    def send(self, data: bytes) -> None:
        self._client.connection.send(self.data_channel, data)

    def recv(self, timeout: float | None = 10.0) -> bytes:
        """Bytes from the pod (after the port prefix), b"" once the connection has closed."""
        self._client.wait_prefix(self.data_channel, timeout)
        return self._client.connection.recv(self.data_channel, timeout)

    def recv_exactly(self, size: int, timeout: float | None = 30.0) -> bytes:
        """Exactly `size` bytes from the pod (the rest stays buffered)."""
        connection = self._client.connection
        self._client.wait_prefix(self.data_channel, timeout)
        try:
            connection.wait_for(lambda: connection.buffered(self.data_channel) >= size, timeout,
                                f"{size} bytes on port {self.port}")
        except EOFError as exc:
            raise EOFError(f"port {self.port}: connection closed with {connection.buffered(self.data_channel)} of "
                           f"{size} bytes; error channel: {self.error_now()!r}") from exc
        return connection.take(self.data_channel, size)

    def read_until(self, marker: bytes, timeout: float | None = 30.0) -> bytes:
        """Everything up to and including `marker` (the rest stays buffered)."""
        connection = self._client.connection
        self._client.wait_prefix(self.data_channel, timeout)
        what = f"{marker!r} on port {self.port}"
        connection.wait_for(lambda: marker in connection.buffers.get(self.data_channel, b""), timeout, what)
        with connection.condition:
            buffer = connection.buffers[self.data_channel]
            end = buffer.find(marker) + len(marker)
            return connection.take(self.data_channel, end)

    def error(self, timeout: float | None = 10.0) -> str:
        """Waits until the error channel carries a message or the connection closes, then returns it."""
        connection = self._client.connection
        self._client.wait_prefix(self.error_channel, timeout)
        connection.wait_for(lambda: connection.buffered(self.error_channel) > 0 or connection.closed, timeout,
                            f"error message or close for port {self.port}")
        return self.error_now()

    def error_now(self) -> str:
        """What the error channel carried so far, without waiting ("" = nothing)."""
        return bytes(self._client.connection.buffers.get(self.error_channel, b""))[
            self._client.prefix_pending(self.error_channel):].decode("utf-8", "replace")


class WsPortForwardClient:
    """Port-forward over WebSocket: one connection carries one forwarded connection per requested port."""

    def __init__(self, connection: WsChannelConnection, ports: Sequence[int]) -> None:
        self.connection = connection
        self.protocol = connection.protocol
        self.ports = list(ports)
        self.channels = [WsPortForwardChannel(self, index, port) for index, port in enumerate(self.ports)]
        self._prefix_checked: set[int] = set()

    @classmethod
    def connect(cls, url: str, ports: Sequence[int], *, protocols: Sequence[str] = WS_PORTFORWARD_PROTOCOLS,
                ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0,
                strict: bool = True) -> WsPortForwardClient:
        connection = WsChannelConnection.connect(with_port_query(url, ports), protocols, ssl_context=ssl_context,
                                                 timeout=timeout, strict=strict)
        return cls(connection, ports)

    def channel(self, port: int) -> WsPortForwardChannel:
        """The channel pair of the first occurrence of `port`."""
        for channel in self.channels:
            if channel.port == port:
                return channel
        raise KeyError(f"port {port} was not requested (ports {self.ports})")

    def prefix_pending(self, channel: int) -> int:
        """How many bytes at the head of the channel's buffer are still the unverified port prefix."""
        return 0 if channel in self._prefix_checked else PORT_PREFIX_SIZE

    def wait_prefix(self, channel: int, timeout: float | None) -> None:
        """Consumes and checks the 2-byte little-endian port number the server writes first on every channel."""
        if channel in self._prefix_checked:
            return
        connection = self.connection
        port = self.ports[channel // 2]
        connection.wait_for(lambda: connection.buffered(channel) >= PORT_PREFIX_SIZE, timeout,
                            f"port prefix on channel {channel} (port {port})")
        with connection.condition:
            if channel in self._prefix_checked:
                return
            prefix = connection.take(channel, PORT_PREFIX_SIZE)
            self._prefix_checked.add(channel)
        (announced,) = struct.unpack("<H", prefix)
        if announced != port:
            connection.violations.append(f"channel {channel} starts with port {announced}, expected {port}")
            if connection.strict:
                raise WsProtocolError(f"channel {channel} starts with port {announced} (bytes {prefix!r}), "
                                      f"expected {port} as uint16 little-endian")

    def close(self) -> None:
        self.connection.close()

    def abort(self) -> None:
        self.connection.abort()

    def __enter__(self) -> WsPortForwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_port_query(url: str, ports: Sequence[int]) -> str:
    """The URL with one `port=N` query parameter per port appended (kubelet also accepts comma lists)."""
    parts = urlsplit(url)
    extra = urlencode([("port", str(port)) for port in ports])
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
