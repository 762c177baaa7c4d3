"""Schema versions: created on open, refused when newer, upgraded by `secure-kv init`."""

from __future__ import annotations

import os
import time

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from secure_kv import Category, SecureStore
from secure_kv.categories import CATEGORY_CODES
from secure_kv.commands import init
from secure_kv.envelope import DataKey, record_context, seal_value, wrap_data_key
from secure_kv.errors import StorageError, UnsupportedVersionError
from secure_kv.keys import StaticMasterKey
from secure_kv.settings import load_settings
from secure_kv.sql.database import Database
from secure_kv.sql.migrate import _config, head_revision
from secure_kv.sql.schema import VERSION_TABLE, metadata

FIRST_REVISION = "0001"


def _set_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE skv_alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {name for name in sa.inspect(engine).get_table_names() if name.startswith("skv_")}
    finally:
        engine.dispose()


def test_open_on_an_empty_database_creates_the_schema_at_head(
    database_url: str, master_key: StaticMasterKey
) -> None:
    assert _tables(database_url) == set()
    with SecureStore.open(database_url, master_key=master_key):
        pass
    assert {"skv_workspaces", "skv_data_keys", "skv_records", "skv_alembic_version"} <= _tables(database_url)
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        assert (
            connection.exec_driver_sql("SELECT version_num FROM skv_alembic_version").scalar_one()
            == head_revision()
        )
    engine.dispose()


def test_schema_newer_than_the_code_is_refused(database_url: str, master_key: StaticMasterKey) -> None:
    with SecureStore.open(database_url, master_key=master_key) as store:
        store.workspace("w").set("k", b"v")
    _set_revision(database_url, "9999_from_the_future")
    with pytest.raises(UnsupportedVersionError, match="newer secure_kv"):
        SecureStore.open(database_url, master_key=master_key)
    with pytest.raises(UnsupportedVersionError):
        init(load_settings(database_url=database_url), master_key)


def test_init_leaves_a_current_schema_and_its_data_alone(
    database_url: str, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(database_url, master_key=master_key) as store:
        store.workspace("w").set("k", b"v")
    report = init(load_settings(database_url=database_url), master_key)
    assert report.revision_before == report.revision_now == head_revision()
    assert not report.changed_schema
    with SecureStore.open(database_url, master_key=master_key) as store:
        assert store.workspace("w").get("k") == b"v"


def _migrate_to(url: str, revision: str) -> None:
    database = Database(url, load_settings(database_url=url))
    try:
        with database.connect(lock=True) as connection, connection.begin():
            config = _config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        database.close()


OLD_RECORDS = [
    ("token", b"sk-old-0123456789", Category.TOKEN, None),
    ("theme", b"dark", Category.PREFERENCE, None),
    ("search", b'{"hits": 3}', Category.CACHE, 2**52),
    ("empty", b"", Category.PREFERENCE, None),
]


def _write_as_revision_0001_code_did(url: str, master_key: StaticMasterKey) -> None:
    """Rows exactly as secure_kv wrote them at the first migration: raw SQL, sealed blobs."""
    now = time.time_ns() // 1000
    dek = os.urandom(32)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO skv_workspaces (name, last_dek_version, created_at) VALUES (:n, 1, :t)"),
            {"n": b"old-tenant", "t": now},
        )
        workspace_id = connection.execute(
            sa.text("SELECT id FROM skv_workspaces WHERE name = :n"), {"n": b"old-tenant"}
        ).scalar_one()
        connection.execute(
            sa.text("INSERT INTO skv_data_keys VALUES (:w, 1, :k, :b, :t)"),
            {
                "w": workspace_id,
                "k": master_key.current_key().kek_id,
                "b": wrap_data_key(master_key.current_key(), dek, b"old-tenant", 1),
                "t": now,
            },
        )
        data_key = DataKey(dek, b"old-tenant", 1)
        for key, value, category, expires in OLD_RECORDS:
            context = record_context(b"old-tenant", key.encode(), CATEGORY_CODES[category], expires)
            connection.execute(
                sa.text(
                    "INSERT INTO skv_records (workspace_id, record_key, category, dek_version, created_at,"
                    " updated_at, expires_at, value) VALUES (:w, :k, :c, 1, :t, :t, :e, :v)"
                ),
                {
                    "w": workspace_id,
                    "k": key.encode(),
                    "c": category.value,
                    "t": now,
                    "e": expires,
                    "v": bytes(seal_value(data_key, context, value)),
                },
            )
    engine.dispose()


def test_a_database_from_the_first_migration_upgrades_to_head_with_its_data(
    database_url: str, master_key: StaticMasterKey
) -> None:
    assert head_revision() != FIRST_REVISION, "this test needs a second migration to upgrade to"
    _migrate_to(database_url, FIRST_REVISION)
    _write_as_revision_0001_code_did(database_url, master_key)

    with pytest.raises(StorageError, match="run `secure-kv init`"):
        SecureStore.open(database_url, master_key=master_key)

    report = init(load_settings(database_url=database_url), master_key)
    assert (report.revision_before, report.revision_now) == (FIRST_REVISION, head_revision())

    with SecureStore.open(database_url, master_key=master_key) as store:
        ws = store.workspace("old-tenant")
        for key, value, _, _ in OLD_RECORDS:
            assert ws.get(key) == value
        ws.set("new", b"written after the upgrade", category=Category.TOKEN)
        assert ws.get("new") == b"written after the upgrade"


def test_migrated_schema_matches_the_models(database_url: str, master_key: StaticMasterKey) -> None:
    SecureStore.open(database_url, master_key=master_key).close()
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "compare_type": False}
            )
            differences = compare_metadata(context, metadata)
            assert context.get_current_revision() == head_revision()
            # By design, indexes some databases do without (schema.py): MySQL/MariaDB have no
            # partial index for expiry; SQLite skips the audit time index.
            skipped = {"sqlite": "ix_skv_audit_events_occurred_at", "mysql": "ix_skv_records_expires_at"}
            absent = skipped.get(connection.dialect.name)
            differences = [d for d in differences if not (d[0] == "add_index" and d[1].name == absent)]
    finally:
        engine.dispose()
    assert differences == []
