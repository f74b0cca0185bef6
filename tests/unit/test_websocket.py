"""RFC 6455 sans-IO connection: handshake key, masking, fragmentation, control frames, close, limits."""

from __future__ import annotations

import struct

import pytest

from cripy.streaming.websocket import (
    CloseCode,
    CloseReceived,
    Message,
    Opcode,
    PingReceived,
    PongReceived,
    ProtocolError,
    WebSocketConnection,
    WebSocketError,
    accept_key,
    apply_mask,
    encode_frame,
)

KEY = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask_key=KEY)


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_rfc_single_frame_masked_text() -> None:
    server = WebSocketConnection()
    # RFC 6455 5.7: a single-frame masked text message "Hello"
    wire = bytes.fromhex("818537fa213d7f9f4d5158")
    assert server.receive_data(wire) == [Message(Opcode.TEXT, b"Hello")]


def test_rfc_unmasked_text_for_client_and_server_output_is_unmasked() -> None:
    client = WebSocketConnection(is_client=True)
    assert client.receive_data(bytes.fromhex("810548656c6c6f")) == [Message(Opcode.TEXT, b"Hello")]
    server = WebSocketConnection()
    server.send_text("Hello")
    assert server.data_to_send() == bytes.fromhex("810548656c6c6f")


def test_client_role_masks_outgoing_frames() -> None:
    client = WebSocketConnection(is_client=True, random_bytes=lambda n: KEY)
    client.send_text("Hello")
    assert client.data_to_send() == bytes.fromhex("818537fa213d7f9f4d5158")


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_length_encodings_round_trip(size: int) -> None:
    client = WebSocketConnection(is_client=True)
    server = WebSocketConnection()
    payload = bytes(i % 251 for i in range(size))
    client.send_binary(payload)
    wire = client.data_to_send()
    header_len = 2 + (0 if size < 126 else 2 if size < 65536 else 8) + 4
    assert len(wire) == header_len + size
    assert server.receive_data(wire) == [Message(Opcode.BINARY, payload)]
    server.send_binary(payload)
    assert client.receive_data(server.data_to_send()) == [Message(Opcode.BINARY, payload)]


def test_mask_is_an_involution() -> None:
    data = bytes(range(256)) * 3 + b"tail"
    assert apply_mask(apply_mask(data, KEY), KEY) == data
    assert apply_mask(b"\x00\x00\x00\x00\x00", KEY) == KEY + KEY[:1]


def test_byte_by_byte_input() -> None:
    server = WebSocketConnection()
    wire = client_frame(Opcode.BINARY, b"x" * 300) + client_frame(Opcode.PING, b"p") + client_frame(Opcode.TEXT, b"t")
    events = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i:i + 1])
    assert events == [Message(Opcode.BINARY, b"x" * 300), PingReceived(b"p"), Message(Opcode.TEXT, b"t")]


def test_fragmented_message_with_interleaved_control_frames() -> None:
    server = WebSocketConnection()
    wire = (
        client_frame(Opcode.TEXT, b"Hel", fin=False)
        + client_frame(Opcode.PING, b"ping!")
        + client_frame(Opcode.CONTINUATION, b"lo, ", fin=False)
        + client_frame(Opcode.PONG, b"pong?")
        + client_frame(Opcode.CONTINUATION, "wörld".encode(), fin=True)
    )
    assert server.receive_data(wire) == [
        PingReceived(b"ping!"),
        PongReceived(b"pong?"),
        Message(Opcode.TEXT, "Hello, wörld".encode()),
    ]
    assert server.data_to_send() == encode_frame(Opcode.PONG, b"ping!")


def test_send_message_fragmentation_is_reassembled() -> None:
    client = WebSocketConnection(is_client=True)
    server = WebSocketConnection()
    client.send_message(Opcode.BINARY, b"0123456789", fragment_size=3)
    assert server.receive_data(client.data_to_send()) == [Message(Opcode.BINARY, b"0123456789")]


def _assert_failed(server: WebSocketConnection, events: list, code: int) -> None:
    assert isinstance(events[-1], ProtocolError) and events[-1].code == code
    out = server.data_to_send()
    assert out[0] == 0x88 and struct.unpack(">H", out[2:4])[0] == code
    assert server.closed and server.close_sent
    assert server.receive_data(client_frame(Opcode.TEXT, b"ignored")) == []


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (encode_frame(Opcode.TEXT, b"unmasked"), CloseCode.PROTOCOL_ERROR),
        (bytes([0xC1, 0x80]) + KEY, CloseCode.PROTOCOL_ERROR),  # RSV1 without extension
        (client_frame(0x3, b""), CloseCode.PROTOCOL_ERROR),  # reserved data opcode
        (client_frame(0xB, b""), CloseCode.PROTOCOL_ERROR),  # reserved control opcode
        (client_frame(Opcode.PING, b"", fin=False), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CONTINUATION, b"stray"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.BINARY, b"b"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.TEXT, b"\xff\xfe"), CloseCode.INVALID_DATA),
        (client_frame(Opcode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, struct.pack(">H", 1005)), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, struct.pack(">H", 999)), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, struct.pack(">H", 1000) + b"\xc3"), CloseCode.INVALID_DATA),
    ],
)
def test_protocol_violations_fail_the_connection(wire: bytes, code: int) -> None:
    server = WebSocketConnection()
    _assert_failed(server, server.receive_data(wire), code)


def test_server_frames_must_not_be_masked_for_a_client() -> None:
    client = WebSocketConnection(is_client=True)
    events = client.receive_data(encode_frame(Opcode.BINARY, b"x", mask_key=KEY))
    assert events == [ProtocolError(CloseCode.PROTOCOL_ERROR, "frames from the server must be unmasked")]


def test_oversized_message_is_refused_before_its_payload_arrives() -> None:
    server = WebSocketConnection(max_message_size=1000)
    header_only = client_frame(Opcode.BINARY, b"x" * 1001)[:8]
    _assert_failed(server, server.receive_data(header_only), CloseCode.MESSAGE_TOO_BIG)


def test_oversized_fragmented_message_is_refused() -> None:
    server = WebSocketConnection(max_message_size=10)
    wire = client_frame(Opcode.BINARY, b"123456", fin=False) + client_frame(Opcode.CONTINUATION, b"78901")
    events = server.receive_data(wire)
    _assert_failed(server, events, CloseCode.MESSAGE_TOO_BIG)
    assert len(events) == 1


def test_message_at_the_limit_is_fine() -> None:
    server = WebSocketConnection(max_message_size=10)
    assert server.receive_data(client_frame(Opcode.BINARY, b"x" * 10)) == [Message(Opcode.BINARY, b"x" * 10)]


def test_close_initiated_by_client_is_echoed() -> None:
    server = WebSocketConnection()
    events = server.receive_data(client_frame(Opcode.CLOSE, struct.pack(">H", 1001) + b"bye"))
    assert events == [CloseReceived(1001, "bye")]
    assert server.data_to_send() == encode_frame(Opcode.CLOSE, struct.pack(">H", 1001))
    assert server.closed and server.close_code == 1001
    server.send_binary(b"after close")  # dropped
    server.send_ping()
    assert server.data_to_send() == b""
    assert server.receive_data(client_frame(Opcode.TEXT, b"after close")) == []


def test_close_initiated_by_server_then_answered() -> None:
    server = WebSocketConnection()
    client = WebSocketConnection(is_client=True)
    server.close(1000, "done")
    server.close(1011, "ignored: idempotent")
    assert server.close_sent and not server.closed
    assert client.receive_data(server.data_to_send()) == [CloseReceived(1000, "done")]
    assert client.closed
    assert server.receive_data(client.data_to_send()) == [CloseReceived(1000, "")]
    assert server.closed
    assert server.data_to_send() == b""  # no second close


def test_empty_close_is_answered_with_empty_close() -> None:
    server = WebSocketConnection()
    assert server.receive_data(client_frame(Opcode.CLOSE, b"")) == [CloseReceived(None, "")]
    assert server.data_to_send() == encode_frame(Opcode.CLOSE, b"")


def test_events_before_a_close_are_kept_and_data_after_it_ignored() -> None:
    server = WebSocketConnection()
    wire = (client_frame(Opcode.BINARY, b"last words") + client_frame(Opcode.CLOSE, struct.pack(">H", 1000))
            + client_frame(Opcode.BINARY, b"ghost"))
    assert server.receive_data(wire) == [Message(Opcode.BINARY, b"last words"), CloseReceived(1000, "")]


def test_ping_api() -> None:
    client = WebSocketConnection(is_client=True)
    server = WebSocketConnection()
    server.send_ping(b"are you there")
    assert client.receive_data(server.data_to_send()) == [PingReceived(b"are you there")]
    assert server.receive_data(client.data_to_send()) == [PongReceived(b"are you there")]
    with pytest.raises(WebSocketError):
        server.send_ping(b"x" * 126)


def test_long_close_reason_is_truncated_to_a_valid_control_frame() -> None:
    server = WebSocketConnection()
    client = WebSocketConnection(is_client=True)
    server.close(1000, "é" * 100)
    events = client.receive_data(server.data_to_send())
    assert isinstance(events[0], CloseReceived)
    assert len(events[0].reason.encode()) <= 123
