"""The SQL of audited hot-path operations, compiled once per dialect like ``statements.py``.

Three tricks keep unaudited operations at one round trip and audited ones atomic:

- a token read's event is one ``INSERT ... SELECT ... WHERE EXISTS`` that writes the event
  only if the record is still the exact sealing that was read (same header, hence the
  same random nonce): the read and its event are one atomic step, in one statement;
- a non-token write is an upsert that refuses to overwrite a token (then the caller takes
  the audited path), so a token cannot vanish under a preference without an event;
- a non-token delete deletes only non-tokens; a token is deleted in a transaction with
  its event.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

from secure_kv.categories import Category
from secure_kv.envelope import HEADER_BYTES
from secure_kv.sql.schema import audit_events, records
from secure_kv.sql.statements import RECORD_COLUMNS, Statement

__all__ = ["EVENT_COLUMNS", "AuditStatements"]

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

    def __init__(self, dialect: Dialect, dialect_name: str) -> None:
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
            sa.func.substr(r.value, sa.literal_column("1"), sa.literal_column(str(HEADER_BYTES)))
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
