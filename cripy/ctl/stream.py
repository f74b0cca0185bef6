"""The client side of the streaming protocols for `cripy ctl exec -it`, `attach` and `port-forward`, as crictl does
it: the URL from the CRI call, an HTTP upgrade to SPDY/3.1, then client-go's streams (remote command: error, stdin,
stdout, stderr, resize; port-forward: an error and a data stream per local connection, paired by request id).

Blocking sockets and threads (ctl is a synchronous program); the frames come from cripy's own sans-IO codec
(cripy/streaming/spdy.py). The local terminal is put in raw mode while a TTY session runs and restored after;
window size changes (SIGWINCH) are sent as resize events. Like crictl, TLS certificates are not verified: the URL
was handed out by the runtime the user already trusts through its socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import ssl
import struct
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit

from cripy.streaming import channels, spdy, spdyevents

UPGRADE_TIMEOUT = 30.0
READ_CHUNK = 32 * 1024


class StreamError(Exception):
    """The streaming server refused the request or the connection broke."""


# ---- the upgraded connection --------------------------------------------------------------------------------


def open_upgraded(url: str, protocols: tuple[str, ...]) -> tuple[socket.socket, str, bytes]:
    """Connect, ask for SPDY/3.1 with ``protocols``; the socket, the chosen protocol and bytes read past the head."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    sock: socket.socket = socket.create_connection((host, port), timeout=UPGRADE_TIMEOUT)
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade", "Upgrade: SPDY/3.1",
             "Content-Length: 0", *[f"{channels.HEADER_PROTOCOL_VERSION}: {p}" for p in protocols]]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise StreamError(f"{url}: the server closed the connection during the upgrade")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    if " 101 " not in f"{status_line} ":
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                rest += chunk
        sock.close()
        raise StreamError(f"upgrade refused: {status_line}: {rest.decode(errors='replace').strip()}")
    chosen = next((line.split(":", 1)[1].strip() for line in header_lines
                   if line.lower().startswith(channels.HEADER_PROTOCOL_VERSION.lower() + ":")), "")
    sock.settimeout(None)
    return sock, chosen or channels.STREAM_PROTOCOL_V1, rest


@dataclass
class _StreamState:
    sink: Callable[[bytes], None] | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    data: bytearray = field(default_factory=bytearray)


class SpdyClientConnection:
    """A client SPDY session on a blocking socket: a reader thread dispatches data to per-stream sinks."""

    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.codec = spdy.SpdyConnection(is_server=False)
        self.lock = threading.Lock()
        self.streams: dict[int, _StreamState] = {}
        self.closed = threading.Event()
        self._initial = initial
        self._reader = threading.Thread(target=self._read_loop, daemon=True)

    def start(self) -> None:
        self._reader.start()

    def open(self, headers: dict[str, str], sink: Callable[[bytes], None] | None = None) -> int:
        with self.lock:
            stream_id = self.codec.open_stream(headers)
            self.streams[stream_id] = _StreamState(sink)
            self._flush()
        return stream_id

    def send(self, stream_id: int, data: bytes) -> None:
        with self.lock:
            self.codec.send_data(stream_id, data)
            self._flush()

    def end(self, stream_id: int) -> None:
        with self.lock:
            self.codec.end_stream(stream_id)
            self._flush()

    def reset(self, stream_id: int) -> None:
        with self.lock:
            self.codec.reset(stream_id)
            self._flush()

    def wait_ended(self, stream_id: int) -> bytes:
        state = self.streams[stream_id]
        while not state.ended.wait(0.5):
            if self.closed.is_set():
                break
        return bytes(state.data)

    def close(self) -> None:
        with contextlib.suppress(OSError, spdy.SpdyError):
            with self.lock:
                self.codec.go_away()
                self._flush()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _flush(self) -> None:
        data = self.codec.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read_loop(self) -> None:
        data = self._initial
        try:
            while True:
                if data:
                    with self.lock:
                        events = self.codec.receive_data(data)
                        self._flush()
                    for event in events:
                        self._dispatch(event)
                data = self.sock.recv(65536)
                if not data:
                    break
        except (OSError, spdy.SpdyError):
            pass
        finally:
            self.closed.set()
            for state in self.streams.values():
                state.ended.set()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, spdyevents.DataReceived):
            state = self.streams.get(event.stream_id)
            if state is not None:
                if state.sink is not None:
                    state.sink(event.data)
                else:
                    state.data += event.data
        elif isinstance(event, (spdyevents.StreamEnded, spdyevents.StreamReset)):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.ended.set()


# ---- exec and attach ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The local terminal in raw mode (keys go to the container as typed), restored afterwards."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(width, height) of the terminal on fd."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return cols, rows


def run_remote_command(url: str, *, stdin: bool, tty_mode: bool, stdin_file: BinaryIO | None = None,
                       stdout_file: BinaryIO | None = None, stderr_file: BinaryIO | None = None) -> int:
    """Exec or attach at ``url``: relay the local stdio; the command's exit code (0 for a finished attach)."""
    stdin_file = stdin_file or sys.stdin.buffer
    stdout_file = stdout_file or sys.stdout.buffer
    stderr_file = stderr_file or sys.stderr.buffer
    sock, protocol, initial = open_upgraded(url, channels.SPDY_REMOTE_COMMAND_PROTOCOLS)
    connection = SpdyClientConnection(sock, initial)
    connection.start()

    def writer(target: BinaryIO) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            target.write(data)
            target.flush()
        return write

    try:
        error_id = connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_ERROR})
        stdin_id = connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_STDIN}) if stdin else None
        outputs = [connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_STDOUT}, writer(stdout_file))]
        if not tty_mode:
            outputs.append(connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_STDERR},
                                           writer(stderr_file)))
        resize_id = None
        if tty_mode and channels.supports_resize(protocol, websocket=False):
            resize_id = connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_RESIZE})
        with _resizes(connection, resize_id, stdin_file), \
                raw_terminal(stdin_file.fileno()) if tty_mode and stdin else contextlib.nullcontext():
            if stdin_id is not None:
                threading.Thread(target=_pump_stdin, args=(connection, stdin_id, stdin_file), daemon=True).start()
            for stream_id in outputs:
                connection.wait_ended(stream_id)
            error = connection.wait_ended(error_id)
        exit_code, message = channels.parse_exit_status(protocol, error)
        if message:
            stderr_file.write(f"E {message}\n".encode())
            stderr_file.flush()
        return exit_code
    finally:
        connection.close()


def _pump_stdin(connection: SpdyClientConnection, stream_id: int, source: BinaryIO) -> None:
    fd = source.fileno()
    try:
        while not connection.closed.is_set():
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            data = os.read(fd, READ_CHUNK)
            if not data:
                connection.end(stream_id)
                return
            connection.send(stream_id, data)
    except (OSError, spdy.SpdyError):
        pass


@contextlib.contextmanager
def _resizes(connection: SpdyClientConnection, resize_id: int | None, source: BinaryIO) -> Iterator[None]:
    if resize_id is None or not os.isatty(source.fileno()):
        yield
        return
    fd = source.fileno()

    def send_size(*_: object) -> None:
        size = terminal_size(fd)
        if size is not None:
            with contextlib.suppress(OSError, spdy.SpdyError):
                connection.send(resize_id, channels.encode_resize(*size))

    send_size()
    previous = signal.signal(signal.SIGWINCH, send_size)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


# ---- port-forward -------------------------------------------------------------------------------------------


def parse_port_mappings(specs: list[str]) -> list[tuple[int, int]]:
    """``[LOCAL:]REMOTE`` as crictl and kubectl take them; ``:REMOTE`` or ``0:REMOTE`` picks a free local port."""
    mappings = []
    for spec in specs:
        local, sep, remote = spec.rpartition(":")
        if not sep:
            local = remote
        try:
            local_port, remote_port = int(local or 0), int(remote)
        except ValueError:
            raise ValueError(f"port mapping {spec!r} is not [LOCAL:]REMOTE with numbers") from None
        if not (0 <= local_port <= 65535 and 1 <= remote_port <= 65535):
            raise ValueError(f"port mapping {spec!r}: ports must be in 1..65535")
        mappings.append((local_port, remote_port))
    return mappings


class PortForwarder:
    """Listens on the loopback addresses for each mapping and forwards every accepted connection over one SPDY
    session."""

    def __init__(self, url: str, mappings: list[tuple[int, int]], announce: Callable[[str], None]) -> None:
        sock, _, initial = open_upgraded(url, channels.SPDY_PORT_FORWARD_PROTOCOLS)
        self.connection = SpdyClientConnection(sock, initial)
        self.mappings = mappings
        self.announce = announce
        self._request_ids = iter(range(1 << 31))
        self._lock = threading.Lock()
        self.listeners: list[tuple[socket.socket, int]] = []

    def run(self) -> None:
        self.connection.start()
        try:
            for local, remote in self.mappings:
                self._listen(local, remote)
            for listener, remote in self.listeners:
                threading.Thread(target=self._accept_loop, args=(listener, remote), daemon=True).start()
            self.connection.closed.wait()
        finally:
            for listener, _ in self.listeners:
                listener.close()
            self.connection.close()

    def _listen(self, local: int, remote: int) -> None:
        """Listen on 127.0.0.1 and, when the node has IPv6 loopback, on [::1] with the same port (as kubectl and
        crictl do); a port the IPv6 side cannot get is left to the IPv4 side alone."""
        listener = socket.create_server(("127.0.0.1", local))
        port = listener.getsockname()[1]
        self.listeners.append((listener, remote))
        self.announce(f"Forwarding from 127.0.0.1:{port} -> {remote}")
        try:
            listener6 = socket.create_server(("::1", port), family=socket.AF_INET6)
        except OSError:
            return
        self.listeners.append((listener6, remote))
        self.announce(f"Forwarding from [::1]:{port} -> {remote}")

    def _accept_loop(self, listener: socket.socket, remote: int) -> None:
        local = listener.getsockname()[1]
        while not self.connection.closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.announce(f"Handling connection for {local}")
            threading.Thread(target=self._forward, args=(client, remote), daemon=True).start()

    def _forward(self, client: socket.socket, remote: int) -> None:
        with self._lock:
            request_id = str(next(self._request_ids))
        headers = {channels.PORT_HEADER: str(remote), channels.REQUEST_ID_HEADER: request_id}
        error_id = self.connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_ERROR, **headers})
        self.connection.end(error_id)
        data_id = self.connection.open({channels.STREAM_TYPE_HEADER: channels.STREAM_TYPE_DATA, **headers},
                                       sink=lambda data: _send_quietly(client, data))

        def end_local_side() -> None:  # the pod closed its side: so does the local connection
            self.connection.wait_ended(data_id)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        threading.Thread(target=end_local_side, daemon=True).start()
        try:
            while data := client.recv(READ_CHUNK):
                self.connection.send(data_id, data)
            self.connection.end(data_id)
            self.connection.wait_ended(data_id)
            error = self.connection.wait_ended(error_id)
            if error:
                self.announce(f"E port {remote}: {error.decode(errors='replace')}")
        except (OSError, spdy.SpdyError):
            pass
        finally:
            client.close()
            with contextlib.suppress(OSError, spdy.SpdyError):
                self.connection.reset(data_id)
                self.connection.reset(error_id)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
