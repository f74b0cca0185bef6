"""Single-use streaming tokens: the secret part of the URLs the CRI calls Exec, Attach and PortForward hand out.

A token is unguessable (32 random bytes, URL-safe), stands for exactly one request (what to run, where), can be
redeemed once, and expires after a time to live (60 s by default, as kubelet's streaming cache). The cache holds at
most ``max_entries`` live tokens so that a flood of CRI calls cannot grow it without bound.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cripy.errors import Unavailable

DEFAULT_TTL_SECONDS = 60.0
DEFAULT_MAX_ENTRIES = 1000
TOKEN_BYTES = 32

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    request: T
    expires_at: float


class TokenCache(Generic[T]):
    """Requests by token; ``consume`` hands a request out once, and only before it expires."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"token time to live must be positive, got {ttl_seconds}")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()  # oldest first: expiry order

    def __len__(self) -> int:
        self._evict_expired()
        return len(self._entries)

    def insert(self, request: T) -> str:
        """A new token for ``request``; Unavailable when the cache is full of live tokens."""
        self._evict_expired()
        if len(self._entries) >= self.max_entries:
            raise Unavailable(f"too many pending streaming requests ({self.max_entries}): retry after some expire "
                              f"(they live {self.ttl_seconds:g}s)")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._entries[token] = _Entry(request, self._clock() + self.ttl_seconds)
        return token

    def consume(self, token: str) -> T | None:
        """The request of a live token, removing it; None for an unknown, used or expired token."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry.request

    def _evict_expired(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[token]
