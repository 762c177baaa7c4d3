"""Alembic environment: always runs on a connection secure_kv hands over, already locked."""

from __future__ import annotations

from alembic import context

from secure_kv.sql.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("secure_kv migrations run through `secure-kv init` or SecureStore.open")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
