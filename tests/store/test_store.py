"""The Dify-style surface: set/get/exist/delete, persistence, isolation, threads."""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from secure_kv import Category, SecureStore
from secure_kv.errors import InvalidTypeError, StorageError
from secure_kv.keys import StaticMasterKey


def test_set_then_get_returns_the_bytes(store: SecureStore) -> None:
    ws = store.workspace("tenant-42:my-plugin")
    ws.set("user_name", b"John")
    assert ws.get("user_name") == b"John"


def test_get_of_a_missing_key_is_none(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    assert ws.get("never-set") is None
    ws.set("other", b"x")
    assert ws.get("never-set") is None


def test_empty_value_round_trips_and_is_not_missing(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set("empty", b"")
    assert ws.get("empty") == b""
    assert ws.exist("empty")


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_values_are_accepted(store: SecureStore, kind: type) -> None:
    ws = store.workspace("tenant")
    ws.set("k", kind(b"payload"))
    assert ws.get("k") == b"payload"
    assert type(ws.get("k")) is bytes


def test_overwrite_replaces_the_value(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set("k", b"one")
    ws.set("k", b"two")
    assert ws.get("k") == b"two"


def test_exist_follows_set_and_delete(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    assert ws.exist("k") is False
    ws.set("k", b"v")
    assert ws.exist("k") is True
    ws.delete("k")
    assert ws.exist("k") is False
    assert ws.get("k") is None


def test_deleting_a_missing_key_is_not_an_error(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    assert ws.delete("missing") is None
    ws.set("k", b"v")
    ws.delete("k")
    ws.delete("k")


def test_keys_differing_in_case_or_trailing_space_are_distinct(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    ws.set("key", b"lower")
    ws.set("Key", b"upper")
    ws.set("key ", b"space")
    assert (ws.get("key"), ws.get("Key"), ws.get("key ")) == (b"lower", b"upper", b"space")
    ws.delete("Key")
    assert (ws.get("key"), ws.get("Key"), ws.get("key ")) == (b"lower", None, b"space")


def test_unicode_keys_round_trip(store: SecureStore) -> None:
    ws = store.workspace("租户:插件")
    ws.set("ключ🔑", b"v")
    assert ws.get("ключ🔑") == b"v"
    assert ws.get("ключ") is None


def test_workspaces_are_isolated(store: SecureStore) -> None:
    a, b = store.workspace("tenant-a"), store.workspace("tenant-b")
    a.set("shared-name", b"from a")
    assert b.get("shared-name") is None
    assert not b.exist("shared-name")
    b.set("shared-name", b"from b")
    b.delete("shared-name")
    assert a.get("shared-name") == b"from a"


def test_data_survives_closing_and_reopening(database_url: str, master_key: StaticMasterKey) -> None:
    with SecureStore.open(database_url, master_key=master_key) as first:
        first.workspace("w").set("token", b"sk-abc", category=Category.TOKEN)
        first.workspace("w").set("pref", b"dark")
    with SecureStore.open(database_url, master_key=master_key) as second:
        assert second.workspace("w").get("token") == b"sk-abc"
        assert second.workspace("w").get("pref") == b"dark"


def test_workspace_handles_of_the_same_name_share_data(store: SecureStore) -> None:
    store.workspace("w").set("k", b"v")
    assert store.workspace("w").get("k") == b"v"


def test_categories_accept_enum_and_plain_strings(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("a", b"1", category=Category.TOKEN)
    ws.set("b", b"2", category="token")
    ws.set("c", b"3", category="preference")
    ws.set("d", b"4", category="cache", ttl=60)
    assert [ws.get(k) for k in "abcd"] == [b"1", b"2", b"3", b"4"]


def test_many_threads_share_one_store(store: SecureStore) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            ws = store.workspace(f"thread-{n % 3}")
            for i in range(30):
                key = f"t{n}-k{i}"
                ws.set(key, f"{n}:{i}".encode())
                assert ws.get(key) == f"{n}:{i}".encode()
                if i % 5 == 0:
                    ws.delete(key)
                    assert ws.get(key) is None
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for n in range(8):
        ws = store.workspace(f"thread-{n % 3}")
        assert ws.get(f"t{n}-k1") == f"{n}:1".encode()
        assert ws.get(f"t{n}-k0") is None


def test_large_value_round_trips(sqlite_store: SecureStore) -> None:
    value = os.urandom(16 * 1024 * 1024)
    ws = sqlite_store.workspace("w")
    ws.set("big", value)
    assert ws.get("big") == value


def test_closed_store_refuses_work(sqlite_url: str, master_key: StaticMasterKey) -> None:
    store = SecureStore.open(sqlite_url, master_key=master_key)
    ws = store.workspace("w")
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StorageError, match="closed"):
        ws.get("k")


def test_store_and_workspace_refuse_pickling(sqlite_store: SecureStore) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(sqlite_store)
    with pytest.raises(TypeError):
        pickle.dumps(sqlite_store.workspace("w"))


def test_open_refuses_raw_bytes_as_master_key(sqlite_url: str) -> None:
    with pytest.raises(InvalidTypeError, match="StaticMasterKey"):
        SecureStore.open(sqlite_url, master_key=os.urandom(32))  # type: ignore[arg-type]


def test_reprs_hold_no_secret(sqlite_url: str) -> None:
    raw = os.urandom(32)
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(raw)) as store:
        ws = store.workspace("w")
        ws.set("token", b"sk-very-secret-token", category=Category.TOKEN)
        ws.get("token")
        for shown in (repr(store), repr(ws), str(store), str(ws)):
            assert raw.hex() not in shown and str(raw) not in shown
            assert "sk-very-secret-token" not in shown
        assert store.kek_id in repr(store)


def test_store_repr_masks_a_database_password() -> None:
    from secure_kv.sql.database import safe_url

    assert "hunter2" not in safe_url("postgresql+psycopg://app:hunter2@db.example/kv")
    assert "***" in safe_url("postgresql+psycopg://app:hunter2@db.example/kv")


def test_database_errors_do_not_print_bound_parameters(sqlite_store: SecureStore) -> None:
    import sqlalchemy as sa

    secret = b"sealed-bytes-that-must-not-leak"
    with pytest.raises(sa.exc.IntegrityError) as caught, sqlite_store._db.engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO skv_records VALUES (999, :k, 'token', 1, 0, 0, NULL, :v)"),
            {"k": b"k", "v": secret},
        )
    assert "sealed-bytes" not in str(caught.value)
    assert "hidden due to hide_parameters" in str(caught.value)
