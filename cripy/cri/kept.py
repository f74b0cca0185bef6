"""What the CRI list calls keep between calls: every entry serialized once per change of it, and the answers
given since the records last changed, by filter.

The kubelet lists every pod and container every second, and filtered lists besides (by state in its
housekeeping, by pod in each pod's status); an entry changes only with its object's state. A serialized protobuf
message followed by another is their merge, and a repeated field merges by appending, so a list response is the
concatenation of its entries, each serialized as a response holding only it: a list after one change, or a
filtered one, serializes only the entries that changed (200 containers: 1.4 ms to build and serialize, 9 µs to
join). The same request while no record changed gets the answer given before, at once: the kubelet's relist (no
filter), its housekeeping (by state) and its pods' statuses (by pod) repeat theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

FILTERED_BYTES_MAX = 4 * 1024 * 1024  # what the answers to filtered requests may keep, all filters together


class KeptList(Generic[T]):
    """One list call's kept entries. `identify` gives an object's id and what its entry depends on that can change
    (its state); `encode` serializes its entry as a response holding only it."""

    def __init__(self, identify: Callable[[T], tuple[str, Hashable]], encode: Callable[[T], bytes]) -> None:
        self._identify = identify
        self._encode = encode
        self._entries: dict[str, tuple[Hashable, bytes]] = {}
        self._answers: dict[bytes, bytes] = {}  # by the request's serialized filter (b"" for none)
        self._answers_version = -1
        self._filtered_bytes = 0

    def answer(self, objects: Iterable[T], *, complete: bool) -> bytes:
        """The serialized response listing `objects`, in their order; `complete` says they are every object there
        is, so that the entries of objects gone are dropped."""
        fresh: dict[str, tuple[Hashable, bytes]] = {}
        for obj in objects:
            ident, mark = self._identify(obj)
            kept = self._entries.get(ident)
            fresh[ident] = kept if kept is not None and kept[0] == mark else (mark, self._encode(obj))
        if complete:
            self._entries = fresh
        else:
            self._entries.update(fresh)
        return b"".join(entry for _, entry in fresh.values())

    def keep(self, key: bytes, answer: bytes, version: int) -> None:
        """The answer to the request whose filter serializes to `key` (b"" for none), made from the records at
        `version`. Answers made at an older version are dropped; filtered ones only while FILTERED_BYTES_MAX holds
        them (a filter is the client's to choose)."""
        if version != self._answers_version:
            self._answers.clear()
            self._answers_version, self._filtered_bytes = version, 0
        if key in self._answers:
            return
        if key:
            if self._filtered_bytes + len(answer) > FILTERED_BYTES_MAX:
                return
            self._filtered_bytes += len(answer)
        self._answers[key] = answer

    def kept(self, key: bytes, version: int) -> bytes | None:
        """The answer kept for the filter `key`, when the records are still at the version it was made from."""
        return self._answers.get(key) if version == self._answers_version else None
