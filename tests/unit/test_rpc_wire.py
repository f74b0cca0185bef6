"""cripy/rpc/wire.py: the grpc-timeout header, a request's headers, length-prefixed messages and the status
trailers (gRPC's PROTOCOL-HTTP2.md)."""

from __future__ import annotations

import base64
import os
import urllib.parse

import pytest

from cripy.rpc import wire
from cripy.rpc.wire import MessageReader, ProtocolViolation, StatusCode

HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/pkg.Service/Method"), (":authority", "localhost"),
           ("content-type", "application/grpc"), ("te", "trailers")]


# --------------------------------------------------------------------------------------------------- grpc-timeout


@pytest.mark.parametrize("value, seconds", [
    ("2H", 7200.0), ("3M", 180.0), ("7S", 7.0), ("250m", 0.25), ("1500u", 0.0015), ("2000000n", 0.002),
    ("0S", 0.0), ("99999999S", 99_999_999.0), ("00000001H", 3600.0),
])
def test_timeouts_in_every_unit(value: str, seconds: float) -> None:
    assert wire.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "", "S", "10", "123456789S",  # nothing, no digits, no unit, nine digits
    "1s", "1h", "1x", "1 S", " 1S", "-1S", "+1S", "1.5S", "1e3S",
    "١S",  # an Arabic-Indic digit: a digit to str.isdigit, not to gRPC
    "²S",  # a superscript two: isdigit() but not a decimal
])
def test_malformed_timeouts_are_invalid_arguments(value: str) -> None:
    with pytest.raises(ProtocolViolation) as error:
        wire.parse_timeout(value)
    assert error.value.code == StatusCode.INVALID_ARGUMENT


def test_a_long_malformed_timeout_is_not_echoed_whole() -> None:
    with pytest.raises(ProtocolViolation) as error:
        wire.parse_timeout("9" * 10_000 + "S")
    assert len(str(error.value)) < 100


# ------------------------------------------------------------------------------------------------------ requests


def test_a_request_gives_its_path_timeout_and_metadata() -> None:
    request = wire.parse_request(HEADERS + [("grpc-timeout", "5S"), ("x-trace", "abc"), ("user-agent", "ua/1"),
                                            ("x-trace", "def"), ("grpc-accept-encoding", "gzip")])
    assert request.path == "/pkg.Service/Method"
    assert request.timeout == 5.0
    assert request.metadata == (("x-trace", "abc"), ("user-agent", "ua/1"), ("x-trace", "def"))


def test_a_request_without_a_timeout_has_none() -> None:
    assert wire.parse_request(HEADERS).timeout is None


@pytest.mark.parametrize("method", ["GET", "PUT", "post", None])
def test_a_method_other_than_post_is_not_grpc(method: str | None) -> None:
    headers = [h for h in HEADERS if h[0] != ":method"] + ([(":method", method)] if method else [])
    with pytest.raises(ProtocolViolation) as error:
        wire.parse_request(headers)
    assert error.value.code == StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+proto", "application/grpc;x=1"])
def test_grpc_content_types_are_accepted(content_type: str) -> None:
    headers = [h for h in HEADERS if h[0] != "content-type"] + [("content-type", content_type)]
    assert wire.parse_request(headers).path == "/pkg.Service/Method"


@pytest.mark.parametrize("content_type", ["application/json", "application/grpcx", "application/grpc-web", "", None])
def test_other_content_types_are_refused(content_type: str | None) -> None:
    headers = [h for h in HEADERS if h[0] != "content-type"]
    if content_type is not None:
        headers.append(("content-type", content_type))
    with pytest.raises(ProtocolViolation) as error:
        wire.parse_request(headers)
    assert error.value.code == StatusCode.UNKNOWN
    assert error.value.http_status == 415


def test_a_malformed_timeout_makes_the_request_invalid() -> None:
    with pytest.raises(ProtocolViolation) as error:
        wire.parse_request(HEADERS + [("grpc-timeout", "soon")])
    assert error.value.code == StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("encoded", [
    base64.b64encode(b"\0\xffbinary\n").decode(),  # padded
    base64.b64encode(b"\0\xffbinary\n").decode().rstrip("="),  # unpadded, as gRPC allows
])
def test_binary_metadata_is_base64_decoded(encoded: str) -> None:
    request = wire.parse_request(HEADERS + [("x-id-bin", encoded), ("x-text", encoded)])
    assert request.metadata == (("x-id-bin", b"\0\xffbinary\n"), ("x-text", encoded))


@pytest.mark.parametrize("value", [
    "a",  # one character: no byte can be made of it
    "!!!!",  # no base64 character at all
    "AAAA!",  # a character outside the alphabet
    "YW==Jj",  # data after the padding
    "AA AA",  # a space inside
])
def test_binary_metadata_that_is_not_base64_is_an_invalid_argument(value: str) -> None:
    with pytest.raises(ProtocolViolation) as error:
        wire.parse_request(HEADERS + [("x-id-bin", value)])
    assert error.value.code == StatusCode.INVALID_ARGUMENT
    assert "x-id-bin" in str(error.value)


# ------------------------------------------------------------------------------------------------------ messages


def test_messages_split_across_feeds_come_out_whole_and_in_order() -> None:
    stream = wire.message(b"first") + wire.message(b"") + wire.message(b"x" * 1000)
    ends = {10, 15, len(stream)}  # where a message ends, and nothing waits for more
    for step in (1, 2, 5, 7, 999):
        reader = MessageReader(limit=1000)
        out = []
        for at in range(0, len(stream), step):
            out += reader.feed(stream[at:at + step])
            assert reader.partial == (min(at + step, len(stream)) not in ends)
        assert out == [b"first", b"", b"x" * 1000]


def test_several_messages_in_one_feed() -> None:
    reader = MessageReader(limit=10)
    assert reader.feed(wire.message(b"a") + wire.message(b"bc") + wire.message(b"def")[:4]) == [b"a", b"bc"]
    assert reader.partial
    assert reader.feed(wire.message(b"def")[4:]) == [b"def"]
    assert not reader.partial


def test_a_message_over_the_limit_is_refused_from_its_prefix_alone() -> None:
    reader = MessageReader(limit=100)
    assert reader.feed(wire.message(b"x" * 100)) == [b"x" * 100]
    with pytest.raises(ProtocolViolation) as error:
        reader.feed(b"\0" + (101).to_bytes(4, "big"))  # no byte of the message itself has arrived
    assert error.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "101" in str(error.value) and "100" in str(error.value)


def test_a_message_announcing_four_gigabytes_is_refused() -> None:
    with pytest.raises(ProtocolViolation) as error:
        MessageReader(limit=4 * 1024 * 1024).feed(b"\0\xff\xff\xff\xff")
    assert error.value.code == StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("flag", [1, 2, 0x80])
def test_a_compressed_message_is_unimplemented(flag: int) -> None:
    with pytest.raises(ProtocolViolation) as error:
        MessageReader(limit=100).feed(bytes([flag]) + (3).to_bytes(4, "big") + b"abc")
    assert error.value.code == StatusCode.UNIMPLEMENTED


def test_a_message_is_prefixed_with_its_flag_and_length() -> None:
    assert wire.message(b"abc") == b"\0\0\0\0\3abc"
    assert wire.message(b"") == b"\0\0\0\0\0"


# ------------------------------------------------------------------------------------------------------ statuses


def test_status_trailers_carry_the_code_and_the_encoded_message() -> None:
    assert wire.status_trailers(StatusCode.NOT_FOUND, "no pod 'x'") == [("grpc-status", "5"),
                                                                         ("grpc-message", "no pod 'x'")]
    assert wire.status_trailers(StatusCode.INTERNAL, "") == [("grpc-status", "13")]
    assert wire.OK_TRAILERS == [("grpc-status", "0")]


@pytest.mark.parametrize("text", ["plain text, with: punctuation!", "", "~ and space"])
def test_printable_ascii_is_sent_as_is(text: str) -> None:
    assert wire.percent_encode(text) == text


@pytest.mark.parametrize("text, encoded", [
    ("100%", "100%25"),
    ("%41", "%2541"),  # a '%' that looks like an escape is itself escaped
    ("é", "%C3%A9"),
    ("line\nbreak\ttab", "line%0Abreak%09tab"),
    ("\x7f", "%7F"),
    ("容器 🚀", "%E5%AE%B9%E5%99%A8 %F0%9F%9A%80"),
])
def test_percent_encoding_of_what_is_not_printable_ascii(text: str, encoded: str) -> None:
    result = wire.percent_encode(text)
    assert result == encoded
    assert result.isascii() and result.isprintable()
    assert urllib.parse.unquote(result, errors="strict") == text


def test_percent_encoding_survives_text_made_from_undecodable_bytes() -> None:
    """Error messages name paths, and a path's undecodable bytes reach Python as lone surrogates (os.fsdecode)."""
    text = "cannot open " + os.fsdecode(b"/var/lib/x\xff")
    result = wire.percent_encode(text)
    assert result.isascii() and result.isprintable()
    assert result.startswith("cannot open /var/lib/x")
