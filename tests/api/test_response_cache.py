"""The per-worker cache of assembled metadata responses (dicomd.api.wado.ResponseCache)."""

from __future__ import annotations

from dicomd.api.response_cache import ResponseCache


def test_metadata_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = ResponseCache(max_bytes=100)
    cache.put(("a", "base"), b"x" * 20)
    cache.put(("c", "base"), b"y" * 20)
    cache.put(("big", "base"), b"z" * 26)  # over a quarter of the budget: not kept
    assert cache.get(("big", "base")) is None
    assert cache.get(("a", "base")) == b"x" * 20  # "a" is now the most recently used
    for i in range(4):
        cache.put((f"k{i}", "base"), b"w" * 20)  # 120 bytes in all: the oldest entry goes
    assert cache.get(("c", "base")) is None
    assert cache.get(("a", "base")) == b"x" * 20
    assert all(cache.get((f"k{i}", "base")) == b"w" * 20 for i in range(4))


def test_metadata_cache_keys_include_the_base_url() -> None:
    cache = ResponseCache(max_bytes=1000)
    cache.put(("etag", "http://a/v2"), b"[1]")
    assert cache.get(("etag", "http://b/v2")) is None
