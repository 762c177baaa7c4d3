"""The hot path's SQL, compiled once per dialect by SQLAlchemy and run on DBAPI cursors.

SQLAlchemy builds every statement (including each dialect's native upsert); at run time
the compiled string goes straight to the driver, skipping the per-execution machinery that
costs more than the encryption itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import ClauseElement

from .schema import data_keys, records, workspaces

__all__ = ["Statement", "Statements", "insert_or_ignore", "upsert"]


class Statement:
    """A statement compiled for one dialect, called with values in a fixed order."""

    __slots__ = ("_names", "_permutation", "sql")

    def __init__(self, clause: ClauseElement, dialect: Dialect, params: Sequence[str]) -> None:
        compiled: Any = clause.compile(dialect=dialect)
        self.sql = str(compiled)
        self._names: tuple[str, ...] | None = None
        self._permutation: tuple[int, ...] | None = None
        if compiled.positional:
            order = list(compiled.positiontup or ())
            permutation = tuple(params.index(name) for name in order)
            if permutation != tuple(range(len(params))):
                self._permutation = permutation
        else:
            self._names = tuple(params)
            missing = set(compiled.params) - set(params)
            if missing:
                raise ValueError(f"statement parameters not supplied: {sorted(missing)}")

    def arguments(self, values: Sequence[Any]) -> Sequence[Any] | dict[str, Any]:
        if self._names is not None:
            return dict(zip(self._names, values, strict=True))
        if self._permutation is not None:
            return tuple(values[i] for i in self._permutation)
        return values

    def execute(self, connection: PoolProxiedConnection, *values: Any) -> Any:
        cursor = connection.cursor()
        cursor.execute(self.sql, self.arguments(values))
        return cursor

    def fetchone(self, connection: PoolProxiedConnection, *values: Any) -> Any:
        cursor = self.execute(connection, *values)
        try:
            return cursor.fetchone()
        finally:
            cursor.close()

    def fetchall(self, connection: PoolProxiedConnection, *values: Any) -> list[Any]:
        cursor = self.execute(connection, *values)
        try:
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def run(self, connection: PoolProxiedConnection, *values: Any) -> int:
        """Execute and return the affected row count."""
        cursor = self.execute(connection, *values)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def run_many(self, connection: PoolProxiedConnection, rows: Sequence[Sequence[Any]]) -> None:
        """Execute once per row of values (the driver's ``executemany``)."""
        cursor = connection.cursor()
        try:
            arguments: Any = [self.arguments(values) for values in rows]
            cursor.executemany(self.sql, arguments)
        finally:
            cursor.close()


def _insert_for(dialect_name: str, table: sa.Table) -> Any:
    module = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql}[dialect_name]
    return module.insert(table)


def upsert(
    dialect_name: str, table: sa.Table, values: dict[str, Any], conflict: Sequence[str], update: Sequence[str]
) -> Any:
    """INSERT, or UPDATE ``update`` columns when a row with the same ``conflict`` key exists."""
    stmt = _insert_for(dialect_name, table).values(values)
    if dialect_name == "mysql":
        return stmt.on_duplicate_key_update({name: stmt.inserted[name] for name in update})
    return stmt.on_conflict_do_update(
        index_elements=list(conflict), set_={name: stmt.excluded[name] for name in update}
    )


def insert_or_ignore(
    dialect_name: str, table: sa.Table, values: dict[str, Any], conflict: Sequence[str]
) -> Any:
    """INSERT unless a row with the same ``conflict`` key exists (then nothing happens)."""
    stmt = _insert_for(dialect_name, table).values(values)
    if dialect_name == "mysql":
        # Not INSERT IGNORE: that would also swallow foreign-key and truncation errors.
        first = conflict[0]
        return stmt.on_duplicate_key_update({first: table.c[first]})
    return stmt.on_conflict_do_nothing(index_elements=list(conflict))


def _bind(*names: str) -> dict[str, Any]:
    return {name: sa.bindparam(name) for name in names}


class Statements:
    """Every statement the hot path runs, compiled for one engine's dialect."""

    def __init__(self, dialect: Dialect, dialect_name: str) -> None:
        def compile_(clause: ClauseElement, *params: str) -> Statement:
            return Statement(clause, dialect, params)

        r, w, d = records.c, workspaces.c, data_keys.c
        record_columns = (
            "workspace_id",
            "record_key",
            "category",
            "dek_version",
            "created_at",
            "updated_at",
            "expires_at",
            "value",
        )
        self.upsert_record = compile_(
            upsert(
                dialect_name,
                records,
                _bind(*record_columns),
                conflict=("workspace_id", "record_key"),
                update=("category", "dek_version", "updated_at", "expires_at", "value"),
            ),
            *record_columns,
        )
        self.select_record = compile_(
            sa.select(r.category, r.dek_version, r.expires_at, r.value).where(
                r.workspace_id == sa.bindparam("workspace_id"), r.record_key == sa.bindparam("record_key")
            ),
            "workspace_id",
            "record_key",
        )
        self.select_expiry = compile_(
            sa.select(r.expires_at).where(
                r.workspace_id == sa.bindparam("workspace_id"), r.record_key == sa.bindparam("record_key")
            ),
            "workspace_id",
            "record_key",
        )
        self.delete_record = compile_(
            sa.delete(records).where(
                r.workspace_id == sa.bindparam("workspace_id"), r.record_key == sa.bindparam("record_key")
            ),
            "workspace_id",
            "record_key",
        )
        self.select_workspace_id = compile_(sa.select(w.id).where(w.name == sa.bindparam("name")), "name")
        self.select_current_key = compile_(
            sa.select(w.id, w.last_dek_version, d.kek_id, d.wrapped)
            .select_from(
                workspaces.outerjoin(
                    data_keys, sa.and_(d.workspace_id == w.id, d.version == w.last_dek_version)
                )
            )
            .where(w.name == sa.bindparam("name")),
            "name",
        )
        self.insert_workspace = compile_(
            insert_or_ignore(
                dialect_name,
                workspaces,
                _bind("name", "last_dek_version", "created_at"),
                conflict=("name",),
            ),
            "name",
            "last_dek_version",
            "created_at",
        )
        data_key_columns = ("workspace_id", "version", "kek_id", "wrapped", "created_at")
        self.insert_data_key = compile_(
            insert_or_ignore(
                dialect_name, data_keys, _bind(*data_key_columns), conflict=("workspace_id", "version")
            ),
            *data_key_columns,
        )
        self.advance_version = compile_(
            sa.update(workspaces)
            .where(w.id == sa.bindparam("workspace_id"), w.last_dek_version < sa.bindparam("version"))
            .values(last_dek_version=sa.bindparam("new_version")),
            "new_version",
            "workspace_id",
            "version",
        )
        self.select_data_key = compile_(
            sa.select(d.kek_id, d.wrapped).where(
                d.workspace_id == sa.bindparam("workspace_id"), d.version == sa.bindparam("version")
            ),
            "workspace_id",
            "version",
        )
