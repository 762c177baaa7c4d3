"""The hot path's SQL, compiled once per dialect by SQLAlchemy and run on DBAPI cursors.

SQLAlchemy builds every statement (including each dialect's native upsert); at run time
the compiled string goes straight to the driver, skipping the per-execution machinery that
costs more than the encryption itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.sql.elements import ClauseElement

from secure_kv.sql.schema import data_keys, records, workspaces

__all__ = [
    "IN_LIST_MAX",
    "RECORD_COLUMNS",
    "Statement",
    "Statements",
    "in_list_chunks",
    "insert_or_ignore",
    "upsert",
]

# Keys per IN list in batch reads and deletes: 1,024, so a batch of 1,000 keys is one
# statement. SQLite before 3.32 allows 999 bound parameters per statement (then 512),
# PostgreSQL (psycopg) 65,535; PyMySQL binds client-side, where only max_allowed_packet
# counts (1,024 keys of at most 256 bytes, escaped, stay near 0.5 MB, far below it).
IN_LIST_MAX = 1024 if sqlite3.sqlite_version_info >= (3, 32, 0) else 512


# A record row's columns, in the order the write statements take them.
RECORD_COLUMNS = (
    "workspace_id",
    "record_key",
    "category",
    "dek_version",
    "created_at",
    "updated_at",
    "expires_at",
    "value",
)


class Statement:
    """A statement compiled for one dialect, called with values in a fixed order."""

    __slots__ = ("_names", "_options", "_permutation", "as_given", "sql")

    def __init__(
        self, clause: ClauseElement, dialect: Dialect, params: Sequence[str], *, plan_each_time: bool = False
    ) -> None:
        compiled: Any = clause.compile(dialect=dialect)
        self.sql = str(compiled)
        # psycopg prepares a statement server-side after five uses, and PostgreSQL then may
        # switch to a generic plan, in which a long IN list of parameters is searched
        # linearly for every row the plan visits (measured: 0.74 s instead of 14 ms for 512
        # keys against 30,000 rows right after a bulk load, before autoanalyze ran). Planned
        # with its values each time, the list is hashed and the primary key used.
        self._options: dict[str, Any] = (
            {"prepare": False} if plan_each_time and dialect.name == "postgresql" else {}
        )
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
        #: The values go to the driver as given (positional, in order): the hot path skips
        #: :meth:`arguments` then.
        self.as_given = self._names is None and self._permutation is None

    def arguments(self, values: Sequence[Any]) -> Sequence[Any] | dict[str, Any]:
        if self._names is not None:
            return dict(zip(self._names, values, strict=True))
        if self._permutation is not None:
            return tuple(values[i] for i in self._permutation)
        return values

    def execute(self, connection: DBAPIConnection, *values: Any) -> Any:
        cursor = connection.cursor()
        cursor.execute(self.sql, self.arguments(values), **self._options)
        return cursor

    def fetchone(self, connection: DBAPIConnection, *values: Any) -> Any:
        cursor = self.execute(connection, *values)
        try:
            return cursor.fetchone()
        finally:
            cursor.close()

    def run(self, connection: DBAPIConnection, *values: Any) -> int:
        """Execute and return the affected row count."""
        cursor = self.execute(connection, *values)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def fetchall(self, connection: DBAPIConnection, *values: Any) -> list[Any]:
        cursor = self.execute(connection, *values)
        try:
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def run_many(self, connection: DBAPIConnection, rows: Iterable[Sequence[Any]]) -> int:
        """``executemany``: one statement, many rows. Each driver sends it efficiently:
        SQLite steps one prepared statement, psycopg pipelines, PyMySQL rewrites an INSERT
        into multi-row VALUES of at most ~1 MB each. Returns the driver's row count (the sum
        over all rows on SQLite and psycopg; -1 where a driver does not know)."""
        cursor = connection.cursor()
        try:
            arguments: Any = rows if self.as_given else [self.arguments(row) for row in rows]
            cursor.executemany(self.sql, arguments)
            return int(cursor.rowcount)
        finally:
            cursor.close()


def in_list_chunks(keys: Sequence[bytes]) -> list[tuple[bytes, ...]]:
    """``keys`` cut into IN lists of at most ``IN_LIST_MAX``, each padded (by repeating its
    last key, which changes no result) to a power of two, so a handful of compiled
    statements serve every batch size."""
    chunks: list[tuple[bytes, ...]] = []
    for start in range(0, len(keys), IN_LIST_MAX):
        chunk = tuple(keys[start : start + IN_LIST_MAX])
        size = 1 << (len(chunk) - 1).bit_length()
        chunks.append(chunk + (chunk[-1],) * (size - len(chunk)))
    return chunks


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

        self._dialect = dialect
        self._select_records: dict[int, Statement] = {}
        self._delete_records: dict[int, Statement] = {}
        self._lock_records: dict[int, Statement] = {}
        self._select_records_locked: dict[int, Statement] = {}

        r, w, d = records.c, workspaces.c, data_keys.c
        record_columns = RECORD_COLUMNS
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
        # A token read that keeps racing writers: the row locked while its event is written.
        self.select_record_locked = compile_(
            sa.select(r.category, r.dek_version, r.expires_at, r.value)
            .where(r.workspace_id == sa.bindparam("workspace_id"), r.record_key == sa.bindparam("record_key"))
            .with_for_update(),
            "workspace_id",
            "record_key",
        )
        # exist(): the record's expiry, if its data key still has its material (a shredded
        # workspace's records are gone for exist() as for get(), before their rows are).
        self.select_expiry = compile_(
            sa.select(r.expires_at)
            .select_from(
                records.join(data_keys, sa.and_(d.workspace_id == r.workspace_id, d.version == r.dek_version))
            )
            .where(
                r.workspace_id == sa.bindparam("workspace_id"),
                r.record_key == sa.bindparam("record_key"),
                d.wrapped.isnot(None),
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

    def _in_list(self, cache: dict[int, Statement], size: int, build: Any) -> Statement:
        found = cache.get(size)
        if found is None:
            names = tuple(f"k{i}" for i in range(size))
            in_list = records.c.record_key.in_([sa.bindparam(name) for name in names])
            clause = build(records.c.workspace_id == sa.bindparam("workspace_id"), in_list)
            # Compiled at first use per size; two threads racing compile the same thing.
            found = cache[size] = Statement(
                clause, self._dialect, ("workspace_id", *names), plan_each_time=True
            )
        return found

    def select_records(self, size: int) -> Statement:
        """Key, category, DEK version, expiry and value of up to ``size`` keys (a power of
        two, see :func:`in_list_chunks`), called with the workspace id then the keys."""
        r = records.c
        return self._in_list(
            self._select_records,
            size,
            lambda *where: sa.select(r.record_key, r.category, r.dek_version, r.expires_at, r.value).where(
                *where
            ),
        )

    def select_records_locked(self, size: int) -> Statement:
        """:meth:`select_records`, the rows locked (``FOR UPDATE``) until the transaction ends."""
        r = records.c
        return self._in_list(
            self._select_records_locked,
            size,
            lambda *where: (
                sa.select(r.record_key, r.category, r.dek_version, r.expires_at, r.value)
                .where(*where)
                .order_by(r.record_key)  # locks taken in key order: no deadlock between batches
                .with_for_update()
            ),
        )

    def delete_records(self, size: int) -> Statement:
        """Delete up to ``size`` keys of a workspace (see :meth:`select_records`)."""
        return self._in_list(self._delete_records, size, lambda *where: sa.delete(records).where(*where))

    def lock_records(self, size: int) -> Statement:
        """Key, category and DEK version of up to ``size`` keys, row-locked (``FOR UPDATE``;
        SQLite's write transaction locks everything already): what a batch write or delete
        will replace, so that its audit events name exactly the rows it changed."""
        r = records.c
        return self._in_list(
            self._lock_records,
            size,
            lambda *where: (
                sa.select(r.record_key, r.category, r.dek_version)
                .where(*where)
                .order_by(r.record_key)  # locks taken in key order: no deadlock between batches
                .with_for_update()
            ),
        )
