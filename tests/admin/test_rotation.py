"""Key rotation: master keys (rewrap) and workspace keys (re-encrypt), online and resumable."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.admin.rotation import rotate_master, rotate_workspace, rotate_workspaces
from secure_kv.errors import AuthenticationError, InvalidInputError, MasterKeyError
from secure_kv.keys import StaticMasterKey
from secure_kv.sql.schema import records
from secure_kv.store.datakeys import MissingDataKeyError
from tests.bulk import default_value, fill_workspace, record_name
from tests.conftest import make_database_url
from tests.dbstate import key_rows, last_version, new_key, record_times, record_versions

ROOT = Path(__file__).resolve().parents[2]


# --- master key -------------------------------------------------------------------------


def _write_workspaces(store: SecureStore, count: int) -> None:
    for number in range(count):
        ws = store.workspace(f"tenant-{number}")
        ws.set("token", f"sk-{number}".encode(), category=Category.TOKEN)
        ws.set("pref", f"pref-{number}".encode())


def test_master_rotation_rewraps_every_data_key_and_then_the_old_key_alone_is_refused(
    database_url: str,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as store:
        _write_workspaces(store, 5)
    with SecureStore.open(database_url, master_key=StaticMasterKey(new, previous=[old])) as store:
        report = rotate_master(store)
        assert (report.rewrapped, report.already_current, report.complete) == (5, 0, True)
        assert {kek for number in range(5) for _, kek, _ in key_rows(store, f"tenant-{number}")} == {
            StaticMasterKey(new).current_key().kek_id
        }
    with pytest.raises(MasterKeyError, match="wrong master key"):
        SecureStore.open(database_url, master_key=StaticMasterKey(old))
    with SecureStore.open(database_url, master_key=StaticMasterKey(new)) as store:
        for number in range(5):
            assert store.workspace(f"tenant-{number}").get("token") == f"sk-{number}".encode()


def test_master_rotation_rewraps_the_audit_signing_key_so_the_log_still_verifies(database_url: str) -> None:
    from secure_kv.commands import audit_verify
    from secure_kv.settings import load_settings

    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as store:
        _write_workspaces(store, 2)
        assert store.workspace("tenant-0").get("token") == b"sk-0"  # an audited read
    with SecureStore.open(database_url, master_key=StaticMasterKey(new, previous=[old])) as store:
        report = rotate_master(store)
    assert report.signing_keys_retired == 1
    assert report.signing_keys_remaining == 0 and report.complete
    # With the new key alone, every event (signed before the rotation too) still verifies.
    verified = audit_verify(
        settings=load_settings(database_url=database_url), master_key=StaticMasterKey(new)
    )
    assert verified.ok, verified.failures


def test_master_rotation_run_again_changes_nothing(sqlite_url: str) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(old)) as store:
        _write_workspaces(store, 3)
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(new, previous=[old])) as store:
        rotate_master(store)
        again = rotate_master(store)
    assert (again.rewrapped, again.already_current, again.complete) == (0, 3, True)


def test_a_data_key_the_provider_cannot_unwrap_is_reported_and_the_others_are_rewrapped(
    database_url: str,
) -> None:
    first, second, new = os.urandom(32), os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(first)) as store:
        store.workspace("a").set("k", b"a")
    # A second master key wraps another workspace's data key (the first one still readable).
    with SecureStore.open(database_url, master_key=StaticMasterKey(second, previous=[first])) as store:
        store.workspace("b").set("k", b"b")
    # Rotating with only the first key as previous: b's data key cannot be unwrapped.
    with SecureStore.open(database_url, master_key=StaticMasterKey(new, previous=[first])) as store:
        report = rotate_master(store)
        assert report.rewrapped == 1
        assert [(f.workspace, f.version, f.kek_id) for f in report.failed] == [
            ("b", 1, StaticMasterKey(second).current_key().kek_id)
        ]
        assert report.remaining == {StaticMasterKey(second).current_key().kek_id: 1}
        assert not report.complete
        assert store.workspace("a").get("k") == b"a"


def test_a_data_key_half_way_through_a_master_rotation_stays_readable(sqlite_url: str) -> None:
    """A crash mid-rotation leaves some keys under the old master key, some under the new:
    with the old one as a previous key, every record reads, and a rerun finishes."""
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(old)) as store:
        _write_workspaces(store, 4)
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(new, previous=[old])) as store:
        # Rewrap only the first batch of 2, as a rotation killed after one transaction would.
        with pytest.raises(_Crash):
            rotate_master(store, batch_size=2, progress=_StopAfter(1))
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(new, previous=[old])) as store:
        keks = {kek for number in range(4) for _, kek, _ in key_rows(store, f"tenant-{number}")}
        assert keks == {StaticMasterKey(old).current_key().kek_id, StaticMasterKey(new).current_key().kek_id}
        for number in range(4):
            assert store.workspace(f"tenant-{number}").get("pref") == f"pref-{number}".encode()
        assert rotate_master(store).rewrapped == 2


class _Crash(Exception):
    pass


class _StopAfter:
    """A progress sink that interrupts the job after ``batches`` advances, as a crash would."""

    def __init__(self, batches: int) -> None:
        self.left = batches

    def start(self, total: int, description: str) -> None:
        pass

    def describe(self, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        self.left -= 1
        if self.left == 0:
            raise _Crash


# --- workspace key ----------------------------------------------------------------------


def test_workspace_rotation_moves_every_record_to_a_new_key_and_retires_the_old(store: SecureStore) -> None:
    ws = store.workspace("tenant")
    fill_workspace(store, "tenant", 2500)
    big = os.urandom(40_000)  # larger than a batch query carries inline
    ws.set("big", big)
    ws.set("token", b"sk-live", category=Category.TOKEN)
    ws.set("cached", b"result", category=Category.CACHE, ttl=3600)
    before = record_times(store, "tenant")

    report = rotate_workspace(store, "tenant", batch_size=300)

    assert (report.from_versions, report.to_version, report.resumed) == ((1,), 2, False)
    assert report.records == 2503
    assert record_versions(store, "tenant") == {2: 2503}
    assert [version for version, _, _ in key_rows(store, "tenant")] == [2]
    assert record_times(store, "tenant") == before  # category, created, updated, expiry kept
    assert ws.get("big") == big
    assert ws.get("token") == b"sk-live"
    assert ws.get("cached") == b"result"
    for index in range(0, 2500, 97):
        assert ws.get(record_name(index)) == default_value(index)


def test_rotating_twice_moves_on_to_a_third_version(sqlite_store: SecureStore) -> None:
    sqlite_store.workspace("t").set("k", b"v")
    rotate_workspace(sqlite_store, "t")
    report = rotate_workspace(sqlite_store, "t")
    assert (report.from_versions, report.to_version) == ((2,), 3)
    assert sqlite_store.workspace("t").get("k") == b"v"


def test_rotating_an_unknown_workspace_is_an_error(sqlite_store: SecureStore) -> None:
    with pytest.raises(InvalidInputError, match="no workspace named 'nope'"):
        rotate_workspace(sqlite_store, "nope")


def test_rotate_all_covers_every_workspace(store: SecureStore) -> None:
    for name in ("a", "b", "c"):
        store.workspace(name).set("k", name.encode())
    report = rotate_workspaces(store)
    assert [(r.workspace, r.to_version) for r in report.rotations] == [("a", 2), ("b", 2), ("c", 2)]
    assert not report.failed
    assert all(store.workspace(name).get("k") == name.encode() for name in ("a", "b", "c"))


def test_a_store_that_cached_the_old_key_keeps_writing_after_the_rotation(
    database_url: str, master_key: StaticMasterKey
) -> None:
    # A long cache age: the stale store would use the old key for an hour if nothing stopped it.
    with (
        SecureStore.open(database_url, master_key=master_key, dek_cache_seconds=3600) as stale,
        SecureStore.open(database_url, master_key=master_key) as admin,
    ):
        stale.workspace("t").set("before", b"1")  # caches version 1 as current
        rotate_workspace(admin, "t")
        stale.workspace("t").set("after", b"2")  # refused by the foreign key, reloads, writes
        assert record_versions(admin, "t") == {2: 2}
        assert admin.workspace("t").get("after") == b"2"
        assert stale.workspace("t").get("before") == b"1"


def test_rotation_stops_at_a_tampered_record_and_a_rerun_resumes(store: SecureStore) -> None:
    fill_workspace(store, "t", 50)
    with store._db.engine.begin() as connection:
        connection.execute(
            sa.update(records)
            .where(records.c.record_key == record_name(30).encode())
            .values(category="token")
        )
    with pytest.raises(AuthenticationError, match="record-00000030"):
        rotate_workspace(store, "t", batch_size=10)
    assert record_versions(store, "t") == {1: 20, 2: 30}  # batches before it were moved
    assert store.workspace("t").get(record_name(5)) == default_value(5)
    store.workspace("t").delete(record_name(30))
    report = rotate_workspace(store, "t", batch_size=10)
    assert (report.to_version, report.resumed, report.records) == (2, True, 19)
    assert record_versions(store, "t") == {2: 49}


def test_get_reads_again_when_a_rotation_retired_the_key_between_its_queries(
    sqlite_store: SecureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = sqlite_store.workspace("t")
    ws.set("k", b"v")
    real = sqlite_store._keys.version
    calls = []

    def once_missing(workspace_id: int, name: bytes, version: int) -> object:
        calls.append(version)
        if len(calls) == 1:
            raise MissingDataKeyError("version retired meanwhile")
        return real(workspace_id, name, version)

    monkeypatch.setattr(sqlite_store._keys, "version", once_missing)
    # Not cached, so get looks the key up (a cached key opens the record without a lookup).
    sqlite_store._keys.clear()
    assert ws.get("k") == b"v"
    assert len(calls) == 2


def test_a_record_naming_a_missing_key_version_still_fails_authentication(
    sqlite_store: SecureStore, sqlite_url: str
) -> None:
    ws = sqlite_store.workspace("t")
    ws.set("k", b"v")
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as raw:  # foreign keys off
        raw.execute("UPDATE skv_data_keys SET version = 7")
    sqlite_store._keys.clear()
    with pytest.raises(AuthenticationError, match="cannot open record 'k'"):
        ws.get("k")


# --- killed with SIGKILL ---------------------------------------------------------------

KILL_RECORDS = 20_000
KILL_BATCH = 200


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_rotation_killed_part_way_leaves_every_record_readable_and_a_rerun_finishes(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    urls = make_database_url(backend, request, tmp_path)
    url = next(urls)
    try:
        _kill_and_resume(url, tmp_path)
    finally:
        urls.close()


def _kill_and_resume(url: str, tmp_path: Path) -> None:
    text, provider = new_key()
    with SecureStore.open(url, master_key=provider) as store:
        fill_workspace(store, "big", KILL_RECORDS)
    env = {**os.environ, "SECURE_KV_KEY_PROVIDER": "env", "SECURE_KV_MASTER_KEY": text}
    command = [sys.executable, "-m", "secure_kv", "--database-url", url, "rotate", "workspace", "big"]
    log = (tmp_path / "rotate.log").open("wb")
    rotator = subprocess.Popen(
        [*command, "--batch-size", str(KILL_BATCH)], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    watcher = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        # Kill it once a few batches are in, at whatever point it has reached.
        while rotator.poll() is None and _moved(watcher) < 3 * KILL_BATCH:
            time.sleep(0.002)
        rotator.send_signal(signal.SIGKILL)
        assert rotator.wait(timeout=60) == -signal.SIGKILL, "the rotation finished before it was killed"
        moved = _moved(watcher)
    finally:
        watcher.dispose()
        if rotator.poll() is None:
            rotator.kill()
        log.close()
    assert 0 < moved < KILL_RECORDS

    with SecureStore.open(url, master_key=provider) as store:
        assert set(record_versions(store, "big")) == {1, 2}
        ws = store.workspace("big")
        unreadable = [i for i in range(KILL_RECORDS) if ws.get(record_name(i)) != default_value(i)]
        assert unreadable == []

    rerun = subprocess.run(
        [*command, "--format", "json"], env=env, cwd=ROOT, capture_output=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert b'"resumed": true' in rerun.stdout

    with SecureStore.open(url, master_key=provider) as store:
        assert record_versions(store, "big") == {2: KILL_RECORDS}
        assert [version for version, _, _ in key_rows(store, "big")] == [2]
        ws = store.workspace("big")  # every record was authenticated as the rerun moved it
        assert all(ws.get(record_name(i)) == default_value(i) for i in range(0, KILL_RECORDS, 41))


def _moved(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).where(records.c.dek_version == 2)).scalar_one()
        )


# --- a writer process during the rotation ----------------------------------------------

WRITER = """
import sys
from pathlib import Path
from secure_kv import SecureStore

stop = Path(sys.argv[1])
with SecureStore.from_settings() as store:
    ws = store.workspace("busy")
    i = 0
    while not stop.exists():
        ws.set(f"new-{i:06d}", f"value-{i}".encode())
        ws.set(f"hot-{i % 10}", f"hot-{i}".encode())
        i += 1
        if i == 50:
            print("ready", flush=True)
    print(i, flush=True)
"""


@pytest.mark.slow
def test_a_writer_that_opened_the_store_before_a_rotation_loses_nothing(
    database_url: str, tmp_path: Path
) -> None:
    text, provider = new_key()
    with SecureStore.open(database_url, master_key=provider) as store:
        fill_workspace(store, "busy", 3000, key=lambda i: f"old-{i:06d}")
    stop = tmp_path / "stop"
    env = {
        **os.environ,
        "SECURE_KV_KEY_PROVIDER": "env",
        "SECURE_KV_MASTER_KEY": text,
        "SECURE_KV_DATABASE_URL": database_url,
        # It keeps the old key as current for an hour unless the database stops it.
        "SECURE_KV_DEK_CACHE_SECONDS": "3600",
    }
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(stop)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"ready\n"
        with SecureStore.open(database_url, master_key=provider) as store:
            report = rotate_workspace(store, "busy", batch_size=200)
            assert report.to_version == 2
            written_at_rotation_end = _count_new(store)
            # Let it write on after the old key is gone (it must move to the new one).
            deadline = time.monotonic() + 120
            while _count_new(store) < written_at_rotation_end + 200 and writer.poll() is None:
                assert time.monotonic() < deadline, "the writer stopped making progress"
                time.sleep(0.01)
        stop.touch()
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0, err.decode()
    total = int(out.split()[-1])

    with SecureStore.open(database_url, master_key=provider) as store:
        ws = store.workspace("busy")
        assert all(ws.get(f"new-{i:06d}") == f"value-{i}".encode() for i in range(total))
        for slot in range(10):
            last = max(i for i in range(total) if i % 10 == slot)
            assert ws.get(f"hot-{slot}") == f"hot-{last}".encode()
        assert all(ws.get(f"old-{i:06d}") == default_value(i) for i in range(0, 3000, 7))
        assert set(record_versions(store, "busy")) == {2}
        assert [version for version, _, _ in key_rows(store, "busy")] == [2]
        assert last_version(store, "busy") == 2


def _count_new(store: SecureStore) -> int:
    with store._db.engine.connect() as connection:
        return int(
            connection.execute(
                # A range, not LIKE: SQLite's LIKE does not match BLOB values.
                sa.select(sa.func.count()).where(
                    records.c.record_key >= b"new-", records.c.record_key < b"new."
                )
            ).scalar_one()
        )


def test_running_processes_follow_a_keyring_master_rotation_without_a_restart(
    memory_keyring: object, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secure_kv import commands
    from secure_kv.keys import KeyringMasterKey
    from secure_kv.settings import load_settings

    monkeypatch.setattr(KeyringMasterKey, "RELOAD_INTERVAL", 0.0)
    monkeypatch.setattr(KeyringMasterKey, "CURRENT_MAX_AGE", 0.0)
    settings = load_settings(database_url=sqlite_url)
    running = KeyringMasterKey(create=True)  # the application's provider, read at start
    with SecureStore.open(sqlite_url, master_key=running, dek_cache_seconds=0.01) as app:
        ws = app.workspace("tenant")
        ws.set("token", b"sk-before", category=Category.TOKEN)
        old_id = running.current_key().kek_id
        # An operator, in another process, rotates: new key in the keyring, every DEK rewrapped.
        report = commands.rotate_master(settings, KeyringMasterKey(), generate=True)
        assert report.complete
        time.sleep(0.05)  # the application's cached data key expires
        assert ws.get("token") == b"sk-before"  # its DEK is under the new key now
        app.workspace("new-tenant").set("k", b"v")  # a new DEK, wrapped by the new key
        commands.rotate_master(settings, KeyringMasterKey(), retire_previous=True)
        time.sleep(0.05)
        assert ws.get("token") == b"sk-before"
        assert app.workspace("new-tenant").get("k") == b"v"
        assert running.current_key().kek_id != old_id
    assert KeyringMasterKey().find(old_id) is None  # retired from the keyring


def test_a_running_process_rereads_a_rewritten_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secure_kv import commands
    from secure_kv.keys import FileMasterKey
    from secure_kv.keys.base import generate_master_key
    from secure_kv.settings import load_settings

    monkeypatch.setattr(FileMasterKey, "RELOAD_INTERVAL", 0.0)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    key_file = tmp_path / "master.keys"
    old, new = generate_master_key(), generate_master_key()
    key_file.write_text(old + "\n")
    key_file.chmod(0o600)
    with SecureStore.open(url, master_key=FileMasterKey(key_file), dek_cache_seconds=0.01) as app:
        ws = app.workspace("tenant")
        ws.set("k", b"v")
        key_file.write_text(f"{new}\n{old}\n")  # the operator's new file: new key first
        assert commands.rotate_master(load_settings(database_url=url), FileMasterKey(key_file)).complete
        key_file.write_text(new + "\n")  # ... and the old key retired
        time.sleep(0.05)
        assert ws.get("k") == b"v"


def test_a_large_value_rewritten_during_its_rotation_batch_is_not_called_tampered(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (read committed): a value too large to come with the batch is fetched on
    its own; if a writer replaced it meanwhile (new expiry, same old key version), the
    rotation must reseal what it fetched, not report tampering."""
    from secure_kv.admin import rotation

    key = StaticMasterKey(os.urandom(32))
    with (
        SecureStore.open(postgres_url, master_key=key) as app,
        SecureStore.open(postgres_url, master_key=key) as admin,
    ):
        ws = app.workspace("w")
        big = os.urandom(rotation.INLINE_VALUE_BYTES + 4000)
        ws.set("page", big, category=Category.CACHE, ttl=300)
        original = rotation._Reencryption.reseal_rows
        raced: list[bool] = []

        def racing(self: Any, connection: Any, rows: Any) -> int:
            if not raced:  # the application refreshes its cache entry mid-batch
                raced.append(True)
                ws.set("page", big, category=Category.CACHE, ttl=600)
            return original(self, connection, rows)

        monkeypatch.setattr(rotation._Reencryption, "reseal_rows", racing)
        report = rotate_workspace(admin, "w")
        assert raced and report.records == 1
        assert ws.get("page") == big
