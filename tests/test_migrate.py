"""Schema versions: created on open, refused when newer, upgraded by `secure-kv init`."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from secure_kv import SecureStore
from secure_kv.commands import init
from secure_kv.errors import UnsupportedVersionError
from secure_kv.keys import StaticMasterKey
from secure_kv.migrate import head_revision
from secure_kv.settings import load_settings


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
