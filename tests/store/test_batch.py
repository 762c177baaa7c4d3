"""The batch calls: set_many, get_many, delete_many, on every database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.errors import AuthenticationError, InvalidInputError, InvalidTypeError
from secure_kv.keys import StaticMasterKey
from secure_kv.sql.statements import IN_LIST_MAX, Statement


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """Direct SQL access to the store's tables, outside secure_kv."""
    handle = sa.create_engine(database_url)
    yield handle
    handle.dispose()


def _rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [
            (bytes(key), category, expires_at)
            for key, category, expires_at in connection.execute(
                sa.text("SELECT record_key, category, expires_at FROM skv_records ORDER BY record_key")
            )
        ]


def test_set_many_then_get_many_round_trips(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set_many({"a": b"1", "b": bytearray(b"2"), "c": memoryview(b"3"), "empty": b""})
    assert ws.get_many(["a", "b", "c", "empty"]) == {"a": b"1", "b": b"2", "c": b"3", "empty": b""}
    assert ws.get("b") == b"2"
    assert all(type(value) is bytes for value in ws.get_many(["a", "b", "c"]).values())


def test_set_many_accepts_pairs_and_a_repeated_key_keeps_its_last_value(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set_many([("k", b"first"), ("other", b"x"), ("k", b"last")])
    assert ws.get("k") == b"last"
    assert ws.get_many(iter(["k", "other"])) == {"k": b"last", "other": b"x"}


def test_get_many_leaves_out_missing_and_expired_keys(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set_many({"short-1": b"s1", "short-2": b"s2"}, ttl=0.3)
    ws.set_many({"long": b"l"}, ttl=3600)
    ws.set("forever", b"f")
    assert ws.get_many(["short-1", "long", "forever", "never-set"]) == {
        "short-1": b"s1",
        "long": b"l",
        "forever": b"f",
    }
    time.sleep(0.35)
    assert ws.get_many(["short-1", "short-2", "long", "forever", "never-set"]) == {
        "long": b"l",
        "forever": b"f",
    }


def test_get_many_follows_the_order_asked_and_returns_a_repeated_key_once(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set_many({f"k{i}": bytes([i]) for i in range(5)})
    result = ws.get_many(["k3", "k1", "k3", "missing", "k0"])
    assert list(result.items()) == [("k3", b"\x03"), ("k1", b"\x01"), ("k0", b"\x00")]


def test_delete_many_removes_only_the_keys_given(store: SecureStore) -> None:
    ws, other = store.workspace("tenant"), store.workspace("other")
    ws.set_many({"a": b"1", "b": b"2", "c": b"3"})
    other.set_many({"a": b"other"})
    ws.delete_many(["a", "c", "a", "never-set"])
    assert ws.get_many(["a", "b", "c"]) == {"b": b"2"}
    assert other.get("a") == b"other"
    ws.delete_many(["a", "c"])  # deleting again is not an error


def test_empty_batches_do_nothing(store: SecureStore, engine: sa.Engine) -> None:
    ws = store.workspace("tenant")
    ws.set_many({})
    ws.set_many([])
    assert ws.get_many([]) == {}
    ws.delete_many([])
    assert _rows(engine) == []
    ws.set("k", b"v")
    ws.set_many({})
    ws.delete_many(iter([]))
    assert ws.get_many(["k"]) == {"k": b"v"}


def test_batches_on_a_workspace_never_written_to(store: SecureStore) -> None:
    ws = store.workspace("fresh")
    assert ws.get_many(["a", "b"]) == {}
    ws.delete_many(["a", "b"])
    assert not ws.exist("a")


def test_batches_beyond_the_in_list_and_parameter_limits(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    count = 2 * IN_LIST_MAX + 300  # three IN lists, the last padded
    items = {f"key-{i:05d}": f"value {i}".encode() for i in range(count)}
    ws.set_many(items)
    keys = list(items)
    assert ws.get_many(keys) == items
    ws.delete_many(keys[::2])
    assert ws.get_many(keys) == {key: items[key] for key in keys[1::2]}
    assert ws.get(keys[0]) is None and ws.get(keys[1]) == items[keys[1]]


def test_set_many_applies_category_and_ttl_to_every_entry(store: SecureStore, engine: sa.Engine) -> None:
    ws = store.workspace("tenant")
    ws.set_many({"t1": b"sk-1", "t2": b"sk-2"}, category=Category.TOKEN)
    ws.set_many({"c1": b"x"}, category="cache")  # cache: the default TTL
    ws.set_many({"p1": b"y"}, ttl=60)
    rows = {key: (category, expires_at) for key, category, expires_at in _rows(engine)}
    assert rows[b"t1"] == ("token", None) and rows[b"t2"] == ("token", None)
    assert rows[b"c1"][0] == "cache" and rows[b"c1"][1] is not None
    assert rows[b"p1"][0] == "preference" and rows[b"p1"][1] is not None
    assert ws.get_many(["t1", "t2", "c1", "p1"]) == {"t1": b"sk-1", "t2": b"sk-2", "c1": b"x", "p1": b"y"}


def test_set_many_overwrite_without_ttl_clears_the_old_expiry(store: SecureStore, engine: sa.Engine) -> None:
    ws = store.workspace("tenant")
    ws.set("k", b"old", ttl=60)
    ws.set_many({"k": b"new"})
    assert _rows(engine) == [(b"k", "preference", None)]
    assert ws.get("k") == b"new"


BAD_ITEMS = [
    pytest.param([("ok", b"v"), ("", b"v")], InvalidInputError, id="empty-key"),
    pytest.param([("ok", b"v"), ("a\x00b", b"v")], InvalidInputError, id="nul-in-key"),
    pytest.param([("ok", b"v"), ("k" * 257, b"v")], InvalidInputError, id="long-key"),
    pytest.param([("ok", b"v"), (7, b"v")], InvalidTypeError, id="int-key"),
    pytest.param([("ok", b"v"), ("k", "text")], InvalidTypeError, id="str-value"),
    pytest.param([("ok", b"v"), ("k", None)], InvalidTypeError, id="none-value"),
    pytest.param([("ok", b"v"), ("k", b"x" * 2000)], InvalidInputError, id="value-too-large"),
    pytest.param([("ok", b"v"), ("k", b"v", b"extra")], InvalidTypeError, id="triple"),
    pytest.param([("ok", b"v"), "k"], InvalidTypeError, id="not-a-pair"),
    pytest.param("not pairs", InvalidTypeError, id="a-string"),
    pytest.param(42, InvalidTypeError, id="not-iterable"),
]


@pytest.mark.parametrize(("items", "error"), BAD_ITEMS)
def test_set_many_with_bad_input_changes_nothing(
    database_url: str, master_key: StaticMasterKey, engine: sa.Engine, items: Any, error: type[Exception]
) -> None:
    with SecureStore.open(database_url, master_key=master_key, max_value_bytes=1000) as store:
        ws = store.workspace("tenant")
        ws.set("ok", b"before")
        before = _rows(engine)
        with pytest.raises(error):
            ws.set_many(items)
        assert _rows(engine) == before
        assert ws.get("ok") == b"before"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"category": "secret"}, InvalidInputError),
        ({"category": 3}, InvalidTypeError),
        ({"ttl": 0}, InvalidInputError),
        ({"ttl": True}, InvalidTypeError),
        ({"ttl": float("nan")}, InvalidInputError),
    ],
)
def test_set_many_with_a_bad_category_or_ttl_changes_nothing(
    store: SecureStore, engine: sa.Engine, options: dict[str, Any], error: type[Exception]
) -> None:
    ws = store.workspace("tenant")
    ws.set("ok", b"before")
    with pytest.raises(error):
        ws.set_many({"ok": b"after", "new": b"x"}, **options)
    assert ws.get_many(["ok", "new"]) == {"ok": b"before"}


@pytest.mark.parametrize("method", ["get_many", "delete_many"])
@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (["ok", ""], InvalidInputError),
        (["ok", "a\x00b"], InvalidInputError),
        (["ok", b"bytes-key"], InvalidTypeError),
        (["ok", None], InvalidTypeError),
        ("ok", InvalidTypeError),  # a str is an iterable of one-letter keys: refused
        (b"ok", InvalidTypeError),
        (None, InvalidTypeError),
    ],
)
def test_bad_keys_are_refused_before_anything_happens(
    store: SecureStore, method: str, keys: Any, error: type[Exception]
) -> None:
    ws = store.workspace("tenant")
    ws.set("ok", b"v")
    with pytest.raises(error):
        getattr(ws, method)(keys)
    assert ws.get("ok") == b"v"


def test_error_messages_name_the_position_not_the_rejected_key(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    with pytest.raises(InvalidInputError, match="key 2") as caught:
        ws.get_many(["a", "b", "sk-secret\x00"])
    assert "sk-secret" not in str(caught.value)


def test_set_many_writes_all_or_nothing_when_the_database_fails_midway(
    store: SecureStore, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = store.workspace("tenant")
    ws.set("existing", b"before")
    monkeypatch.setattr("secure_kv.store.batches._WRITE_CHUNK", 10)
    original = Statement.run_many
    calls = 0

    def fail_on_the_third_chunk(self: Statement, connection: Any, rows: Any) -> int:
        nonlocal calls
        calls += 1
        written = original(self, connection, rows)  # rows really reach the database...
        if calls == 3:
            raise RuntimeError("disk on fire")  # ...and then the batch fails
        return written

    monkeypatch.setattr(Statement, "run_many", fail_on_the_third_chunk)
    items = {f"k{i:03d}": b"new" for i in range(50)} | {"existing": b"after"}
    with pytest.raises(RuntimeError, match="disk on fire"):
        ws.set_many(items)
    assert calls == 3
    monkeypatch.setattr(Statement, "run_many", original)
    assert ws.get_many(list(items)) == {"existing": b"before"}
    # The connection went back to the pool with no transaction left open: a later write
    # is committed and seen by another connection.
    ws.set("later", b"seen")
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM skv_records")).scalar() == 2


def test_delete_many_deletes_all_or_nothing_when_the_database_fails_midway(
    store: SecureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = store.workspace("tenant")
    keys = [f"k{i:04d}" for i in range(IN_LIST_MAX + 10)]
    ws.set_many(dict.fromkeys(keys, b"v"))
    original = Statement.run
    calls = 0

    def fail_on_the_second_delete(self: Statement, connection: Any, *values: Any) -> int:
        nonlocal calls
        count = original(self, connection, *values)
        if self.sql.lstrip().upper().startswith("DELETE"):
            calls += 1
            if calls == 2:
                raise RuntimeError("disk on fire")
        return count

    monkeypatch.setattr(Statement, "run", fail_on_the_second_delete)
    with pytest.raises(RuntimeError):
        ws.delete_many(keys)
    monkeypatch.setattr(Statement, "run", original)
    assert len(ws.get_many(keys)) == len(keys)


def test_get_many_reports_a_tampered_record_by_name(store: SecureStore, engine: sa.Engine) -> None:
    ws = store.workspace("tenant")
    ws.set_many({"good": b"fine", "bad": b"will be altered"})
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE skv_records SET category = 'token' WHERE record_key = :k"), {"k": b"bad"}
        )
    with pytest.raises(AuthenticationError, match="'bad'"):
        ws.get_many(["good", "bad"])
    assert ws.get_many(["good"]) == {"good": b"fine"}


@pytest.mark.parametrize("call", ["set", "set_many"])
def test_a_write_sealed_under_a_retired_data_key_is_resealed(
    store: SecureStore, engine: sa.Engine, call: str
) -> None:
    """Another process rotated the workspace key and removed the old one while this
    process still had it cached: the foreign key refuses the record, and the write is
    sealed again under the current key."""
    ws = store.workspace("tenant")
    name = b"tenant"
    workspace_id, cached = store._keys.current(name)  # cached, as after earlier writes
    assert cached.version == 1
    store._keys.create_version(workspace_id, name, 2)
    with engine.begin() as connection:
        connection.execute(
            sa.text("DELETE FROM skv_data_keys WHERE workspace_id = :w AND version = 1"), {"w": workspace_id}
        )
    if call == "set":
        ws.set("k", b"v")
    else:
        ws.set_many({"k": b"v", "k2": b"v2"})
    with engine.connect() as connection:
        versions = connection.execute(sa.text("SELECT DISTINCT dek_version FROM skv_records")).scalars().all()
    assert versions == [2]
    assert ws.get_many(["k"]) == {"k": b"v"}


def test_get_many_leaves_out_records_whose_data_key_was_destroyed(
    store: SecureStore, engine: sa.Engine
) -> None:
    ws = store.workspace("tenant")
    ws.set_many({"a": b"1", "b": b"2"})
    store._keys.clear()  # another process shredded the workspace: nothing cached here
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE skv_data_keys SET wrapped = NULL"))
    assert ws.get_many(["a", "b"]) == {}


def test_get_many_detects_a_flipped_bit_after_good_records(store: SecureStore, engine: sa.Engine) -> None:
    ws = store.workspace("tenant")
    ws.set_many({f"k{i}": b"value" for i in range(5)})
    with engine.connect() as connection:
        blob = bytearray(
            connection.execute(
                sa.text("SELECT value FROM skv_records WHERE record_key = :k"), {"k": b"k3"}
            ).scalar_one()
        )
    blob[-1] ^= 1
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE skv_records SET value = :v WHERE record_key = :k"), {"v": bytes(blob), "k": b"k3"}
        )
    with pytest.raises(AuthenticationError, match="'k3'"):
        ws.get_many([f"k{i}" for i in range(5)])


def test_batch_token_reads_never_fail_while_writers_replace_the_tokens(store: SecureStore) -> None:
    import threading
    import time

    ws = store.workspace("w")
    ws.set_many({"t1": b"sk-0", "t2": b"sk-0"}, category="token")
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                ws.set_many({"t1": b"sk-1", "t2": b"sk-2"}, category="token")
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert set(ws.get_many(["t1", "t2"])) == {"t1", "t2"}
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures


def test_set_many_promotes_only_the_flagged_entry_with_its_own_expiry(
    database_url: str, master_key: StaticMasterKey, engine: sa.Engine
) -> None:
    # A cache batch with one credential in it, under the "promote" policy: the credential is
    # stored as a token (no expiry), the rest as cache entries with the default TTL, and
    # every value opens under the category it was sealed with.
    credential = b"ghp_" + b"a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    with SecureStore.open(database_url, master_key=master_key, credential_policy="promote") as store:
        ws = store.workspace("tenant")
        ws.set_many({"plain": b"hello", "leak": credential, "other": b"world"}, category=Category.CACHE)
        assert ws.get_many(["plain", "leak", "other"]) == {
            "plain": b"hello",
            "leak": credential,
            "other": b"world",
        }
        assert ws.get("leak") == credential
    rows = {key: (category, expires_at) for key, category, expires_at in _rows(engine)}
    assert rows[b"leak"] == ("token", None)
    assert rows[b"plain"][0] == rows[b"other"][0] == "cache"
    assert rows[b"plain"][1] is not None and rows[b"plain"][1] == rows[b"other"][1]
