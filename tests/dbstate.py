"""Reading a store's tables directly, to check what rotation, shred and purge left behind."""

from __future__ import annotations

import base64
import os

import sqlalchemy as sa

from secure_kv import SecureStore
from secure_kv.keys import StaticMasterKey
from secure_kv.sql.schema import data_keys, records, workspaces


def new_key() -> tuple[str, StaticMasterKey]:
    """A master key as text (for SECURE_KV_MASTER_KEY) and as a provider of the same key."""
    raw = os.urandom(32)
    return base64.urlsafe_b64encode(raw).decode(), StaticMasterKey(raw)


def _workspace_id(connection: sa.Connection, workspace: str) -> int | None:
    return connection.execute(
        sa.select(workspaces.c.id).where(workspaces.c.name == workspace.encode())
    ).scalar()


def record_versions(store: SecureStore, workspace: str) -> dict[int, int]:
    """Records per data-key version in ``workspace``."""
    with store._db.engine.connect() as connection:
        workspace_id = _workspace_id(connection, workspace)
        rows = connection.execute(
            sa.select(records.c.dek_version, sa.func.count())
            .where(records.c.workspace_id == workspace_id)
            .group_by(records.c.dek_version)
        ).all()
    return {int(version): int(count) for version, count in rows}


def key_rows(store: SecureStore, workspace: str) -> list[tuple[int, str, bool]]:
    """(version, kek_id, destroyed) of each data-key row of ``workspace``."""
    with store._db.engine.connect() as connection:
        workspace_id = _workspace_id(connection, workspace)
        rows = connection.execute(
            sa.select(data_keys.c.version, data_keys.c.kek_id, data_keys.c.wrapped.is_(None))
            .where(data_keys.c.workspace_id == workspace_id)
            .order_by(data_keys.c.version)
        ).all()
    return [(int(version), str(kek_id), bool(destroyed)) for version, kek_id, destroyed in rows]


def last_version(store: SecureStore, workspace: str) -> int:
    with store._db.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(workspaces.c.last_dek_version).where(workspaces.c.name == workspace.encode())
            ).scalar_one()
        )


def record_times(store: SecureStore, workspace: str) -> dict[bytes, tuple[str, int, int, int | None]]:
    """key -> (category, created_at, updated_at, expires_at)."""
    with store._db.engine.connect() as connection:
        workspace_id = _workspace_id(connection, workspace)
        rows = connection.execute(
            sa.select(
                records.c.record_key,
                records.c.category,
                records.c.created_at,
                records.c.updated_at,
                records.c.expires_at,
            ).where(records.c.workspace_id == workspace_id)
        ).all()
    return {
        bytes(key): (category, created, updated, expires) for key, category, created, updated, expires in rows
    }
