"""Tests of the independent streaming test clients (tests/support/spdy_client.py and ws_client.py): the SPDY/3 codec
against byte vectors assembled by hand from the draft 3 frame layouts, and both clients against tiny fake servers
written here (which check what the clients send: upgrade request, stream order and headers, channel framing)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass, field

import pytest
from aiohttp import WSMsgType, web

from tests.support.aiothread import BackgroundHTTPServer
from tests.support.spdy_client import (
    DICTIONARY, DataFrame, FrameDecoder, FrameEncoder, GoAwayFrame, PingFrame, PortForwardClient,
    RemoteCommandClient, RstStreamFrame, SettingsFrame, SpdyConnection, SpdyProtocolError, SynReplyFrame,
    SynStreamFrame, UnknownControlFrame, UpgradeRefused, WindowUpdateFrame, decode_header_block, encode_header_block,
    interpret_error_stream, remotecommand_stream_types,
)
from tests.support.ws_client import (
    WsPortForwardClient, WsProtocolError, WsRemoteCommandClient, decode_channel_message, encode_channel_message,
)

TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------------------------
# Codec against hand-made vectors
# ---------------------------------------------------------------------------------------------------------------

def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2


@pytest.mark.parametrize(("frame", "wire_hex"), [
    (DataFrame(5, b"abc", 0x01), "00000005 01000003 616263"),
    (DataFrame(0x7FFFFFFF, b""), "7fffffff 00000000"),
    (RstStreamFrame(3, 5), "80030003 00000008 00000003 00000005"),
    (PingFrame(2), "80030006 00000004 00000002"),
    (GoAwayFrame(7, 0), "80030007 00000008 00000007 00000000"),
    (WindowUpdateFrame(1, 0x10000), "80030009 00000008 00000001 00010000"),
    (SettingsFrame(((0x01, 7, 0x10000),)), "80030004 0000000c 00000001 01000007 00010000"),
    (SettingsFrame((), 0x01), "80030004 01000004 00000000"),
])
def test_fixed_layout_frames_match_draft3(frame: object, wire_hex: str) -> None:
    wire = bytes.fromhex(wire_hex.replace(" ", ""))
    assert FrameEncoder().encode(frame) == wire  # type: ignore[arg-type]
    assert FrameDecoder().feed(wire) == [frame]


def test_decoder_reassembles_frames_split_at_any_byte() -> None:
    wire = bytes.fromhex("00000003 00000004 64617461 80030006 00000004 00000001".replace(" ", ""))
    decoder = FrameDecoder()
    frames = []
    for byte in wire:
        frames += decoder.feed(bytes([byte]))
    assert frames == [DataFrame(3, b"data"), PingFrame(1)]
    assert decoder.pending == 0


def test_unknown_control_frame_types_are_passed_over() -> None:
    wire = bytes.fromhex("8003000a 00000002 abcd".replace(" ", ""))
    assert FrameDecoder().feed(wire) == [UnknownControlFrame(10, 0, b"\xab\xcd")]


@pytest.mark.parametrize(("wire_hex", "complaint"), [
    ("80020006 00000004 00000001", "version 2"),
    ("80030006 00000008 00000001 00000000", "PING has length 8"),
    ("80030003 00000004 00000001", "RST_STREAM has length 4"),
    ("80030004 00000008 00000002 00000000", "SETTINGS has length 8"),
])
def test_malformed_control_frames_are_rejected(wire_hex: str, complaint: str) -> None:
    with pytest.raises(SpdyProtocolError, match=complaint):
        FrameDecoder().feed(bytes.fromhex(wire_hex.replace(" ", "")))


def block(*pairs: tuple[bytes, bytes]) -> bytes:
    """A name/value block by hand: 32-bit count, then 32-bit length + bytes for each name and value."""
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def test_syn_stream_layout_and_compressed_header_block() -> None:
    wire = FrameEncoder().encode(SynStreamFrame(3, (("streamtype", "stdin"),), priority=2, flags=0x01))
    control, frame_type, flags_length, stream_id, associated, pri, slot = struct.unpack(">HHIIIBB", wire[:18])
    assert (control, frame_type) == (0x8003, 1)
    assert flags_length >> 24 == 0x01 and flags_length & 0xFFFFFF == len(wire) - 8
    assert (stream_id, associated, pri, slot) == (3, 0, 2 << 5, 0)
    compressed = wire[18:]
    # zlib header: deflate, FDICT set, DICTID = Adler-32 of the SPDY/3 dictionary
    assert compressed[0] & 0x0F == 8 and compressed[1] & 0x20
    assert struct.unpack(">I", compressed[2:6])[0] == 0xE3C6A7C2
    inflater = zlib.decompressobj(zdict=DICTIONARY)
    assert inflater.decompress(compressed) == block((b"streamtype", b"stdin"))
    assert compressed.endswith(b"\x00\x00\xff\xff")  # sync flush, the context stays open


def test_decoder_reads_header_blocks_from_one_shared_context() -> None:
    deflater = zlib.compressobj(zdict=DICTIONARY)
    frames = b""
    for stream_id, pairs in ((1, block()), (3, block((b"x-extra", b"a\x00b")))):
        compressed = deflater.compress(pairs) + deflater.flush(zlib.Z_SYNC_FLUSH)
        frames += struct.pack(">HHII", 0x8003, 2, 4 + len(compressed), stream_id) + compressed
    decoded = FrameDecoder().feed(frames)
    assert decoded == [SynReplyFrame(1, ()), SynReplyFrame(3, (("x-extra", "a\x00b"),))]
    second = frames[frames.index(struct.pack(">HH", 0x8003, 2), 8):]
    with pytest.raises(SpdyProtocolError, match="inflate"):
        FrameDecoder().feed(second)  # without the first block's context the second cannot be read


def test_header_blocks_round_trip_and_reject_bad_shapes() -> None:
    pairs = (("port", "8080"), ("requestid", "0"), ("streamtype", "data"))
    assert decode_header_block(encode_header_block(pairs)) == pairs
    with pytest.raises(SpdyProtocolError, match="lower case"):
        decode_header_block(block((b"StreamType", b"error")))
    with pytest.raises(SpdyProtocolError, match="twice"):
        decode_header_block(block((b"port", b"1"), (b"port", b"2")))
    with pytest.raises(SpdyProtocolError, match="stray"):
        decode_header_block(block((b"port", b"1")) + b"\x00")
    with pytest.raises(SpdyProtocolError, match="truncated"):
        decode_header_block(block((b"port", b"1"))[:-1])


# ---------------------------------------------------------------------------------------------------------------
# Protocol helpers
# ---------------------------------------------------------------------------------------------------------------

def exit_status(code: int) -> bytes:
    return json.dumps({"metadata": {}, "status": "Failure", "message": f"command terminated with exit code {code}",
                       "reason": "NonZeroExitCode",
                       "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}).encode()


def test_error_stream_interpretation() -> None:
    assert interpret_error_stream("v4.channel.k8s.io", b"")[1:] == (0, None)
    assert interpret_error_stream("v4.channel.k8s.io", b'{"metadata":{},"status":"Success"}')[1:] == (0, None)
    assert interpret_error_stream("v4.channel.k8s.io", exit_status(3))[1] == 3
    assert interpret_error_stream("v5.channel.k8s.io", exit_status(255))[1] == 255
    no_cause = b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[]}}'
    assert interpret_error_stream("v4.channel.k8s.io", no_cause)[2] == "NonZeroExitCode status without an ExitCode cause"
    assert interpret_error_stream("v4.channel.k8s.io", b"oops")[2].startswith("error stream is not JSON")
    failure = interpret_error_stream("v4.channel.k8s.io", b'{"status":"Failure","message":"no such container"}')
    assert failure[1:] == (None, None) and failure[0]["message"] == "no such container"
    assert interpret_error_stream("v3.channel.k8s.io", b"command terminated")[1:] == (None, None)


def test_stream_order_follows_client_go() -> None:
    kinds = remotecommand_stream_types
    assert kinds("v4.channel.k8s.io", stdin=True, stdout=True, stderr=True, tty=False) == [
        "error", "stdin", "stdout", "stderr"]
    assert kinds("v4.channel.k8s.io", stdin=True, stdout=True, stderr=True, tty=True) == [
        "error", "stdin", "stdout", "resize"]
    assert kinds("v2.channel.k8s.io", stdin=False, stdout=True, stderr=False, tty=True) == ["error", "stdout"]


def test_channel_message_codecs() -> None:
    assert encode_channel_message(0, b"foo\n", base64_codec=False) == b"\x00foo\n"
    assert encode_channel_message(0, b"foo\n", base64_codec=True) == "0Zm9vCg=="
    assert decode_channel_message("1Cg==", base64_codec=True) == (1, b"\n")
    assert decode_channel_message(b"\x02err", base64_codec=False) == (2, b"err")
    with pytest.raises(WsProtocolError, match="text message"):
        decode_channel_message("1Cg==", base64_codec=False)
    with pytest.raises(WsProtocolError, match="invalid base64"):
        decode_channel_message("1***", base64_codec=True)


# ---------------------------------------------------------------------------------------------------------------
# Fake SPDY server
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ServerSide:
    """The server end of one upgraded connection, driven by a test's handler in the fake server's thread."""
    sock: socket.socket
    request_head: str = ""
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    encoder: FrameEncoder = field(default_factory=FrameEncoder)
    pending: list[object] = field(default_factory=list)

    def send(self, *frames: object) -> None:
        for frame in frames:
            self.sock.sendall(self.encoder.encode(frame))  # type: ignore[arg-type]

    def recv_frame(self) -> object:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("client closed the connection")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def accept_stream(self) -> SynStreamFrame:
        frame = self.recv_frame()
        assert isinstance(frame, SynStreamFrame), frame
        self.send(SynReplyFrame(frame.stream_id, ()))
        return frame

    def data_until_fin(self, stream_id: int) -> bytes:
        out = b""
        while True:
            frame = self.recv_frame()
            if isinstance(frame, DataFrame) and frame.stream_id == stream_id:
                out += frame.data
                if frame.flags & 0x01:
                    return out


class FakeSpdyServer:
    """Accepts one connection on 127.0.0.1, answers the upgrade with `status_line`/`headers`, runs `handler`."""

    def __init__(self, handler: Callable[[ServerSide], None] | None, *, status_line: str = "101 Switching Protocols",
                 headers: tuple[str, ...] = ("Connection: Upgrade", "Upgrade: SPDY/3.1"), body: bytes = b"") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.request_head = ""
        self.failure: BaseException | None = None
        self._handler = handler
        self._response = (f"HTTP/1.1 {status_line}\r\n" + "".join(h + "\r\n" for h in headers)
                          + (f"Content-Length: {len(body)}\r\n" if body else "") + "\r\n").encode() + body
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            self._conn = conn
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.request_head = head.split(b"\r\n\r\n")[0].decode()
            conn.sendall(self._response)
            if self._handler is not None:
                self._handler(ServerSide(conn, self.request_head))
        except BaseException as exc:  # handed to the test through finish()
            self.failure = exc

    def finish(self) -> None:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "fake server handler did not finish"
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        for sock in (self._conn, self.listener):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._thread.join(TIMEOUT)


@pytest.fixture
def spdy_server() -> Iterator[Callable[..., FakeSpdyServer]]:
    servers: list[FakeSpdyServer] = []

    def start(handler: Callable[[ServerSide], None] | None, **kwargs: object) -> FakeSpdyServer:
        server = FakeSpdyServer(handler, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


V4_HEADERS = ("Connection: Upgrade", "Upgrade: SPDY/3.1", "X-Stream-Protocol-Version: v4.channel.k8s.io")


def test_exec_loopback_stream_order_stdin_echo_and_exit_code(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    seen: dict[str, object] = {}

    def handler(side: ServerSide) -> None:
        streams = {}
        for _ in range(4):
            frame = side.accept_stream()
            streams[dict(frame.headers)["streamtype"]] = frame.stream_id
        seen["order"] = list(streams.items())
        stdin = side.data_until_fin(streams["stdin"])
        side.send(DataFrame(streams["stdout"], stdin, 0x01), DataFrame(streams["stderr"], b"warn", 0x01),
                  PingFrame(2))
        seen["ping_echo"] = side.recv_frame()
        side.send(DataFrame(streams["error"], exit_status(3), 0x01), DataFrame(streams["stdin"], b"", 0x01))

    server = spdy_server(handler, headers=V4_HEADERS)
    with RemoteCommandClient.connect(server.url("/exec/tok"), stdin=True, timeout=TIMEOUT) as client:
        assert client.protocol == "v4.channel.k8s.io"
        client.send_stdin(b"hello ")
        client.send_stdin(b"world")
        client.close_stdin()
        result = client.read_until_exit(TIMEOUT)
    server.finish()
    request = server.request_head.split("\r\n")
    assert request[0] == "POST /exec/tok HTTP/1.1"
    assert "Connection: Upgrade" in request and "Upgrade: SPDY/3.1" in request
    assert [line for line in request if line.startswith("X-Stream-Protocol-Version")] == [
        "X-Stream-Protocol-Version: v4.channel.k8s.io", "X-Stream-Protocol-Version: v3.channel.k8s.io",
        "X-Stream-Protocol-Version: v2.channel.k8s.io", "X-Stream-Protocol-Version: channel.k8s.io"]
    assert seen["order"] == [("error", 1), ("stdin", 3), ("stdout", 5), ("stderr", 7)]
    assert seen["ping_echo"] == PingFrame(2)
    assert (result.stdout, result.stderr, result.exit_code, result.streams_finished) == (
        b"hello world", b"warn", 3, True)
    assert result.status is not None and result.status["reason"] == "NonZeroExitCode"


def test_tty_session_opens_resize_instead_of_stderr(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    seen: dict[str, object] = {}

    def handler(side: ServerSide) -> None:
        streams = {dict(side.accept_stream().headers)["streamtype"]: None for _ in range(4)}
        seen["kinds"] = list(streams)
        frame = side.recv_frame()
        assert isinstance(frame, DataFrame)
        seen["resize"] = frame.data
        side.send(DataFrame(5, b"$ prompt", 0))
        seen["after"] = side.recv_frame()

    server = spdy_server(handler, headers=V4_HEADERS)
    client = RemoteCommandClient.connect(server.url("/attach/tok"), stdin=True, tty=True, timeout=TIMEOUT)
    try:
        client.resize(100, 40)
        assert client.read_until(b"prompt", timeout=TIMEOUT) == b"$ prompt"
    finally:
        client.close()
    server.finish()
    assert seen["kinds"] == ["error", "stdin", "stdout", "resize"]
    assert seen["resize"] == b'{"Width":100,"Height":40}\n'
    assert seen["after"] == GoAwayFrame(0, 0)


def test_port_forward_pairs_streams_with_request_ids(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    seen: list[tuple[str, ...]] = []

    def handler(side: ServerSide) -> None:
        pairs: dict[str, dict[str, int]] = {}
        while len(seen) < 4:
            frame = side.accept_stream()
            headers = dict(frame.headers)
            seen.append((headers["streamtype"], headers["port"], headers["requestid"]))
            pairs.setdefault(headers["requestid"], {})[headers["streamtype"]] = frame.stream_id
            if headers["streamtype"] == "error":
                fin = side.recv_frame()  # the client half-closes the error stream at once
                assert fin == DataFrame(frame.stream_id, b"", 0x01), fin
        ports = {rid: port for _, port, rid in seen}
        for rid, request in pairs.items():
            if ports[rid] == "9":
                side.send(DataFrame(request["error"], b"connection refused", 0x01),
                          DataFrame(request["data"], b"", 0x01))
            else:
                data = side.data_until_fin(request["data"])
                side.send(DataFrame(request["data"], data.upper(), 0x01), DataFrame(request["error"], b"", 0x01))

    server = spdy_server(handler, headers=("Connection: Upgrade", "Upgrade: SPDY/3.1",
                                           "X-Stream-Protocol-Version: portforward.k8s.io"))
    with PortForwardClient.connect(server.url("/portforward/tok"), timeout=TIMEOUT) as client:
        assert client.protocol == "portforward.k8s.io"
        good = client.open(8080)
        bad = client.open(9)
        good.send(b"ping")
        good.close()
        assert good.recv_all(TIMEOUT) == b"PING"
        assert good.error(TIMEOUT) == ""
        assert bad.error(TIMEOUT) == "connection refused"
        assert bad.recv(TIMEOUT) == b""
    server.finish()
    assert sorted(seen) == [("data", "8080", "0"), ("data", "9", "1"), ("error", "8080", "0"), ("error", "9", "1")]
    assert (good.request_id, bad.request_id) == (0, 1)


def test_refused_upgrade_carries_status_and_body(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    server = spdy_server(None, status_line="404 Not Found", headers=(), body=b"unknown token")
    with pytest.raises(UpgradeRefused) as refused:
        RemoteCommandClient.connect(server.url("/exec/nope"), timeout=TIMEOUT)
    assert refused.value.response.status == 404
    assert refused.value.response.body == b"unknown token"


def test_a_protocol_nobody_offered_is_rejected(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    server = spdy_server(None, headers=("Connection: Upgrade", "Upgrade: SPDY/3.1",
                                        "X-Stream-Protocol-Version: v9.channel.k8s.io"))
    with pytest.raises(SpdyProtocolError, match="did not offer"):
        RemoteCommandClient.connect(server.url("/exec/tok"), timeout=TIMEOUT)


def test_data_before_syn_reply_fails_the_session(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    def handler(side: ServerSide) -> None:
        frame = side.recv_frame()
        assert isinstance(frame, SynStreamFrame)
        side.send(DataFrame(frame.stream_id, b"too early"), SynReplyFrame(frame.stream_id, ()))

    server = spdy_server(handler, headers=V4_HEADERS)
    with pytest.raises(SpdyProtocolError, match="before its SYN_REPLY"):
        RemoteCommandClient.connect(server.url("/exec/tok"), stdout=True, stderr=False, timeout=TIMEOUT)
    server.finish()


def test_window_updates_when_asked_for(spdy_server: Callable[..., FakeSpdyServer]) -> None:
    updates: list[WindowUpdateFrame] = []
    payload = bytes(range(256)) * 400  # 100 KiB, more than the initial 64 KiB window

    def handler(side: ServerSide) -> None:
        stream = side.accept_stream()
        for offset in range(0, len(payload), 10000):
            side.send(DataFrame(stream.stream_id, payload[offset:offset + 10000]))
        side.send(DataFrame(stream.stream_id, b"", 0x01))
        while sum(u.delta for u in updates) < 2 * len(payload):
            frame = side.recv_frame()
            assert isinstance(frame, WindowUpdateFrame), frame
            updates.append(frame)

    server = spdy_server(handler, headers=V4_HEADERS)
    with SpdyConnection.connect(server.url("/portforward/tok"), ["v4.channel.k8s.io"], timeout=TIMEOUT,
                                window_updates=True) as connection:
        stream = connection.open_stream([("streamtype", "data")], timeout=TIMEOUT)
        assert stream.read_all(TIMEOUT) == payload
        server.finish()
    assert sum(u.delta for u in updates if u.stream_id == 1) == len(payload)
    assert sum(u.delta for u in updates if u.stream_id == 0) == len(payload)


class FakeApiServer:
    """Just enough of a Kubernetes API server for `kubectl exec` (discovery, the pod, the exec upgrade), whose SPDY
    side is this module's codec: kubectl's Go framer then checks our encoder and our decoder reads Go's frames."""

    POD = {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "foo", "namespace": "default"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": {"phase": "Running"}}
    DISCOVERY = {
        "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
        "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
            {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
             "verbs": ["create", "get"]}]},
    }

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.exec_request = ""
        self.stream_headers: list[dict[str, str]] = []
        self.failures: list[BaseException] = []
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request_line = head.split(b"\r\n")[0].decode()
                path = request_line.split()[1].split("?")[0]
                if path.endswith("/exec"):
                    self.exec_request = head.decode()
                    self._exec(conn, buffer)
                    return
                body = json.dumps(self.DISCOVERY.get(path, self.POD)).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
        except BaseException as exc:
            self.failures.append(exc)

    def _exec(self, conn: socket.socket, initial: bytes) -> None:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
        side = ServerSide(conn)
        side.pending += side.decoder.feed(initial)
        streams = {}
        for _ in range(4):
            frame = side.accept_stream()
            self.stream_headers.append(dict(frame.headers))
            streams[dict(frame.headers)["streamtype"]] = frame.stream_id
        stdin = side.data_until_fin(streams["stdin"])
        side.send(DataFrame(streams["stdout"], b"OUT:" + stdin, 0x01), DataFrame(streams["stderr"], b"ERR", 0x01),
                  DataFrame(streams["error"], exit_status(3), 0x01), GoAwayFrame(0, 0))
        conn.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self.listener.close()
        for conn in self._connections:
            conn.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (a real Go SPDY peer) is not installed")
def test_codec_interoperates_with_kubectl(tmp_path: Path) -> None:
    server = FakeApiServer()
    try:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}
        done = subprocess.run(["kubectl", "--server", f"http://127.0.0.1:{server.port}", "exec", "-i", "foo", "--",
                               "cat"], input=b"hello", capture_output=True, env=env, timeout=60, check=False)
    finally:
        server.stop()
    assert not server.failures, server.failures
    assert [h["streamtype"] for h in server.stream_headers] == ["error", "stdin", "stdout", "stderr"]
    assert "Upgrade: SPDY/3.1" in server.exec_request
    assert (done.returncode, done.stdout) == (3, b"OUT:hello"), done.stderr
    assert done.stderr.startswith(b"ERR"), done.stderr


# ---------------------------------------------------------------------------------------------------------------
# WebSocket client against an aiohttp fake server
# ---------------------------------------------------------------------------------------------------------------

async def fake_ws_exec(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.base64.channel.k8s.io"))
    await ws.prepare(request)
    base64_codec = ws.ws_protocol == "v4.base64.channel.k8s.io"

    async def send(channel: int, data: bytes) -> None:
        message = encode_channel_message(channel, data, base64_codec=base64_codec)
        await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))  # type: ignore[arg-type]

    await send(1, b"")  # kubelet's "connection established" signal
    stdin = b""
    async for message in ws:
        channel, data = decode_channel_message(message.data, base64_codec=base64_codec)
        if channel == 255 and data == b"\x00" or channel == 0 and data == b"EOF":
            break
        if channel == 4:
            await send(1, b"size " + data)
        else:
            stdin += data
    await send(1, stdin)
    await send(3, exit_status(7))
    await ws.close()
    return ws


async def fake_ws_portforward(request: web.Request) -> web.WebSocketResponse:
    ports = [int(p) for p in request.query.getall("port")]
    ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
    await ws.prepare(request)
    for index, port in enumerate(ports):
        await ws.send_bytes(bytes([2 * index]) + struct.pack("<H", port))
        await ws.send_bytes(bytes([2 * index + 1]) + struct.pack("<H", port))
    await ws.send_bytes(b"\x03no listener on port " + str(ports[1]).encode())
    async for message in ws:
        assert message.type == WSMsgType.BINARY
        if message.data[0] == 0:
            await ws.send_bytes(b"\x00" + message.data[1:].upper())
            break
    await ws.close()
    return ws


@pytest.fixture(scope="module")
def ws_server() -> Iterator[BackgroundHTTPServer]:
    def app() -> web.Application:
        application = web.Application()
        application.router.add_get("/exec/{token}", fake_ws_exec)
        application.router.add_get("/portforward/{token}", fake_ws_portforward)
        return application

    with BackgroundHTTPServer(app, name="fake-ws-streaming") as server:
        yield server


def test_ws_exec_v5_close_signal_resize_and_exit_code(ws_server: BackgroundHTTPServer) -> None:
    url = f"http://127.0.0.1:{ws_server.port}/exec/tok"
    with WsRemoteCommandClient.connect(url, stdin=True, tty=True, timeout=TIMEOUT) as client:
        assert client.protocol == "v5.channel.k8s.io"
        client.resize(80, 24)
        assert client.read_until(b"}\n", timeout=TIMEOUT) == b'size {"Width":80,"Height":24}\n'
        client.send_stdin(b"abc")
        client.close_stdin()
        result = client.read_until_exit(TIMEOUT)
        assert client.unexpected_channels() == []
    assert result.stdout == b'size {"Width":80,"Height":24}\nabc'
    assert (result.exit_code, result.streams_finished) == (7, True)


def test_ws_exec_base64_protocol(ws_server: BackgroundHTTPServer) -> None:
    url = f"http://127.0.0.1:{ws_server.port}/exec/tok"
    with WsRemoteCommandClient.connect(url, stdin=True, protocols=["v4.base64.channel.k8s.io"],
                                       timeout=TIMEOUT) as client:
        assert client.protocol == "v4.base64.channel.k8s.io"
        client.send_stdin(b"\x00\xffbinary")
        with pytest.raises(WsProtocolError, match="needs v5"):
            client.close_stdin()
        client.send_stdin(b"EOF")
        result = client.read_until_exit(TIMEOUT)
    assert (result.stdout, result.exit_code) == (b"\x00\xffbinary", 7)


def test_ws_port_forward_port_prefix_and_channels(ws_server: BackgroundHTTPServer) -> None:
    url = f"http://127.0.0.1:{ws_server.port}/portforward/tok"
    with WsPortForwardClient.connect(url, [8080, 9], timeout=TIMEOUT) as client:
        assert client.protocol == "v4.channel.k8s.io"
        first, second = client.channels
        assert (first.data_channel, first.error_channel, second.error_channel) == (0, 1, 3)
        assert second.error(TIMEOUT) == "no listener on port 9"
        first.send(b"hello")
        assert first.recv_exactly(5, TIMEOUT) == b"HELLO"
        client.connection.wait_closed(TIMEOUT)
        assert first.error_now() == ""
