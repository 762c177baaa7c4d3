"""Creating, upgrading and checking the schema, safely when many processes do it at once.

Alembic takes no lock of its own, so every migration runs under a database-wide lock:
PostgreSQL's transaction-level advisory lock, MySQL/MariaDB's named ``GET_LOCK``, SQLite's
write lock (``BEGIN IMMEDIATE``). The process that gets it first migrates; the others wait,
then find the schema current and do nothing. The PostgreSQL lock is transaction-scoped so
that it works through PgBouncer in transaction pooling mode: a session lock would stay on a
server connection that other clients then use (docs/scaling.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

import sqlalchemy as sa

from secure_kv.errors import StorageError, UnsupportedVersionError
from secure_kv.sql.database import Database
from secure_kv.sql.schema import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["current_revision", "ensure_schema", "head_revision", "upgrade_schema"]

# An arbitrary 64-bit constant naming secure_kv's schema lock (PostgreSQL advisory locks).
_PG_LOCK_ID = 0x5EC0_4E6B_5600_0001
_MYSQL_LOCK_NAME = "secure_kv_schema"
_LOCK_TIMEOUT_SECONDS = 120


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("secure_kv.sql") / "migrations"))
    return config


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


_REVISION_LINE = re.compile(r'^(down_revision|revision) = (?:"([^"]+)"|None)$', re.M)


@cache
def _quick_head() -> str | None:
    """The head revision read from the migration files without Alembic (a tenth of a
    second less at every start of a command); ``None`` when the files are not one
    simple chain, and Alembic then decides.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (resources.files("secure_kv.sql") / "migrations" / "versions").iterdir():
        if not path.name.endswith(".py") or path.name.startswith("_"):
            continue
        found = dict(
            (name, value) for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8"))
        )
        if not found.get("revision"):
            return None
        revisions.add(found["revision"])
        if found.get("down_revision"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _quick_current(connection: sa.Connection) -> str | None:
    """The database's revision by plain SQL (``None``: no version table, or no row)."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    table = sa.table(VERSION_TABLE, sa.column("version_num"))
    rows = connection.execute(sa.select(table.c.version_num)).scalars().all()
    return str(rows[0]) if len(rows) == 1 else None


def current_revision(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


@contextmanager
def _schema_lock(connection: sa.Connection, dialect_name: str) -> Iterator[None]:
    if dialect_name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        yield
    elif dialect_name == "mysql":
        got = connection.execute(
            sa.text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": _MYSQL_LOCK_NAME, "timeout": _LOCK_TIMEOUT_SECONDS},
        ).scalar()
        if got != 1:
            raise StorageError("timed out waiting for another process to finish migrating the schema")
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK_NAME})
    else:
        yield  # SQLite: the connection began with BEGIN IMMEDIATE


def _check_known(revision: str | None) -> None:
    if revision is None:
        return
    try:
        known = _script().get_revision(revision)
    except Exception:
        known = None
    if known is None:
        raise UnsupportedVersionError(
            f"the database schema is at revision {revision!r}, which this secure_kv does not know: "
            "it was created by a newer secure_kv; upgrade secure_kv"
        )


def ensure_schema(database: Database, *, create: bool = True, upgrade: bool = False) -> str | None:
    """Check the schema is current; create it on an empty database, upgrade it if asked.

    Returns the revision the database had before (``None`` if it was empty). A schema
    behind this code without ``upgrade`` raises :class:`StorageError` saying to run
    ``secure-kv init``; one newer than this code raises :class:`UnsupportedVersionError`.
    """
    quick = _quick_head()
    if quick is not None:
        with database.connect() as connection:
            with connection.begin():
                if _quick_current(connection) == quick:
                    return quick  # current: the common case, decided without importing Alembic
    head = head_revision()
    with database.connect() as connection:
        with connection.begin():
            before = current_revision(connection)
    if before == head:
        return before
    _check_known(before)
    # Judge only under the lock: another process may be half-way through migrating (MySQL
    # commits each DDL statement, so revision 0001 is visible before 0002 is done).
    with database.connect(lock=True) as connection:
        with connection.begin():
            with _schema_lock(connection, database.dialect_name):
                now = current_revision(connection)
                _check_known(now)
                if now == head:
                    return before
                if now is not None and not upgrade:
                    raise StorageError(
                        f"the database schema (revision {now}) is older than this secure_kv ({head}): "
                        "run `secure-kv init` to upgrade it"
                    )
                if now is None and not create:
                    raise StorageError("the database has no secure_kv schema: run `secure-kv init`")
                from alembic import command

                config = _config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    return before


def upgrade_schema(database: Database) -> str | None:
    """Create or upgrade the schema to this code's head; idempotent (``secure-kv init``)."""
    return ensure_schema(database, create=True, upgrade=True)
