"""Engines: URLs, SQLite configuration, unreachable servers, schema creation."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from secure_kv import SecureStore
from secure_kv.errors import ConfigurationError, StorageError
from secure_kv.keys import StaticMasterKey


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url: str, master_key: StaticMasterKey) -> None:
    with pytest.raises(StorageError, match="in-memory"):
        SecureStore.open(url, master_key=master_key)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("not a url", StorageError),
        ("oracle://scott:tiger@host/db", StorageError),
        ("", ConfigurationError),
        ("   ", ConfigurationError),
    ],
)
def test_bad_urls_are_refused_clearly_without_the_password(
    url: str, error: type[Exception], master_key: StaticMasterKey
) -> None:
    with pytest.raises(error) as caught:
        SecureStore.open(url, master_key=master_key)
    assert "tiger" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://user:hunter2@127.0.0.1:1/db",
        "mysql+pymysql://user:hunter2@127.0.0.1:1/db",
    ],
)
def test_unreachable_server_is_a_storage_error_without_the_password(
    url: str, master_key: StaticMasterKey
) -> None:
    with pytest.raises(StorageError) as caught:
        SecureStore.open(url, master_key=master_key)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("level", ["normal", "full"])
def test_sqlite_runs_in_wal_mode_with_the_chosen_sync_level(
    tmp_path: Path, master_key: StaticMasterKey, level: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with SecureStore.open(url, master_key=master_key, sqlite_synchronous=level) as store:
        store.workspace("w").set("k", b"v")
        with store._db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert (
                connection.exec_driver_sql("PRAGMA synchronous").scalar() == {"normal": 1, "full": 2}[level]
            )
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    with sqlite3.connect(tmp_path / "store.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_relative_sqlite_path_and_nested_directories_are_created(
    tmp_path: Path, master_key: StaticMasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SecureStore.open("sqlite:///a/b/store.db", master_key=master_key) as store:
        store.workspace("w").set("k", b"v")
    assert (tmp_path / "a" / "b" / "store.db").exists()


def _open_and_write(url: str, raw_key: bytes, n: int) -> None:
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        store.workspace("shared").set(f"from-{n}", str(n).encode())


def test_several_processes_opening_an_empty_database_at_once(database_url: str) -> None:
    raw_key = os.urandom(32)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_open_and_write, args=(database_url, raw_key, n)) for n in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    with SecureStore.open(database_url, master_key=StaticMasterKey(raw_key)) as store:
        ws = store.workspace("shared")
        assert [ws.get(f"from-{n}") for n in range(4)] == [str(n).encode() for n in range(4)]
