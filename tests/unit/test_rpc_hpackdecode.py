"""cripy/rpc/hpackdecode.py: RFC 7541's own examples, then the `hpack` library as the reference. Blocks that the
library's encoder writes (every representation, Huffman or not, table size updates, entries evicted) must decode
to the same header lists and leave the same dynamic table; any bytes at all must give the library's outcome:
the same headers, or an error from both."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cripy.rpc.hpackdecode import DecodeError, HeaderDecoder, OversizedHeaderList

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_the_rfcs_requests_without_huffman_coding_share_a_table() -> None:
    """RFC 7541 appendix C.3: three requests on one connection, each leaning on the entries of the one before."""
    decoder = HeaderDecoder()
    assert decoder.decode(bytes.fromhex("828684410f7777772e6578616d706c652e636f6d")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]
    assert decoder.table == [(":authority", "www.example.com")]
    assert decoder.decode(bytes.fromhex("828684be58086e6f2d6361636865")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
        ("cache-control", "no-cache")]
    assert decoder.decode(bytes.fromhex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565")) == [
        (":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
        ("custom-key", "custom-value")]
    assert decoder.table == [("custom-key", "custom-value"), ("cache-control", "no-cache"),
                             (":authority", "www.example.com")]


def test_the_rfcs_request_with_huffman_coding() -> None:
    """RFC 7541 appendix C.4.1."""
    decoder = HeaderDecoder()
    assert decoder.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]


def test_entries_past_the_table_size_are_evicted_oldest_first() -> None:
    decoder = HeaderDecoder(max_table_size=100)
    encoder = hpack.Encoder()
    encoder.header_table_size = 100
    decoder.decode(encoder.encode([("a", "x" * 30)]))  # 63 bytes with the entry's overhead
    decoder.decode(encoder.encode([("b", "y" * 30)]))  # 126 in all: "a" goes
    assert decoder.table == [("b", "y" * 30)]
    decoder.decode(encoder.encode([("c", "z" * 100)]))  # larger than the table: it empties it
    assert decoder.table == []


@pytest.mark.parametrize("block, reason", [
    (b"\x80", "index 0"),
    (b"\xbe", "index 62 is in neither table"),
    (b"\xff\xff\xff\xff\xff\xff\x01", "more than 5 continuation bytes"),
    (b"\xff", "ends inside an integer"),
    (b"\x40", "ends before a string"),
    (b"\x40\x05ab", "runs past the block's end"),
    (b"\x40\x81\xff\x00", "Huffman-coded string does not decode"),
    (b"\x82\x20", "size update after a header field"),
    (b"\x3f\xe2\x1f", "over the 4096 allowed"),  # 4097
])
def test_a_block_that_breaks_the_format_is_refused_with_the_reason(block: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(")):
        HeaderDecoder().decode(block)


def test_a_header_list_over_the_announced_size_is_refused() -> None:
    block = hpack.Encoder().encode([("x-big", "v" * 200)])
    HeaderDecoder(max_header_list_size=240).decode(block)  # 5 + 200 + 32
    with pytest.raises(OversizedHeaderList):
        HeaderDecoder(max_header_list_size=236).decode(block)


# ---------------------------------------------------------------------------------- against the hpack library

_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
_header = st.tuples(_text.filter(bool).map(str.lower), _text)
_field = st.tuples(_header, st.sampled_from(["index", "never", "repeat"]))
_block = st.tuples(st.lists(_field, max_size=8), st.booleans(), st.none() | st.integers(0, 4096))


def _encode(encoder: hpack.Encoder, fields: list, huffman: bool, resize: int | None, seen: list) -> bytes:
    if resize is not None:
        encoder.header_table_size = resize
    headers = []
    for (name, value), how in fields:
        raw = (name.encode("latin-1"), value.encode("latin-1"))
        if how == "repeat" and seen:
            raw = seen[len(seen) // 2]
        headers.append(hpack.NeverIndexedHeaderTuple(*raw) if how == "never" else raw)
        seen.append(raw)
    return encoder.encode(headers, huffman=huffman)


@PROPERTY
@given(blocks=st.lists(_block, min_size=1, max_size=6))
def test_blocks_of_the_librarys_encoder_decode_as_the_library_decodes_them(blocks: list) -> None:
    encoder, reference, decoder, seen = hpack.Encoder(), hpack.Decoder(), HeaderDecoder(), []
    for fields, huffman, resize in blocks:
        block = _encode(encoder, fields, huffman, resize, seen)
        expected = [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                    for n, v in reference.decode(block, raw=True)]
        assert decoder.decode(block) == expected
        assert decoder.table == [(n.decode("latin-1"), v.decode("latin-1"))
                                 for n, v in reference.header_table.dynamic_entries]


@PROPERTY
@given(blocks=st.lists(st.binary(max_size=40), min_size=1, max_size=4))
@example(blocks=[b"\x40\x01a\x01b", b"\xbe\xbf"])  # an entry, then an index one past it
@example(blocks=[b"\x3f\x81\x1f\x40\x01a\x01b", b"\xbe"])  # a smaller table, then an entry in it
def test_any_bytes_give_the_librarys_outcome(blocks: list[bytes]) -> None:
    reference, decoder = hpack.Decoder(), HeaderDecoder()
    for block in blocks:
        try:
            expected = [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                        for n, v in reference.decode(block, raw=True)]
        except hpack.HPACKError:
            with pytest.raises(DecodeError):
                decoder.decode(block)
            return
        assert decoder.decode(block) == expected
