"""Every SQL statement secure_kv runs on records, workspaces and data keys, and the audited
hot path's, built by SQLAlchemy in this one module (the audit log's other statements, on the
``skv_audit_*`` tables alone, are in :mod:`secure_kv.sql.audit_queries`).

The hot path's statements (:class:`Statements`, :class:`AuditStatements`) are compiled once
per dialect and run on DBAPI cursors: at run time the compiled string goes straight to the
driver, skipping the per-execution machinery that costs more than the encryption itself.
The administrative work of ``secure_kv.admin`` (rotation, shred, purge, status) runs rarely: its
statements are named builders returning SQLAlchemy Core clauses, run on a Connection, except
for a rotation's per-record ones, compiled like the hot path's. So do the audit reports'
and ``audit verify``'s reads of records and data keys (streamed by the caller).

Three tricks keep unaudited operations at one round trip and audited ones atomic
(:class:`AuditStatements`):

- a token read's event is one ``INSERT ... SELECT ... WHERE EXISTS`` that writes the event
  only if the record is still the exact sealing that was read (same header, hence the
  same random nonce): the read and its event are one atomic step, in one statement;
- a non-token write is an upsert that refuses to overwrite a token (then the caller takes
  the audited path), so a token cannot vanish under a preference without an event;
- a non-token delete deletes only non-tokens; a token is deleted in a transaction with
  its event.
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

from secure_kv.categories import Category
from secure_kv.sql.schema import audit_events, audit_signing_keys, data_keys, records, workspaces

__all__ = [
    "EVENT_COLUMNS",
    "IN_LIST_MAX",
    "RECORD_COLUMNS",
    "AuditStatements",
    "Statement",
    "Statements",
    "count_data_keys_due",
    "count_data_keys_to_rewrap",
    "count_data_keys_to_rewrap_by_kek",
    "count_data_keys_wrapped_by",
    "count_expired",
    "count_records",
    "count_records_by_data_key",
    "count_records_from_version",
    "count_records_in_workspace",
    "count_records_in_workspaces",
    "count_records_through",
    "count_rows",
    "count_signing_keys_not_wrapped_by",
    "delete_data_keys",
    "delete_expired",
    "delete_records_through",
    "destroy_data_keys",
    "in_list_chunks",
    "insert_or_ignore",
    "lock_data_keys",
    "reseal_record",
    "rewrap_data_key",
    "select_all_data_keys",
    "select_data_key_report",
    "select_data_key_states",
    "select_data_key_versions",
    "select_data_keys_to_rewrap",
    "select_data_keys_to_verify",
    "select_expired",
    "select_last_dek_version",
    "select_live_data_key_kek",
    "select_live_data_key_under",
    "select_mistyped_cells",
    "select_newest_outcome",
    "select_page_end",
    "select_record_metadata",
    "select_record_to_reseal",
    "select_records_to_reseal",
    "select_records_to_verify",
    "select_report_rows",
    "select_workspace",
    "select_workspace_id",
    "select_workspace_names_mid_rotation",
    "select_workspace_names_with_data_keys",
    "select_workspaces",
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


# --- audited hot-path operations ------------------------------------------------------

EVENT_COLUMNS = (
    "chain_id",
    "seq",
    "occurred_at",
    "actor",
    "action",
    "workspace",
    "record_key",
    "category",
    "dek_version",
    "outcome",
    "detail",
    "digest",
    "signature",
)
_UPDATED = ("dek_version", "updated_at", "expires_at", "value", "category")
TOKEN = Category.TOKEN.value
# Inlined constants: a statement's parameters are only the ones it is called with.
_TOKEN_SQL: Any = sa.literal_column(f"'{TOKEN}'")


class AuditStatements:
    """Statements for audited writes, reads and deletes on one dialect."""

    def __init__(self, dialect: Dialect, dialect_name: str, *, header_bytes: int) -> None:
        """``header_bytes``: the length of a sealed value's header (``envelope.HEADER_BYTES``),
        which holds the seal's random salt and nonce."""

        def compile_(clause: Any, *params: str) -> Statement:
            return Statement(clause, dialect, params)

        r = records.c
        self.dialect_name = dialect_name
        self.insert_event = compile_(
            sa.insert(audit_events).values({name: sa.bindparam(name) for name in EVENT_COLUMNS}),
            *EVENT_COLUMNS,
        )

        def param(name: str) -> Any:
            column = audit_events.c[name]
            bound = sa.bindparam(name, type_=column.type)
            # PostgreSQL cannot infer a parameter's type in a SELECT list.
            return sa.cast(bound, column.type) if dialect_name == "postgresql" else bound

        same_sealing = sa.exists().where(
            r.workspace_id == sa.bindparam("workspace_id"),
            r.record_key == sa.bindparam("match_key"),
            r.category == _TOKEN_SQL,
            r.dek_version == sa.bindparam("match_version"),
            sa.func.substr(r.value, sa.literal_column("1"), sa.literal_column(str(header_bytes)))
            == sa.bindparam("header"),
        )
        self.insert_read_event = compile_(
            sa.insert(audit_events).from_select(
                list(EVENT_COLUMNS), sa.select(*(param(name) for name in EVENT_COLUMNS)).where(same_sealing)
            ),
            *EVENT_COLUMNS,
            "workspace_id",
            "match_key",
            "match_version",
            "header",
        )
        self.upsert_unless_token = compile_(_guarded_upsert(dialect_name), *RECORD_COLUMNS)
        where_record = (
            r.workspace_id == sa.bindparam("workspace_id"),
            r.record_key == sa.bindparam("record_key"),
        )
        self.delete_unless_token = compile_(
            sa.delete(records).where(*where_record, r.category != _TOKEN_SQL), "workspace_id", "record_key"
        )
        self.delete_with_category = compile_(
            sa.delete(records).where(*where_record, r.category == sa.bindparam("category")),
            "workspace_id",
            "record_key",
            "category",
        )
        self.select_category = compile_(
            sa.select(r.category, r.dek_version).where(*where_record), "workspace_id", "record_key"
        )


def _guarded_upsert(dialect_name: str) -> Any:
    """INSERT, or overwrite the record unless it holds a token (then nothing changes).

    SQLite and PostgreSQL report 0 rows when the guard refused. MySQL/MariaDB have no WHERE
    on ON DUPLICATE KEY UPDATE: each column keeps its value when the row holds a token
    (``category`` is assigned last, as MySQL applies assignments left to right), and since
    the rowcount then looks like an insert's, the caller checks the category.
    """
    values: dict[str, Any] = {name: sa.bindparam(name) for name in RECORD_COLUMNS}
    if dialect_name == "mysql":
        stmt = mysql.insert(records).values(values)
        is_token = records.c.category == _TOKEN_SQL
        return stmt.on_duplicate_key_update(
            [(name, sa.func.IF(is_token, records.c[name], stmt.inserted[name])) for name in _UPDATED]
        )
    module = sqlite if dialect_name == "sqlite" else postgresql
    stmt = module.insert(records).values(values)
    return stmt.on_conflict_do_update(
        index_elements=["workspace_id", "record_key"],
        set_={name: stmt.excluded[name] for name in _UPDATED},
        where=records.c.category != _TOKEN_SQL,
    )


# --- administration: master and workspace rotation, shred, purge (secure_kv.admin) --------
#
# Builders, not compiled statements: each runs a few times per operation, through a
# SQLAlchemy Connection. A rotation's per-record statements are the exception
# (:func:`reseal_record`, :func:`select_records_to_reseal`): compiled once per rotation and
# run with the driver's executemany, since SQLAlchemy's per-row parameter handling would
# cost more than the cryptography.


def _data_keys_to_rewrap(kek_id: str) -> sa.ColumnElement[bool]:
    d = data_keys.c
    return sa.and_(d.wrapped.isnot(None), d.kek_id != kek_id)


def count_data_keys_to_rewrap(kek_id: str) -> sa.Select[Any]:
    """How many live data keys are wrapped by a master key other than ``kek_id``."""
    return sa.select(sa.func.count()).where(_data_keys_to_rewrap(kek_id))


def count_data_keys_wrapped_by(kek_id: str) -> sa.Select[Any]:
    """How many live data keys are wrapped by ``kek_id`` already."""
    d = data_keys.c
    return sa.select(sa.func.count()).where(d.wrapped.isnot(None), d.kek_id == kek_id)


def count_data_keys_to_rewrap_by_kek(kek_id: str) -> sa.Select[Any]:
    """(kek_id, count) of the live data keys wrapped by a master key other than ``kek_id``."""
    d = data_keys.c
    return sa.select(d.kek_id, sa.func.count()).where(_data_keys_to_rewrap(kek_id)).group_by(d.kek_id)


def select_data_keys_to_rewrap(kek_id: str, after: tuple[int, int], limit: int) -> sa.Select[Any]:
    """(workspace_id, version, kek_id, wrapped, workspace name) of up to ``limit`` data keys
    to rewrap, in (workspace_id, version) order after ``after``: one page."""
    d, w = data_keys.c, workspaces.c
    return (
        sa.select(d.workspace_id, d.version, d.kek_id, d.wrapped, w.name)
        .join(workspaces, w.id == d.workspace_id)
        .where(
            _data_keys_to_rewrap(kek_id),
            sa.or_(
                d.workspace_id > after[0],
                sa.and_(d.workspace_id == after[0], d.version > after[1]),
            ),
        )
        .order_by(d.workspace_id, d.version)
        .limit(limit)
    )


def rewrap_data_key(dialect: Dialect) -> Statement:
    """Store a data key rewrapped under another master key: a compare-and-set, the row is
    rewritten only if it still holds what was read (not shredded, retired or rewrapped by
    another run meanwhile). Called with the new kek_id and wrapped key, then the workspace
    id, version, old kek_id and old wrapped key; returns the row count."""
    d = data_keys.c
    return Statement(
        sa.update(data_keys)
        .where(
            d.workspace_id == sa.bindparam("b_workspace"),
            d.version == sa.bindparam("b_version"),
            d.kek_id == sa.bindparam("b_old_kek"),
            d.wrapped == sa.bindparam("b_old_wrapped"),
        )
        .values(kek_id=sa.bindparam("b_new_kek"), wrapped=sa.bindparam("b_new_wrapped")),
        dialect,
        ("b_new_kek", "b_new_wrapped", "b_workspace", "b_version", "b_old_kek", "b_old_wrapped"),
    )


def count_signing_keys_not_wrapped_by(kek_id: str) -> sa.Select[Any]:
    """How many audit signing keys are wrapped by a master key other than ``kek_id``."""
    k = audit_signing_keys.c
    return sa.select(sa.func.count()).select_from(audit_signing_keys).where(k.kek_id != kek_id)


def select_workspace(name: bytes, *, lock: bool = False) -> sa.Select[Any]:
    """(id, last_dek_version) of the workspace ``name``; ``lock``: row-locked (``FOR
    UPDATE``), so no key version is made current until the transaction ends."""
    w = workspaces.c
    query = sa.select(w.id, w.last_dek_version).where(w.name == name)
    return query.with_for_update() if lock else query


def select_last_dek_version(workspace_id: int) -> sa.Select[Any]:
    """The workspace's current data-key version."""
    w = workspaces.c
    return sa.select(w.last_dek_version).where(w.id == workspace_id)


def select_data_key_states(workspace_id: int) -> sa.Select[Any]:
    """(version, destroyed) of every data-key row of the workspace, oldest first."""
    d = data_keys.c
    return sa.select(d.version, d.wrapped.is_(None)).where(d.workspace_id == workspace_id).order_by(d.version)


def _data_keys_through(workspace_id: int, version: int) -> sa.ColumnElement[bool]:
    d = data_keys.c
    return sa.and_(d.workspace_id == workspace_id, d.version <= version)


def lock_data_keys(workspace_id: int, through: int) -> sa.Select[Any]:
    """Lock (``FOR UPDATE``) the workspace's data-key rows up to version ``through``.
    SQLite ignores it: its ``BEGIN IMMEDIATE`` already keeps every other writer out."""
    return sa.select(data_keys.c.version).where(_data_keys_through(workspace_id, through)).with_for_update()


def select_data_key_versions(workspace_id: int, through: int) -> sa.Select[Any]:
    """The workspace's data-key versions up to ``through``."""
    return sa.select(data_keys.c.version).where(_data_keys_through(workspace_id, through))


def delete_data_keys(workspace_id: int, through: int) -> sa.Delete:
    """Delete the workspace's data-key rows up to version ``through`` (the foreign key
    refuses while a record still names one)."""
    return sa.delete(data_keys).where(_data_keys_through(workspace_id, through))


def destroy_data_keys(workspace_id: int, through: int) -> sa.Update:
    """Destroy the material (``wrapped = NULL``) of the workspace's live data keys up to
    version ``through``; the rows stay."""
    d = data_keys.c
    return (
        sa.update(data_keys)
        .where(d.workspace_id == workspace_id, d.version <= through, d.wrapped.isnot(None))
        .values(wrapped=None)
    )


def count_records_from_version(workspace_id: int, version: int) -> sa.Select[Any]:
    """How many of the workspace's records are sealed under ``version`` or newer."""
    r = records.c
    return sa.select(sa.func.count()).where(r.workspace_id == workspace_id, r.dek_version >= version)


def select_records_to_reseal(dialect: Dialect, inline_value_bytes: int) -> Statement:
    """(key, category, dek_version, expires_at, value) of a page of records under an older
    version than a target, in key order; a value larger than ``inline_value_bytes`` comes
    as NULL (fetched on its own: :func:`select_record_to_reseal`). Called with the
    workspace id, the target version, the last key of the previous page, the page size."""
    r = records.c
    return Statement(
        sa.select(
            r.record_key,
            r.category,
            r.dek_version,
            r.expires_at,
            sa.case(
                (sa.func.length(r.value) <= sa.literal_column(str(inline_value_bytes)), r.value),
                else_=sa.null(),
            ),
        )
        .where(
            r.workspace_id == sa.bindparam("b_workspace"),
            r.dek_version < sa.bindparam("b_target"),
            r.record_key > sa.bindparam("b_after"),
        )
        .order_by(r.record_key)
        .limit(sa.bindparam("b_limit"))
        # Explicit, so SQLite's compiler adds no OFFSET parameter of its own.
        .offset(sa.literal_column("0")),
        dialect,
        ("b_workspace", "b_target", "b_after", "b_limit"),
    )


def select_record_to_reseal(workspace_id: int, key: bytes, version: int) -> sa.Select[Any]:
    """(category, expires_at, value) of a record if it is still sealed under ``version``."""
    r = records.c
    return sa.select(r.category, r.expires_at, r.value).where(
        r.workspace_id == workspace_id, r.record_key == key, r.dek_version == version
    )


def reseal_record(dialect: Dialect, header_bytes: int) -> Statement:
    """Write a record sealed again under a new version, only if the row still holds the
    very seal that was opened: its first ``header_bytes`` (the header, with the seal's
    random salt and nonce) must match. Called with the new version and sealed value, then
    the workspace id, the key and the old header."""
    r = records.c
    return Statement(
        sa.update(records)
        .where(
            r.workspace_id == sa.bindparam("b_workspace"),
            r.record_key == sa.bindparam("b_key"),
            sa.func.substr(r.value, sa.literal_column("1"), sa.literal_column(str(header_bytes)))
            == sa.bindparam("b_header"),
        )
        .values(dek_version=sa.bindparam("b_version"), value=sa.bindparam("b_sealed")),
        dialect,
        # SET before WHERE: SQLite's positional parameters then need no reordering.
        ("b_version", "b_sealed", "b_workspace", "b_key", "b_header"),
    )


def select_workspace_names_with_data_keys() -> sa.Select[Any]:
    """The names of the workspaces that have a data-key row, in name order."""
    d, w = data_keys.c, workspaces.c
    return sa.select(w.name).where(sa.exists().where(d.workspace_id == w.id)).order_by(w.name)


def count_records() -> sa.Select[Any]:
    """How many records the store holds."""
    return sa.select(sa.func.count()).select_from(records)


def count_records_in_workspaces(names: Sequence[bytes]) -> sa.Select[Any]:
    """How many records the workspaces named ``names`` hold."""
    r, w = records.c, workspaces.c
    return (
        sa.select(sa.func.count())
        .select_from(records.join(workspaces, w.id == r.workspace_id))
        .where(w.name.in_(names))
    )


def _records_through(workspace_id: int, version: int) -> sa.ColumnElement[bool]:
    r = records.c
    return sa.and_(r.workspace_id == workspace_id, r.dek_version <= version)


def count_records_through(workspace_id: int, version: int, *, cap: int | None = None) -> sa.Select[Any]:
    """How many of the workspace's records are sealed under ``version`` or older; with
    ``cap``, counting stops at ``cap`` (one bounded index range, however many there are)."""
    where = _records_through(workspace_id, version)
    if cap is None:
        return sa.select(sa.func.count()).where(where)
    capped = sa.select(records.c.record_key).where(where).limit(cap).subquery()
    return sa.select(sa.func.count()).select_from(capped)


def select_page_end(workspace_id: int, version: int, after: bytes, size: int) -> sa.Select[Any]:
    """The key ending the next page of ``size`` records under ``version`` or older, after
    key ``after`` (none when fewer remain)."""
    r = records.c
    return (
        sa.select(r.record_key)
        .where(_records_through(workspace_id, version), r.record_key > after)
        .order_by(r.record_key)
        .offset(size - 1)
        .limit(1)
    )


def delete_records_through(
    workspace_id: int, version: int, *, after: bytes | None = None, last: bytes | None = None
) -> sa.Delete:
    """Delete the workspace's records under ``version`` or older, keys in (``after``,
    ``last``] when given: one bounded range."""
    r = records.c
    where = [_records_through(workspace_id, version)]
    if after is not None:
        where.append(r.record_key > after)
    if last is not None:
        where.append(r.record_key <= last)
    return sa.delete(records).where(*where)


def _expired(now: int) -> sa.ColumnElement[bool]:
    r = records.c
    # "> 0": a stored expiry of -1 (or any other value no write produces) is tampering, for
    # `audit verify` to report, not an expired entry to delete.
    return sa.and_(r.expires_at.isnot(None), r.expires_at > 0, r.expires_at <= now)


def count_expired(now: int) -> sa.Select[Any]:
    """How many records had expired at ``now``."""
    return sa.select(sa.func.count()).where(_expired(now))


def select_expired(now: int, limit: int, *, after: tuple[int, bytes] | None = None) -> sa.Select[Any]:
    """(workspace_id, key, workspace name) of up to ``limit`` records expired at ``now``.

    Without ``after``, in expiry order: SQLite and PostgreSQL walk the partial expiry index,
    and deleted rows leave it, so every page starts at its beginning. With ``after``
    (workspace_id, key), in primary-key order after it: MySQL/MariaDB have no such index, so
    they walk the primary key once instead of scanning the table for every page.
    """
    r, w = records.c, workspaces.c
    query = sa.select(r.workspace_id, r.record_key, w.name).join(workspaces, w.id == r.workspace_id)
    if after is None:
        query = query.where(_expired(now)).order_by(r.expires_at)
    else:
        query = query.where(
            _expired(now),
            sa.or_(r.workspace_id > after[0], sa.and_(r.workspace_id == after[0], r.record_key > after[1])),
        ).order_by(r.workspace_id, r.record_key)
    return query.limit(limit)


def delete_expired(workspace_id: int, keys: Sequence[bytes], now: int) -> sa.Delete:
    """Delete those of ``keys`` that are still expired at ``now`` (a record rewritten with a
    new expiry meanwhile stays)."""
    r = records.c
    return sa.delete(records).where(r.workspace_id == workspace_id, r.record_key.in_(keys), _expired(now))


# --- inventory: `secure-kv status` and `secure-kv list` (secure_kv.admin.inventory) -------


def select_workspaces() -> sa.Select[Any]:
    """(id, name, last_dek_version) of every workspace, in name order."""
    w = workspaces.c
    return sa.select(w.id, w.name, w.last_dek_version).order_by(w.name)


def select_all_data_keys() -> sa.Select[Any]:
    """(workspace_id, version, kek_id, created_at, destroyed) of every data-key row, in
    (workspace, version) order."""
    d = data_keys.c
    return sa.select(d.workspace_id, d.version, d.kek_id, d.created_at, d.wrapped.is_(None)).order_by(
        d.workspace_id, d.version
    )


def count_records_by_data_key() -> sa.Select[Any]:
    """(workspace_id, dek_version, count): how many records each data key seals."""
    r = records.c
    return sa.select(r.workspace_id, r.dek_version, sa.func.count()).group_by(r.workspace_id, r.dek_version)


def select_newest_outcome(action: str, workspace: bytes, since: int) -> sa.Select[Any]:
    """The outcome of the newest ``action`` event since ``since`` about ``workspace`` or
    about every workspace (no workspace named)."""
    e = audit_events.c
    return (
        sa.select(e.outcome)
        .where(
            e.action == action,
            sa.or_(e.workspace == workspace, e.workspace.is_(None)),
            e.occurred_at >= since,
        )
        .order_by(e.occurred_at.desc(), e.seq.desc())
        .limit(1)
    )


def select_workspace_names_mid_rotation() -> sa.Select[Any]:
    """The names of the workspaces with more than one live data key."""
    d, w = data_keys.c, workspaces.c
    return (
        sa.select(w.name)
        .join(data_keys, d.workspace_id == w.id)
        .where(d.wrapped.is_not(None))
        .group_by(w.id, w.name)
        .having(sa.func.count() > 1)
    )


def select_workspace_id(name: bytes) -> sa.Select[Any]:
    """The id of the workspace ``name``."""
    w = workspaces.c
    return sa.select(w.id).where(w.name == name)


def select_record_metadata(workspace_id: int, after: bytes, limit: int) -> sa.Select[Any]:
    """(key, category, created_at, updated_at, expires_at, dek_version, sealed size) of up
    to ``limit`` records of the workspace after key ``after``, in key order: never a value."""
    r = records.c
    return (
        sa.select(
            r.record_key,
            r.category,
            r.created_at,
            r.updated_at,
            r.expires_at,
            r.dek_version,
            sa.func.length(r.value),
        )
        .where(r.workspace_id == workspace_id, r.record_key > after)
        .order_by(r.record_key)
        .limit(limit)
    )


# --- audit reports and verification: records and data keys ------------------------------


def count_rows(table: sa.Table) -> sa.Select[Any]:
    """How many rows ``table`` holds."""
    return sa.select(sa.func.count()).select_from(table)


def count_records_in_workspace(name: bytes) -> sa.Select[Any]:
    """How many records the workspace named ``name`` holds (0 if there is none)."""
    r, w = records.c, workspaces.c
    return (
        sa.select(sa.func.count())
        .select_from(records)
        .where(r.workspace_id.in_(sa.select(w.id).where(w.name == name)))
    )


def select_report_rows(workspace: bytes | None = None) -> sa.Select[Any]:
    """Every record's metadata with its workspace's and data key's, in (workspace id, key)
    order; of ``workspace`` if given. Of the value, only its first two bytes (``head``)."""
    r, w, d = records.c, workspaces.c, data_keys.c
    query = (
        sa.select(
            w.name,
            r.record_key,
            r.category,
            r.created_at,
            r.updated_at,
            r.expires_at,
            r.dek_version,
            w.last_dek_version,
            d.created_at.label("dek_created_at"),
            d.kek_id,
            d.wrapped.is_(None).label("shredded"),
            sa.func.substr(r.value, 1, 2).label("head"),
        )
        .select_from(
            records.join(workspaces, w.id == r.workspace_id).outerjoin(
                data_keys, sa.and_(d.workspace_id == r.workspace_id, d.version == r.dek_version)
            )
        )
        .order_by(r.workspace_id, r.record_key)
    )
    if workspace is not None:
        query = query.where(w.name == workspace)
    return query


def count_data_keys_due(
    cutoff: int, workspace: bytes | None = None, *, current_only: bool = False
) -> sa.Select[Any]:
    """How many live data keys were created before ``cutoff`` (of ``workspace`` if given;
    ``current_only``: only each workspace's current one)."""
    w, d = workspaces.c, data_keys.c
    old = sa.and_(d.wrapped.is_not(None), d.created_at < cutoff)
    where = [old] if workspace is None else [old, w.name == workspace]
    if current_only:
        where.append(d.version == w.last_dek_version)
    return (
        sa.select(sa.func.count())
        .select_from(data_keys.join(workspaces, w.id == d.workspace_id))
        .where(*where)
    )


def select_data_key_report(workspace: bytes | None = None) -> sa.Select[Any]:
    """Every data key's (workspace name, version, kek_id, created_at, destroyed,
    last_dek_version), in (name, version) order; of ``workspace`` if given."""
    w, d = workspaces.c, data_keys.c
    query = (
        sa.select(
            w.name,
            d.version,
            d.kek_id,
            d.created_at,
            d.wrapped.is_(None).label("destroyed"),
            w.last_dek_version,
        )
        .select_from(data_keys.join(workspaces, w.id == d.workspace_id))
        .order_by(w.name, d.version)
    )
    if workspace is not None:
        query = query.where(w.name == workspace)
    return query


def select_mistyped_cells(table: sa.Table, checks: dict[str, tuple[str, ...]], limit: int) -> sa.Select[Any]:
    """SQLite only: the primary key (as bytes) and every column's ``typeof`` of at most
    ``limit`` rows of ``table`` where a column's storage class is not one ``checks`` allows."""
    wrong = sa.or_(*(sa.func.typeof(table.c[name]).not_in(kinds) for name, kinds in checks.items()))
    key: list[Any] = [sa.cast(column, sa.LargeBinary) for column in table.primary_key.columns]
    kinds_query = [sa.func.typeof(table.c[name]) for name in checks]
    return sa.select(*key, *kinds_query).where(wrong).limit(limit)


def _as_bytes(column: Any, sqlite: bool) -> Any:
    """On SQLite, a text or blob column read as bytes: a cell whose bytes are not UTF-8
    would otherwise stop the whole scan inside the driver (its type is checked apart)."""
    return sa.cast(column, sa.LargeBinary).label(column.name) if sqlite else column


def _sqlite_types(sqlite: bool, *columns: Any) -> list[Any]:
    return [sa.func.typeof(column) for column in columns] if sqlite else []


def select_data_keys_to_verify(sqlite: bool) -> sa.Select[Any]:
    """Every data key's (workspace name, version, kek_id, wrapped), in (workspace id,
    version) order; on SQLite (``sqlite``) text read as bytes, then each cell's ``typeof``."""
    d, w = data_keys.c, workspaces.c
    return (
        sa.select(
            _as_bytes(w.name, sqlite),
            d.version,
            _as_bytes(d.kek_id, sqlite),
            _as_bytes(d.wrapped, sqlite),
            *_sqlite_types(sqlite, w.name, d.version, d.kek_id, d.wrapped),
        )
        .select_from(data_keys.join(workspaces, w.id == d.workspace_id))
        .order_by(d.workspace_id, d.version)
    )


def select_records_to_verify(sqlite: bool) -> sa.Select[Any]:
    """Every record with its workspace name and data key (kek_id, wrapped, version), outer
    joined so a record without them is read too, in (workspace id, key) order; on SQLite
    (``sqlite``) text read as bytes, then each record cell's ``typeof``."""
    r, d, w = records.c, data_keys.c, workspaces.c
    columns: list[Any] = [
        _as_bytes(w.name, sqlite),
        r.workspace_id,
        _as_bytes(r.record_key, sqlite),
        _as_bytes(r.category, sqlite),
        r.dek_version,
        r.expires_at,
        _as_bytes(r.value, sqlite),
        _as_bytes(d.kek_id, sqlite),
        _as_bytes(d.wrapped, sqlite),
        d.version,
        *_sqlite_types(sqlite, w.name, r.record_key, r.category, r.dek_version, r.expires_at, r.value),
    ]
    return (
        sa.select(*columns)
        .select_from(
            # Outer joins: a record whose workspace or data key is missing is reported, not skipped.
            records.outerjoin(workspaces, w.id == r.workspace_id).outerjoin(
                data_keys, sa.and_(d.workspace_id == r.workspace_id, d.version == r.dek_version)
            )
        )
        .order_by(r.workspace_id, r.record_key)
    )


def select_live_data_key_under(kek_ids: Sequence[str]) -> sa.Select[Any]:
    """The kek_id of one live (not destroyed) data key wrapped by one of ``kek_ids``, if any."""
    column = data_keys.c.kek_id
    return sa.select(column).where(column.in_(kek_ids), data_keys.c.wrapped.isnot(None)).limit(1)


def select_live_data_key_kek() -> sa.Select[Any]:
    """The kek_id of one live (not destroyed) data key, if any."""
    column = data_keys.c.kek_id
    return sa.select(column).where(data_keys.c.wrapped.isnot(None)).limit(1)
