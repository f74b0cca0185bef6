"""Streaming tokens: single use, unguessable, expiring, bounded."""

from __future__ import annotations

import pytest

from cripy.errors import Unavailable
from cripy.streaming.tokens import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_redeemed_once() -> None:
    cache: TokenCache[str] = TokenCache()
    token = cache.insert("request")
    assert cache.consume(token) == "request"
    assert cache.consume(token) is None


def test_unknown_tokens_give_nothing() -> None:
    cache: TokenCache[str] = TokenCache()
    cache.insert("request")
    assert cache.consume("not-a-token") is None
    assert cache.consume("") is None


def test_tokens_are_long_url_safe_and_distinct() -> None:
    cache: TokenCache[int] = TokenCache()
    tokens = {cache.insert(i) for i in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) >= 43  # 32 random bytes in base64
        assert all(c.isalnum() or c in "-_" for c in token)


def test_tokens_expire_after_their_time_to_live() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(60, clock=clock)
    early, late = cache.insert("early"), cache.insert("late")
    clock.now += 59.9
    assert cache.consume(early) == "early"
    clock.now += 0.1
    assert cache.consume(late) is None


def test_expired_tokens_do_not_count_against_the_limit() -> None:
    clock = Clock()
    cache: TokenCache[int] = TokenCache(10, max_entries=3, clock=clock)
    for i in range(3):
        cache.insert(i)
    with pytest.raises(Unavailable, match="too many pending"):
        cache.insert(3)
    clock.now += 10
    assert len(cache) == 0
    token = cache.insert(4)
    assert cache.consume(token) == 4


def test_time_to_live_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenCache(0)
