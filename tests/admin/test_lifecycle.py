"""Shredding a workspace and purging expired entries."""

from __future__ import annotations

import os
import time

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.admin.erasure import purge, shred
from secure_kv.admin.rotation import rotate_workspace
from secure_kv.errors import InvalidInputError, StorageError
from secure_kv.keys import StaticMasterKey
from secure_kv.sql.schema import records
from tests.bulk import default_value, fill_workspace, record_name
from tests.dbstate import key_rows, last_version, record_versions


class _Watch:
    """A progress sink that runs ``hook`` when the job announces its size: for shred, the
    moment between destroying the keys and deleting the records."""

    def __init__(self, hook: object) -> None:
        self.hook = hook
        self.totals: list[int] = []

    def start(self, total: int, description: str) -> None:
        self.totals.append(total)
        if callable(self.hook):
            self.hook()

    def describe(self, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


# --- shred ------------------------------------------------------------------------------


def test_shred_leaves_nothing_readable_and_deletes_records_and_keys(store: SecureStore) -> None:
    doomed, kept = store.workspace("doomed"), store.workspace("kept")
    fill_workspace(store, "doomed", 2500)
    doomed.set("token", b"sk-gone", category=Category.TOKEN)
    kept.set("token", b"sk-kept", category=Category.TOKEN)

    report = shred(store, "doomed", batch_size=400)

    assert (report.destroyed_keys, report.deleted_records, report.deleted_keys) == (1, 2501, 1)
    assert doomed.get("token") is None
    assert doomed.get(record_name(7)) is None
    assert not doomed.exist("token")
    assert record_versions(store, "doomed") == {}
    assert key_rows(store, "doomed") == []
    assert kept.get("token") == b"sk-kept"
    assert last_version(store, "doomed") == 1  # the workspace row stays, versions never restart


def test_values_are_unreadable_as_soon_as_the_keys_are_destroyed(
    database_url: str, master_key: StaticMasterKey
) -> None:
    seen: dict[str, object] = {}
    with (
        SecureStore.open(database_url, master_key=master_key) as admin,
        SecureStore.open(database_url, master_key=master_key) as reader,
    ):
        fill_workspace(admin, "doomed", 100)

        def between_destroy_and_delete() -> None:
            reader._keys.clear()  # a process that has not cached the key
            seen["records"] = record_versions(admin, "doomed")
            seen["value"] = reader.workspace("doomed").get(record_name(3))
            seen["exists"] = reader.workspace("doomed").exist(record_name(3))
            seen["keys"] = key_rows(admin, "doomed")

        shred(admin, "doomed", progress=_Watch(between_destroy_and_delete))
    assert seen["records"] == {1: 100}  # the records are still there...
    assert seen["value"] is None  # ...and already unreadable
    assert seen["exists"] is False  # ...and gone for exist() too
    assert seen["keys"] == [(1, master_key.current_key().kek_id, True)]


def test_a_write_after_a_shred_starts_a_fresh_key(store: SecureStore) -> None:
    ws = store.workspace("t")
    ws.set("k", b"old")
    shred(store, "t")
    ws.set("k", b"new")
    assert ws.get("k") == b"new"
    assert [version for version, _, _ in key_rows(store, "t")] == [2]


def test_a_record_written_with_a_cached_key_during_a_shred_is_deleted_too(
    database_url: str, master_key: StaticMasterKey
) -> None:
    with (
        SecureStore.open(database_url, master_key=master_key) as admin,
        SecureStore.open(database_url, master_key=master_key, dek_cache_seconds=3600) as stale,
    ):
        stale.workspace("t").set("before", b"1")  # caches version 1

        def stale_write() -> None:
            stale.workspace("t").set("during", b"2")  # under the destroyed key, still allowed

        report = shred(admin, "t", progress=_Watch(stale_write))
        assert report.deleted_records == 2
        assert record_versions(admin, "t") == {}
        assert key_rows(admin, "t") == []
        # The stale process's next write is refused by the foreign key, reloads, and lands
        # under a new key that nobody destroyed.
        stale.workspace("t").set("after", b"3")
        assert admin.workspace("t").get("after") == b"3"
        assert admin.workspace("t").get("during") is None


def test_an_interrupted_shred_is_finished_by_running_it_again(sqlite_store: SecureStore) -> None:
    fill_workspace(sqlite_store, "t", 300)

    def crash() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shred(sqlite_store, "t", progress=_Watch(crash))
    assert sqlite_store.workspace("t").get(record_name(1)) is None
    with pytest.raises(StorageError, match="being shredded"):
        rotate_workspace(sqlite_store, "t")
    report = shred(sqlite_store, "t")
    assert (report.destroyed_keys, report.deleted_records, report.deleted_keys) == (0, 300, 1)
    assert key_rows(sqlite_store, "t") == []


def test_shredding_an_unknown_workspace_is_an_error(sqlite_store: SecureStore) -> None:
    with pytest.raises(InvalidInputError, match="no workspace named 'nope'"):
        shred(sqlite_store, "nope")


def test_shred_after_rotations_destroys_every_version(sqlite_store: SecureStore) -> None:
    ws = sqlite_store.workspace("t")
    ws.set("k", b"v")
    rotate_workspace(sqlite_store, "t")
    ws.set("k2", b"v2")
    report = shred(sqlite_store, "t")
    assert (report.up_to_version, report.deleted_records) == (2, 2)
    assert ws.get("k") is None and ws.get("k2") is None


# --- purge ------------------------------------------------------------------------------


def test_purge_deletes_expired_entries_only_and_says_how_many(
    store: SecureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = store.workspace("a"), store.workspace("b")
    a.set("live", b"1", ttl=3600)
    a.set("forever", b"2")
    b.set("cached", b"3", category=Category.CACHE)
    # Entries written an hour ago with a one-minute TTL have expired by now.
    import secure_kv.store.workspace

    real_now = secure_kv.store.workspace.now_micros
    monkeypatch.setattr(secure_kv.store.workspace, "now_micros", lambda: real_now() - 3_600_000_000)
    for index in range(5):
        a.set(f"old-{index}", b"x", ttl=60)
    for index in range(3):
        b.set(f"old-{index}", b"y", category=Category.CACHE, ttl=60)
    monkeypatch.setattr(secure_kv.store.workspace, "now_micros", real_now)

    report = purge(store, batch_size=2)

    assert report.deleted == 8
    assert report.workspaces == {"a": 5, "b": 3}
    assert (a.get("live"), a.get("forever"), b.get("cached")) == (b"1", b"2", b"3")
    with store._db.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(records)).scalar_one() == 3
    assert purge(store).deleted == 0


def test_purge_of_many_expired_entries_runs_in_batches(
    sqlite_store: SecureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secure_kv.store.workspace

    ws = sqlite_store.workspace("t")
    real_now = secure_kv.store.workspace.now_micros
    monkeypatch.setattr(secure_kv.store.workspace, "now_micros", lambda: real_now() - 3_600_000_000)
    for index in range(250):
        ws.set(f"k{index}", b"v", ttl=1)
    monkeypatch.undo()
    watch = _Watch(None)
    assert purge(sqlite_store, batch_size=100, progress=watch).deleted == 250
    assert watch.totals == [250]


def test_bulk_filled_records_read_back(sqlite_store: SecureStore) -> None:
    fill_workspace(sqlite_store, "t", 10, value=lambda i: bytes([i]) * i)
    assert [sqlite_store.workspace("t").get(record_name(i)) for i in range(10)] == [
        bytes([i]) * i for i in range(10)
    ]
    assert default_value(1) == b"value of record 1"


def test_admin_operations_are_recorded_in_the_audit_log(sqlite_url: str) -> None:
    import io
    import json

    from secure_kv import commands
    from secure_kv.settings import load_settings

    old, new = os.urandom(32), os.urandom(32)
    settings = load_settings(database_url=sqlite_url)
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(old)) as store:
        store.workspace("keep").set("token", b"sk-keep", category="token")
        store.workspace("gone").set("pref", b"v")
        store.workspace("keep").set("old-cache", b"v", category="cache", ttl=0.01)
    time.sleep(0.05)
    provider = StaticMasterKey(new, previous=[old])
    commands.rotate_master(settings, provider)
    commands.rotate_workspaces(settings, provider, workspaces=["keep"])
    commands.shred("gone", settings, provider)
    commands.purge(settings, provider)
    assert commands.get_value("keep", "token", settings, provider).masked

    out = io.StringIO()
    commands.audit_log(out, settings=settings, fmt="json", master_key=StaticMasterKey(new))
    events = json.loads(out.getvalue())
    actions = {event["action"] for event in events}
    assert {
        "datakey.rewrap",
        "admin.rotate_master",
        "datakey.create",
        "admin.rotate_workspace",
        "admin.shred",
        "admin.shred_complete",
        "admin.purge_complete",
        "operator.get",
    } <= actions, actions
    assert not any("sk-keep" in json.dumps(event) for event in events)
