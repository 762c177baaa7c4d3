"""Bad input gets a clear error of a documented type and leaves the store unchanged."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import SecureStore
from secure_kv.errors import InvalidInputError, InvalidTypeError, SecureKVError
from secure_kv.keys import StaticMasterKey


def _snapshot(url: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [
                tuple(row) for row in connection.exec_driver_sql("SELECT * FROM skv_records ORDER BY 1, 2")
            ]
    finally:
        engine.dispose()


BAD_KEYS = [
    pytest.param(b"bytes-key", InvalidTypeError, id="bytes"),
    pytest.param(42, InvalidTypeError, id="int"),
    pytest.param(None, InvalidTypeError, id="none"),
    pytest.param("", InvalidInputError, id="empty"),
    pytest.param("k" * 257, InvalidInputError, id="257-ascii"),
    pytest.param("é" * 129, InvalidInputError, id="258-utf8-bytes"),
    pytest.param("a\x00b", InvalidInputError, id="nul"),
    pytest.param("\ud800", InvalidInputError, id="lone-surrogate"),
]

BAD_TTLS = [
    pytest.param(0, InvalidInputError, id="zero"),
    pytest.param(-1, InvalidInputError, id="negative"),
    pytest.param(-0.5, InvalidInputError, id="negative-float"),
    pytest.param(math.inf, InvalidInputError, id="inf"),
    pytest.param(math.nan, InvalidInputError, id="nan"),
    pytest.param(True, InvalidTypeError, id="bool"),
    pytest.param("300", InvalidTypeError, id="str"),
    pytest.param(timedelta(0), InvalidInputError, id="zero-timedelta"),
    pytest.param(timedelta(seconds=-5), InvalidInputError, id="negative-timedelta"),
    pytest.param(10**400, InvalidInputError, id="huge-int"),
]

BAD_VALUES = [
    pytest.param("text", InvalidTypeError, id="str"),
    pytest.param(None, InvalidTypeError, id="none"),
    pytest.param(123, InvalidTypeError, id="int"),
    pytest.param([1, 2], InvalidTypeError, id="list"),
]


@pytest.fixture
def seeded(database_url: str, master_key: StaticMasterKey) -> Any:
    with SecureStore.open(database_url, master_key=master_key) as store:
        ws = store.workspace("w")
        ws.set("existing", b"keep me")
        yield store, ws, _snapshot(database_url), database_url


@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
def test_bad_keys_are_refused_everywhere_and_nothing_changes(seeded: Any, key: Any, error: type) -> None:
    _, ws, before, url = seeded
    for call in (
        lambda: ws.set(key, b"v"),
        lambda: ws.get(key),
        lambda: ws.exist(key),
        lambda: ws.delete(key),
    ):
        with pytest.raises(error):
            call()
    assert _snapshot(url) == before


@pytest.mark.parametrize(("value", "error"), BAD_VALUES)
def test_bad_values_are_refused_and_nothing_changes(seeded: Any, value: Any, error: type) -> None:
    _, ws, before, url = seeded
    with pytest.raises(error):
        ws.set("existing", value)
    assert _snapshot(url) == before
    assert ws.get("existing") == b"keep me"


@pytest.mark.parametrize(("ttl", "error"), BAD_TTLS)
def test_bad_ttls_are_refused_and_nothing_changes(seeded: Any, ttl: Any, error: type) -> None:
    _, ws, before, url = seeded
    with pytest.raises(error):
        ws.set("existing", b"new", ttl=ttl)
    assert _snapshot(url) == before


@pytest.mark.parametrize(
    ("category", "error"),
    [
        ("secret", InvalidInputError),
        ("TOKEN", InvalidInputError),
        (1, InvalidTypeError),
        (None, InvalidTypeError),
    ],
)
def test_unknown_categories_are_refused(seeded: Any, category: Any, error: type) -> None:
    _, ws, before, url = seeded
    with pytest.raises(error):
        ws.set("existing", b"new", category=category)
    assert _snapshot(url) == before


def test_value_above_the_limit_is_refused(sqlite_url: str, master_key: StaticMasterKey) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key, max_value_bytes=1024) as store:
        ws = store.workspace("w")
        ws.set("fits", b"x" * 1024)
        with pytest.raises(InvalidInputError, match="SECURE_KV_MAX_VALUE_BYTES"):
            ws.set("too-big", b"x" * 1025)
        assert ws.get("too-big") is None
        assert ws.get("fits") == b"x" * 1024


@pytest.mark.parametrize("name", ["", "a\x00b", "n" * 257, 7, None])
def test_bad_workspace_names_are_refused(sqlite_store: SecureStore, name: Any) -> None:
    with pytest.raises(InvalidInputError):
        sqlite_store.workspace(name)


def test_errors_are_also_builtin_types(sqlite_store: SecureStore) -> None:
    ws = sqlite_store.workspace("w")
    with pytest.raises(ValueError):
        ws.set("", b"v")
    with pytest.raises(TypeError):
        ws.set("k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(SecureKVError):
        ws.set("k", b"v", ttl=-1)


def test_key_of_exactly_256_bytes_is_accepted(store: SecureStore) -> None:
    ws = store.workspace("w")
    key = "é" * 128  # 256 bytes of UTF-8
    ws.set(key, b"v")
    assert ws.get(key) == b"v"


def test_error_messages_do_not_echo_the_rejected_value(sqlite_store: SecureStore) -> None:
    ws = sqlite_store.workspace("w")
    secret = "sk-live-0123456789abcdefSECRET"
    for call in (
        lambda: ws.set("k", secret),  # type: ignore[arg-type]
        lambda: ws.set(secret * 20, b"v"),
        lambda: ws.set("k", b"v", category=secret),
        lambda: ws.set("k", b"v", ttl=secret),
    ):
        with pytest.raises(SecureKVError) as caught:
            call()
        assert "SECRET" not in str(caught.value)
