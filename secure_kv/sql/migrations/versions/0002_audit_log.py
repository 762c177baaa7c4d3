"""Audit log: signing keys, per-writer hash chains of signed events, prune checkpoints, anchors.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

name_bytes = sa.LargeBinary().with_variant(mysql.VARBINARY(256), "mysql", "mariadb")
digest_bytes = sa.LargeBinary().with_variant(mysql.VARBINARY(32), "mysql", "mariadb")
signature_bytes = sa.LargeBinary().with_variant(mysql.VARBINARY(64), "mysql", "mariadb")
wrapped_bytes = sa.LargeBinary().with_variant(mysql.VARBINARY(255), "mysql", "mariadb")
long_text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "skv_audit_signing_keys",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("public_key", digest_bytes, nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped", wrapped_bytes, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_skv_audit_signing_keys"),
        sa.UniqueConstraint("public_key", name="uq_skv_audit_signing_keys_public_key"),
    )
    op.create_table(
        "skv_audit_chains",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("signing_key_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("head_seq", sa.BigInteger, nullable=True),
        sa.Column("head_digest", digest_bytes, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_skv_audit_chains"),
    )
    op.create_table(
        "skv_audit_events",
        sa.Column("chain_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("workspace", name_bytes, nullable=True),
        sa.Column("record_key", name_bytes, nullable=True),
        sa.Column("category", sa.String(16), nullable=True),
        sa.Column("dek_version", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(1000), nullable=True),
        sa.Column("digest", digest_bytes, nullable=False),
        sa.Column("signature", signature_bytes, nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "seq", name="pk_skv_audit_events"),
        sqlite_with_rowid=False,
    )
    if op.get_context().dialect.name != "sqlite":
        op.create_index("ix_skv_audit_events_occurred_at", "skv_audit_events", ["occurred_at"])
    op.create_table(
        "skv_audit_checkpoints",
        sa.Column("chain_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("digest", digest_bytes, nullable=False),
        sa.Column("signing_key_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("signature", signature_bytes, nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name="pk_skv_audit_checkpoints"),
    )
    op.create_table(
        "skv_audit_anchors",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("heads", long_text, nullable=False),
        sa.Column("digest", digest_bytes, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_skv_audit_anchors"),
    )


def downgrade() -> None:
    op.drop_table("skv_audit_anchors")
    op.drop_table("skv_audit_checkpoints")
    op.drop_table("skv_audit_events")
    op.drop_table("skv_audit_chains")
    op.drop_table("skv_audit_signing_keys")
