"""cripy/rpc/http2.py without sockets: hand-built client frames in, events and the server's frames out.

Each test plays the client: it opens with the preface and a SETTINGS frame, encodes its header blocks with its own
hpack.Encoder and reads what the server queued with its own hpack.Decoder, so a mismatch in either direction of the
header compression shows up as wrong headers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import hpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cripy.rpc import http2
from cripy.rpc.http2 import (ACK, END_HEADERS, END_STREAM, PADDED, PRIORITY_FLAG, ErrorCode, FrameType, Setting,
                             frame)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES * 8, deadline=None, database=None, suppress_health_check=list(HealthCheck))

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/pkg.Service/Method"), (":authority", "localhost"),
           ("content-type", "application/grpc"), ("te", "trailers")]


@dataclass(frozen=True)
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


def parse_frames(data: bytes) -> list[Frame]:
    frames, at = [], 0
    while at < len(data):
        assert len(data) - at >= 9, f"a truncated frame header at {at}"
        length = int.from_bytes(data[at:at + 3], "big")
        assert len(data) - at - 9 >= length, f"a truncated frame payload at {at}"
        frames.append(Frame(data[at + 3], data[at + 4], int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFF_FFFF,
                            data[at + 9:at + 9 + length]))
        at += 9 + length
    return frames


def settings_payload(**values: int) -> bytes:
    return b"".join(Setting[name].to_bytes(2, "big") + value.to_bytes(4, "big") for name, value in values.items())


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


class Client:
    """The client side of one connection to a ServerConnection, a frame at a time."""

    def __init__(self, **server_options: int) -> None:
        self.server = http2.ServerConnection(**server_options)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.greeting = parse_frames(self.server.data_to_send())

    def open(self, **client_settings: int) -> list[http2.Event]:
        return self.server.receive(http2.PREFACE + frame(FrameType.SETTINGS, 0, 0, settings_payload(**client_settings)))

    def settings(self, **values: int) -> list[http2.Event]:
        return self.send(frame(FrameType.SETTINGS, 0, 0, settings_payload(**values)))

    def send(self, *frames: bytes) -> list[http2.Event]:
        return self.server.receive(b"".join(frames))

    def block(self, headers: list[tuple[str, str]] = REQUEST) -> bytes:
        return self.encoder.encode(headers)

    def request(self, stream_id: int, end_stream: bool = False,
                headers: list[tuple[str, str]] = REQUEST) -> list[http2.Event]:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return self.send(frame(FrameType.HEADERS, flags, stream_id, self.block(headers)))

    def out(self) -> list[Frame]:
        return parse_frames(self.server.data_to_send())

    def headers_of(self, frames: list[Frame], stream_id: int) -> list[list[tuple[str, str]]]:
        """The header blocks the server sent on the stream, decoded in order (HEADERS + CONTINUATION joined)."""
        blocks, current = [], None
        for f in frames:
            if f.stream_id != stream_id or f.kind not in (FrameType.HEADERS, FrameType.CONTINUATION):
                continue
            current = bytearray(f.payload) if f.kind == FrameType.HEADERS else current + f.payload
            if f.flags & END_HEADERS:
                blocks.append(self.decoder.decode(bytes(current)))
                current = None
        return blocks


def opened(**server_options: int) -> Client:
    client = Client(**server_options)
    client.open()
    client.out()
    return client


def data_of(frames: list[Frame], stream_id: int) -> bytes:
    return b"".join(f.payload for f in frames if f.kind == FrameType.DATA and f.stream_id == stream_id)


def kinds(frames: list[Frame]) -> list[tuple[str, int]]:
    return [(FrameType(f.kind).name, f.stream_id) for f in frames]


def goaway_code(frames: list[Frame]) -> tuple[int, int]:
    """The last stream id and error code of the one GOAWAY among the frames."""
    goaways = [f for f in frames if f.kind == FrameType.GOAWAY]
    assert len(goaways) == 1, kinds(frames)
    return int.from_bytes(goaways[0].payload[:4], "big"), int.from_bytes(goaways[0].payload[4:8], "big")


def expect_connection_error(client: Client, code: ErrorCode, *frames: bytes) -> None:
    with pytest.raises(http2.ConnectionError) as error:
        client.send(*frames)
    assert error.value.code == code
    _, sent_code = goaway_code(client.out())
    assert sent_code == code


def frame_id(value: object) -> str | None:
    """Test ids that name a hand-built frame by its type, stream, flags and length."""
    if isinstance(value, bytes) and len(value) >= 9:
        kind = value[3]
        name = FrameType(kind).name if kind in set(FrameType) else f"TYPE{kind:#x}"
        return f"{name}-stream{int.from_bytes(value[5:9], 'big')}-flags{value[4]:#x}-len{int.from_bytes(value[:3], 'big')}"
    if isinstance(value, ErrorCode):
        return value.name
    return None


def rst_code(f: Frame) -> int:
    assert f.kind == FrameType.RST_STREAM
    return int.from_bytes(f.payload, "big")


# ------------------------------------------------------------------------------------------------- the preface


def test_the_server_speaks_first_with_its_settings_and_a_larger_connection_window() -> None:
    client = Client(max_concurrent_streams=7)
    first, second = client.greeting
    assert (first.kind, first.flags, first.stream_id) == (FrameType.SETTINGS, 0, 0)
    entries = {int.from_bytes(first.payload[i:i + 2], "big"): int.from_bytes(first.payload[i + 2:i + 6], "big")
               for i in range(0, len(first.payload), 6)}
    assert entries[Setting.MAX_CONCURRENT_STREAMS] == 7
    assert entries[Setting.ENABLE_PUSH] == 0
    assert entries[Setting.INITIAL_WINDOW_SIZE] == http2.RECEIVE_WINDOW
    assert (second.kind, second.stream_id) == (FrameType.WINDOW_UPDATE, 0)
    assert int.from_bytes(second.payload, "big") + http2.DEFAULT_WINDOW == http2.RECEIVE_WINDOW


def test_the_preface_may_arrive_a_byte_at_a_time() -> None:
    client = Client()
    client.server.data_to_send()
    for byte in http2.PREFACE:
        assert client.server.receive(bytes([byte])) == []
    events = client.send(frame(FrameType.SETTINGS, 0, 0))
    assert events == [http2.WindowOpened()]
    assert kinds(client.out()) == [("SETTINGS", 0)]


@pytest.mark.parametrize("opening", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # HTTP/1.1 where HTTP/2 is expected
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # the right length, wrong bytes
    b"X",  # wrong from its first byte: refused without waiting for the rest
], ids=["http1", "wrong-bytes", "wrong-first-byte"])
def test_a_connection_without_the_preface_is_refused(opening: bytes) -> None:
    client = Client()
    client.out()
    with pytest.raises(http2.ConnectionError) as error:
        client.server.receive(opening)
    assert error.value.code == ErrorCode.PROTOCOL_ERROR
    assert goaway_code(client.out()) == (0, ErrorCode.PROTOCOL_ERROR)


def test_the_clients_preface_must_go_on_with_a_settings_frame() -> None:
    # RFC 9113 3.4: the client's preface is the fixed string followed by a SETTINGS frame; anything else first is
    # an invalid preface, a connection error of type PROTOCOL_ERROR.
    client = Client()
    client.out()
    client.server.receive(http2.PREFACE)
    expect_connection_error(client, ErrorCode.PROTOCOL_ERROR, frame(FrameType.PING, 0, 0, b"12345678"))


# ------------------------------------------------------------------------------------------ settings and ping


def test_the_clients_settings_are_acknowledged_and_an_ack_is_not() -> None:
    client = Client()
    client.out()
    client.open(HEADER_TABLE_SIZE=0, MAX_CONCURRENT_STREAMS=100)
    acks = client.out()
    assert [(f.kind, f.flags, f.payload) for f in acks] == [(FrameType.SETTINGS, ACK, b"")]
    assert client.send(frame(FrameType.SETTINGS, ACK, 0)) == []
    assert client.out() == []


@pytest.mark.parametrize("bad, code", [
    (frame(FrameType.SETTINGS, ACK, 0, settings_payload(ENABLE_PUSH=0)), ErrorCode.FRAME_SIZE_ERROR),
    (frame(FrameType.SETTINGS, 0, 0, b"\0\x04\0\0"), ErrorCode.FRAME_SIZE_ERROR),
    (frame(FrameType.SETTINGS, 0, 1, b""), ErrorCode.PROTOCOL_ERROR),
    (frame(FrameType.SETTINGS, 0, 0, settings_payload(INITIAL_WINDOW_SIZE=2**31)), ErrorCode.FLOW_CONTROL_ERROR),
    (frame(FrameType.SETTINGS, 0, 0, settings_payload(MAX_FRAME_SIZE=16_383)), ErrorCode.PROTOCOL_ERROR),
    (frame(FrameType.SETTINGS, 0, 0, settings_payload(MAX_FRAME_SIZE=2**24)), ErrorCode.PROTOCOL_ERROR),
    (frame(FrameType.SETTINGS, 0, 0, settings_payload(ENABLE_PUSH=2)), ErrorCode.PROTOCOL_ERROR),
], ids=frame_id)
def test_malformed_settings_end_the_connection(bad: bytes, code: ErrorCode) -> None:
    expect_connection_error(opened(), code, bad)


def test_a_ping_is_answered_with_its_payload_and_a_ping_ack_is_not() -> None:
    client = opened()
    client.send(frame(FrameType.PING, 0, 0, b"12345678"))
    assert [(f.kind, f.flags, f.payload) for f in client.out()] == [(FrameType.PING, ACK, b"12345678")]
    client.send(frame(FrameType.PING, ACK, 0, b"87654321"))
    assert client.out() == []


@pytest.mark.parametrize("bad, code", [
    (frame(FrameType.PING, 0, 0, b"1234567"), ErrorCode.FRAME_SIZE_ERROR),
    (frame(FrameType.PING, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR),
], ids=frame_id)
def test_malformed_pings_end_the_connection(bad: bytes, code: ErrorCode) -> None:
    expect_connection_error(opened(), code, bad)


def test_frames_of_unknown_types_are_ignored() -> None:
    client = opened()
    assert client.send(frame(0x42, 0xFF, 0, b"whatever"), frame(0x42, 0, 7, b"")) == []
    assert client.out() == []


# ----------------------------------------------------------------------------------------------------- requests


def test_a_request_in_headers_and_continuations_is_one_event() -> None:
    client = opened()
    headers = REQUEST + [("x-long", "v" * 40_000)]
    block = client.block(headers)
    pieces = [block[i:i + 10_000] for i in range(0, len(block), 10_000)]
    assert len(pieces) > 2
    frames = [frame(FrameType.HEADERS, END_STREAM, 1, pieces[0])]
    frames += [frame(FrameType.CONTINUATION, 0, 1, piece) for piece in pieces[1:-1]]
    assert client.send(*frames) == []  # the block is not complete yet
    events = client.send(frame(FrameType.CONTINUATION, END_HEADERS, 1, pieces[-1]))
    assert events == [http2.RequestReceived(1, headers, end_stream=True)]
    assert client.server.is_open(1)


def test_headers_with_padding_and_priority_are_read_past_both() -> None:
    client = opened()
    block = client.block()
    priority = u32(0) + b"\x10"
    padded = bytes([7]) + priority + block + b"\0" * 7
    events = client.send(frame(FrameType.HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, padded))
    assert events == [http2.RequestReceived(1, REQUEST, end_stream=False)]


def test_a_split_frame_is_read_once_it_is_whole() -> None:
    client = opened()
    wire = frame(FrameType.HEADERS, END_HEADERS, 1, client.block()) + frame(FrameType.DATA, END_STREAM, 1, b"abc")
    events: list[http2.Event] = []
    for byte in wire:
        events += client.server.receive(bytes([byte]))
    assert events == [http2.RequestReceived(1, REQUEST, False), http2.DataReceived(1, b"abc", True)]


def test_padded_data_is_delivered_without_its_padding_and_credited_whole() -> None:
    client = opened()
    client.request(1)
    client.out()
    payload = bytes([10]) + b"hello" + b"\0" * 10
    events = client.send(frame(FrameType.DATA, PADDED, 1, payload))
    assert events == [http2.DataReceived(1, b"hello", False)]
    # Flow control counts the whole payload, padding and its length byte included (RFC 9113 6.1).
    assert window_updates(client.out()) == [(1, len(payload))]


def window_updates(frames: list[Frame]) -> list[tuple[int, int]]:
    return [(f.stream_id, int.from_bytes(f.payload, "big")) for f in frames if f.kind == FrameType.WINDOW_UPDATE]


def test_unfinished_requests_hold_the_connection_window_and_a_client_past_it_is_refused() -> None:
    """Whatever the number of streams, what a client has sent of requests it has not finished is one window."""
    client = opened(receive_window=http2.DEFAULT_WINDOW)
    client.request(1)
    client.request(3)
    for _ in range(4):
        client.send(frame(FrameType.DATA, 0, 1, b"x" * 16_000))
    assert window_updates(client.out()) == [(1, 16_000)] * 4  # the stream's, never the connection's
    client.send(frame(FrameType.DATA, 0, 3, b"y" * 1535))  # exactly what is left of the window
    expect_connection_error(client, ErrorCode.FLOW_CONTROL_ERROR, frame(FrameType.DATA, 0, 3, b"y"))


def test_a_request_gives_the_connection_window_back_when_it_ends_or_its_stream_is_reset() -> None:
    client = opened(receive_window=http2.DEFAULT_WINDOW)
    client.request(1)
    client.request(3)
    client.request(5)
    client.send(frame(FrameType.DATA, 0, 1, b"x" * 10_000), *[frame(FrameType.DATA, 0, 3, b"y" * 10_000)] * 2,
                *[frame(FrameType.DATA, 0, 5, b"z" * 15_000)] * 2)
    client.out()
    client.send(frame(FrameType.DATA, END_STREAM, 1, b"x" * 5))  # ended by the client
    assert window_updates(client.out()) == [(0, 10_005)]  # more than a batch (4095): announced
    client.send(frame(FrameType.RST_STREAM, 0, 3, u32(ErrorCode.CANCEL)))  # reset by the client
    assert window_updates(client.out()) == [(0, 20_000)]
    client.server.reset(5)  # reset by the server: announced at once, not at the client's next frame
    assert window_updates(client.out()) == [(0, 30_000)]
    client.send(frame(FrameType.DATA, 0, 5, b"z" * 5000))  # late data for the reset stream is given back at once
    assert window_updates(client.out()) == [(0, 5000)]
    for stream_id in (7, 9, 11, 13):  # the whole window is open again
        client.request(stream_id)
        client.send(frame(FrameType.DATA, 0, stream_id, b"w" * 16_000))


def test_a_receive_window_below_the_protocols_initial_one_is_refused() -> None:
    with pytest.raises(ValueError):
        http2.ServerConnection(receive_window=http2.DEFAULT_WINDOW - 1)


def test_what_requests_give_back_is_announced_a_sixteenth_of_the_window_at_a_time() -> None:
    """Not after each request: that was a WINDOW_UPDATE ahead of every answer. The last DATA of a request credits
    no stream: the stream is done."""
    client = opened(receive_window=http2.DEFAULT_WINDOW)  # a batch of 4095 bytes
    announced = []
    for stream_id in range(1, 20, 2):
        client.request(stream_id)
        client.send(frame(FrameType.DATA, END_STREAM, stream_id, b"x" * 1000))
        announced.append(window_updates(client.out()))
    assert announced == [[]] * 4 + [[(0, 5000)]] + [[]] * 4 + [[(0, 5000)]]


def test_a_window_for_the_largest_request_lets_it_arrive_whatever_is_not_announced_yet() -> None:
    largest = 20 * 1024 * 1024
    client = opened(receive_window=http2.window_for(largest))
    client.request(1)
    client.send(frame(FrameType.DATA, END_STREAM, 1, b"x" * 1000))  # given back, not announced
    assert window_updates(client.out()) == []
    client.request(3)
    chunk = frame(FrameType.DATA, 0, 3, b"y" * 16_384)
    for _ in range(largest // 16_384):
        client.send(chunk)
    assert http2.window_for(100) == http2.RECEIVE_WINDOW


def test_padding_as_long_as_the_frame_ends_the_connection() -> None:
    client = opened()
    client.request(1)
    # Padding that leaves no data is fine; padding that would need more bytes than the frame has is not.
    assert client.send(frame(FrameType.DATA, PADDED, 1, bytes([4]) + b"\0" * 4)) == [http2.DataReceived(1, b"", False)]
    expect_connection_error(client, ErrorCode.PROTOCOL_ERROR, frame(FrameType.DATA, PADDED, 1, bytes([5]) + b"\0" * 4))


def test_trailers_from_the_client_end_its_side_of_the_stream() -> None:
    client = opened()
    client.request(1)
    client.send(frame(FrameType.DATA, 0, 1, b"body"))
    events = client.send(frame(FrameType.HEADERS, END_HEADERS | END_STREAM, 1, client.block([("x-trailer", "1")])))
    assert events == [http2.DataReceived(1, b"", True)]


def test_a_second_header_block_that_does_not_end_the_stream_is_an_error() -> None:
    client = opened()
    client.request(1)
    expect_connection_error(client, ErrorCode.PROTOCOL_ERROR,
                            frame(FrameType.HEADERS, END_HEADERS, 1, client.block([("x-trailer", "1")])))


def test_data_after_the_client_ended_its_side_resets_the_stream() -> None:
    client = opened()
    client.request(1, end_stream=True)
    client.out()
    events = client.send(frame(FrameType.DATA, 0, 1, b"late"))
    assert events == [http2.StreamReset(1, ErrorCode.STREAM_CLOSED)]
    resets = [f for f in client.out() if f.kind == FrameType.RST_STREAM]
    assert [(f.stream_id, rst_code(f)) for f in resets] == [(1, ErrorCode.STREAM_CLOSED)]
    assert not client.server.is_open(1)


def test_an_undecodable_header_block_is_a_compression_error() -> None:
    client = opened()
    # Index 127 of a table that holds the 61 static entries and nothing else.
    expect_connection_error(client, ErrorCode.COMPRESSION_ERROR, frame(FrameType.HEADERS, END_HEADERS, 1, b"\xff\x40"))


def test_a_header_list_over_the_announced_size_is_refused() -> None:
    client = opened(max_header_list_size=1000)
    block = client.block(REQUEST + [("x-big", "v" * 2000)])
    expect_connection_error(client, ErrorCode.ENHANCE_YOUR_CALM, frame(FrameType.HEADERS, END_HEADERS, 1, block))


def test_a_header_block_past_its_limit_is_refused_before_it_ends() -> None:
    client = opened()
    filler = frame(FrameType.CONTINUATION, 0, 1, b"\0" * http2.MAX_FRAME_SIZE)
    client.send(frame(FrameType.HEADERS, 0, 1, b""))
    with pytest.raises(http2.ConnectionError) as error:
        for _ in range(http2.MAX_HEADER_BLOCK // http2.MAX_FRAME_SIZE + 1):
            client.send(filler)
    assert error.value.code == ErrorCode.ENHANCE_YOUR_CALM


# ---------------------------------------------------------------------------------------------- stream ids


@pytest.mark.parametrize("stream_ids", [(2,), (3, 1), (5, 5)], ids=["even", "decreasing", "reused"])
def test_headers_must_open_new_odd_increasing_streams(stream_ids: tuple[int, ...]) -> None:
    client = opened()
    *earlier, last = stream_ids
    for stream_id in earlier:
        assert client.request(stream_id, end_stream=True)
    client.out()
    expect_connection_error(client, ErrorCode.PROTOCOL_ERROR,
                            frame(FrameType.HEADERS, END_HEADERS | END_STREAM, last, client.block()))


@pytest.mark.parametrize("bad", [
    frame(FrameType.HEADERS, END_HEADERS, 0, b""),
    frame(FrameType.DATA, 0, 0, b"x"),
    frame(FrameType.DATA, 0, 9, b"x"),  # a stream never opened
    frame(FrameType.RST_STREAM, 0, 0, u32(ErrorCode.CANCEL)),
    frame(FrameType.RST_STREAM, 0, 9, u32(ErrorCode.CANCEL)),
    frame(FrameType.WINDOW_UPDATE, 0, 9, u32(1)),  # an idle stream takes HEADERS and PRIORITY only (RFC 9113 5.1)
    frame(FrameType.PRIORITY, 0, 0, b"\0" * 5),
    frame(FrameType.PUSH_PROMISE, END_HEADERS, 1, u32(2)),
    frame(FrameType.CONTINUATION, END_HEADERS, 1, b""),  # continues nothing
], ids=frame_id)
def test_frames_on_streams_they_cannot_be_on_end_the_connection(bad: bytes) -> None:
    expect_connection_error(opened(), ErrorCode.PROTOCOL_ERROR, bad)


@pytest.mark.parametrize("inside", [
    frame(FrameType.PING, 0, 0, b"12345678"),
    frame(FrameType.DATA, 0, 1, b"x"),
    frame(FrameType.HEADERS, END_HEADERS, 3, b""),
    frame(FrameType.CONTINUATION, END_HEADERS, 3, b""),  # continues another stream's block
    frame(0x42, 0, 0, b""),  # even a frame of an unknown type (RFC 9113 6.2)
], ids=frame_id)
def test_a_header_block_admits_nothing_but_its_own_continuations(inside: bytes) -> None:
    client = opened()
    block = client.block()
    assert client.send(frame(FrameType.HEADERS, 0, 1, block[:3])) == []
    expect_connection_error(client, ErrorCode.PROTOCOL_ERROR, inside)


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    client = opened()
    header = (http2.MAX_FRAME_SIZE + 1).to_bytes(3, "big") + bytes((FrameType.DATA, 0)) + u32(1)
    expect_connection_error(client, ErrorCode.FRAME_SIZE_ERROR, header)


def test_a_frame_of_the_largest_default_size_is_accepted() -> None:
    client = opened()
    client.request(1)
    events = client.send(frame(FrameType.DATA, 0, 1, b"x" * http2.MAX_FRAME_SIZE))
    assert events == [http2.DataReceived(1, b"x" * http2.MAX_FRAME_SIZE, False)]


def test_streams_past_the_concurrency_limit_are_refused_and_their_headers_still_decoded() -> None:
    client = opened(max_concurrent_streams=2)
    assert client.request(1)
    assert client.request(3)
    client.out()
    # The refused request adds an entry to the client's dynamic table; the next request refers to it by index.
    indexed = REQUEST + [("x-indexed", "value-1")]
    assert client.request(5, headers=indexed) == []
    assert [(f.stream_id, rst_code(f)) for f in client.out()] == [(5, ErrorCode.REFUSED_STREAM)]
    assert client.send(frame(FrameType.DATA, END_STREAM, 5, b"ignored")) == []  # the rest of a refused request
    client.server.reset(1)
    client.out()
    assert client.request(7, headers=indexed) == [http2.RequestReceived(7, indexed, False)]


# -------------------------------------------------------------------------------------------------- resets


def test_a_reset_from_the_client_closes_the_stream_and_drops_what_waits_for_it() -> None:
    client = opened()
    client.settings(INITIAL_WINDOW_SIZE=0)
    client.request(1, end_stream=True)
    client.server.send_headers(1, [(":status", "200")])
    client.server.send_data(1, b"queued")
    assert client.server.buffered(1) == 6
    client.out()
    assert client.send(frame(FrameType.RST_STREAM, 0, 1, u32(ErrorCode.CANCEL))) == [
        http2.StreamReset(1, ErrorCode.CANCEL)]
    assert not client.server.is_open(1) and client.server.buffered(1) == 0
    client.server.send_data(1, b"more")
    client.server.send_trailers(1, [("grpc-status", "0")])
    assert client.out() == []
    # A second reset of the closed stream, or a window for it, passes unnoticed.
    assert client.send(frame(FrameType.RST_STREAM, 0, 1, u32(ErrorCode.CANCEL)),
                       frame(FrameType.WINDOW_UPDATE, 0, 1, u32(10))) == []


def test_a_reset_of_the_wrong_length_is_a_frame_size_error() -> None:
    client = opened()
    client.request(1)
    expect_connection_error(client, ErrorCode.FRAME_SIZE_ERROR, frame(FrameType.RST_STREAM, 0, 1, b"\0\0\0\0\0"))


def test_an_answer_complete_before_the_request_resets_the_rest_of_it() -> None:
    client = opened()
    client.request(1)
    client.out()
    client.server.send_headers(1, [(":status", "200"), ("grpc-status", "12")], end_stream=True)
    frames = client.out()
    assert kinds(frames) == [("HEADERS", 1), ("RST_STREAM", 1)]
    assert frames[0].flags & END_STREAM and rst_code(frames[1]) == ErrorCode.NO_ERROR
    # What the client had already sent of the request arrives after our reset, and must be ignored.
    assert client.send(frame(FrameType.DATA, END_STREAM, 1, b"rest")) == []


def test_client_trailers_crossing_our_reset_are_ignored() -> None:
    # RFC 9113 5.1 ("closed"): frames the peer sent before it received our RST_STREAM must be ignored, and
    # their header blocks decoded (RFC 9113 4.3); a client that ends a request with trailers meets this whenever
    # the server answers early.
    client = opened()
    client.request(1)
    client.server.send_headers(1, [(":status", "200"), ("grpc-status", "12")], end_stream=True)
    client.out()
    trailers = frame(FrameType.HEADERS, END_HEADERS | END_STREAM, 1, client.block([("x-trailer", "1")]))
    assert client.send(trailers) == []
    assert client.request(3) == [http2.RequestReceived(3, REQUEST, False)]


# ---------------------------------------------------------------------------------------------------- GOAWAY


def test_the_clients_goaway_is_an_event() -> None:
    client = opened()
    client.request(1)
    assert client.send(frame(FrameType.GOAWAY, 0, 0, u32(1) + u32(ErrorCode.NO_ERROR) + b"bye")) == [
        http2.GoingAway(1, ErrorCode.NO_ERROR)]


@pytest.mark.parametrize("bad", [frame(FrameType.GOAWAY, 0, 0, u32(0)),
                                 frame(FrameType.GOAWAY, 0, 1, u32(0) + u32(0))], ids=frame_id)
def test_a_malformed_goaway_ends_the_connection(bad: bytes) -> None:
    expect_connection_error(opened(), ErrorCode.PROTOCOL_ERROR, bad)


def test_our_goaway_refuses_new_streams_and_serves_those_open() -> None:
    client = opened()
    client.request(1, end_stream=True)
    client.request(3, end_stream=True)
    client.out()
    client.server.go_away()
    client.server.go_away()  # once only
    assert goaway_code(client.out()) == (3, ErrorCode.NO_ERROR)
    assert client.request(5, end_stream=True) == []
    assert [(f.stream_id, rst_code(f)) for f in client.out()] == [(5, ErrorCode.REFUSED_STREAM)]
    client.server.send_headers(3, [(":status", "200")])
    client.server.send_data(3, b"answer")
    client.server.send_trailers(3, [("grpc-status", "0")])
    frames = client.out()
    assert kinds(frames) == [("HEADERS", 3), ("DATA", 3), ("HEADERS", 3)]
    assert client.headers_of(frames, 3) == [[(":status", "200")], [("grpc-status", "0")]]
    assert data_of(frames, 3) == b"answer"


def test_a_connection_error_names_the_last_stream_we_opened() -> None:
    client = opened()
    client.request(1)
    client.request(3)
    client.out()
    with pytest.raises(http2.ConnectionError):
        client.send(frame(FrameType.PING, 0, 0, b""))
    assert goaway_code(client.out()) == (3, ErrorCode.FRAME_SIZE_ERROR)


# --------------------------------------------------------------------------------------- flow control, sending


def test_data_waits_for_the_streams_window_and_trailers_wait_for_the_data() -> None:
    client = Client()
    client.out()
    client.open(INITIAL_WINDOW_SIZE=10)
    client.request(1, end_stream=True)
    client.out()
    client.server.send_headers(1, [(":status", "200")])
    client.server.send_data(1, bytes(range(100)))
    client.server.send_trailers(1, [("grpc-status", "0")])
    frames = client.out()
    assert kinds(frames) == [("HEADERS", 1), ("DATA", 1)]
    assert data_of(frames, 1) == bytes(range(10))
    assert client.server.buffered(1) == 90 and client.server.is_open(1)

    assert client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, u32(50))) == [http2.WindowOpened()]
    frames = client.out()
    assert kinds(frames) == [("DATA", 1)] and data_of(frames, 1) == bytes(range(10, 60))

    client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, u32(40)))
    frames = client.out()
    assert kinds(frames) == [("DATA", 1), ("HEADERS", 1)]
    assert data_of(frames, 1) == bytes(range(60, 100))
    assert frames[-1].flags & END_STREAM and not frames[0].flags & END_STREAM
    assert client.headers_of(frames, 1) == [[("grpc-status", "0")]]
    assert client.server.buffered(1) == 0 and not client.server.is_open(1)


def test_data_waits_for_the_connections_window() -> None:
    client = Client()
    client.out()
    client.open(INITIAL_WINDOW_SIZE=1_000_000)
    client.request(1, end_stream=True)
    client.request(3, end_stream=True)
    client.out()
    client.server.send_data(1, b"a" * 60_000)
    client.server.send_data(3, b"b" * 60_000)
    frames = client.out()
    assert len(data_of(frames, 1)) + len(data_of(frames, 3)) == http2.DEFAULT_WINDOW
    assert client.server.buffered(1) + client.server.buffered(3) == 120_000 - http2.DEFAULT_WINDOW
    client.send(frame(FrameType.WINDOW_UPDATE, 0, 0, u32(120_000 - http2.DEFAULT_WINDOW)))
    frames += client.out()
    assert data_of(frames, 1) == b"a" * 60_000 and data_of(frames, 3) == b"b" * 60_000
    assert client.server.buffered(1) == client.server.buffered(3) == 0


def test_a_new_initial_window_applies_to_open_streams() -> None:
    client = Client()
    client.out()
    client.open(INITIAL_WINDOW_SIZE=100)
    client.request(1, end_stream=True)
    client.out()
    client.server.send_data(1, b"x" * 100)
    assert len(data_of(client.out(), 1)) == 100
    # Shrinking the initial window makes the stream's window negative (RFC 9113 6.9.2) ...
    client.settings(INITIAL_WINDOW_SIZE=40)
    client.server.send_data(1, b"y" * 100)
    assert data_of(client.out(), 1) == b""
    client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, u32(70)))
    assert data_of(client.out(), 1) == b"y" * 10  # -60 + 70
    # ... and growing it opens the window by the difference, sending what waits.
    client.settings(INITIAL_WINDOW_SIZE=100)
    frames = client.out()
    assert data_of(frames, 1) == b"y" * 60
    assert any(f.kind == FrameType.SETTINGS and f.flags == ACK for f in frames)
    assert client.server.buffered(1) == 30


def test_a_new_initial_window_may_not_push_a_stream_past_the_maximum() -> None:
    client = opened()
    client.request(1, end_stream=True)
    client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, u32(http2.MAX_WINDOW - http2.DEFAULT_WINDOW)))
    expect_connection_error(client, ErrorCode.FLOW_CONTROL_ERROR,
                            frame(FrameType.SETTINGS, 0, 0, settings_payload(INITIAL_WINDOW_SIZE=http2.DEFAULT_WINDOW
                                                                             + 1)))


def test_window_updates_of_zero_or_past_the_maximum() -> None:
    client = opened()
    client.request(1, end_stream=True)
    client.request(3, end_stream=True)
    client.out()
    assert client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, u32(0))) == [
        http2.StreamReset(1, ErrorCode.PROTOCOL_ERROR)]
    assert client.send(frame(FrameType.WINDOW_UPDATE, 0, 3, u32(http2.MAX_WINDOW))) == [
        http2.StreamReset(3, ErrorCode.FLOW_CONTROL_ERROR)]
    assert [(f.stream_id, rst_code(f)) for f in client.out()] == [
        (1, ErrorCode.PROTOCOL_ERROR), (3, ErrorCode.FLOW_CONTROL_ERROR)]
    expect_connection_error(client, ErrorCode.PROTOCOL_ERROR, frame(FrameType.WINDOW_UPDATE, 0, 0, u32(0)))
    client = opened()
    expect_connection_error(client, ErrorCode.FLOW_CONTROL_ERROR,
                            frame(FrameType.WINDOW_UPDATE, 0, 0, u32(http2.MAX_WINDOW)))
    client = opened()
    expect_connection_error(client, ErrorCode.FRAME_SIZE_ERROR, frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\1"))


def test_our_data_frames_respect_the_clients_maximum_frame_size() -> None:
    client = Client()
    client.out()
    client.open(INITIAL_WINDOW_SIZE=1_000_000)
    client.send(frame(FrameType.WINDOW_UPDATE, 0, 0, u32(1_000_000)))
    client.request(1, end_stream=True)
    client.out()
    payload = os.urandom(50_000)
    client.server.send_data(1, payload)
    frames = client.out()
    assert [len(f.payload) for f in frames if f.kind == FrameType.DATA] == [16_384, 16_384, 16_384, 848]
    assert data_of(frames, 1) == payload
    client.settings(MAX_FRAME_SIZE=40_000)
    client.out()
    client.server.send_data(1, payload)
    frames = client.out()
    assert [len(f.payload) for f in frames if f.kind == FrameType.DATA] == [40_000, 10_000]
    assert data_of(frames, 1) == payload


def test_pieces_of_data_share_frames_and_split_where_the_windows_say() -> None:
    """A message's prefix and its body are queued as two pieces and sent as if joined: a frame holds as much of
    the queue as fits, across pieces, and a window that closes mid-piece leaves the rest for later."""
    client = Client()
    client.out()
    client.open(INITIAL_WINDOW_SIZE=30_000)
    client.request(1, end_stream=True)
    client.out()
    prefix, body = b"\0\0\0\x9c\x40", os.urandom(40_000)
    client.server.send_data(1, prefix, b"", body)
    frames = client.out()
    assert [len(f.payload) for f in frames if f.kind == FrameType.DATA] == [16_384, 13_616]
    assert client.server.buffered(1) == 40_005 - 30_000
    client.send(frame(FrameType.WINDOW_UPDATE, 0, 1, u32(20_000)))
    client.send(frame(FrameType.WINDOW_UPDATE, 0, 0, u32(20_000)))
    frames += client.out()
    assert data_of(frames, 1) == prefix + body
    assert client.server.buffered(1) == 0
    client.server.send_data(1, b"", b"")  # nothing to send sends nothing
    assert data_of(client.out(), 1) == b""


def test_our_header_blocks_are_split_into_continuations_at_the_maximum_frame_size() -> None:
    client = opened()
    client.request(1, end_stream=True)
    client.out()
    headers = [(":status", "200"), ("x-a", "a" * 20_000), ("x-b", "b" * 20_000)]
    client.server.send_headers(1, headers)
    trailers = [("grpc-status", "13"), ("grpc-message", "m" * 17_000)]
    client.server.send_trailers(1, trailers)
    frames = client.out()
    assert all(len(f.payload) <= http2.MAX_FRAME_SIZE for f in frames)
    assert [(FrameType(f.kind).name, f.flags) for f in frames] == [
        ("HEADERS", 0), ("CONTINUATION", 0), ("CONTINUATION", END_HEADERS),
        ("HEADERS", END_STREAM), ("CONTINUATION", END_HEADERS)]
    assert client.headers_of(frames, 1) == [headers, trailers]


def test_the_answer_is_encoded_as_never_indexed_literals() -> None:
    """Whatever the client's table size, our blocks never depend on (or change) its dynamic table."""
    client = Client()
    client.out()
    client.open(HEADER_TABLE_SIZE=0)
    client.request(1, end_stream=True)
    client.request(3, end_stream=True)
    client.out()
    for stream_id in (1, 3):
        client.server.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    for f in client.out():
        fresh = hpack.Decoder()  # a block that referred to an earlier one's entries would not decode here
        assert fresh.decode(f.payload) == [(":status", "200"), ("content-type", "application/grpc")]
        assert len(fresh.header_table.dynamic_entries) == 0


def test_a_smaller_header_table_of_the_client_is_signalled_in_our_next_block() -> None:
    """RFC 7541 4.2: when the decoder (the client) lowers SETTINGS_HEADER_TABLE_SIZE below the encoder's table
    size, the encoder's next header block must open with a dynamic table size update within the new limit. A
    strict decoder (nghttp2, the hpack library used by h2) refuses a block without it."""
    client = Client()
    client.out()
    client.open(HEADER_TABLE_SIZE=0)
    client.decoder.max_allowed_table_size = 0  # what the client enforces once it announced 0
    client.request(1, end_stream=True)
    client.out()
    client.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    frames = client.out()
    assert frames[0].payload[0] & 0xE0 == 0x20, "no dynamic table size update opens the block"
    assert client.headers_of(frames, 1) == [[(":status", "200"), ("content-type", "application/grpc")]]


# ------------------------------------------------------------------------------------------------- property


def client_frames() -> st.SearchStrategy[bytes]:
    """Frames a client might send, well-formed or not, on a few streams."""
    stream_ids = st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1])
    encoder_block = st.lists(st.tuples(st.sampled_from([":method", ":path", "content-type", "x-a", "x-bin"]),
                                       st.text(max_size=20)), max_size=5).map(
        lambda headers: hpack.Encoder().encode(headers))
    payloads = st.one_of(st.binary(max_size=40), encoder_block, st.just(settings_payload(INITIAL_WINDOW_SIZE=0)),
                         st.just(settings_payload(MAX_FRAME_SIZE=20_000)), st.just(u32(2**31 - 1)))
    well_formed = st.builds(frame, st.sampled_from(list(FrameType) + [0x42]), st.integers(0, 255), stream_ids,
                            payloads)
    garbage = st.binary(max_size=64)
    return st.one_of(well_formed, well_formed, garbage)


@FUZZ
@example(frames=[frame(FrameType.DATA, PADDED, 1, b"")], sizes=[], answers=[])  # padding with no length byte
@example(frames=[frame(FrameType.HEADERS, END_HEADERS, 1, hpack.Encoder().encode(REQUEST)),
                 frame(FrameType.WINDOW_UPDATE, 0, 1, u32(1)), frame(FrameType.DATA, END_STREAM, 1, b"x")],
         sizes=[3, 20], answers=["headers", "data", "trailers", "go_away"])
@given(frames=st.lists(client_frames(), max_size=12), sizes=st.lists(st.integers(1, 64), max_size=20),
       answers=st.lists(st.sampled_from(["headers", "data", "trailers", "reset", "go_away"]), max_size=6))
def test_any_bytes_after_the_preface_give_events_or_a_connection_error(frames: list[bytes], sizes: list[int],
                                                                        answers: list[str]) -> None:
    server = http2.ServerConnection()
    server.receive(http2.PREFACE + frame(FrameType.SETTINGS, 0, 0))  # the client's whole preface
    stream_data = b"".join(frames)
    pieces, at = [], 0
    for size in sizes:
        pieces.append(stream_data[at:at + size])
        at += size
    pieces.append(stream_data[at:])
    try:
        for piece in pieces:
            for event in server.receive(piece):
                # The caller's answers, on whichever streams the client opened.
                if isinstance(event, http2.RequestReceived):
                    for answer in answers:
                        if answer == "headers":
                            server.send_headers(event.stream_id, [(":status", "200")])
                        elif answer == "data":
                            server.send_data(event.stream_id, b"d" * 70_000)
                        elif answer == "trailers":
                            server.send_trailers(event.stream_id, [("grpc-status", "0")])
                        elif answer == "reset":
                            server.reset(event.stream_id)
                        else:
                            server.go_away()
    except http2.ConnectionError as e:
        assert isinstance(e.code, ErrorCode)
        assert any(f.kind == FrameType.GOAWAY for f in parse_frames(server.data_to_send()))
    else:
        parse_frames(server.data_to_send())  # whatever we queued is a sequence of whole frames
