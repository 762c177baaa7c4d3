"""What the audit log records, in the same transaction as the change, and failing closed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.admin.rotation import rotate_master
from secure_kv.audit.signing_keys import load_signing_key, replace_signing_keys, trusted_signing_keys
from secure_kv.audit.verify import verify
from secure_kv.errors import AuthenticationError, StorageError
from secure_kv.keys import StaticMasterKey
from secure_kv.store.internals import record_event


def events(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                sa.text(
                    "SELECT chain_id, seq, actor, action, workspace, record_key, category, dek_version, "
                    "outcome, detail FROM skv_audit_events ORDER BY occurred_at, chain_id, seq"
                )
            )
            found = []
            for row in rows:
                item = dict(row._mapping)
                for name in ("workspace", "record_key"):
                    if item[name] is not None:
                        item[name] = bytes(item[name]).decode()
                found.append(item)
            return found
    finally:
        engine.dispose()


def actions(url: str) -> list[tuple[str, str | None, str | None]]:
    return [(e["action"], e["record_key"], e["category"]) for e in events(url)]


def execute(url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(sql), params)
    finally:
        engine.dispose()


@pytest.fixture
def url_and_store(database_url: str, master_key: StaticMasterKey) -> Iterator[tuple[str, SecureStore]]:
    with SecureStore.open(database_url, master_key=master_key, actor="alice@ops") as opened:
        yield database_url, opened


def test_token_write_read_and_delete_are_recorded_with_the_data_key_creation(
    url_and_store: tuple[str, SecureStore],
) -> None:
    url, store = url_and_store
    ws = store.workspace("tenant-1")
    ws.set("openai", b"sk-secret-value-1", category=Category.TOKEN)
    assert ws.get("openai") == b"sk-secret-value-1"
    ws.delete("openai")
    assert actions(url) == [
        ("datakey.create", None, None),
        ("record.write", "openai", "token"),
        ("record.read", "openai", "token"),
        ("record.delete", "openai", "token"),
    ]
    recorded = events(url)
    assert {e["actor"] for e in recorded} == {"alice@ops"}
    assert {e["workspace"] for e in recorded} == {"tenant-1"}
    assert all(e["dek_version"] == 1 and e["outcome"] == "ok" for e in recorded)


def test_preference_and_cache_traffic_is_not_recorded_by_default(
    url_and_store: tuple[str, SecureStore],
) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("lang", b"en")
    ws.set("page", b"<html>", category=Category.CACHE, ttl=60)
    assert ws.get("lang") == b"en"
    ws.delete("lang")
    ws.delete("missing")
    assert actions(url) == [("datakey.create", None, None)]


def test_audit_writes_all_records_preference_and_cache_writes_and_deletes(
    database_url: str, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(database_url, master_key=master_key, audit_writes="all") as store:
        ws = store.workspace("w")
        ws.set("lang", b"en")
        ws.set("page", b"x", category=Category.CACHE)
        assert ws.get("lang") == b"en"
        ws.delete("lang")
        ws.delete("never-there")
    assert actions(database_url)[1:] == [
        ("record.write", "lang", "preference"),
        ("record.write", "page", "cache"),
        ("record.delete", "lang", "preference"),
    ]


def test_replacing_a_token_with_a_preference_is_recorded(url_and_store: tuple[str, SecureStore]) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("k", b"first", category=Category.TOKEN)
    ws.set("k", b"now a preference")
    assert ws.get("k") == b"now a preference"
    last = events(url)[-1]
    assert (last["action"], last["category"], last["detail"]) == (
        "record.write",
        "preference",
        "replaced a token",
    )


def test_a_token_read_whose_event_cannot_be_written_fails_and_returns_nothing(
    url_and_store: tuple[str, SecureStore],
) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("openai", b"sk-the-token-value", category=Category.TOKEN)
    ws.set("lang", b"en")
    execute(url, "ALTER TABLE skv_audit_events RENAME TO skv_audit_events_gone")
    with pytest.raises(StorageError, match="refused: its audit event could not be written") as raised:
        ws.get("openai")
    assert "sk-the-token-value" not in str(raised.value)
    assert ws.get("lang") == b"en"  # reads of other categories are not audited


def test_a_token_write_whose_event_cannot_be_written_stores_nothing(
    url_and_store: tuple[str, SecureStore],
) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("warm", b"up")  # creates the data key while the log still works
    execute(url, "ALTER TABLE skv_audit_events RENAME TO skv_audit_events_gone")
    with pytest.raises(StorageError):
        ws.set("openai", b"sk-never-stored", category=Category.TOKEN)
    execute(url, "ALTER TABLE skv_audit_events_gone RENAME TO skv_audit_events")
    assert ws.get("openai") is None


def test_a_record_failing_authentication_is_recorded(url_and_store: tuple[str, SecureStore]) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("k", b"value", category=Category.TOKEN)
    execute(url, "UPDATE skv_records SET category = 'preference'")
    with pytest.raises(AuthenticationError):
        ws.get("k")
    last = events(url)[-1]
    assert (last["action"], last["record_key"], last["outcome"]) == ("auth.failure", "k", "failure")


def test_a_wrong_master_key_is_logged_since_it_cannot_sign(
    database_url: str, master_key: StaticMasterKey, caplog: pytest.LogCaptureFixture
) -> None:
    with SecureStore.open(database_url, master_key=master_key) as store:
        store.workspace("w").set("k", b"v")
    wrong = StaticMasterKey(os.urandom(32))
    with pytest.raises(Exception, match="wrong master key"):
        SecureStore.open(database_url, master_key=wrong)
    assert any(
        "authentication failure" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records
    )


def test_admin_events_commit_and_roll_back_with_the_callers_transaction(
    url_and_store: tuple[str, SecureStore],
) -> None:
    url, store = url_and_store
    with store._db.connect(lock=True) as connection:
        with connection.begin():
            record_event(store, "rotate.workspace", connection=connection, workspace="w", dek_version=2)
        transaction = connection.begin()
        record_event(store, "shred", connection=connection, workspace="w")
        transaction.rollback()
        with connection.begin():
            record_event(store, "purge", connection=connection, detail="3 expired")
    record_event(store, "operator.get", workspace="w", key="k", category=Category.TOKEN)
    assert actions(url) == [
        ("rotate.workspace", None, None),
        ("purge", None, None),
        ("operator.get", "k", "token"),
    ]
    report = verify(store._db, store._provider)
    assert report.ok, report.failures


def test_master_rotation_replaces_the_signing_key_and_keeps_the_old_public_half(database_url: str) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as store:
        store.workspace("w").set("k", b"v", category=Category.TOKEN)
        public = store._audit.signer().public_key
    rotated = StaticMasterKey(new, previous=[old])
    with SecureStore.open(database_url, master_key=rotated) as store:
        with store._db.connect(lock=True) as connection, connection.begin():
            first = replace_signing_keys(connection, rotated, now=0)
        with store._db.connect(lock=True) as connection, connection.begin():
            again = replace_signing_keys(connection, rotated, now=0)
        # Opened with the new master key current, the store already signs with a new key.
        assert (first.created, first.retired, first.remaining) == (0, 1, 0)
        assert (again.created, again.retired, again.remaining) == (0, 0, 0)
        # Only the new master key is needed from now on: it wraps the new key and vouches
        # for the old public half, whose seed is gone.
        signer = load_signing_key(store._db, StaticMasterKey(new), now=0)
        with store._db.connect() as connection:
            trusted = trusted_signing_keys(connection, StaticMasterKey(new))
    assert signer.id == 2 and signer.public_key != public
    assert trusted.public == {1: public, 2: signer.public_key} and trusted.problems == []


def test_rotate_master_run_again_takes_in_events_a_process_signed_with_the_old_key_meanwhile(
    database_url: str,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as stale:
        stale.workspace("w").set("k", b"v", category=Category.TOKEN)
        with SecureStore.open(database_url, master_key=StaticMasterKey(new, previous=[old])) as store:
            rotate_master(store)
            # A process that has not yet picked up the new master key signs with the old one.
            stale.workspace("w").set("k", b"v2", category=Category.TOKEN)
            assert not verify(store._db, store._provider).ok
            rotate_master(store)  # the runbook's second run, the old key still accepted
            assert verify(store._db, store._provider).ok
    with SecureStore.open(database_url, master_key=StaticMasterKey(new)) as store:
        report = verify(store._db, store._provider)  # the old master key retired
    assert report.ok, report.failures


def test_a_running_store_moves_to_the_new_signing_key_after_rotate_master(
    memory_keyring: object, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secure_kv import commands
    from secure_kv.audit import log as audit
    from secure_kv.keys import KeyringMasterKey
    from secure_kv.settings import load_settings

    monkeypatch.setattr(KeyringMasterKey, "RELOAD_INTERVAL", 0.0)
    monkeypatch.setattr(KeyringMasterKey, "CURRENT_MAX_AGE", 0.0)
    monkeypatch.setattr(audit, "_SIGNER_RECHECK_SECONDS", 0.0)  # a minute, in production
    settings = load_settings(database_url=database_url)
    running = KeyringMasterKey(create=True)
    with SecureStore.open(database_url, master_key=running) as app:
        ws = app.workspace("w")
        ws.set("t", b"sk-1", category=Category.TOKEN)
        old_key = app._audit.signer().id
        report = commands.rotate_master(settings, KeyringMasterKey(), generate=True)
        assert report.signing_keys_retired == 1 and report.complete
        assert ws.get("t") == b"sk-1"  # the application's next event: signed with the new key
        assert app._audit.signer().id != old_key
        commands.rotate_master(settings, KeyringMasterKey(), retire_previous=True)
        ws.set("t", b"sk-2", category=Category.TOKEN)
        report = verify(app._db, KeyringMasterKey())
    assert report.ok, report.failures
    engine = sa.create_engine(database_url)
    with engine.connect() as c:
        signing_keys = c.execute(
            sa.text(
                "SELECT DISTINCT c.signing_key_id FROM skv_audit_events e "
                "JOIN skv_audit_chains c ON c.id = e.chain_id WHERE e.action = 'record.read'"
            )
        ).all()
    engine.dispose()
    assert signing_keys and (old_key,) not in [tuple(row) for row in signing_keys]  # reads: after it


def test_events_never_hold_a_value(url_and_store: tuple[str, SecureStore]) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("openai", b"sk-do-not-store-me-in-the-log", category=Category.TOKEN)
    ws.get("openai")
    engine = sa.create_engine(url)
    with engine.connect() as c:
        for row in c.execute(sa.text("SELECT * FROM skv_audit_events")):
            for cell in row:
                text = bytes(cell) if isinstance(cell, (bytes, memoryview)) else str(cell).encode()
                assert b"sk-do-not-store" not in text
    engine.dispose()


# --- batches are audited like single calls ----------------------------------------------


def test_batch_token_writes_reads_and_deletes_are_recorded(url_and_store: tuple[str, SecureStore]) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set_many({"a": b"sk-a", "b": b"sk-b"}, category=Category.TOKEN)
    ws.set_many({"pref": b"dark"})
    assert ws.get_many(["a", "b", "pref", "missing"]) == {"a": b"sk-a", "b": b"sk-b", "pref": b"dark"}
    ws.delete_many(["a", "pref", "missing"])
    recorded = [
        (action, key, category) for action, key, category in actions(url) if action.startswith("record.")
    ]
    assert sorted(recorded[:2]) == [("record.write", "a", "token"), ("record.write", "b", "token")]
    assert sorted(recorded[2:4]) == [("record.read", "a", "token"), ("record.read", "b", "token")]
    assert recorded[4:] == [("record.delete", "a", "token")]


def test_a_batch_replacing_a_token_records_it(url_and_store: tuple[str, SecureStore]) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set("k", b"sk-first", category=Category.TOKEN)
    ws.set_many({"k": b"now a preference", "other": b"v"})
    assert ws.get("k") == b"now a preference"
    last = [e for e in events(url) if e["action"] == "record.write"][-1]
    assert (last["record_key"], last["category"], last["detail"]) == ("k", "preference", "replaced a token")


def test_batch_token_reads_fail_closed_when_their_events_cannot_be_written(
    url_and_store: tuple[str, SecureStore],
) -> None:
    url, store = url_and_store
    ws = store.workspace("w")
    ws.set_many({"t1": b"sk-secret-one", "t2": b"sk-secret-two"}, category=Category.TOKEN)
    ws.set("lang", b"en")
    execute(url, "ALTER TABLE skv_audit_events RENAME TO skv_audit_events_gone")
    with pytest.raises(StorageError) as raised:
        ws.get_many(["t1", "lang"])
    assert "sk-secret" not in str(raised.value)
    assert ws.get_many(["lang"]) == {"lang": b"en"}
    with pytest.raises(StorageError):
        ws.set_many({"t3": b"sk-never"}, category=Category.TOKEN)
    with pytest.raises(StorageError):
        ws.delete_many(["t1"])
    execute(url, "ALTER TABLE skv_audit_events_gone RENAME TO skv_audit_events")
    assert ws.get_many(["t1", "t3"]) == {"t1": b"sk-secret-one"}


def test_batches_follow_the_credential_policy(database_url: str, master_key: StaticMasterKey) -> None:
    from secure_kv.errors import InvalidInputError

    credential = b"ghp_" + b"a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    with SecureStore.open(database_url, master_key=master_key, credential_policy="reject") as store:
        ws = store.workspace("w")
        with pytest.raises(InvalidInputError, match="looks like a credential"):
            ws.set_many({"plain": b"hello", "leak": credential})
        assert ws.get_many(["plain", "leak"]) == {}
    with SecureStore.open(database_url, master_key=master_key, credential_policy="promote") as store:
        ws = store.workspace("w")
        ws.set_many({"plain": b"hello", "leak": credential})
    writes = {e["record_key"]: e["category"] for e in events(database_url) if e["action"] == "record.write"}
    assert writes == {"leak": "token"}


def test_get_many_of_a_record_naming_a_missing_data_key_is_recorded_and_named(sqlite_url: str) -> None:
    import sqlite3
    import struct

    from secure_kv.keys import StaticMasterKey

    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(os.urandom(32))) as store:
        ws = store.workspace("w")
        ws.set("t", b"sk-secret", category=Category.TOKEN)
        # Someone with write access (foreign keys off in their own client) points the record
        # at a data-key version that does not exist.
        raw = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        (blob,) = raw.execute("SELECT value FROM skv_records WHERE record_key = ?", (b"t",)).fetchone()
        forged = blob[:2] + struct.pack(">I", 7) + blob[6:]
        raw.execute("UPDATE skv_records SET dek_version = 7, value = ? WHERE record_key = ?", (forged, b"t"))
        raw.commit()
        raw.close()
        with pytest.raises(AuthenticationError, match="'t'") as raised:
            ws.get_many(["t"])
        assert "sk-secret" not in str(raised.value)
    assert ("auth.failure", "t", None) in actions(sqlite_url)
