"""The Alembic migrations build exactly the tables schema.py describes, on every database."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from secure_kv import SecureStore
from secure_kv.keys import StaticMasterKey
from secure_kv.schema import VERSION_TABLE, metadata


def test_migrated_schema_matches_the_models(database_url: str, master_key: StaticMasterKey) -> None:
    SecureStore.open(database_url, master_key=master_key).close()
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "compare_type": False}
            )
            differences = compare_metadata(context, metadata)
            assert context.get_current_revision() == "0002"
            # By design, indexes some databases do without (schema.py): MySQL/MariaDB have no
            # partial index for expiry; SQLite skips the audit time index.
            skipped = {"sqlite": "ix_skv_audit_events_occurred_at", "mysql": "ix_skv_records_expires_at"}
            absent = skipped.get(connection.dialect.name)
            differences = [d for d in differences if not (d[0] == "add_index" and d[1].name == absent)]
    finally:
        engine.dispose()
    assert differences == []
