"""Direct SQL on a store's tables: what an attacker with database write access does.

Plain SQL through a SQLAlchemy engine of its own, outside secure_kv, so every test changes
real stored bytes the way a DBA, a stolen credential or a compromised replica would.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from secure_kv.audit.verify import VerifyReport, verify
from secure_kv.keys.base import MasterKeyProvider
from secure_kv.store import SecureStore


class RawDatabase:
    """An attacker's own connection to the store's database."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.dialect = self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def workspace_id(self, name: str) -> int:
        with self.engine.connect() as c:
            return int(
                c.execute(
                    sa.text("SELECT id FROM skv_workspaces WHERE name = :n"), {"n": name.encode()}
                ).scalar_one()
            )

    def last_version(self, name: str) -> int:
        with self.engine.connect() as c:
            return int(
                c.execute(
                    sa.text("SELECT last_dek_version FROM skv_workspaces WHERE name = :n"),
                    {"n": name.encode()},
                ).scalar_one()
            )

    def record(self, workspace: str, key: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(
                sa.text(
                    "SELECT category, dek_version, expires_at, value FROM skv_records "
                    "WHERE workspace_id = :w AND record_key = :k"
                ),
                {"w": self.workspace_id(workspace), "k": key.encode()},
            ).one()
            return dict(row._mapping)

    def set_record(self, workspace: str, key: str, assignment: str, **params: Any) -> None:
        """``UPDATE skv_records SET <assignment>`` for one record (SQL, so any type fits)."""
        with self.engine.begin() as c:
            result = c.execute(
                sa.text(f"UPDATE skv_records SET {assignment} WHERE workspace_id = :w AND record_key = :k"),
                {**params, "w": self.workspace_id(workspace), "k": key.encode()},
            )
            assert result.rowcount == 1

    def plant_data_key(self, workspace: str, version: int, kek_id: str, wrapped: bytes) -> None:
        """Insert a data key of the attacker's own and make it the workspace's latest."""
        workspace_id = self.workspace_id(workspace)
        with self.engine.begin() as c:
            c.execute(
                sa.text(
                    "INSERT INTO skv_data_keys (workspace_id, version, kek_id, wrapped, created_at) "
                    "VALUES (:w, :v, :k, :b, 1)"
                ),
                {"w": workspace_id, "v": version, "k": kek_id, "b": wrapped},
            )
            c.execute(
                sa.text("UPDATE skv_workspaces SET last_dek_version = :v WHERE id = :w"),
                {"v": version, "w": workspace_id},
            )

    def data_key_kek_id(self, workspace: str, version: int) -> str:
        with self.engine.connect() as c:
            return str(
                c.execute(
                    sa.text("SELECT kek_id FROM skv_data_keys WHERE workspace_id = :w AND version = :v"),
                    {"w": self.workspace_id(workspace), "v": version},
                ).scalar_one()
            )


def verify_store(store: SecureStore, provider: MasterKeyProvider) -> VerifyReport:
    """``secure-kv audit verify`` with the master key, on the store's database."""
    return verify(store._db, provider)
