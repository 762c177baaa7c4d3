"""secure_kv through a real PgBouncer in transaction pooling mode, with a pool (2 server
connections) smaller than its clients: every transaction may run on another server
connection than the one before, which breaks server-side prepared statements, session
advisory locks and any ``SET``. Every operation, batch, admin command and the audit log must
work; a PgBouncer set up in a way secure_kv cannot use must be named in a clear error.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from secure_kv import Category, SecureStore
from secure_kv.cli import main
from secure_kv.errors import StorageError
from secure_kv.keys import EnvMasterKey, StaticMasterKey
from secure_kv.keys.base import generate_master_key

from .servers import PgBouncer

FORK = multiprocessing.get_context("fork")  # the children open their own stores
THREADS = 4
ROUNDS = 25  # well past psycopg's auto-prepare threshold (5 runs of one statement)
PROCESS_ROUNDS = 8
PROCESSES = 4


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, f"secure-kv {' '.join(args)}: {result.stderr or result.output}"
    assert "Traceback" not in result.output
    return result.stdout + result.stderr  # data on stdout, messages on stderr


@pytest.fixture
def env_key(pgbouncer_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    text = generate_master_key()
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", text)
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", pgbouncer_url)
    yield text


def _workload(store: SecureStore, thread: int, rounds: int = ROUNDS) -> None:
    ws = store.workspace(f"tenant-{thread % 2}")
    for i in range(rounds):
        key = f"t{thread}-k{i}"
        ws.set(key, f"{key}=1".encode())
        assert ws.get(key) == f"{key}=1".encode()
        assert ws.exist(key)
        ws.set(f"t{thread}-token", f"token {i}".encode(), category=Category.TOKEN)
        assert ws.get(f"t{thread}-token") == f"token {i}".encode()
        ws.set(f"t{thread}-cache-{i}", b"short-lived", category=Category.CACHE, ttl=0.001)
        batch = {f"t{thread}-b{i}-{j}": f"batch {i} {j}".encode() for j in range(5)}
        ws.set_many(batch)
        assert ws.get_many(list(batch)) == batch
        ws.delete_many(list(batch)[:2])
        assert sorted(ws.get_many(list(batch))) == sorted(list(batch)[2:])
        if i % 3 == 0:
            ws.delete(key)
            assert ws.get(key) is None


def test_every_operation_and_admin_command_works_through_transaction_pooling(
    env_key: str, pgbouncer_url: str, pgbouncer: PgBouncer
) -> None:
    assert "schema" in cli("init")  # schema creation under the migration lock, through PgBouncer
    with SecureStore.open(pgbouncer_url, master_key=EnvMasterKey()) as store:
        errors: list[BaseException] = []

        def run(thread: int) -> None:
            try:
                _workload(store, thread)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
    time.sleep(0.01)  # the cache entries' TTL has passed
    assert "tenant-0" in cli("rotate", "workspace", "--all")
    cli("rotate", "master")
    assert f"deleted {THREADS * ROUNDS} expired entries" in cli("purge")
    assert "deleted" in cli("shred", "tenant-1", "--yes")
    with SecureStore.open(pgbouncer_url, master_key=EnvMasterKey()) as store:
        ws = store.workspace("tenant-0")
        assert ws.get("t0-k1") == b"t0-k1=1"
        assert ws.get("t0-token") == f"token {ROUNDS - 1}".encode()
        assert store.workspace("tenant-1").get("t1-k1") is None
    assert "verified: every check holds" in cli("audit", "verify")
    assert cli("audit", "log", "--workspace", "tenant-0")
    assert "records:" in cli("audit", "report")


def _process_workload(url: str, raw_key: bytes, worker: int) -> None:
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        _workload(store, worker, PROCESS_ROUNDS)


def test_processes_racing_to_create_the_schema_and_write_through_pgbouncer(pgbouncer_url: str) -> None:
    raw_key = os.urandom(32)
    processes = [
        FORK.Process(target=_process_workload, args=(pgbouncer_url, raw_key, w)) for w in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    with SecureStore.open(pgbouncer_url, master_key=StaticMasterKey(raw_key)) as store:
        for worker in range(PROCESSES):
            ws = store.workspace(f"tenant-{worker % 2}")
            assert ws.get(f"t{worker}-token") == f"token {PROCESS_ROUNDS - 1}".encode()


def test_a_restarted_pgbouncer_costs_no_acknowledged_write(pgbouncer_url: str, pgbouncer: PgBouncer) -> None:
    with SecureStore.open(pgbouncer_url, master_key=StaticMasterKey(os.urandom(32))) as store:
        ws = store.workspace("tenant")
        ws.set("before", b"1")
        pgbouncer.restart()  # drops every client and server connection
        ws.set("after", b"2")
        assert (ws.get("before"), ws.get("after")) == (b"1", b"2")


@pytest.fixture(scope="module")
def statement_pooling(postgres_database: sa.URL) -> Iterator[PgBouncer]:
    server = (postgres_database.host or "127.0.0.1", postgres_database.port or 5432)
    bouncer = PgBouncer(*server, pool_size=2, pool_mode="statement")
    bouncer.start()
    yield bouncer
    bouncer.cleanup()


def test_statement_pooling_is_refused_with_the_setting_to_change(
    statement_pooling: PgBouncer, pgbouncer_url: str
) -> None:
    # The same database, through a PgBouncer in statement mode: refused at open, naming the fix.
    database = pgbouncer_url.rsplit("/", 1)[1]
    with pytest.raises(StorageError, match=r"pool_mode=statement .* use pool_mode=transaction"):
        SecureStore.open(statement_pooling.url(database), master_key=StaticMasterKey(os.urandom(32)))


def test_statement_pooling_after_init_still_refuses_instead_of_answering(
    statement_pooling: PgBouncer, pgbouncer_url: str
) -> None:
    raw_key = os.urandom(32)
    with SecureStore.open(pgbouncer_url, master_key=StaticMasterKey(raw_key)) as store:
        store.workspace("tenant").set("k", b"v")
    database = pgbouncer_url.rsplit("/", 1)[1]
    with pytest.raises(StorageError, match="pool_mode=transaction"):
        SecureStore.open(statement_pooling.url(database), master_key=StaticMasterKey(raw_key))


def test_a_schema_option_pgbouncer_refuses_is_named_with_the_fix(pgbouncer_url: str) -> None:
    with pytest.raises(StorageError, match="ignore_startup_parameters"):
        SecureStore.open(
            f"{pgbouncer_url}?options=-csearch_path%3Dkv", master_key=StaticMasterKey(os.urandom(32))
        )
