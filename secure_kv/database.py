"""Engines for each supported database, configured the same way everywhere.

One engine per store. Its DBAPI connections run in autocommit mode, so a single-statement
operation (most set/get/delete calls) costs one round trip; multi-statement work opens an
explicit transaction, either through SQLAlchemy (its "begin" event emits ``BEGIN``) or on
the raw connection. Bound parameters are hidden from SQLAlchemy's error messages: they
would carry ciphertext and wrapped keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import PoolProxiedConnection

from .errors import ConfigurationError, StorageError
from .settings import Settings

__all__ = ["Database", "safe_url"]

T = TypeVar("T")

# Execution option asking SQLite for BEGIN IMMEDIATE: take the write lock up front, so a
# read-then-write transaction never fails half-way with "database is locked".
SQLITE_BEGIN_IMMEDIATE = "secure_kv_begin_immediate"

_DRIVERS = {
    "postgresql": ("postgresql+psycopg", "psycopg", "postgres"),
    "mysql": ("mysql+pymysql", "pymysql", "mysql"),
    "mariadb": ("mariadb+pymysql", "pymysql", "mysql"),
}
SQLITE_BUSY_TIMEOUT_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 10
# Errors after which the server rolled the statement back and running it again may succeed:
# PostgreSQL deadlock / serialization failure (SQLSTATE), MySQL/MariaDB deadlock / lock wait
# timeout (error codes). Foreign keys make writers and a rotation's final transaction lock
# the same data-key rows, so the server may pick a writer as a deadlock victim.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
_TRANSIENT_MYSQL_CODES = frozenset({1205, 1213})
# Below MySQL's default wait_timeout and typical load-balancer idle timeouts.
POOL_RECYCLE_SECONDS = 1800
# Statements carrying values below this size cannot reach any sane max_allowed_packet.
_MYSQL_CHECK_ABOVE = 1 << 20
# Room for the statement around the value: SQL text, escaped key and workspace.
_MYSQL_STATEMENT_MARGIN = 64 * 1024
_MYSQL_ESCAPED_BYTES = tuple(bytes([b]) for b in b"\x00\n\r\x1a\\'\"")


def safe_url(url: URL | str) -> str:
    """The URL with any password masked, for messages and reprs."""
    if isinstance(url, str):
        try:
            url = sa.engine.make_url(url)
        except Exception:
            return "<unparseable database URL>"
    return url.render_as_string(hide_password=True)


def _parse_url(text: str) -> URL:
    try:
        url = sa.engine.make_url(text)
    except Exception:
        raise StorageError(
            "SECURE_KV_DATABASE_URL is not a valid SQLAlchemy URL (for example "
            "sqlite:///path/store.db or postgresql+psycopg://user@host/db)"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url
    if backend not in _DRIVERS:
        raise StorageError(
            f"unsupported database {backend!r} in {safe_url(url)}: use sqlite, postgresql, mysql or mariadb"
        )
    default, module, extra = _DRIVERS[backend]
    if url.get_driver_name() in ("", None) or "+" not in url.drivername:
        url = url.set(drivername=default)
    if url.get_driver_name() in ("psycopg", "pymysql"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigurationError(
                f"{safe_url(url)} needs the {module} driver: pip install 'secure-kv[{extra}]'"
            ) from None
    return url


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("mode") == "memory":
        raise StorageError(
            "an in-memory SQLite database is not supported: secure_kv is a persistent store; "
            "use a file, for example sqlite:///path/to/store.db"
        )
    path = Path(database).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Create the file 0600 before SQLite does, so the database and its WAL and SHM files
    # (SQLite gives them the database file's mode) are private from the first byte.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise StorageError(f"cannot create the SQLite file {path}: {error.strerror}") from None
    os.close(fd)


class Database:
    """A configured engine plus what the hot path needs: the DBAPI's error classes and a
    runner that turns driver errors into :class:`StorageError` and survives lost connections.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        parsed = _parse_url(url)
        self.url = parsed
        self.dialect_name = parsed.get_backend_name()
        if self.dialect_name == "mariadb":
            self.dialect_name = "mysql"
        kwargs: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "hide_parameters": True,
            # Every path ends its own transactions; a reset per checkin would cost MySQL a
            # round trip for nothing.
            "pool_reset_on_return": None,
        }
        if self.dialect_name == "sqlite":
            _prepare_sqlite_file(parsed)
            kwargs["connect_args"] = {
                "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                "check_same_thread": False,
            }
        else:
            kwargs["pool_recycle"] = POOL_RECYCLE_SECONDS
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
            if self.dialect_name == "mysql":
                kwargs["connect_args"]["charset"] = "utf8mb4"
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except Exception as error:
            raise StorageError(f"cannot use {safe_url(parsed)}: {_first_line(error)}") from None
        self._install_events(settings)
        dbapi = self.engine.dialect.dbapi
        assert dbapi is not None
        self.dbapi_error: type[Exception] = dbapi.Error
        self.integrity_error: type[Exception] = dbapi.IntegrityError

    def _install_events(self, settings: Settings) -> None:
        if self.dialect_name == "sqlite":
            synchronous = settings.sqlite_synchronous.value.upper()

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
                cursor.close()

        immediate = "BEGIN IMMEDIATE" if self.dialect_name == "sqlite" else "BEGIN"

        @event.listens_for(self.engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            # The DBAPI connection is in autocommit mode; SQLAlchemy transactions are real
            # because this emits BEGIN (and commit()/rollback() end them).
            wants_lock = connection.get_execution_options().get(SQLITE_BEGIN_IMMEDIATE)
            connection.exec_driver_sql(immediate if wants_lock else "BEGIN")

    @contextmanager
    def connect(self, *, lock: bool = False) -> Iterator[sa.Connection]:
        """A SQLAlchemy connection for multi-statement work, with errors as StorageError.

        ``lock=True`` takes SQLite's write lock at BEGIN (ignored elsewhere).
        """
        try:
            with self.engine.connect() as connection:
                if lock:
                    connection = connection.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
                yield connection
        except sa.exc.DBAPIError as error:
            raise StorageError(
                f"database error on {safe_url(self.url)}: {_first_line(error.orig)}"
            ) from error

    def run(self, work: Callable[[PoolProxiedConnection], T], *, retry: bool = True) -> T:
        """Run ``work`` on a pooled DBAPI connection (autocommit mode).

        If the connection turns out to be dead (server restarted, backend killed), the pool
        is refreshed and ``work`` runs once more when ``retry`` is true, so only idempotent
        work may ask for it; the same goes for a statement the server rolled back as a
        deadlock victim. Any other driver error becomes :class:`StorageError`, except
        integrity errors, which the caller handles.
        """
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                connection = self.engine.raw_connection()
            except sa.exc.DBAPIError as error:
                raise StorageError(
                    f"cannot connect to {safe_url(self.url)}: {_first_line(error.orig)}"
                ) from None
            except self.dbapi_error as error:  # the pool lets the driver's own error through
                raise StorageError(f"cannot connect to {safe_url(self.url)}: {_first_line(error)}") from None
            try:
                result = work(connection)
            except self.integrity_error:
                self._end_failed(connection)
                raise
            except self.dbapi_error as error:
                disconnected = self.engine.dialect.is_disconnect(error, connection.dbapi_connection, None)  # type: ignore[arg-type]
                if disconnected:
                    connection.invalidate(error)
                    # Every idle connection in the pool most likely died with this one.
                    self.engine.dispose()
                    if attempt + 1 < attempts:
                        continue
                    raise StorageError(
                        f"lost the connection to {safe_url(self.url)}: {_first_line(error)}"
                    ) from None
                self._end_failed(connection)
                if self.is_transient(error) and attempt + 1 < attempts:
                    continue
                raise StorageError(f"database error on {safe_url(self.url)}: {_first_line(error)}") from None
            except BaseException:
                self._end_failed(connection)
                raise
            else:
                connection.close()
                return result
        raise AssertionError("unreachable")

    def check_packet_size(self, blob: bytes) -> None:
        """Refuse a value MySQL/MariaDB would refuse, with an error naming the setting.

        The server drops the connection when a statement exceeds ``max_allowed_packet``
        (16 MiB by default, smaller than a 16 MiB value once sealed and escaped); this says
        so before sending. Only large values pay for the check (one small query).
        """
        if self.dialect_name != "mysql" or 2 * len(blob) + _MYSQL_STATEMENT_MARGIN < _MYSQL_CHECK_ABOVE:
            return
        limit = int(self.run(lambda c: _scalar(c, "SELECT @@max_allowed_packet")))
        if 2 * len(blob) + _MYSQL_STATEMENT_MARGIN <= limit:
            return
        # PyMySQL sends bytes as an escaped literal: these bytes take two characters each.
        escaped = len(blob) + sum(blob.count(byte) for byte in _MYSQL_ESCAPED_BYTES)
        if escaped + _MYSQL_STATEMENT_MARGIN > limit:
            raise StorageError(
                f"the sealed value ({len(blob)} bytes) is larger than the server's "
                f"max_allowed_packet ({limit} bytes): raise max_allowed_packet on the MySQL/MariaDB "
                "server (for example SET GLOBAL max_allowed_packet=268435456 and the same in "
                "my.cnf; see docs/databases.md) or lower SECURE_KV_MAX_VALUE_BYTES"
            )

    def is_transient(self, error: BaseException) -> bool:
        """Whether the server rolled back ``error``'s statement over a lock conflict
        (deadlock, serialization failure, lock wait timeout), so running it again may work.
        Accepts a DBAPI error or SQLAlchemy's wrapper of one.
        """
        orig = getattr(error, "orig", None) or error
        if self.dialect_name == "postgresql":
            return getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES
        if self.dialect_name == "mysql":
            args: tuple[Any, ...] = getattr(orig, "args", ())
            return bool(args) and args[0] in _TRANSIENT_MYSQL_CODES
        return False

    @staticmethod
    def _end_failed(connection: PoolProxiedConnection) -> None:
        try:
            connection.rollback()
            connection.close()
        except Exception as error:  # the connection is unusable; drop it from the pool
            connection.invalidate(error)

    def close(self) -> None:
        self.engine.dispose()


def _scalar(connection: PoolProxiedConnection, sql: str) -> Any:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
        return None if row is None else row[0]
    finally:
        cursor.close()


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
