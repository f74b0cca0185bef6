"""Kubernetes channel sub-protocols: negotiation, framing for every protocol, close signal, ports, status."""

from __future__ import annotations

import base64
import json

import pytest

from cripy.streaming import channels
from cripy.streaming.channels import (
    CHANNEL_PROTOCOLS,
    PORT_FORWARD_CHANNEL_PROTOCOLS,
    SPDY_REMOTE_COMMAND_PROTOCOLS,
    ResizeDecoder,
    TerminalSize,
)
from cripy.streaming.websocket import Opcode

BINARY_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io", ""]
BASE64_PROTOCOLS = ["v4.base64.channel.k8s.io", "base64.channel.k8s.io"]


def test_protocol_lists() -> None:
    assert CHANNEL_PROTOCOLS == ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io",
                                 "channel.k8s.io", "base64.channel.k8s.io")
    assert SPDY_REMOTE_COMMAND_PROTOCOLS == ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                                             "channel.k8s.io")
    assert PORT_FORWARD_CHANNEL_PROTOCOLS == ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")


def test_negotiate_prefers_the_clients_order() -> None:
    assert channels.negotiate(["v4.channel.k8s.io", "v5.channel.k8s.io"]) == "v4.channel.k8s.io"
    assert channels.negotiate(["bogus", "base64.channel.k8s.io"]) == "base64.channel.k8s.io"
    assert channels.negotiate(["v9.channel.k8s.io"]) is None
    assert channels.negotiate([]) == ""
    assert channels.negotiate([], SPDY_REMOTE_COMMAND_PROTOCOLS, allow_none=False) is None
    assert channels.negotiate(["v5.channel.k8s.io", "v3.channel.k8s.io"], SPDY_REMOTE_COMMAND_PROTOCOLS) == \
        "v3.channel.k8s.io"


def test_parse_protocol_header_unfolds_commas() -> None:
    assert channels.parse_protocol_header(["v4.channel.k8s.io, v3.channel.k8s.io", "channel.k8s.io"]) == [
        "v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]


@pytest.mark.parametrize("protocol", BINARY_PROTOCOLS)
@pytest.mark.parametrize("channel", [0, 1, 2, 3, 4])
def test_binary_framing(protocol: str, channel: int) -> None:
    opcode, payload = channels.encode(protocol, channel, b"\x00data\xff")
    assert (opcode, payload) == (Opcode.BINARY, bytes([channel]) + b"\x00data\xff")
    assert channels.decode(protocol, opcode, payload) == (channel, b"\x00data\xff")


@pytest.mark.parametrize("protocol", BASE64_PROTOCOLS)
@pytest.mark.parametrize("channel", [0, 1, 2, 3, 4])
def test_base64_framing(protocol: str, channel: int) -> None:
    opcode, payload = channels.encode(protocol, channel, b"\x00data\xff")
    assert opcode == Opcode.TEXT
    assert payload == str(channel).encode() + base64.b64encode(b"\x00data\xff")
    assert channels.decode(protocol, opcode, payload) == (channel, b"\x00data\xff")
    # kubelet accepts either frame type on input
    assert channels.decode(protocol, Opcode.BINARY, payload) == (channel, b"\x00data\xff")


def test_base64_hand_written_message() -> None:
    assert channels.decode("base64.channel.k8s.io", Opcode.TEXT, b"1aGVsbG8=") == (1, b"hello")
    assert channels.decode("v4.base64.channel.k8s.io", Opcode.TEXT, b"0") == (0, b"")


@pytest.mark.parametrize("payload", [b"", b"0not base64!", b"/aGk="])
def test_base64_decode_errors(payload: bytes) -> None:
    with pytest.raises(ValueError):
        channels.decode("base64.channel.k8s.io", Opcode.TEXT, payload)


def test_decode_rejects_empty_and_control_messages() -> None:
    with pytest.raises(ValueError):
        channels.decode("v4.channel.k8s.io", Opcode.BINARY, b"")
    with pytest.raises(ValueError):
        channels.decode("v4.channel.k8s.io", Opcode.PING, b"\x01x")


def test_v5_close_signal() -> None:
    opcode, payload = channels.encode_close_signal(channels.STDIN)
    assert (opcode, payload) == (Opcode.BINARY, b"\xff\x00")
    channel, data = channels.decode("v5.channel.k8s.io", opcode, payload)
    assert channels.is_close_signal("v5.channel.k8s.io", channel, data) == channels.STDIN
    assert channels.is_close_signal("v5.channel.k8s.io", 0, b"\x00") is None
    with pytest.raises(ValueError):
        channels.is_close_signal("v5.channel.k8s.io", 255, b"\x00\x01")
    # before v5, 255 is just a (nonexistent) channel number
    assert channels.decode("v4.channel.k8s.io", Opcode.BINARY, b"\xff\x00") == (255, b"\x00")
    assert channels.is_close_signal("v4.channel.k8s.io", 255, b"\x00") is None


def test_protocol_properties() -> None:
    assert channels.uses_status_json("v5.channel.k8s.io") and channels.uses_status_json("v4.base64.channel.k8s.io")
    assert not channels.uses_status_json("channel.k8s.io") and not channels.uses_status_json("v3.channel.k8s.io")
    assert channels.supports_resize("v3.channel.k8s.io", websocket=False)
    assert not channels.supports_resize("v2.channel.k8s.io", websocket=False)
    assert channels.supports_resize("channel.k8s.io", websocket=True)


# ----------------------------------------------------------------------------------- port-forward


def test_port_query_parsing() -> None:
    assert channels.parse_port_query(["80", "8080,9090"]) == [80, 8080, 9090]
    for bad in ([], [""], ["0"], ["70000"], ["http"], ["80,"]):
        with pytest.raises(ValueError):
            channels.parse_port_query(bad)


def test_port_channels_and_prefix() -> None:
    assert [channels.port_forward_channels(i) for i in range(3)] == [(0, 1), (2, 3), (4, 5)]
    assert channels.port_index_of_channel(5) == (2, True)
    assert channels.port_index_of_channel(4) == (2, False)
    assert channels.port_prefix(8080) == b"\x90\x1f"  # little endian
    assert channels.parse_port_prefix(b"\x90\x1fmore") == 8080
    opcode, payload = channels.encode("v4.channel.k8s.io", 2, channels.port_prefix(443))
    assert payload == b"\x02\xbb\x01"
    opcode, payload = channels.encode("v4.base64.channel.k8s.io", 3, channels.port_prefix(443))
    assert payload == b"3" + base64.b64encode(b"\xbb\x01")


# ------------------------------------------------------------------------------------ exit status


def test_exit_status_json_success_and_exit_code() -> None:
    assert json.loads(channels.exit_status_json(0, None)) == {"metadata": {}, "status": "Success"}
    assert json.loads(channels.exit_status_json(None, None))["status"] == "Success"
    status = json.loads(channels.exit_status_json(3, None))
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert "non-zero exit code" in status["message"]


def test_exit_status_json_internal_error() -> None:
    status = json.loads(channels.exit_status_json(None, "runc exec failed"))
    assert status["status"] == "Failure" and status["reason"] == "InternalError" and status["code"] == 500
    assert "runc exec failed" in status["message"]


def test_text_status_for_old_protocols() -> None:
    assert channels.exit_status_text(0) == b""
    assert b"non-zero exit code" in channels.exit_status_text(3)
    assert channels.status_payload("v3.channel.k8s.io", 0) == b""
    assert channels.status_payload("v4.channel.k8s.io", 0) == b'{"metadata":{},"status":"Success"}'


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io", "channel.k8s.io"])
def test_parse_exit_status_round_trip(protocol: str) -> None:
    assert channels.parse_exit_status(protocol, channels.status_payload(protocol, 0)) == (0, None)
    code, error = channels.parse_exit_status(protocol, channels.status_payload(protocol, 7))
    if channels.uses_status_json(protocol):
        assert (code, error) == (7, None)
    else:
        assert code == 1 and "non-zero" in (error or "")
    code, error = channels.parse_exit_status(protocol, channels.status_payload(protocol, None, "boom"))
    assert code == 1 and "boom" in (error or "")


# ----------------------------------------------------------------------------------------- resize


def test_resize_decoder_handles_split_and_concatenated_objects() -> None:
    decoder = ResizeDecoder()
    wire = channels.encode_resize(80, 24) + channels.encode_resize(120, 40) + b'{"Width":1,"Height":2}'
    sizes = []
    for i in range(len(wire)):
        sizes += decoder.feed(wire[i:i + 1])
    assert sizes == [TerminalSize(80, 24), TerminalSize(120, 40), TerminalSize(1, 2)]


def test_resize_decoder_rejects_garbage() -> None:
    for bad in (b"[1,2]", b'{"Width":"x","Height":1}', b"nonsense}", b'{"Width":1,,}'):
        with pytest.raises(ValueError):
            ResizeDecoder().feed(bad)
