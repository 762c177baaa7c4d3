"""Initial schema: workspaces, wrapped data keys, sealed records.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

name_bytes = sa.LargeBinary().with_variant(mysql.VARBINARY(256), "mysql", "mariadb")
sealed_bytes = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
wrapped_bytes = sa.LargeBinary().with_variant(mysql.VARBINARY(255), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "skv_workspaces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", name_bytes, nullable=False),
        sa.Column("last_dek_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_skv_workspaces"),
        sa.UniqueConstraint("name", name="uq_skv_workspaces_name"),
    )
    op.create_table(
        "skv_data_keys",
        sa.Column("workspace_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped", wrapped_bytes, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "version", name="pk_skv_data_keys"),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["skv_workspaces.id"], name="fk_skv_data_keys_skv_workspaces"
        ),
    )
    op.create_index("ix_skv_data_keys_kek_id", "skv_data_keys", ["kek_id"])
    op.create_table(
        "skv_records",
        sa.Column("workspace_id", sa.Integer, nullable=False),
        sa.Column("record_key", name_bytes, nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("dek_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("value", sealed_bytes, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "record_key", name="pk_skv_records"),
        sa.ForeignKeyConstraint(
            ["workspace_id", "dek_version"],
            ["skv_data_keys.workspace_id", "skv_data_keys.version"],
            name="fk_skv_records_skv_data_keys",
        ),
    )
    if op.get_context().dialect.name in ("sqlite", "postgresql"):
        op.create_index(
            "ix_skv_records_expires_at",
            "skv_records",
            ["expires_at"],
            sqlite_where=sa.text("expires_at IS NOT NULL"),
            postgresql_where=sa.text("expires_at IS NOT NULL"),
        )


def downgrade() -> None:
    op.drop_table("skv_records")
    op.drop_table("skv_data_keys")
    op.drop_table("skv_workspaces")
