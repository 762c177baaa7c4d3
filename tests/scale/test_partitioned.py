"""The sharding experiment, in ``make test``: secure_kv on a schema whose records and data
keys are hash-partitioned by workspace and whose audit events are partitioned by chain
(tests/scale/partitioned.py). Every operation, batch, rotation, shred, purge and the audit
log work on it, and every statement the per-tenant calls send names the workspace, so a
router (Citus, or an application-level shard map) can send it to the tenant's server.

The whole store/batch/rotation/audit suites run on the same schema with
``SECURE_KV_TEST_PG_PARTITIONED=1 pytest -k postgresql tests/store/test_store.py tests/store/test_batch.py
tests/admin/test_rotation.py tests/audit/test_audit_log.py`` (docs/scaling.md quotes the result).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.admin.erasure import purge, shred
from secure_kv.admin.rotation import rotate_master, rotate_workspaces
from secure_kv.commands.audit import audit_verify
from secure_kv.keys import StaticMasterKey
from secure_kv.settings import load_settings
from tests.conftest import make_database_url

from .partitioned import PARTITIONS, partition_schema

PARTITIONED = ("skv_records", "skv_data_keys")


@pytest.fixture
def partitioned_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    urls = make_database_url("postgresql", request, tmp_path)
    url = next(urls)
    partition_schema(url)
    yield url
    urls.close()


def _names_workspace(sql: str) -> bool:
    """An INSERT of rows that carry it, or a WHERE (or join condition) that names it."""
    if sql.startswith("INSERT") and "workspace_id" in sql.split("VALUES")[0].split("SELECT")[0]:
        return True
    return bool(re.search(r"\b(WHERE|ON)\b.*\bworkspace_id\b", sql))


class StatementLog:
    """Every statement psycopg sends, by phase (the real driver, observed, not replaced)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.phase = "setup"
        self.sent: dict[str, list[str]] = {}
        for name in ("execute", "executemany"):
            original = getattr(psycopg.Cursor, name)
            monkeypatch.setattr(psycopg.Cursor, name, self._recording(original))

    def _recording(self, original: object) -> object:
        def call(cursor: object, query: object, *args: object, **kwargs: object) -> object:
            text = " ".join(str(query).split())
            self.sent.setdefault(self.phase, []).append(text)
            return original(cursor, query, *args, **kwargs)  # type: ignore[operator]

        return call

    def without_workspace(self, phase: str) -> list[str]:
        """Statements on a partitioned table that do not name the workspace."""
        found = []
        for text in self.sent.get(phase, []):
            if any(table in text for table in PARTITIONED) and not _names_workspace(text):
                found.append(re.sub(r"%\(\w+\)s|\$\d+", "?", text))
        return sorted(set(found))


def test_the_store_works_on_a_schema_partitioned_by_workspace(
    partitioned_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw_key = os.urandom(32)
    log = StatementLog(monkeypatch)
    with SecureStore.open(partitioned_url, master_key=StaticMasterKey(raw_key)) as store:
        log.phase = "tenant calls"
        for tenant in range(8):
            ws = store.workspace(f"tenant-{tenant}")
            ws.set("lang", f"{tenant}:en".encode())
            ws.set("openai", f"sk-{tenant}".encode(), category=Category.TOKEN)
            ws.set("page", b"cached", category=Category.CACHE, ttl=0.001)
            ws.set_many({f"k{i}": f"{tenant}:{i}".encode() for i in range(20)})
            assert ws.get("openai") == f"sk-{tenant}".encode() and ws.exist("lang")
            assert ws.get_many(["k1", "k2"]) == {"k1": f"{tenant}:1".encode(), "k2": f"{tenant}:2".encode()}
            ws.delete("k0")
            ws.delete_many(["k3", "k4"])
            assert ws.get("k0") is None
        time.sleep(0.01)
        log.phase = "admin"
        rotations = rotate_workspaces(store)
        assert rotations.failed == () and len(rotations.rotations) == 8
        rotate_master(store)
        assert purge(store).deleted == 8
        shred(store, "tenant-7")
        log.phase = "after"
        assert store.workspace("tenant-3").get("k5") == b"3:5"
        assert store.workspace("tenant-7").get("k5") is None
    log.phase = "checks"
    report = audit_verify(
        settings=load_settings(database_url=partitioned_url), master_key=StaticMasterKey(raw_key)
    )
    assert report.ok, report.failures
    engine = sa.create_engine(partitioned_url)
    with engine.connect() as connection:
        spread = connection.exec_driver_sql(
            "SELECT count(DISTINCT tableoid) FROM skv_records"
        ).scalar_one()  # the rows really live in several partitions
    engine.dispose()
    assert 1 < spread <= PARTITIONS
    # What a router needs: every statement of a tenant's own calls names its workspace.
    assert log.without_workspace("tenant calls") == []
    assert log.without_workspace("after") == []
    # The admin commands that span tenants (listed in docs/scaling.md) are the only others.
    print("\n".join(log.without_workspace("setup") + log.without_workspace("admin")))
