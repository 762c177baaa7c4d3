"""Engines for each supported database, configured the same way everywhere.

One engine per store. Its DBAPI connections run in autocommit mode, so a single-statement
operation (most set/get/delete calls) costs one round trip; multi-statement work opens an
explicit transaction, either through SQLAlchemy (its "begin" event emits ``BEGIN``) or on
the raw connection. Bound parameters are hidden from SQLAlchemy's error messages: they
would carry ciphertext and wrapped keys.

The hot path (set/get/exist/delete and the batch calls) does not check connections out of
SQLAlchemy's pool: at ~100 µs per operation, its checkout and return (events, weak
references, a queue with a condition variable) cost more than AES-GCM. It keeps its own
small LIFO pool instead: connections made by the engine (so every "connect" event and
dialect setting applies) and then detached from SQLAlchemy's pool, each with one reusable
cursor; taking one is a ``deque.pop()``. It stays correct where a per-thread connection
would not:

* threads: a connection is held only for the length of one call, so idle or finished
  threads pin nothing, and at most ``HOT_POOL_SIZE`` connections are ever open (a caller
  finding all of them busy waits, as with SQLAlchemy's pool);
* forks: a child never uses (nor closes: that would end the parent's session on the
  server) a connection it inherited; it opens its own;
* lost connections: the dead connection and every idle one are dropped, the engine's pool
  is disposed, and idempotent work runs once more on a fresh connection;
* server-side idle timeouts: connections older than ``POOL_RECYCLE_SECONDS`` are replaced;
* ``close()``: idle connections are closed at once, busy ones when their call returns.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection

from secure_kv import _fork
from secure_kv.errors import ConfigurationError, StorageError
from secure_kv.settings import Settings
from secure_kv.validation import Buffer

if TYPE_CHECKING:
    from secure_kv.sql.statements import Statement

__all__ = ["Database", "UndecodableTextError", "safe_url"]

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
# Reads of the database file's first 256 MiB go through a memory map: a page missing from a
# connection's own page cache (2 MiB by default) is a memory access instead of a read()
# and a copy, and every connection of the pool shares the OS's cache of the file. With
# 1,000,000 records (~210 MiB), a random get grew 1.23-1.28x over a small store instead
# of 1.56-1.75x (docs/performance.md). Address space only: pages are the OS's file cache.
SQLITE_MMAP_BYTES = 256 * 1024 * 1024
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
# Connections the hot path keeps open at most: SQLAlchemy's default pool_size (5) plus
# max_overflow (10), plus one. A call finding all of them busy waits for one.
HOT_POOL_SIZE = 16
POOL_TIMEOUT_SECONDS = 30

# Opening BEGIN of a batch, per dialect: (writes, reads). Writes on SQLite take the write
# lock up front (BEGIN IMMEDIATE), so the transaction never fails half-way with "database
# is locked". Reads that span several statements need one snapshot: SQLite's deferred
# BEGIN gives one at the first read, PostgreSQL needs REPEATABLE READ (READ COMMITTED
# takes a snapshot per statement), InnoDB takes one at START TRANSACTION WITH CONSISTENT
# SNAPSHOT under its default REPEATABLE READ.
_BEGIN = {
    "sqlite": ("BEGIN IMMEDIATE", "BEGIN"),
    "postgresql": ("BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ"),
    "mysql": ("START TRANSACTION", "START TRANSACTION WITH CONSISTENT SNAPSHOT"),
}


class _Pooled:
    """A hot-path connection, its reusable cursor, and when it must be replaced."""

    __slots__ = ("connection", "cursor", "generation", "retire_at")

    def __init__(self, connection: DBAPIConnection, retire_at: float) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.retire_at = retire_at
        self.generation = _fork.generation


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


def _prepare_sqlite_file(url: URL, *, create: bool) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("mode") == "memory":
        raise StorageError(
            "an in-memory SQLite database is not supported: secure_kv is a persistent store; "
            "use a file, for example sqlite:///path/to/store.db"
        )
    path = Path(database).expanduser()
    if not create:
        if not path.exists():
            raise StorageError(
                f"there is no SQLite database at {path}: check the URL, or run `secure-kv init` to create one"
            )
        return
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

    def __init__(self, url: str, settings: Settings, *, create: bool = True) -> None:
        """``create=False``: an existing database only (a missing SQLite file is an error,
        not a new empty store)."""
        parsed = _parse_url(url)
        self.url = parsed
        self.dialect_name = parsed.get_backend_name()
        if self.dialect_name == "mariadb":
            self.dialect_name = "mysql"
        # PyMySQL cannot send a bytearray (it escapes bytes only): see sendable().
        self.sends_bytes_only = self.dialect_name == "mysql"
        kwargs: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "hide_parameters": True,
            # Every path ends its own transactions; a reset per checkin would cost MySQL a
            # round trip for nothing.
            "pool_reset_on_return": None,
        }
        if self.dialect_name == "sqlite":
            _prepare_sqlite_file(parsed, create=create)
            kwargs["connect_args"] = {
                "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                "check_same_thread": False,
            }
        else:
            kwargs["pool_recycle"] = POOL_RECYCLE_SECONDS
            # SQLAlchemy's pool serves the rarer work (data keys, rotation, purge, audit
            # bookkeeping, schema checks), where a round trip per checkout is cheap and a
            # connection killed while idle must not fail the call. The hot path's own pool
            # recovers from lost connections without it (see ``run``).
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
            if self.dialect_name == "postgresql":
                # psycopg prepares a statement server-side after its fifth run. Behind a
                # pooler in transaction mode (PgBouncer before 1.21, or without
                # max_prepared_statements) the next transaction may run on another server
                # connection, where that statement does not exist (or another one of the
                # same name does). Measured on a direct connection, preparing saved nothing
                # visible (~165 µs per set or get either way; docs/scaling.md), so it is off.
                kwargs["connect_args"]["prepare_threshold"] = None
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
        self._begin = _BEGIN[self.dialect_name]
        # SQLite files do not time out idle connections; servers and proxies do.
        self._recycle = math.inf if self.dialect_name == "sqlite" else float(POOL_RECYCLE_SECONDS)
        self._idle: deque[_Pooled] = deque()
        self._open = 0  # hot-path connections open now, idle or busy
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._waiting = 0
        self._closed = False
        self._generation = _fork.generation
        self._inherited: list[object] = []  # a parent's connections, in a forked child

    def _install_events(self, settings: Settings) -> None:
        if self.dialect_name == "sqlite":
            synchronous = settings.sqlite_synchronous.value.upper()

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.execute("PRAGMA foreign_keys=ON")
                # Deleted and overwritten content (a shredded workspace's wrapped keys) is
                # zeroed in the file, not left in free pages for a copy of it to find.
                cursor.execute("PRAGMA secure_delete=ON")
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
                cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
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
            kind = UndecodableTextError if _is_undecodable_text(error.orig) else StorageError
            raise kind(f"database error on {safe_url(self.url)}: {_describe(error.orig)}") from None

    # --- the hot path's connections ----------------------------------------------------

    def _checkout(self) -> _Pooled:
        if self._generation != _fork.generation:
            self._after_fork()
        while True:
            try:
                pooled = self._idle.pop()
            except IndexError:
                pooled = self._connect_or_wait()
            if pooled.retire_at > time.monotonic():
                return pooled
            self._discard(pooled)

    def _connect_or_wait(self) -> _Pooled:
        deadline = time.monotonic() + POOL_TIMEOUT_SECONDS
        with self._lock:
            # Counted before looking at the idle connections, so a connection returned
            # after the look sees a waiter and notifies (see _checkin).
            self._waiting += 1
            try:
                while True:
                    try:
                        return self._idle.pop()  # other threads pop without the lock
                    except IndexError:
                        pass
                    if self._open < HOT_POOL_SIZE:
                        self._open += 1
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StorageError(
                            f"all {HOT_POOL_SIZE} connections to {safe_url(self.url)} stayed busy for "
                            f"{POOL_TIMEOUT_SECONDS} s: too many threads at once, or calls that never return"
                        )
                    self._returned.wait(min(remaining, 1.0))
            finally:
                self._waiting -= 1
        try:
            try:
                fairy = self.engine.raw_connection()
            except sa.exc.DBAPIError as error:
                raise StorageError(
                    f"cannot connect to {safe_url(self.url)}: {_describe(error.orig)}"
                ) from None
            except self.dbapi_error as error:  # the pool lets the driver's own error through
                raise StorageError(f"cannot connect to {safe_url(self.url)}: {_describe(error)}") from None
            # Out of SQLAlchemy's pool: from now on this pool alone owns and closes it.
            connection = fairy.dbapi_connection
            assert connection is not None
            fairy.detach()
            return _Pooled(connection, time.monotonic() + self._recycle)
        except BaseException:
            self._forget_one()
            raise

    def _checkin(self, pooled: _Pooled) -> None:
        if pooled.generation != _fork.generation:
            self._inherited.append(pooled)  # checked out before a fork: see _after_fork
            return
        if self._closed:
            self._discard(pooled)
            return
        self._idle.append(pooled)
        if self._waiting:
            with self._lock:
                self._returned.notify()
        if self._closed:  # close() ran between the check above and the append
            self._close_idle()

    def _discard(self, pooled: _Pooled) -> None:
        try:
            pooled.connection.close()
        except Exception:  # noqa: S110 (a dead connection may refuse even to close)
            pass
        self._forget_one()

    def _forget_one(self) -> None:
        with self._lock:
            self._open -= 1
            self._returned.notify()

    def _close_idle(self) -> None:
        while True:
            try:
                pooled = self._idle.pop()
            except IndexError:
                return
            self._discard(pooled)

    def _after_fork(self) -> None:
        # In a forked child. The parent's connections share their sockets and files with
        # the parent: using one would interleave two processes on one session, and closing
        # one (even by garbage collection) would end the parent's session on the server or
        # drop its SQLite locks. Keep them referenced, unused, for the child's lifetime.
        with _FORK_LOCK:
            if self._generation == _fork.generation:
                return
            self._lock = threading.Lock()
            self._returned = threading.Condition(self._lock)
            self._waiting = 0
            self._inherited.extend(self._idle)
            self._idle = deque()
            self._open = 0
            # SQLAlchemy's advice for its own pool, keeping the old pool referenced too:
            # garbage-collecting an inherited SQLite connection closes it, and SQLite
            # forbids that in a child (it may checkpoint or remove the parent's WAL).
            self._inherited.append(self.engine.pool)
            self.engine.dispose(close=False)
            self._generation = _fork.generation

    def _end_failed(self, pooled: _Pooled) -> None:
        try:
            pooled.connection.rollback()
        except Exception:  # the connection is unusable; drop it
            self._discard(pooled)
        else:
            self._checkin(pooled)

    def _failed(self, pooled: _Pooled, error: BaseException, *, can_retry: bool) -> None:
        """Clean up after ``error`` on ``pooled``; return only if the work should run again.

        Integrity errors and non-database errors are re-raised as they are (callers handle
        integrity errors); other driver errors become :class:`StorageError`.
        """
        if isinstance(error, self.integrity_error) or not isinstance(error, self.dbapi_error):
            self._end_failed(pooled)
            raise error
        if self.engine.dialect.is_disconnect(error, pooled.connection, pooled.cursor):  # type: ignore[arg-type]
            self._discard(pooled)
            # Every idle connection most likely died with this one (server restart).
            self._close_idle()
            self.engine.dispose()
            if can_retry:
                return
            raise StorageError(f"lost the connection to {safe_url(self.url)}: {_describe(error)}") from None
        self._end_failed(pooled)
        if can_retry and self.is_transient(error):
            return  # a deadlock victim or lock-wait timeout: the server rolled it back
        if _is_undecodable_text(error):
            raise UndecodableTextError(
                f"a stored text on {safe_url(self.url)} is not valid UTF-8: the row was altered"
            ) from None
        raise StorageError(f"database error on {safe_url(self.url)}: {_describe(error)}") from None

    def sendable(self, blob: Buffer) -> Buffer:
        """``blob`` as this database's driver can send it: PyMySQL cannot send a bytearray,
        so on MySQL/MariaDB (:attr:`sends_bytes_only`) a bytearray becomes bytes."""
        if self.sends_bytes_only and not isinstance(blob, bytes):
            return bytes(blob)
        return blob

    def sendable_checked(self, blob: Buffer) -> Buffer:
        """:meth:`sendable`, and on MySQL/MariaDB refused (:meth:`check_packet_size`) if
        the server's ``max_allowed_packet`` cannot take it."""
        if not self.sends_bytes_only:
            return blob
        as_bytes = blob if isinstance(blob, bytes) else bytes(blob)
        self.check_packet_size(as_bytes)
        return as_bytes

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

    def truncate_sqlite_wal(self) -> bool:
        """Copy the SQLite WAL's pages back into the database file and empty the WAL, so no
        file keeps earlier images of overwritten pages (a shredded workspace's wrapped keys).
        Returns whether another connection kept the WAL busy (then it is not emptied).

        Waits a second for readers, not the usual busy timeout: a reader that stays only
        delays the emptying, which the caller reports.
        """
        with self.connect() as connection:
            connection.exec_driver_sql("PRAGMA busy_timeout=1000")
            try:
                busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").scalar()
            finally:
                connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        return bool(busy)

    # --- running work ----------------------------------------------------------------

    def fetchone(self, statement: Statement, *values: Any) -> Any:
        """One row of an idempotent query (or ``None``), on a hot-path connection."""
        pooled = self._checkout()
        try:
            cursor = pooled.cursor
            cursor.execute(statement.sql, values if statement.as_given else statement.arguments(values))
            row = cursor.fetchone()
        except BaseException as error:
            self._failed(pooled, error, can_retry=True)
            return self.run(lambda c: statement.fetchone(c, *values), retry=False)
        self._checkin(pooled)
        return row

    def execute(self, statement: Statement, *values: Any) -> int:
        """Run an idempotent statement in autocommit mode; the affected row count."""
        pooled = self._checkout()
        try:
            cursor = pooled.cursor
            cursor.execute(statement.sql, values if statement.as_given else statement.arguments(values))
            count = cursor.rowcount
        except BaseException as error:
            self._failed(pooled, error, can_retry=True)
            return self.run(lambda c: statement.run(c, *values), retry=False)
        self._checkin(pooled)
        return int(count)

    def run(self, work: Callable[[DBAPIConnection], T], *, retry: bool = True) -> T:
        """Run ``work`` on a hot-path DBAPI connection (autocommit mode).

        If the connection turns out to be dead (server restarted, backend killed), the pool
        is refreshed and ``work`` runs once more when ``retry`` is true, so only idempotent
        work may ask for it. Any other driver error becomes :class:`StorageError`, except
        integrity errors, which the caller handles. ``work`` may leave a transaction open
        only by raising: the connection is rolled back then.
        """
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            pooled = self._checkout()
            try:
                result = work(pooled.connection)
            except BaseException as error:
                self._failed(pooled, error, can_retry=attempt + 1 < attempts)
                continue
            self._checkin(pooled)
            return result
        raise AssertionError("unreachable")

    def transaction(self, work: Callable[[DBAPIConnection], T], *, write: bool, retry: bool = True) -> T:
        """Run ``work`` between BEGIN and COMMIT on a hot-path connection.

        ``write`` picks the opening statement (see ``_BEGIN``): the write lock up front on
        SQLite, one snapshot for every read otherwise. Anything ``work`` raises rolls the
        transaction back. With ``retry``, the whole transaction runs again after a lost
        connection, so ``work`` must be idempotent as a whole.
        """
        begin = self._begin[0 if write else 1]

        def whole(connection: DBAPIConnection) -> T:
            cursor = connection.cursor()
            try:
                cursor.execute(begin)
            finally:
                cursor.close()
            result = work(connection)
            connection.commit()
            return result

        return self.run(whole, retry=retry)

    def close(self) -> None:
        """Close idle connections now, busy ones when their call ends; dispose the engine."""
        self._closed = True
        self._close_idle()
        self.engine.dispose()


_FORK_LOCK = threading.Lock()


def _reset_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()  # another thread may have held it at the fork


_fork.in_child_after_fork(_reset_fork_lock)


def _scalar(connection: DBAPIConnection, sql: str) -> Any:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
        return None if row is None else row[0]
    finally:
        cursor.close()


class UndecodableTextError(StorageError):
    """A text cell holds bytes that are not UTF-8 (SQLite lets any column hold any bytes):
    the row was altered. Record reads report it as an :class:`AuthenticationError`."""


# sqlite3's message for such a cell quotes the cell, which may be ciphertext: never shown.
_UNDECODABLE = "Could not decode to UTF-8"


def _is_undecodable_text(error: BaseException | None) -> bool:
    return str(error).startswith(_UNDECODABLE)


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    if text and text[0].startswith(_UNDECODABLE):
        return text[0].split(" with text ", 1)[0]
    return text[0] if text else type(error).__name__


# What a connection pooler in front of PostgreSQL says when it is set up in a way secure_kv
# cannot work with, and the fix (PgBouncer's messages; docs/scaling.md).
_POOLER_HINTS = (
    (
        ("long transactions not allowed", "transaction blocks not allowed"),
        "PgBouncer's pool_mode=statement cannot run secure_kv's multi-statement transactions: "
        "use pool_mode=transaction (or session) for this database",
    ),
    (
        ("unsupported startup parameter",),
        "PgBouncer refuses a connection option in the URL (often ?options=-csearch_path=...): "
        "add it to ignore_startup_parameters and give the database its own PgBouncer entry, "
        "or drop it from the URL",
    ),
)


def _describe(error: BaseException | None) -> str:
    """The error's first line, plus the fix when it is a known pooler misconfiguration."""
    line = _first_line(error)
    text = str(error)
    for needles, fix in _POOLER_HINTS:
        if any(needle in text for needle in needles):
            return f"{line} ({fix})"
    return line
