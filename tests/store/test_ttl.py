"""Expiry: TTLs on any category, cache always expires, overwrites clear the old TTL."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.keys import StaticMasterKey


def _expires_at(url: str, key: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            value = connection.execute(
                sa.text("SELECT expires_at FROM skv_records WHERE record_key = :k"), {"k": key.encode()}
            ).scalar_one()
            return None if value is None else int(value)
    finally:
        engine.dispose()


def _wait_until_expired(ttl: float) -> None:
    time.sleep(ttl + 0.05)


def test_entry_reads_as_missing_after_its_ttl(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("short", b"v", ttl=0.3)
    ws.set("long", b"v", ttl=3600)
    assert ws.get("short") == b"v"
    assert ws.exist("short")
    _wait_until_expired(0.3)
    assert ws.get("short") is None
    assert not ws.exist("short")
    assert ws.get("long") == b"v"


@pytest.mark.parametrize("category", list(Category))
def test_ttl_is_allowed_on_every_category(sqlite_store: SecureStore, category: Category) -> None:
    ws = sqlite_store.workspace("w")
    ws.set("k", b"v", category=category, ttl=0.2)
    assert ws.get("k") == b"v"
    _wait_until_expired(0.2)
    assert ws.get("k") is None


def test_timedelta_ttl_is_accepted(sqlite_url: str, master_key: StaticMasterKey) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key) as store:
        before = time.time_ns() // 1000
        store.workspace("w").set("k", b"v", ttl=timedelta(minutes=5))
        expires = _expires_at(sqlite_url, "k")
        assert expires is not None
        assert 299_000_000 <= expires - before <= 301_000_000


def test_cache_without_ttl_gets_the_default(sqlite_url: str, master_key: StaticMasterKey) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key, default_cache_ttl=0.3) as store:
        ws = store.workspace("w")
        ws.set("cached", b"v", category=Category.CACHE)
        ws.set("pref", b"v")
        assert ws.get("cached") == b"v"
        _wait_until_expired(0.3)
        assert ws.get("cached") is None
        assert ws.get("pref") == b"v"


def test_default_cache_ttl_comes_from_the_environment(
    sqlite_url: str, master_key: StaticMasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_DEFAULT_CACHE_TTL", "120")
    with SecureStore.open(sqlite_url, master_key=master_key) as store:
        before = time.time_ns() // 1000
        store.workspace("w").set("cached", b"v", category="cache")
    expires = _expires_at(sqlite_url, "cached")
    assert expires is not None
    assert 119_000_000 <= expires - before <= 121_000_000


def test_preference_and_token_without_ttl_never_expire(sqlite_url: str, master_key: StaticMasterKey) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key) as store:
        ws = store.workspace("w")
        ws.set("p", b"v")
        ws.set("t", b"v", category=Category.TOKEN)
    assert _expires_at(sqlite_url, "p") is None
    assert _expires_at(sqlite_url, "t") is None


def test_overwrite_without_ttl_clears_the_old_expiry(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("k", b"old", ttl=0.3)
    ws.set("k", b"new")
    _wait_until_expired(0.3)
    assert ws.get("k") == b"new"


def test_overwrite_of_cache_without_ttl_gets_the_default_again(
    sqlite_url: str, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key, default_cache_ttl=3600) as store:
        ws = store.workspace("w")
        ws.set("k", b"old", category="cache", ttl=0.2)
        ws.set("k", b"new", category="cache")
        _wait_until_expired(0.2)
        assert ws.get("k") == b"new"


def test_an_expired_key_can_be_set_again(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("k", b"old", ttl=0.2)
    _wait_until_expired(0.2)
    assert ws.get("k") is None
    ws.set("k", b"fresh")
    assert ws.get("k") == b"fresh"
