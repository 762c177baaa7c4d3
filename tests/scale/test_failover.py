"""A PostgreSQL failover in the middle of a workload, on clusters of the test's own.

A primary and a streaming standby with synchronous replication (a commit is acknowledged
only once the standby has it); the store's URL lists both hosts with
``target_session_attrs=read-write``. The primary is stopped and the standby promoted while
a writer runs: the store must reconnect by itself, fail in between only with
``StorageError``, lose no acknowledged write, and keep an audit log that verifies.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from secure_kv import Category, SecureStore
from secure_kv.cli import main
from secure_kv.errors import StorageError
from secure_kv.keys import EnvMasterKey
from secure_kv.keys.base import generate_master_key
from tests.conftest import IN_CI

from .servers import PG_BIN, PgCluster, private_dir

STANDBY_NAME = "skv_standby"


def _wait_for_sync_standby(primary: PgCluster, *, timeout: float = 30) -> None:
    engine = sa.create_engine(primary.url(), isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                state = connection.exec_driver_sql(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", (STANDBY_NAME,)
                ).scalar()
            if state == "sync":
                return
            time.sleep(0.1)
        raise RuntimeError("the standby never became a synchronous standby")
    finally:
        engine.dispose()


@pytest.fixture
def replicated() -> Iterator[tuple[PgCluster, PgCluster]]:
    """A primary and its synchronous streaming standby, each on a port of its own."""
    if not (PG_BIN / "initdb").exists():
        message = f"PostgreSQL server binaries not found in {PG_BIN}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    directories: list[Path] = [private_dir("skv-primary-"), private_dir("skv-standby-")]
    primary = PgCluster.primary(directories[0], synchronous_standby=STANDBY_NAME)
    standby: PgCluster | None = None
    try:
        primary.start()
        standby = primary.standby(directories[1], name=STANDBY_NAME)
        standby.start()
        _wait_for_sync_standby(primary)
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop("immediate")
        primary.stop("immediate")
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def test_failover_mid_workload_loses_no_acknowledged_write(
    replicated: tuple[PgCluster, PgCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, standby = replicated
    url = (
        "postgresql+psycopg://postgres@/postgres?host=127.0.0.1,127.0.0.1"
        f"&port={primary.port},{standby.port}&target_session_attrs=read-write"
    )
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", url)
    acknowledged: dict[str, bytes] = {}
    tokens_acknowledged: dict[str, bytes] = {}
    failures: list[StorageError] = []
    failed_over = threading.Event()

    def fail_over() -> None:
        primary.stop("fast")
        standby.promote()
        failed_over.set()

    with SecureStore.open(url, master_key=EnvMasterKey()) as store:
        ws, tokens = store.workspace("tenant"), store.workspace("tokens")
        switch = threading.Thread(target=fail_over)
        i, after = 0, 0
        deadline = time.monotonic() + 60
        while after < 40 and time.monotonic() < deadline:
            key, value = f"k{i}", f"tenant/k{i}={i}".encode()
            try:
                ws.set(key, value)
                if i % 4 == 0:
                    tokens.set(key, value, category=Category.TOKEN)
                    assert tokens.get(key) == value
                    ws.set_many({f"{key}-b{j}": value for j in range(3)})
            except StorageError as error:
                failures.append(error)  # not acknowledged: written again below
                time.sleep(0.05)
                continue
            acknowledged[key] = value
            if i % 4 == 0:
                tokens_acknowledged[key] = value
                acknowledged.update({f"{key}-b{j}": value for j in range(3)})
            i += 1
            if i == 40:
                switch.start()
            if failed_over.is_set():
                after += 1
        switch.join()
        assert failed_over.is_set() and after == 40, f"the store never came back: {failures[-1:]}"
        # The same store, never reopened: every acknowledged write, read on the new primary.
        assert ws.get_many(list(acknowledged)) == acknowledged
        assert {key: tokens.get(key) for key in tokens_acknowledged} == tokens_acknowledged
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert (result.exit_code, result.stdout.strip()) == (0, "verified: every check holds"), result.stderr
    engine = sa.create_engine(standby.url())
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_is_in_recovery()").scalar() is False
    engine.dispose()
