"""The hot path's own connection pool: lost connections, forks, close, bounds, recycling."""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import SecureStore
from secure_kv.errors import StorageError
from secure_kv.sql.database import Database, _Pooled


def _session_id(database: Database, pooled: _Pooled) -> Any:
    """The server's id for this connection's session (the connection itself on SQLite)."""
    query = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}.get(
        database.dialect_name
    )
    if query is None:
        return id(pooled.connection)
    pooled.cursor.execute(query)
    return pooled.cursor.fetchone()[0]


def _held(database: Database, count: int) -> list[_Pooled]:
    return [database._checkout() for _ in range(count)]


def _kill(database_url: str, database: Database, pooled: list[_Pooled]) -> None:
    """End these connections the way a server restart or an idle timeout would."""
    if database.dialect_name == "sqlite":
        for each in pooled:
            each.connection.close()
        return
    ids = [_session_id(database, each) for each in pooled]
    kill = "SELECT pg_terminate_backend({})" if database.dialect_name == "postgresql" else "KILL {}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for session in ids:
                connection.exec_driver_sql(kill.format(int(session)))
    finally:
        admin.dispose()


def test_calls_survive_the_loss_of_every_pooled_connection(store: SecureStore, database_url: str) -> None:
    ws = store.workspace("w")
    ws.set_many({"a": b"1", "b": b"2"})
    database = store._db
    pooled = _held(database, 3)  # several idle connections, all about to die
    for each in pooled:
        database._checkin(each)
    _kill(database_url, database, pooled)
    assert ws.get("a") == b"1"  # found dead, replaced, retried
    ws.set("c", b"3")
    assert ws.exist("c")
    assert ws.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2", "c": b"3"}
    ws.delete("a")
    assert ws.get("a") is None
    assert all(each not in database._idle for each in pooled)


def test_a_lost_connection_inside_a_batch_reruns_the_batch(store: SecureStore, database_url: str) -> None:
    ws = store.workspace("w")
    ws.set("warm", b"up")
    database = store._db
    pooled = _held(database, 1)
    database._checkin(pooled[0])
    _kill(database_url, database, pooled)
    ws.set_many({f"k{i}": b"v" for i in range(20)})
    assert len(ws.get_many([f"k{i}" for i in range(20)])) == 20


def test_idle_connections_are_reused_one_per_concurrent_call(store: SecureStore) -> None:
    ws = store.workspace("w")
    for _ in range(20):
        ws.set("k", b"v")
        ws.get("k")
    assert store._db._open == 1
    assert len(store._db._idle) == 1


def test_a_call_waits_for_a_busy_connection_when_the_pool_is_full(
    store: SecureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("secure_kv.sql.database.HOT_POOL_SIZE", 1)
    ws = store.workspace("w")
    ws.set("k", b"v")
    database = store._db
    busy = database._checkout()  # the only connection, held by "another call"
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(ws.get("k")))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and results == []  # waiting, not failing, not opening more
    database._checkin(busy)
    waiter.join(30)
    assert results == [b"v"]
    assert database._open == 1


def test_a_call_gives_up_when_the_pool_stays_busy(
    store: SecureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("secure_kv.sql.database.HOT_POOL_SIZE", 1)
    monkeypatch.setattr("secure_kv.sql.database.POOL_TIMEOUT_SECONDS", 0.2)
    ws = store.workspace("w")
    ws.set("k", b"v")
    busy = store._db._checkout()
    with pytest.raises(StorageError, match="busy"):
        ws.get("k")
    store._db._checkin(busy)
    assert ws.get("k") == b"v"


def test_many_threads_share_a_bounded_pool(store: SecureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("secure_kv.sql.database.HOT_POOL_SIZE", 3)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            ws = store.workspace("shared")
            for i in range(15):
                ws.set_many({f"{n}-{i}-a": b"a", f"{n}-{i}-b": b"b"})
                ws.set(f"{n}-{i}", b"v")
                assert ws.get(f"{n}-{i}") == b"v"
                assert ws.get_many([f"{n}-{i}-a", f"{n}-{i}-b"]) == {f"{n}-{i}-a": b"a", f"{n}-{i}-b": b"b"}
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert store._db._open <= 3


def test_connections_past_their_age_are_replaced(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v")
    database = store._db
    (old,) = list(database._idle)
    old.retire_at = 0.0
    assert ws.get("k") == b"v"
    assert old not in database._idle and len(database._idle) == 1
    assert database._open == 1
    with pytest.raises(Exception):  # noqa: B017 (each driver raises its own "closed" error)
        old.connection.cursor().execute("SELECT 1")


def test_close_closes_idle_connections_now_and_busy_ones_when_they_return(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v")
    database = store._db
    idle = list(database._idle)
    busy = database._checkout()
    store.close()
    assert not database._idle
    database._checkin(busy)
    assert not database._idle
    assert database._open == 0
    for pooled in [*idle, busy]:
        with pytest.raises(Exception):  # noqa: B017 (each driver raises its own "closed" error)
            pooled.connection.cursor().execute("SELECT 1")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_alone(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("before-fork", b"parent")
    database = store._db
    (parent_connection,) = list(database._idle)
    parent_session = _session_id(database, parent_connection)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            ws.set("from-child", b"child")
            ok = ws.get("before-fork") == b"parent" and ws.get("from-child") == b"child"
            ok = ok and parent_connection not in database._idle
            ok = ok and _session_id(database, database._idle[0]) != parent_session
            store.close()
            gc.collect()  # the inherited connection must survive even this
            status = 0 if ok else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection is still its own, open, and usable.
    assert list(database._idle) == [parent_connection]
    assert _session_id(database, parent_connection) == parent_session
    assert ws.get("from-child") == b"child"
    assert ws.get("before-fork") == b"parent"
