"""HPACK decoding (RFC 7541) of the header blocks a client sends, sans I/O: a block in, its header list out, the
dynamic table kept in step with the client's encoder.

The `hpack` library's Decoder did this before, and spent about 40 µs on a gRPC request's block of nine indexed
fields (a logging call, two tuple wrappers and a size computation per field), the largest part of the server's
CPU per call. This decoder makes one pass over the block and keeps its table in the form the server uses: latin-1
strings, so an indexed field costs one look-up. The parts where the library is the safer source stay the
library's: the static table (RFC 7541 appendix A) and the Huffman code (appendix B).

Our SETTINGS never change the table size we allow, so a size update only has to stay within it; a shrunk limit
that the encoder must acknowledge (section 4.2) cannot arise.
"""

from __future__ import annotations

from collections import deque

from hpack import HPACKError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Header = tuple[str, str]

ENTRY_OVERHEAD = 32  # what every table entry counts beyond its name and value (section 4.1)
MAX_INTEGER_BYTES = 5  # continuation bytes: beyond 2^35, any integer names something no block can hold

_STATIC: tuple[Header, ...] = tuple((name.decode("latin-1"), value.decode("latin-1"))
                                    for name, value in HeaderTable.STATIC_TABLE)


class DecodeError(Exception):
    """The block breaks HPACK; HTTP/2 ends the connection with COMPRESSION_ERROR."""


class OversizedHeaderList(DecodeError):
    """The block decodes to more than the header list size we announced."""


class HeaderDecoder:
    """One connection's decoding context."""

    def __init__(self, max_table_size: int = HeaderTable.DEFAULT_SIZE,
                 max_header_list_size: int = 1024 * 1024) -> None:
        self._max_table_size = max_table_size  # what our SETTINGS allow the encoder
        self._table_size = max_table_size  # what the encoder chose, within that
        self._entries: deque[Header] = deque()  # the newest first, as the indices count
        self._entries_size = 0
        self._max_header_list_size = max_header_list_size

    @property
    def table(self) -> list[Header]:
        """The dynamic table, newest entry first."""
        return list(self._entries)

    def decode(self, block: bytes) -> list[Header]:
        headers: list[Header] = []
        listed = 0
        at, end = 0, len(block)
        while at < end:
            first = block[at]
            if first & 0x80:  # indexed field (section 6.1)
                index, at = _integer(block, at, 7)
                header = self._lookup(index)
            elif first & 0x40:  # literal with incremental indexing (6.2.1)
                header, at = self._literal(block, at, 6)
                self._add(header)
            elif first & 0x20:  # dynamic table size update (6.3)
                if headers:
                    raise DecodeError("a dynamic table size update after a header field")
                size, at = _integer(block, at, 5)
                self._resize(size)
                continue
            else:  # literal without indexing, or never indexed (6.2.2, 6.2.3)
                header, at = self._literal(block, at, 4)
            headers.append(header)
            listed += _entry_size(header)
            if listed > self._max_header_list_size:
                raise OversizedHeaderList(f"a header list over {self._max_header_list_size} bytes")
        return headers

    def _lookup(self, index: int) -> Header:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        position = index - len(_STATIC) - 1
        if 0 <= position < len(self._entries):
            return self._entries[position]
        raise DecodeError(f"index {index} is in neither table (the dynamic one holds {len(self._entries)})")

    def _literal(self, block: bytes, at: int, prefix_bits: int) -> tuple[Header, int]:
        index, at = _integer(block, at, prefix_bits)
        if index:
            name = self._lookup(index)[0]
        else:
            name, at = _string(block, at)
        value, at = _string(block, at)
        return (name, value), at

    def _add(self, header: Header) -> None:
        self._entries.appendleft(header)
        self._entries_size += _entry_size(header)
        self._evict()  # an entry larger than the whole table leaves it empty, itself included (section 4.4)

    def _resize(self, size: int) -> None:
        if size > self._max_table_size:
            raise DecodeError(f"a dynamic table of {size} bytes, over the {self._max_table_size} allowed")
        self._table_size = size
        self._evict()

    def _evict(self) -> None:
        while self._entries_size > self._table_size:
            self._entries_size -= _entry_size(self._entries.pop())


def _entry_size(header: Header) -> int:
    """What a header counts, in a table or a header list (section 4.1): latin-1, so a character is a byte."""
    return len(header[0]) + len(header[1]) + ENTRY_OVERHEAD


def _integer(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """The integer whose prefix is the low `prefix_bits` of block[at] (section 5.1), and where it ends."""
    limit = (1 << prefix_bits) - 1
    value = block[at] & limit
    at += 1
    if value < limit:
        return value, at
    for shift in range(0, 7 * MAX_INTEGER_BYTES, 7):
        if at >= len(block):
            raise DecodeError("the block ends inside an integer")
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise DecodeError(f"an integer of more than {MAX_INTEGER_BYTES} continuation bytes")


def _string(block: bytes, at: int) -> tuple[str, int]:
    """A string literal (section 5.2) starting at block[at], and where it ends."""
    if at >= len(block):
        raise DecodeError("the block ends before a string")
    huffman = block[at] & 0x80
    length, at = _integer(block, at, 7)
    end = at + length
    if end > len(block):
        raise DecodeError(f"a string of {length} bytes runs past the block's end")
    raw = block[at:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except HPACKError as e:
            raise DecodeError(f"a Huffman-coded string does not decode: {e}") from None
    return raw.decode("latin-1"), end
