"""The tables (SQLAlchemy Core). Migrations in ``migrations/`` create and evolve them.

Names of workspaces and keys are stored as bytes (UTF-8), so every database compares them
byte for byte: MariaDB's default collation would otherwise fold case and trailing spaces.
Times are integer microseconds since the Unix epoch (UTC): DATETIME columns without
fractions would truncate an expiry that the associated data authenticates exactly.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["data_keys", "metadata", "records", "workspaces"]

TABLE_PREFIX = "skv_"
VERSION_TABLE = "skv_alembic_version"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# VARBINARY on MySQL/MariaDB (a BLOB cannot be a key there); BYTEA / BLOB elsewhere.
NameBytes = sa.LargeBinary().with_variant(mysql.VARBINARY(256), "mysql", "mariadb")
# LONGBLOB on MySQL/MariaDB: a plain BLOB stops at 64 KiB.
SealedBytes = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
Micros = sa.BigInteger

workspaces = sa.Table(
    "skv_workspaces",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", NameBytes, nullable=False, unique=True),
    # Highest data-key version ever allocated here: the pointer to the current key, moved
    # only forward by compare-and-set. Versions are never reused, even after a shred deleted
    # every data key (the workspace row stays), so a cached (workspace, version) always means
    # one key.
    sa.Column("last_dek_version", sa.Integer, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
)

data_keys = sa.Table(
    "skv_data_keys",
    metadata,
    sa.Column("workspace_id", sa.Integer, sa.ForeignKey("skv_workspaces.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("kek_id", sa.String(64), nullable=False, index=True),
    # NULL once destroyed by a shred. Shredding sets every key of the workspace to NULL in
    # one transaction (its data is unreadable from then on), deletes the records in batches,
    # then deletes these rows, which the foreign key below allows only once no record (not
    # even one a process with a cached key wrote meanwhile) still names them.
    sa.Column(
        "wrapped", sa.LargeBinary().with_variant(mysql.VARBINARY(255), "mysql", "mariadb"), nullable=True
    ),
    sa.Column("created_at", Micros, nullable=False),
)

records = sa.Table(
    "skv_records",
    metadata,
    sa.Column("workspace_id", sa.Integer, primary_key=True),
    sa.Column("record_key", NameBytes, primary_key=True),
    # Plaintext metadata, so purge and audit reports work without decrypting.
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("dek_version", sa.Integer, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("updated_at", Micros, nullable=False),
    sa.Column("expires_at", Micros, nullable=True),
    sa.Column("value", SealedBytes, nullable=False),
    # The database itself refuses a record sealed under a data key that no longer exists:
    # a process still caching a retired key cannot write a record nobody could read. A
    # rotation or shred deletes a key row only when this allows it (see retirement.py).
    sa.ForeignKeyConstraint(
        ["workspace_id", "dek_version"],
        ["skv_data_keys.workspace_id", "skv_data_keys.version"],
    ),
)

# Purge finds expired entries through this index. It is partial where the database allows,
# so writes without a TTL do not pay for it; MySQL/MariaDB have no partial indexes and purge
# scans there instead of taxing every write.
expiry_index = sa.Index(
    "ix_skv_records_expires_at",
    records.c.expires_at,
    sqlite_where=records.c.expires_at.isnot(None),
    postgresql_where=records.c.expires_at.isnot(None),
).ddl_if(dialect=("sqlite", "postgresql"))  # type: ignore[arg-type]
