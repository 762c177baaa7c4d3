"""The data-key cache forgets keys by age and by count."""

from __future__ import annotations

import time

from secure_kv.store.datakeys import _BoundedCache


def test_entries_expire_after_max_age() -> None:
    cache = _BoundedCache(size=10, max_age=0.05)
    cache.put("a", 1)
    assert cache.get("a") == 1
    time.sleep(0.08)
    assert cache.get("a") is None
    assert "a" not in cache.entries


def test_oldest_entries_are_dropped_beyond_the_size_bound() -> None:
    cache = _BoundedCache(size=3, max_age=60)
    for name in "abcde":
        cache.put(name, name)
    assert list(cache.entries) == ["c", "d", "e"]


def test_expired_entries_are_dropped_when_others_are_added() -> None:
    cache = _BoundedCache(size=10, max_age=0.05)
    cache.put("old", 1)
    time.sleep(0.08)
    cache.put("new", 2)
    assert list(cache.entries) == ["new"]
