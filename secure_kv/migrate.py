"""Creating, upgrading and checking the schema, safely when many processes do it at once.

Alembic takes no lock of its own, so every migration runs under a database-wide lock:
PostgreSQL's transaction-level advisory lock, MySQL/MariaDB's named ``GET_LOCK``, SQLite's
write lock (``BEGIN IMMEDIATE``). The process that gets it first migrates; the others wait,
then find the schema current and do nothing. The PostgreSQL lock is transaction-scoped so
that it works through PgBouncer in transaction pooling mode: a session lock would stay on a
server connection that other clients then use (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .database import Database
from .errors import StorageError, UnsupportedVersionError
from .schema import VERSION_TABLE

__all__ = ["current_revision", "ensure_schema", "head_revision", "upgrade_schema"]

# An arbitrary 64-bit constant naming secure_kv's schema lock (PostgreSQL advisory locks).
_PG_LOCK_ID = 0x5EC0_4E6B_5600_0001
_MYSQL_LOCK_NAME = "secure_kv_schema"
_LOCK_TIMEOUT_SECONDS = 120


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("secure_kv") / "migrations"))
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


def current_revision(connection: sa.Connection) -> str | None:
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
                config = _config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    return before


def upgrade_schema(database: Database) -> str | None:
    """Create or upgrade the schema to this code's head; idempotent (``secure-kv init``)."""
    return ensure_schema(database, create=True, upgrade=True)
