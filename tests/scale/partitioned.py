"""The sharding experiment: secure_kv's schema with its big tables hash-partitioned.

With ``SECURE_KV_TEST_PG_PARTITIONED=1``, every PostgreSQL schema the tests get is rebuilt
after the migrations so that ``skv_records`` and ``skv_data_keys`` are hash-partitioned by
``workspace_id`` (the tenant, as Citus would distribute them) and ``skv_audit_events`` by
``chain_id`` (an audit chain is one writer's, across workspaces: see docs/scaling.md). A
partitioned table's primary key and unique constraints must contain the partition key, and
foreign keys to it must name it: the schema already has both, so the tables are rebuilt
from their own definitions (``LIKE ... INCLUDING ALL``).

With ``SECURE_KV_TEST_SQL_LOG=<file>``, every statement psycopg sends is appended to the
file, so tests/scale/test_partitioned.py can list those on the partitioned tables that do
not name the workspace.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

PARTITIONED_ENV = "SECURE_KV_TEST_PG_PARTITIONED"
SQL_LOG_ENV = "SECURE_KV_TEST_SQL_LOG"
PARTITIONS = 4
# (table, partition key, the foreign keys to add back: columns, referenced table and columns)
PARTITIONED_TABLES = (
    ("skv_data_keys", "workspace_id", [("workspace_id", "skv_workspaces (id)")]),
    (
        "skv_records",
        "workspace_id",
        [("workspace_id, dek_version", "skv_data_keys (workspace_id, version)")],
    ),
    ("skv_audit_events", "chain_id", []),
)


def enabled() -> bool:
    return os.environ.get(PARTITIONED_ENV, "") not in ("", "0")


def partition_schema(url: str) -> None:
    """Create secure_kv's schema in the (empty) schema ``url`` selects, then partition it."""
    from secure_kv.settings import load_settings
    from secure_kv.sql.database import Database
    from secure_kv.sql.migrate import upgrade_schema

    database = Database(url, load_settings(database_url=url))
    try:
        upgrade_schema(database)
    finally:
        database.close()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        # Children before parents: the old tables go with their foreign keys.
        for table, _, _ in reversed(PARTITIONED_TABLES):
            connection.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
        for table, key, foreign_keys in PARTITIONED_TABLES:
            connection.exec_driver_sql(
                f"CREATE TABLE {table} (LIKE {table}_unpartitioned INCLUDING ALL) PARTITION BY HASH ({key})"
            )
            for remainder in range(PARTITIONS):
                connection.exec_driver_sql(
                    f"CREATE TABLE {table}_p{remainder} PARTITION OF {table} "
                    f"FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {remainder})"
                )
            for columns, target in foreign_keys:
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_{key} "
                    f"FOREIGN KEY ({columns}) REFERENCES {target}"
                )
        for table, _, _ in reversed(PARTITIONED_TABLES):
            connection.exec_driver_sql(f"DROP TABLE {table}_unpartitioned")
        partitioned = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace"
        ).scalar_one()
        assert partitioned == len(PARTITIONED_TABLES)
    engine.dispose()


def install_sql_log() -> None:
    """Record every statement psycopg sends (both of secure_kv's pools go through it)."""
    path = os.environ.get(SQL_LOG_ENV)
    if not path:
        return
    import psycopg

    def recording(original: Any) -> Any:
        def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text = query if isinstance(query, str) else repr(query)
            with open(path, "a") as log:
                log.write(" ".join(text.split()) + "\n")
            return original(self, query, *args, **kwargs)

        return execute

    psycopg.Cursor.execute = recording(psycopg.Cursor.execute)  # type: ignore[method-assign]
    psycopg.Cursor.executemany = recording(psycopg.Cursor.executemany)  # type: ignore[method-assign]
