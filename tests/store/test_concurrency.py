"""Many processes and threads on one database; lost connections; large values.

Each test runs on SQLite, PostgreSQL and MariaDB (the `database_url` fixture) unless it
needs a server feature (killing a backend).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from secure_kv import SecureStore
from secure_kv.admin.erasure import purge
from secure_kv.admin.rotation import rotate_workspace
from secure_kv.errors import StorageError
from secure_kv.keys import StaticMasterKey
from tests.conftest import MYSQL_MAX_ALLOWED_PACKET, make_database_url
from tests.tcp_proxy import TcpProxy

SPAWN = multiprocessing.get_context("spawn")


def _run_processes(target: object, args: list[tuple[object, ...]]) -> None:
    processes = [SPAWN.Process(target=target, args=a) for a in args]  # type: ignore[arg-type]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def _write_many(url: str, raw_key: bytes, writer: int, count: int) -> None:
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        shared = store.workspace(f"shared-{writer % 2}")
        own = store.workspace(f"own-{writer}")
        for i in range(count):
            shared.set(f"w{writer}-k{i}", f"{writer}:{i}".encode())
            own.set(f"k{i}", f"own {writer}:{i}".encode())


def test_four_processes_writing_into_fresh_workspaces(database_url: str) -> None:
    raw_key, count = os.urandom(32), 60
    _run_processes(_write_many, [(database_url, raw_key, writer, count) for writer in range(4)])
    with SecureStore.open(database_url, master_key=StaticMasterKey(raw_key)) as store:
        for writer in range(4):
            shared, own = store.workspace(f"shared-{writer % 2}"), store.workspace(f"own-{writer}")
            for i in range(count):
                assert shared.get(f"w{writer}-k{i}") == f"{writer}:{i}".encode()
                assert own.get(f"k{i}") == f"own {writer}:{i}".encode()
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        versions = connection.exec_driver_sql(
            "SELECT w.name, COUNT(*) FROM skv_data_keys d "
            "JOIN skv_workspaces w ON w.id = d.workspace_id GROUP BY w.name"
        ).all()
    engine.dispose()
    # Racing first writers agreed on one data key per workspace.
    assert sorted(count for _, count in versions) == [1] * 6


def _payload(writer: int, i: int) -> bytes:
    body = f"writer={writer};i={i};".encode() * 20
    return hashlib.sha256(body).digest() + body


def _is_whole(value: bytes) -> bool:
    return hashlib.sha256(value[32:]).digest() == value[:32]


def _hammer_one_key(url: str, raw_key: bytes, writer: int, rounds: int) -> None:
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        ws = store.workspace("contended")
        for i in range(rounds):
            ws.set("hot", _payload(writer, i))
            value = ws.get("hot")
            assert value is not None and _is_whole(value)


def test_concurrent_writers_to_one_key_never_leave_a_torn_record(database_url: str) -> None:
    raw_key, rounds = os.urandom(32), 40
    _run_processes(_hammer_one_key, [(database_url, raw_key, writer, rounds) for writer in range(3)])
    with SecureStore.open(database_url, master_key=StaticMasterKey(raw_key)) as store:
        final = store.workspace("contended").get("hot")
    assert final is not None and _is_whole(final)
    # Last writer wins: what remains is some writer's final value.
    assert final in {_payload(writer, rounds - 1) for writer in range(3)}


def test_threads_reading_while_others_write(store: SecureStore) -> None:
    ws = store.workspace("busy")
    ws.set("hot", _payload(0, 0))
    stop = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                value = ws.get("hot")
                assert value is not None and _is_whole(value)
        except BaseException as error:
            failures.append(error)

    def writer(n: int) -> None:
        try:
            for i in range(40):
                ws.set("hot", _payload(n, i))
        except BaseException as error:
            failures.append(error)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert not failures, failures


def test_a_sixteen_mib_value_round_trips(database_url: str, master_key: StaticMasterKey) -> None:
    value = os.urandom(16 * 1024 * 1024)
    with SecureStore.open(database_url, master_key=master_key) as store:
        ws = store.workspace("big")
        ws.set("blob", value)
        assert ws.get("blob") == value
        ws.set("blob", b"small again")
        assert ws.get("blob") == b"small again"


@pytest.fixture
def mysql_url_with_default_packet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A MariaDB database while the server has its out-of-the-box 16 MiB packet limit."""
    admin: sa.Engine = request.getfixturevalue("mysql_admin")
    with admin.connect() as connection:
        connection.exec_driver_sql("SET GLOBAL max_allowed_packet = 16777216")
    try:
        yield from make_database_url("mysql", request, tmp_path)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {MYSQL_MAX_ALLOWED_PACKET}")


def test_value_beyond_mariadb_packet_limit_names_the_setting_and_loses_nothing(
    mysql_url_with_default_packet: str, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(mysql_url_with_default_packet, master_key=master_key) as store:
        ws = store.workspace("big")
        ws.set("blob", b"previous value")
        with pytest.raises(StorageError, match="max_allowed_packet"):
            ws.set("blob", os.urandom(16 * 1024 * 1024))
        assert ws.get("blob") == b"previous value"
        ws.set("blob", os.urandom(4 * 1024 * 1024))  # still fits: the store keeps working


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from make_database_url(request.param, request, tmp_path)


def _kill_other_connections(url: str) -> int:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                return len(
                    connection.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).all()
                )
            database = connection.exec_driver_sql("SELECT DATABASE()").scalar_one()
            ids = [
                row[0]
                for row in connection.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                    (database,),
                )
            ]
            for connection_id in ids:
                connection.exec_driver_sql(f"KILL {int(connection_id)}")
            return len(ids)
    finally:
        engine.dispose()


def test_killed_connections_are_replaced_on_the_next_call(
    server_url: str, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(server_url, master_key=master_key) as store:
        ws = store.workspace("w")
        ws.set("k", b"before")
        # Park several pooled connections, then kill every one of them server-side.
        threads = [threading.Thread(target=lambda: ws.get("k")) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _kill_other_connections(server_url) >= 1
        assert ws.get("k") == b"before"
        ws.set("k", b"after")
        assert ws.get("k") == b"after"
        assert ws.exist("k")
        ws.delete("k")
        assert _kill_other_connections(server_url) >= 1
        ws.set("k2", b"v")
        assert ws.get("k2") == b"v"


def test_server_going_away_gives_a_storage_error_and_coming_back_recovers(
    server_url: str, master_key: StaticMasterKey
) -> None:
    url = sa.make_url(server_url)
    proxy = TcpProxy(
        url.host or "127.0.0.1", url.port or (5432 if url.get_backend_name() == "postgresql" else 3306)
    )
    proxy.start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with SecureStore.open(proxied, master_key=master_key) as store:
            ws = store.workspace("w")
            ws.set("k", b"v")
            proxy.stop()
            for call in (lambda: ws.get("k"), lambda: ws.set("k", b"lost?"), lambda: ws.exist("k")):
                with pytest.raises(StorageError):
                    call()
            proxy.start()  # the server is back, on the same address
            assert ws.get("k") == b"v"
            ws.set("k", b"v2")
            assert ws.get("k") == b"v2"
    finally:
        proxy.stop()


def test_a_token_read_survives_a_connection_killed_before_its_audit_event(
    server_url: str, master_key: StaticMasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secure_kv.store import Workspace

    with SecureStore.open(server_url, master_key=master_key) as store:
        ws = store.workspace("w")
        ws.set("token", b"sk-value", category="token")
        original = Workspace._open
        killed: list[int] = []

        def open_then_kill(self: Workspace, *args: object) -> object:
            if not killed:  # the server drops every connection between the read and its event
                killed.append(_kill_other_connections(server_url))
            return original(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(Workspace, "_open", open_then_kill)
        assert ws.get("token") == b"sk-value"
        assert killed and killed[0] >= 1


def test_token_reads_never_fail_while_writers_replace_the_token(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("token", b"sk-0", category="token")
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                ws.set("token", f"sk-{n}-{i}".encode(), category="token")
                i += 1
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            value = ws.get("token")
            assert value is not None and value.startswith(b"sk-")
            reads += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    assert reads > 0


def test_killed_connections_do_not_fail_key_creation_rotation_or_purge(
    server_url: str, master_key: StaticMasterKey
) -> None:
    """Not only the hot path: what goes through SQLAlchemy's own pool (data-key loading and
    creation, rotation, purge, audit bookkeeping) also survives connections killed under it."""
    with SecureStore.open(server_url, master_key=master_key) as store:
        ws = store.workspace("w")
        ws.set("k", b"v")
        rotate_workspace(store, "w")
        purge(store)
        assert _kill_other_connections(server_url) >= 1
        store.workspace("fresh").set("k", b"new workspace, new data key")
        assert _kill_other_connections(server_url) >= 1
        rotate_workspace(store, "w")
        assert _kill_other_connections(server_url) >= 1
        purge(store)
        assert _kill_other_connections(server_url) >= 1
        store._keys.clear()  # the next read loads its data key again
        assert ws.get("k") == b"v"
        assert store.workspace("fresh").get("k") == b"new workspace, new data key"
