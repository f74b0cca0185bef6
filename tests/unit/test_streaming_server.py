"""The streaming server without containers: request heads, routing, the SPDY and WebSocket upgrade negotiation,
tokens on a live server (plain and TLS), the input pipe's back-pressure, and the exec request rules."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cripy.errors import InvalidArgument
from cripy.streaming import channels, websocket
from cripy.streaming.commandsession import Outcome, status_payload
from cripy.streaming.remotecommand import ExecRequest, validate_exec
from cripy.streaming.handshake import KIND_EXEC, KIND_PORTFORWARD, HttpError, negotiate, parse_request_head, route
from cripy.streaming.pumps import InputPipe, Pump
from cripy.streaming.server import ServerSettings, StreamingServer

WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


def head(target: str = "/exec/tok", *headers: str, method: str = "POST") -> bytes:
    return ("\r\n".join([f"{method} {target} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode()


def spdy_head(*protocols: str, target: str = "/exec/tok") -> bytes:
    return head(target, "Connection: Upgrade", "Upgrade: SPDY/3.1",
                *[f"X-Stream-Protocol-Version: {p}" for p in protocols])


def ws_head(*protocols: str, target: str = "/exec/tok") -> bytes:
    extra = [f"Sec-WebSocket-Protocol: {', '.join(protocols)}"] if protocols else []
    return head(target, "Connection: keep-alive, Upgrade", "Upgrade: websocket", f"Sec-WebSocket-Key: {WS_KEY}",
                "Sec-WebSocket-Version: 13", *extra, method="GET")


# ---- parsing and routing ----------------------------------------------------------------------------------------


def test_request_head_is_parsed() -> None:
    request = parse_request_head(head("/portforward/abc?port=80&port=81", "X-A: 1", "x-a: 2, 3"))
    assert request.method == "POST" and request.path == "/portforward/abc"
    assert request.query == {"port": ["80", "81"]}
    assert request.header("X-A") == "1"
    assert request.header_list("x-a") == ["1", "2", "3"]


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /x HTTP/2.0\r\n\r\n", b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
                                 b"GET x HTTP/1.1\r\n\r\n", b"\r\n\r\n"])
def test_malformed_heads_are_400_or_505(raw: bytes) -> None:
    with pytest.raises(HttpError) as error:
        parse_request_head(raw)
    assert error.value.status in (400, 505)


def test_routes() -> None:
    assert route(parse_request_head(head("/exec/t1"))) == ("exec", "t1")
    assert route(parse_request_head(head("/attach/t2", method="GET"))) == ("attach", "t2")
    assert route(parse_request_head(head("/portforward/t3"))) == ("portforward", "t3")
    for path in ("/", "/exec", "/exec/", "/exec/a/b", "/run/t", "/healthz"):
        with pytest.raises(HttpError) as error:
            route(parse_request_head(head(path)))
        assert error.value.status == 404, path
    with pytest.raises(HttpError) as error:
        route(parse_request_head(head("/exec/t", method="DELETE")))
    assert error.value.status == 405


# ---- negotiation ------------------------------------------------------------------------------------------------


def test_spdy_picks_the_clients_first_supported_version_and_names_it() -> None:
    upgrade = negotiate(parse_request_head(spdy_head("v9.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io")),
                        KIND_EXEC)
    assert (upgrade.transport, upgrade.protocol) == ("spdy", "v3.channel.k8s.io")
    text = upgrade.response.decode()
    assert text.startswith("HTTP/1.1 101 ")
    assert "X-Stream-Protocol-Version: v3.channel.k8s.io\r\n" in text and "Upgrade: SPDY/3.1\r\n" in text


def test_spdy_without_a_common_version_is_403_naming_the_supported_ones() -> None:
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(spdy_head("v9.channel.k8s.io")), KIND_EXEC)
    assert error.value.status == 403
    assert "v9.channel.k8s.io" in error.value.message and "v4.channel.k8s.io" in error.value.message
    accepted = [value for name, value in error.value.headers if name == "X-Accepted-Stream-Protocol-Versions"]
    assert accepted == list(channels.SPDY_REMOTE_COMMAND_PROTOCOLS)
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(spdy_head("v4.channel.k8s.io")), KIND_PORTFORWARD)
    assert error.value.status == 403 and "portforward.k8s.io" in error.value.message


def test_spdy_without_any_version_is_refused() -> None:
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(spdy_head()), KIND_EXEC)
    assert error.value.status == 400 and "X-Stream-Protocol-Version" in error.value.message


def test_requests_without_upgrade_headers_are_400() -> None:
    for raw in (head(), head("/exec/t", "Upgrade: SPDY/3.1"), head("/exec/t", "Connection: Upgrade", "Upgrade: h2c")):
        with pytest.raises(HttpError) as error:
            negotiate(parse_request_head(raw), KIND_EXEC)
        assert error.value.status == 400


def test_websocket_negotiation() -> None:
    upgrade = negotiate(parse_request_head(ws_head("v5.channel.k8s.io", "v4.channel.k8s.io")), KIND_EXEC)
    assert (upgrade.transport, upgrade.protocol) == ("websocket", "v5.channel.k8s.io")
    text = upgrade.response.decode()
    assert f"Sec-WebSocket-Accept: {websocket.accept_key(WS_KEY)}\r\n" in text
    assert "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n" in text
    # no sub-protocol at all: kubelet's legacy binary channel protocol, and no protocol header in the answer
    bare = negotiate(parse_request_head(ws_head()), KIND_EXEC)
    assert bare.protocol == "" and b"Sec-WebSocket-Protocol" not in bare.response
    assert negotiate(parse_request_head(ws_head("v4.channel.k8s.io")), KIND_PORTFORWARD).protocol == \
        "v4.channel.k8s.io"


def test_websocket_refusals() -> None:
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(ws_head("v9.channel.k8s.io")), KIND_EXEC)
    assert error.value.status == 403 and "v9.channel.k8s.io" in error.value.message
    assert "v5.channel.k8s.io" in error.value.message
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(ws_head("v5.channel.k8s.io")), KIND_PORTFORWARD)
    assert error.value.status == 403
    bad_version = ws_head().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8")
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(bad_version), KIND_EXEC)
    assert error.value.status == 426
    bad_key = ws_head().replace(WS_KEY.encode(), b"short")
    with pytest.raises(HttpError) as error:
        negotiate(parse_request_head(bad_key), KIND_EXEC)
    assert error.value.status == 400


# ---- a live server with a stand-in handler ----------------------------------------------------------------------


class RecordingHandler:
    def __init__(self) -> None:
        self.served: list[tuple[str, str, Any]] = []
        self.prepared: list[Any] = []

    async def prepare(self, request: Any) -> None:
        if request == "invalid":
            raise InvalidArgument("bad request")
        self.prepared.append(request)

    async def serve(self, pump: Pump, request: Any) -> None:
        self.served.append((pump.transport, pump.protocol, request))
        if pump.transport == "websocket":
            await pump.send(1, b"hi")  # type: ignore[call-arg]
            await pump.close()  # type: ignore[union-attr]
        else:
            await pump.go_away()  # type: ignore[union-attr]


async def exchange(server: StreamingServer, raw: bytes, context: ssl.SSLContext | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@pytest.fixture
async def server() -> Any:
    handler = RecordingHandler()
    srv = StreamingServer(ServerSettings(), {KIND_EXEC: handler, KIND_PORTFORWARD: handler})
    await srv.start()
    srv.test_handler = handler  # type: ignore[attr-defined]
    yield srv
    await srv.stop()


async def test_a_url_serves_once_then_404(server: StreamingServer) -> None:
    url = await server.url_for(KIND_EXEC, "run-this")
    assert url.startswith(f"http://127.0.0.1:{server.port}/exec/")
    path = url.split(str(server.port), 1)[1]
    first = await exchange(server, spdy_head("v4.channel.k8s.io", target=path))
    assert first.startswith(b"HTTP/1.1 101 ")
    assert server.test_handler.served == [("spdy", "v4.channel.k8s.io", "run-this")]  # type: ignore[attr-defined]
    again = await exchange(server, spdy_head("v4.channel.k8s.io", target=path))
    assert again.startswith(b"HTTP/1.1 404 ") and b"token" in again
    assert server.active_connections == 0


async def test_tokens_are_bound_to_their_kind(server: StreamingServer) -> None:
    url = await server.url_for(KIND_EXEC, "x")
    token = url.rsplit("/", 1)[1]
    wrong = await exchange(server, spdy_head("portforward.k8s.io", target=f"/portforward/{token}"))
    assert wrong.startswith(b"HTTP/1.1 404 ")


async def test_a_refused_negotiation_burns_the_token(server: StreamingServer) -> None:
    path = "/exec/" + (await server.url_for(KIND_EXEC, "x")).rsplit("/", 1)[1]
    refused = await exchange(server, spdy_head("v9.channel.k8s.io", target=path))
    assert refused.startswith(b"HTTP/1.1 403 ") and b"v4.channel.k8s.io" in refused
    assert b"X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io" in refused
    assert (await exchange(server, spdy_head("v4.channel.k8s.io", target=path))).startswith(b"HTTP/1.1 404 ")


async def test_websocket_session_through_the_server(server: StreamingServer) -> None:
    path = "/exec/" + (await server.url_for(KIND_EXEC, "ws")).rsplit("/", 1)[1]
    answer = await exchange(server, ws_head("v4.base64.channel.k8s.io", target=path))
    head_part, _, frames = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 101 ")
    client = websocket.WebSocketConnection(is_client=True)
    events = client.receive_data(frames)
    message = next(e for e in events if isinstance(e, websocket.Message))
    assert channels.decode("v4.base64.channel.k8s.io", message.opcode, message.data) == (1, b"hi")
    assert any(isinstance(e, websocket.CloseReceived) for e in events)


async def test_prepare_errors_reach_the_caller_and_issue_no_token(server: StreamingServer) -> None:
    with pytest.raises(InvalidArgument):
        await server.url_for(KIND_EXEC, "invalid")
    assert len(server.tokens) == 0


async def test_garbage_and_oversized_heads(server: StreamingServer) -> None:
    assert (await exchange(server, b"NOT HTTP\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET /exec/x HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n"
    assert (await exchange(server, huge)).startswith(b"HTTP/1.1 431 ")
    assert (await exchange(server, head("/metrics", method="GET"))).startswith(b"HTTP/1.1 404 ")


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    handler = RecordingHandler()
    srv = StreamingServer(ServerSettings(tls_cert=str(cert), tls_key=str(key)), {KIND_EXEC: handler})
    await srv.start()
    try:
        url = await srv.url_for(KIND_EXEC, "secure")
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        answer = await exchange(srv, spdy_head("v4.channel.k8s.io", target="/exec/" + url.rsplit("/", 1)[1]), context)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert handler.served == [("spdy", "v4.channel.k8s.io", "secure")]
    finally:
        await srv.stop()


def test_unreadable_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="TLS certificate"):
        StreamingServer(ServerSettings(tls_cert=str(tmp_path / "none.pem"), tls_key=str(tmp_path / "none.key")), {})


# ---- the input pipe ---------------------------------------------------------------------------------------------


async def test_input_pipe_pauses_the_reader_while_full_and_returns_the_window() -> None:
    events: list[str] = []
    consumed: list[int] = []

    async def on_consumed(n: int) -> None:
        consumed.append(n)

    pipe = InputPipe(limit=10, pause=lambda: events.append("pause"), resume=lambda: events.append("resume"),
                     on_consumed=on_consumed)
    pipe.feed(b"12345")
    pipe.feed(b"67890")
    assert events == []
    pipe.feed(b"abc")
    assert events == ["pause"]
    assert await pipe.read() == b"12345"
    assert events == ["pause"]  # 8 bytes still wait: more than half the limit
    assert await pipe.read() == b"67890"
    assert events == ["pause", "resume"]
    pipe.feed_eof()
    assert await pipe.read() == b"abc"
    assert await pipe.read() is None
    assert consumed == [5, 5, 3]


# ---- request rules and results ----------------------------------------------------------------------------------


def test_exec_request_rules() -> None:
    validate_exec(ExecRequest("c", ("ls",), stdin=True, stdout=False, stderr=False))
    for bad in (ExecRequest("c", ()), ExecRequest("c", ("ls",), tty=True, stderr=True),
                ExecRequest("c", ("ls",), stdout=False, stderr=False), ExecRequest("", ("ls",))):
        with pytest.raises(InvalidArgument):
            validate_exec(bad)


def test_status_payload_per_protocol() -> None:
    assert status_payload("v4.channel.k8s.io", Outcome(exit_code=0)) == b'{"metadata":{},"status":"Success"}'
    failure = status_payload("v5.channel.k8s.io", Outcome(exit_code=3))
    assert b'"reason":"NonZeroExitCode"' in failure and b'"message":"3"' in failure
    assert status_payload("v2.channel.k8s.io", Outcome(exit_code=0)) == b""
    assert b"3" in status_payload("channel.k8s.io", Outcome(exit_code=3))
    assert b"boom" in status_payload("v4.channel.k8s.io", Outcome(error="boom"))
