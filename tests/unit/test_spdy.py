"""SPDY/3.1 sans-IO: framing and header compression (spdyframing), the connection's flow control and control
frames (spdy)."""

from __future__ import annotations

import struct
import zlib

import pytest

from cripy.streaming import spdy, spdyevents, spdyframing
from cripy.streaming.spdy import SpdyConnection, SpdyError
from cripy.streaming.spdyevents import (
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    PingAcknowledged,
    PingReceived,
    SettingsReceived,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
)

# The start of a SYN_STREAM Firefox sent to facebook.com over SPDY/3 (a capture kept as a test vector in
# facebook/proxygen's SPDYCodecTest): frame header, ids, priority, then the zlib stream whose header names
# the dictionary by its Adler-32 (e3 c6 a7 c2). Only our exact dictionary inflates it.
FIREFOX_SYN_STREAM_PREFIX = bytes.fromhex(
    "800300010100041a0000000100000000000038eae3c6a7c20265575022b4c29e20d9ad10a9d9dd350494f1aca0458714"
    "30edeb25a61565e6a5e81527e9a5018be9246042d54b061730ec56c5c0a233175cbe669494141483b51624828b3b6e80"
    "00d22f2e492c292dd62bc828000820942280032080f2f27593139333520102085be1cb01104079f9bac989c919a90001"
    "84521b7821421f7b78a285ba35c8d796d058294f4d2ad0d1d2d7020b5a00"
)


def pair(**server_kwargs: object) -> tuple[SpdyConnection, SpdyConnection]:
    return SpdyConnection(is_server=False), SpdyConnection(is_server=True, **server_kwargs)  # type: ignore[arg-type]


def pump(src: SpdyConnection, dst: SpdyConnection) -> list[spdyevents.Event]:
    return dst.receive_data(src.data_to_send())


def control(frame_type: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8003, frame_type, (flags << 24) | len(payload)) + payload


def compress_with_plain_zlib(block: bytes) -> bytes:
    """An independent compressor (default zlib parameters) using the same dictionary."""
    deflater = zlib.compressobj(zdict=spdyframing.HEADER_DICTIONARY)
    return deflater.compress(block) + deflater.flush(zlib.Z_SYNC_FLUSH)


def raw_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def open_replied_stream(client: SpdyConnection, server: SpdyConnection, headers: dict[str, str]) -> int:
    stream_id = client.open_stream(headers)
    pump(client, server)
    server.reply(stream_id, {})
    pump(server, client)
    return stream_id


# ------------------------------------------------------------------------------------- dictionary


def test_dictionary_matches_the_id_every_spdy3_peer_announces() -> None:
    assert len(spdyframing.HEADER_DICTIONARY) == 1423
    assert zlib.adler32(spdyframing.HEADER_DICTIONARY) == 0xE3C6A7C2
    assert FIREFOX_SYN_STREAM_PREFIX[20:24] == bytes.fromhex("e3c6a7c2")


def test_dictionary_inflates_a_real_firefox_header_block() -> None:
    inflater = zlib.decompressobj(zdict=spdyframing.HEADER_DICTIONARY)
    block = inflater.decompress(FIREFOX_SYN_STREAM_PREFIX[18:])
    assert block.startswith(struct.pack(">I", 13) + struct.pack(">I", 8) + b":version")
    assert b"\x00\x00\x00\x05:host\x00\x00\x00\x1awww.afrind.sb.facebook.com" in block
    assert b"\x00\x00\x00\x05:path\x00\x00\x00\x0b/status.php" in block


def test_a_wrong_dictionary_cannot_inflate_the_firefox_block() -> None:
    wrong = spdyframing.HEADER_DICTIONARY[:-1] + b"!"
    with pytest.raises(zlib.error):
        zlib.decompressobj(zdict=wrong).decompress(FIREFOX_SYN_STREAM_PREFIX[18:])


# ---------------------------------------------------------------------------------- header blocks


def test_header_block_encoding_is_lowercase_and_nul_joined() -> None:
    block = spdyframing.encode_header_block({"StreamType": "stdout", "X-Multi": ["a", "b"]})
    assert block == raw_block([(b"streamtype", b"stdout"), (b"x-multi", b"a\x00b")])
    decoded = spdyframing.decode_header_block(block)
    assert decoded == {"streamtype": "stdout", "x-multi": "a\x00b"}
    assert spdyframing.split_header_values(decoded["x-multi"]) == ["a", "b"]


def test_decoding_merges_duplicate_names_and_lowercases() -> None:
    block = raw_block([(b"Port", b"80"), (b"port", b"8080")])
    assert spdyframing.decode_header_block(block) == {"port": "80\x008080"}


@pytest.mark.parametrize("block", [b"\x00\x00", raw_block([(b"a", b"b")])[:-1], raw_block([]) + b"x"])
def test_malformed_header_blocks_are_rejected(block: bytes) -> None:
    with pytest.raises(SpdyError):
        spdyframing.decode_header_block(block)


def test_compression_context_is_shared_across_blocks() -> None:
    compressor = spdyframing.HeaderCompressor()
    headers = {"streamtype": "stdout", "port": "8080", "requestid": "0"}
    first = compressor.compress(headers)
    second = compressor.compress(headers)
    assert first.endswith(b"\x00\x00\xff\xff") and second.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH
    assert len(second) < len(first)  # the second block refers back to the first
    decompressor = spdyframing.HeaderDecompressor()
    assert decompressor.decompress(first) == headers
    assert decompressor.decompress(second) == headers
    with pytest.raises(SpdyError):
        spdyframing.HeaderDecompressor().decompress(second)  # meaningless without the shared history


def test_header_bomb_is_refused() -> None:
    block = raw_block([(b"x", b"a" * 100_000)])
    with pytest.raises(SpdyError, match="beyond"):
        spdyframing.HeaderDecompressor(max_block=1000).decompress(compress_with_plain_zlib(block))


# ------------------------------------------------------------------------------ hand-made frames


def test_hand_assembled_syn_stream_from_an_independent_compressor() -> None:
    server = SpdyConnection(is_server=True)
    block = compress_with_plain_zlib(raw_block([(b"streamtype", b"error"), (b"port", b"80")]))
    payload = struct.pack(">IIBB", 3, 1, 5 << 5, 0) + block
    events = server.receive_data(control(1, spdyframing.FLAG_UNIDIRECTIONAL, payload))
    assert events == [
        StreamOpened(3, {"streamtype": "error", "port": "80"}, fin=False, unidirectional=True,
                     associated_id=1, priority=5)
    ]


def test_syn_reply_bytes_match_the_spec_layout() -> None:
    client, server = pair()
    stream_id = client.open_stream({"streamtype": "stdin"}, fin=False)
    pump(client, server)
    server.reply(stream_id, {}, fin=False)
    frame = server.data_to_send()
    assert frame[:4] == bytes.fromhex("80030002")
    assert frame[4] == 0  # flags
    assert int.from_bytes(frame[5:8], "big") == len(frame) - 8
    assert struct.unpack(">I", frame[8:12])[0] == stream_id
    assert spdyframing.HeaderDecompressor().decompress(frame[12:]) == {}


def test_data_frame_bytes() -> None:
    assert spdyframing.data_frame(5, b"hi", fin=True) == bytes.fromhex("00000005 01000002 6869".replace(" ", ""))


def test_hand_assembled_control_frames() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    events = server.receive_data(
        control(4, 0, struct.pack(">IIIII", 2, 0x01000004, 100, 7, 4096))  # SETTINGS, one with a flag byte
        + control(7, 0, struct.pack(">II", 1, 0))  # GOAWAY
        + control(3, 0, struct.pack(">II", stream_id, spdyframing.RstStatus.CANCEL))  # RST_STREAM
        + control(0x0A, 0, b"whatever")  # unknown type (CREDENTIAL): ignored
    )
    assert events == [
        SettingsReceived({4: 100, 7: 4096}),
        GoAwayReceived(1, 0),
        StreamReset(stream_id, spdyframing.RstStatus.CANCEL),
    ]
    assert server.peer_went_away
    assert server.is_closed(stream_id)


def test_frame_writers_produce_spec_bytes() -> None:
    assert spdyframing.ping_frame(7) == bytes.fromhex("8003000600000004 00000007".replace(" ", ""))
    assert spdyframing.rst_stream_frame(3, 5) == bytes.fromhex("8003000300000008 00000003 00000005".replace(" ", ""))
    assert spdyframing.goaway_frame(9, 0) == bytes.fromhex("8003000700000008 00000009 00000000".replace(" ", ""))
    assert spdyframing.window_update_frame(0, 65536) == bytes.fromhex("8003000900000008 00000000 00010000".replace(" ", ""))
    assert spdyframing.settings_frame({7: 1024}) == bytes.fromhex(
        "800300040000000c 00000001 00000007 00000400".replace(" ", "")
    )


# ---------------------------------------------------------------------------------- round trips


def test_stream_lifecycle_round_trip() -> None:
    client, server = pair()
    stream_id = client.open_stream({"streamType": "stdout", "X-Note": ["a", "b"]}, priority=2)
    assert stream_id == 1
    (opened,) = pump(client, server)
    assert opened == StreamOpened(1, {"streamtype": "stdout", "x-note": "a\x00b"}, False, False, 0, 2)
    server.reply(stream_id, {"status": "ok"})
    server.send_data(stream_id, b"hello ")
    server.send_data(stream_id, b"world", fin=True)
    events = pump(server, client)
    assert events == [
        StreamReplied(1, {"status": "ok"}, False),
        DataReceived(1, b"hello ", False),
        DataReceived(1, b"world", True),
        StreamEnded(1),
    ]
    assert not client.is_closed(stream_id) and client.is_remote_closed(stream_id)
    client.end_stream(stream_id)
    assert pump(client, server) == [DataReceived(1, b"", True), StreamEnded(1)]
    assert client.is_closed(stream_id) and server.is_closed(stream_id)


def test_many_streams_share_one_compression_context_each_way() -> None:
    client, server = pair()
    ids = []
    for request in range(20):
        for kind in ("error", "data"):
            ids.append(client.open_stream({"streamtype": kind, "port": "8080", "requestid": str(request)}))
    events = pump(client, server)
    assert [e.headers for e in events if isinstance(e, StreamOpened)] == [
        {"streamtype": kind, "port": "8080", "requestid": str(r)} for r in range(20) for kind in ("error", "data")
    ]
    for stream_id in ids:
        server.reply(stream_id, {"n": str(stream_id)})
    replies = pump(server, client)
    assert [(e.stream_id, e.headers) for e in replies] == [(i, {"n": str(i)}) for i in ids]
    assert ids == list(range(1, 80, 2))


def test_server_initiated_streams_use_even_ids() -> None:
    client, server = pair()
    assert [server.open_stream({}) for _ in range(3)] == [2, 4, 6]
    assert [e.stream_id for e in pump(server, client)] == [2, 4, 6]  # type: ignore[union-attr]


def test_input_split_at_every_byte_gives_the_same_events() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {"streamtype": "stdin"})
    client.send_data(stream_id, b"abc" * 50)
    client.open_stream({"streamtype": "resize"})
    client.ping()
    client.send_data(stream_id, b"", fin=True)
    wire = client.data_to_send()
    events = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i:i + 1])
    assert events == [
        DataReceived(stream_id, b"abc" * 50, False),
        StreamOpened(3, {"streamtype": "resize"}, False, False, 0, 0),
        PingReceived(1),
        DataReceived(stream_id, b"", True),
        StreamEnded(stream_id),
    ]


def test_fin_on_syn_stream_and_unidirectional() -> None:
    client, server = pair()
    stream_id = client.open_stream({"streamtype": "error"}, fin=True)
    assert pump(client, server) == [StreamOpened(stream_id, {"streamtype": "error"}, True, False, 0, 0),
                                    StreamEnded(stream_id)]
    server.reply(stream_id, {})
    server.send_data(stream_id, b"status", fin=True)
    assert server.is_closed(stream_id)

    uni = client.open_stream({}, unidirectional=True)
    pump(client, server)
    server.reply(uni, {})
    with pytest.raises(SpdyError, match="half-closed"):
        server.send_data(uni, b"no way back")


# --------------------------------------------------------------------------------- flow control


def test_strict_sender_queues_beyond_the_window_and_window_update_releases() -> None:
    client, server = pair(enforce_peer_window=True)
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    payload = bytes(range(256)) * 800  # 204800 bytes, > 3 windows
    server.send_data(stream_id, payload, fin=True)
    assert server.pending(stream_id) == len(payload) - spdy.DEFAULT_INITIAL_WINDOW
    received = b""
    rounds = 0
    while True:
        events = pump(server, client)
        received += b"".join(e.data for e in events if isinstance(e, DataReceived))
        if any(isinstance(e, StreamEnded) for e in events):
            break
        # the client returns the consumed bytes; that releases the next window's worth
        assert pump(client, server) == []
        rounds += 1
        assert rounds < 20
    assert received == payload
    assert rounds >= 3


def test_settings_initial_window_limits_a_strict_sender() -> None:
    client, server = pair(enforce_peer_window=True)
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    client.send_settings({spdyframing.SETTINGS_INITIAL_WINDOW_SIZE: 1000})
    assert pump(client, server) == [SettingsReceived({7: 1000})]
    assert server.send_window(stream_id) == 1000
    server.send_data(stream_id, b"x" * 5000)
    events = pump(server, client)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 1000
    assert server.pending(stream_id) == 4000
    server.receive_data(spdyframing.window_update_frame(stream_id, 1500))
    events = pump(server, client)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 1500
    assert server.pending(stream_id) == 2500


def test_session_window_holds_back_all_streams() -> None:
    client, server = pair(enforce_peer_window=True)
    first = open_replied_stream(client, server, {"streamtype": "stdout"})
    second = open_replied_stream(client, server, {"streamtype": "stderr"})
    server.receive_data(spdyframing.window_update_frame(first, 100_000))  # stream window is not the limit
    server.send_data(first, b"a" * 60_000)
    server.send_data(second, b"b" * 10_000)
    assert server.session_send_window == 65536 - 60_000 - 5536
    assert server.pending(second) == 10_000 - 5536
    server.receive_data(spdyframing.window_update_frame(0, 4464))
    assert server.pending(second) == 0


def test_auto_mode_never_stalls_a_peer_without_flow_control() -> None:
    """moby/spdystream never sends WINDOW_UPDATE: the default mode must not hold data back."""
    client, server = pair()
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    server.send_data(stream_id, b"z" * (1024 * 1024), fin=True)
    assert server.pending(stream_id) == 0
    assert not server.flow_control_active
    events = client.receive_data(server.data_to_send())
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 1024 * 1024
    assert client.data_to_send() != b""  # our client would update windows; spdystream never does


def test_auto_mode_enforces_once_the_peer_shows_flow_control() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    server.send_data(stream_id, b"q" * 70_000)
    assert server.pending(stream_id) == 0
    server.receive_data(spdyframing.window_update_frame(stream_id, 1000))
    assert server.flow_control_active
    # windows were tracked all along: 65536 - 70000 + 1000 < 0, so the next bytes wait
    server.send_data(stream_id, b"r" * 10)
    assert server.pending(stream_id) == 10
    server.receive_data(spdyframing.window_update_frame(stream_id, 10_000) + spdyframing.window_update_frame(0, 10_000))
    assert server.pending(stream_id) == 0


def test_end_stream_waits_behind_queued_data() -> None:
    client, server = pair(enforce_peer_window=True)
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    server.send_data(stream_id, b"y" * 70_000)
    server.end_stream(stream_id)
    events = pump(server, client)
    assert not any(isinstance(e, StreamEnded) for e in events)
    pump(client, server)  # window updates
    events = pump(server, client)
    assert events[-1] == StreamEnded(stream_id)


def test_receiver_sends_window_updates_for_stream_and_session() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {"streamtype": "stdin"})
    client.send_data(stream_id, b"s" * 40_000)
    pump(client, server)
    # 40000 bytes arrive as a 32 KiB frame and a rest: half a window (32768) triggers the updates
    updates = server.data_to_send()
    assert updates == spdyframing.window_update_frame(0, 32_768) + spdyframing.window_update_frame(stream_id, 32_768)
    client.send_data(stream_id, b"s" * 30_000)
    pump(client, server)
    rest = 40_000 + 30_000 - 32_768
    assert server.data_to_send() == spdyframing.window_update_frame(0, rest) + spdyframing.window_update_frame(stream_id, rest)


def test_manual_acknowledge() -> None:
    client = SpdyConnection(is_server=False)
    server = SpdyConnection(is_server=True, auto_acknowledge=False)
    stream_id = open_replied_stream(client, server, {"streamtype": "stdin"})
    client.send_data(stream_id, b"m" * 50_000)
    pump(client, server)
    assert server.data_to_send() == b""
    server.acknowledge(stream_id, 20_000)
    assert server.data_to_send() == b""  # below half a window
    server.acknowledge(stream_id, 30_000)
    assert server.data_to_send() == spdyframing.window_update_frame(0, 50_000) + spdyframing.window_update_frame(stream_id, 50_000)


# ------------------------------------------------------------------------------ control frames


def test_ping_from_peer_is_answered_and_our_ping_is_acknowledged() -> None:
    client, server = pair()
    assert server.receive_data(spdyframing.ping_frame(5)) == [PingReceived(5)]
    assert server.data_to_send() == spdyframing.ping_frame(5)
    ping_id = server.ping()
    assert ping_id == 2
    assert pump(server, client) == [PingReceived(2)]
    assert pump(client, server) == [PingAcknowledged(2)]
    assert server.data_to_send() == b""  # a reply is not answered again


def test_go_away_names_the_last_accepted_peer_stream() -> None:
    client, server = pair()
    client.open_stream({})
    client.open_stream({})
    pump(client, server)
    server.go_away()
    server.go_away()
    assert pump(server, client) == [GoAwayReceived(3, 0)]
    with pytest.raises(SpdyError):
        client.open_stream({})


def test_headers_frame_round_trip() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {})
    server.send_headers(stream_id, {"trailer": "x"}, fin=True)
    assert pump(server, client) == [HeadersReceived(stream_id, {"trailer": "x"}, True), StreamEnded(stream_id)]


# ------------------------------------------------------------------------------------- resets


def test_peer_reset_drops_queued_data_and_later_writes() -> None:
    client, server = pair(enforce_peer_window=True)
    stream_id = open_replied_stream(client, server, {"streamtype": "stdout"})
    server.send_data(stream_id, b"d" * 100_000)
    server.data_to_send()
    client.reset(stream_id, spdyframing.RstStatus.CANCEL)
    assert pump(client, server) == [StreamReset(stream_id, spdyframing.RstStatus.CANCEL)]
    assert server.pending(stream_id) == 0
    assert server.is_closed(stream_id)
    server.send_data(stream_id, b"late")  # silently dropped
    server.end_stream(stream_id)
    assert server.data_to_send() == b""


def test_local_reset_is_idempotent_and_ignores_late_data() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {})
    server.reset(stream_id, spdyframing.RstStatus.REFUSED_STREAM)
    server.reset(stream_id, spdyframing.RstStatus.REFUSED_STREAM)
    assert server.data_to_send() == spdyframing.rst_stream_frame(stream_id, spdyframing.RstStatus.REFUSED_STREAM)
    assert server.receive_data(spdyframing.data_frame(stream_id, b"late")) == []
    assert server.data_to_send() == b""  # no reset of a reset, no window update below the threshold


def test_data_on_a_never_opened_stream_is_reset() -> None:
    server = SpdyConnection(is_server=True)
    assert server.receive_data(spdyframing.data_frame(7, b"x")) == []
    assert server.data_to_send() == spdyframing.rst_stream_frame(7, spdyframing.RstStatus.INVALID_STREAM)


def test_reused_stream_id_is_refused() -> None:
    client, server = pair()
    client.open_stream({})
    wire = client.data_to_send()
    server.receive_data(wire)
    # a second SYN_STREAM for id 1 (with an empty header block, so the zlib context is untouched)
    assert server.receive_data(control(1, 0, struct.pack(">IIBB", 1, 0, 0, 0))) == []
    assert server.data_to_send() == spdyframing.rst_stream_frame(1, spdyframing.RstStatus.PROTOCOL_ERROR)


def test_data_after_fin_resets_the_stream() -> None:
    client, server = pair()
    stream_id = open_replied_stream(client, server, {})
    server.receive_data(spdyframing.data_frame(stream_id, b"a", fin=True))
    assert server.receive_data(spdyframing.data_frame(stream_id, b"b")) == []
    assert server.data_to_send() == spdyframing.rst_stream_frame(stream_id, spdyframing.RstStatus.STREAM_ALREADY_CLOSED)


# --------------------------------------------------------------------------------- misuse/errors


def test_data_before_reply_is_refused() -> None:
    client, server = pair()
    stream_id = client.open_stream({})
    pump(client, server)
    with pytest.raises(SpdyError, match="SYN_REPLY"):
        server.send_data(stream_id, b"would be dropped by spdystream")


def test_unknown_stream_and_double_reply_are_errors() -> None:
    client, server = pair()
    with pytest.raises(SpdyError):
        server.send_data(1, b"x")
    stream_id = open_replied_stream(client, server, {})
    with pytest.raises(SpdyError):
        server.reply(stream_id, {})


def test_wrong_version_fails_the_session_with_goaway() -> None:
    client, server = pair()
    stream_id = client.open_stream({})
    wire = client.data_to_send()
    bad = struct.pack(">HHI", 0x8002, 6, 4) + struct.pack(">I", 1)
    with pytest.raises(SpdyError, match="version 2") as info:
        server.receive_data(wire + bad)
    assert [type(e) for e in info.value.events] == [StreamOpened]
    assert server.data_to_send() == spdyframing.goaway_frame(stream_id, spdyframing.GoAwayStatus.PROTOCOL_ERROR)
    assert server.receive_data(spdyframing.ping_frame(1)) == []


def test_corrupt_header_block_fails_the_session() -> None:
    server = SpdyConnection(is_server=True)
    with pytest.raises(SpdyError, match="inflate"):
        server.receive_data(control(1, 0, struct.pack(">IIBB", 1, 0, 0, 0) + b"\x78\x9c garbage"))
    assert server.data_to_send() == spdyframing.goaway_frame(0, spdyframing.GoAwayStatus.PROTOCOL_ERROR)


def test_truncated_control_frame_is_an_error() -> None:
    server = SpdyConnection(is_server=True)
    with pytest.raises(SpdyError, match="too short"):
        server.receive_data(control(3, 0, b"\x00\x00\x00\x01"))
