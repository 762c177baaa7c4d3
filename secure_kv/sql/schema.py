"""The tables (SQLAlchemy Core). Migrations in ``migrations/`` create and evolve them.

Names of workspaces and keys are stored as bytes (UTF-8), so every database compares them
byte for byte: MariaDB's default collation would otherwise fold case and trailing spaces.
Times are integer microseconds since the Unix epoch (UTC): DATETIME columns without
fractions would truncate an expiry that the associated data authenticates exactly.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "audit_anchors",
    "audit_chains",
    "audit_checkpoints",
    "audit_events",
    "audit_signing_keys",
    "data_keys",
    "metadata",
    "records",
    "workspaces",
]

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
    # rotation or shred deletes a key row only when this allows it (see admin/retirement.py).
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


# --- the audit log (revision 0002) ------------------------------------------------------
# Every audit table's name contains "audit", so DBAs and auditors find them. Nothing here
# holds a value; workspace and key names are bytes like everywhere else.

# VARBINARY on MySQL/MariaDB, so digests and signatures stay small inline columns.
Digest = sa.LargeBinary().with_variant(mysql.VARBINARY(32), "mysql", "mariadb")
Signature = sa.LargeBinary().with_variant(mysql.VARBINARY(64), "mysql", "mariadb")
WrappedKey = sa.LargeBinary().with_variant(mysql.VARBINARY(255), "mysql", "mariadb")

audit_signing_keys = sa.Table(
    "skv_audit_signing_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Ed25519 public key, in clear: an auditor checks signatures with it and no secret.
    sa.Column("public_key", Digest, nullable=False, unique=True),
    # The private key, wrapped under the master key like a data key (never derived from it).
    sa.Column("kek_id", sa.String(64), nullable=False),
    sa.Column("wrapped", WrappedKey, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
)

audit_chains = sa.Table(
    "skv_audit_chains",
    metadata,
    # One chain per writer: no head row shared by every process, so appends never contend.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("signing_key_id", sa.Integer, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    # Kept only by chains that append inside a caller's transaction (admin operations),
    # which read and update them under a row lock. A hint, never trusted by verify.
    sa.Column("head_seq", sa.BigInteger, nullable=True),
    sa.Column("head_digest", Digest, nullable=True),
)

audit_events = sa.Table(
    "skv_audit_events",
    metadata,
    sa.Column("chain_id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("occurred_at", Micros, nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("workspace", NameBytes, nullable=True),
    sa.Column("record_key", NameBytes, nullable=True),
    sa.Column("category", sa.String(16), nullable=True),
    sa.Column("dek_version", sa.Integer, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(1000), nullable=True),
    # SHA-256 over the event and the previous event's digest (docs/compliance.md).
    sa.Column("digest", Digest, nullable=False),
    # Ed25519 over the digest, by the chain's signing key.
    sa.Column("signature", Signature, nullable=False),
    # SQLite: the primary key is the table (one B-tree), so an event writes one page, not two.
    sqlite_with_rowid=False,
)
# For `audit log --since` and `audit prune`. Not on SQLite, where each index page written
# per event is a measurable share of a token read (docs/compliance.md); admin commands scan
# there instead. Elsewhere the commit's log flush dwarfs it.
audit_events_time_index = sa.Index("ix_skv_audit_events_occurred_at", audit_events.c.occurred_at).ddl_if(
    dialect=("postgresql", "mysql", "mariadb")  # type: ignore[arg-type]
)

audit_checkpoints = sa.Table(
    "skv_audit_checkpoints",
    metadata,
    # Where `audit prune` cut a chain: the last removed event's position and digest, signed,
    # so what remains still links up.
    sa.Column("chain_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("digest", Digest, nullable=False),
    sa.Column("signing_key_id", sa.Integer, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("signature", Signature, nullable=False),
)

audit_anchors = sa.Table(
    "skv_audit_anchors",
    metadata,
    # The chain heads at one instant; the digest over them is what `audit anchor` prints
    # and the operator keeps outside the database.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("heads", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
    sa.Column("digest", Digest, nullable=False),
)
