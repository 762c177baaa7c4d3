"""The key-value systems the benchmarks compare, each written the way its user would.

Every system stores ``(namespace, key) -> value`` with ``set(key, value)`` and
``get(key) -> value | None``, in a database of the benchmark's own (a temporary SQLite
file, or a private PostgreSQL schema reached through ``search_path``).

secure_kv
    ``SecureStore.open(url, master_key=StaticMasterKey(...))``, one workspace, default
    category (preference): ``ws.set`` / ``ws.get``, and ``ws.set_many`` / ``ws.get_many``.

plain Core
    What a competent user writes with SQLAlchemy Core and no encryption: a table
    ``(namespace, key)`` primary key plus a ``value`` BLOB/BYTEA; the statements are built
    once (an upsert with ``ON CONFLICT DO UPDATE``, a primary-key select) and executed with
    parameters, so each call pays SQLAlchemy's execution, not statement construction;
    ``with engine.begin()`` around each set and ``with engine.connect()`` around each get,
    as SQLAlchemy's documentation teaches, on a default engine (QueuePool, the driver's
    default transaction mode).

    (An earlier version of this benchmark built the statement inside every call, as in
    ``insert(t).values(...).on_conflict_do_update(...)`` per set: constructing it and
    computing its cache key cost ~250-400 µs per call on the bench machine, three times
    the execution itself. That baseline was slower than what a careful user writes, which
    flattered secure_kv; it is gone.)

Core, autocommit
    The same, on an engine with ``isolation_level="AUTOCOMMIT"``: no BEGIN/COMMIT around a
    single statement. Fewer users configure this, but it is what secure_kv itself does on
    its hot path, so it is shown as well (for information; the targets are against plain
    Core).

sqlalchemy-utils
    ``StringEncryptedType(UnicodeText, key, AesGcmEngine)`` on a declarative ORM model, as
    sqlalchemy-utils documents it: set is ``session.merge(Entry(...))`` in
    ``with Session.begin()``, get is ``session.get(Entry, pk)`` in a fresh session. It
    encrypts ``str`` only (anything else goes through ``repr``), so its values are ASCII
    strings of the same length, prepared before the clock starts.

raw + AES-GCM
    The floor: the DBAPI driver alone (``sqlite3``, or ``psycopg`` in autocommit mode), one
    connection, and ``AESGCM`` from ``cryptography`` with a random nonce and the key as
    associated data. No key hierarchy, no pool, no reconnects, no thread safety.
"""

from __future__ import annotations

import base64
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql, sqlite

from bench._harness import sqlite_pragmas
from secure_kv import SecureStore
from secure_kv.keys import StaticMasterKey

NAMESPACE = "bench"

SECURE = "secure_kv"
CORE = "plain Core"
CORE_AUTOCOMMIT = "Core, autocommit"
UTILS = "sqlalchemy-utils"
RAW = "raw + AES-GCM"


class KeyValue:
    """What the benchmark needs from a system. ``set`` and ``get`` are plain attributes so
    a system's own bound methods are called directly, with no wrapper frame of ours."""

    name: str
    set: Callable[[str, Any], None]
    get: Callable[[str], Any]

    def prepare(self, value: bytes) -> Any:
        """The value as this system's user would hold it (done before any clock starts)."""
        return value

    def bulk_load(self, items: list[tuple[str, bytes]]) -> None:
        """Insert many new records fast (for the record-count benchmark)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SecureKV(KeyValue):
    name = SECURE

    def __init__(self, url: str) -> None:
        self.store = SecureStore.open(url, master_key=StaticMasterKey(os.urandom(32)))
        self.workspace = self.store.workspace(NAMESPACE)
        self.set = self.workspace.set
        self.get = self.workspace.get
        self.set_many = self.workspace.set_many
        self.get_many = self.workspace.get_many

    def bulk_load(self, items: list[tuple[str, bytes]]) -> None:
        self.set_many(items)

    def close(self) -> None:
        self.store.close()


def _kv_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("namespace", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )


class PlainCore(KeyValue):
    """A key-value table written the way a competent user writes it with SQLAlchemy Core."""

    name = CORE

    def __init__(self, url: str, table_name: str, **engine_options: Any) -> None:
        self.engine = sa.create_engine(url, **engine_options)
        if self.engine.dialect.name == "sqlite":
            sqlite_pragmas(self.engine)
        metadata = sa.MetaData()
        t = self.table = _kv_table(metadata, table_name)
        metadata.create_all(self.engine)
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[self.engine.dialect.name]
        upsert = insert(t).values(
            namespace=sa.bindparam("namespace"), key=sa.bindparam("key"), value=sa.bindparam("value")
        )
        self.upsert = upsert.on_conflict_do_update(
            index_elements=[t.c.namespace, t.c.key], set_={"value": upsert.excluded.value}
        )
        self.select = sa.select(t.c.value).where(
            t.c.namespace == sa.bindparam("namespace"), t.c.key == sa.bindparam("key")
        )
        self.set = self._set
        self.get = self._get

    def _set(self, key: str, value: bytes) -> None:
        with self.engine.begin() as connection:
            connection.execute(self.upsert, {"namespace": NAMESPACE, "key": key, "value": value})

    def _get(self, key: str) -> bytes | None:
        with self.engine.connect() as connection:
            row = connection.execute(self.select, {"namespace": NAMESPACE, "key": key}).first()
        return None if row is None else row[0]

    def bulk_load(self, items: list[tuple[str, bytes]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(self.table), [{"namespace": NAMESPACE, "key": k, "value": v} for k, v in items]
            )

    def close(self) -> None:
        self.engine.dispose()


class PlainCoreAutocommit(PlainCore):
    name = CORE_AUTOCOMMIT

    def __init__(self, url: str, table_name: str) -> None:
        super().__init__(url, table_name, isolation_level="AUTOCOMMIT")


class SqlalchemyUtils(KeyValue):
    """sqlalchemy-utils' ``StringEncryptedType`` with AES-GCM, through the ORM."""

    name = UTILS

    def __init__(self, url: str, table_name: str) -> None:
        from sqlalchemy_utils import StringEncryptedType
        from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

        secret = base64.b64encode(os.urandom(32)).decode()

        class Base(orm.DeclarativeBase):
            pass

        class Entry(Base):
            __tablename__ = table_name
            namespace: orm.Mapped[str] = orm.mapped_column(sa.String(255), primary_key=True)
            key: orm.Mapped[str] = orm.mapped_column(sa.String(255), primary_key=True)
            value: orm.Mapped[str] = orm.mapped_column(
                StringEncryptedType(sa.UnicodeText, secret, AesGcmEngine), nullable=False
            )

        self.entry = Entry
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            sqlite_pragmas(self.engine)
        Base.metadata.create_all(self.engine)
        self.sessions = orm.sessionmaker(self.engine, expire_on_commit=False)
        self.set = self._set
        self.get = self._get

    def prepare(self, value: bytes) -> str:
        return base64.b64encode(value)[: len(value)].decode("ascii")

    def _set(self, key: str, value: str) -> None:
        with self.sessions.begin() as session:
            session.merge(self.entry(namespace=NAMESPACE, key=key, value=value))

    def _get(self, key: str) -> str | None:
        with self.sessions() as session:
            entry = session.get(self.entry, (NAMESPACE, key))
            return None if entry is None else entry.value

    def close(self) -> None:
        self.engine.dispose()


class RawAesGcm(KeyValue):
    """The floor: one DBAPI connection in autocommit mode and AES-GCM, nothing else."""

    name = RAW

    def __init__(self, url: str, table_name: str) -> None:
        parsed = sa.make_url(url)
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        ddl = (
            f"CREATE TABLE {table_name} (namespace VARCHAR(255), key VARCHAR(255), value {{blob}} NOT NULL, "
            "PRIMARY KEY (namespace, key))"
        )
        upsert = (
            f"INSERT INTO {table_name} (namespace, key, value) VALUES ({{p}}, {{p}}, {{p}}) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value"
        )
        select = f"SELECT value FROM {table_name} WHERE namespace = {{p}} AND key = {{p}}"
        self.insert_sql = f"INSERT INTO {table_name} (namespace, key, value) VALUES ({{p}}, {{p}}, {{p}})"
        if parsed.get_backend_name() == "sqlite":
            self.connection: Any = sqlite3.connect(parsed.database or "", isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
            placeholder, blob = "?", "BLOB"
        else:
            import psycopg

            options = parsed.query.get("options")
            self.connection = psycopg.connect(
                host=parsed.host,
                port=parsed.port,
                user=parsed.username,
                password=parsed.password,
                dbname=parsed.database,
                autocommit=True,
                **({"options": options} if isinstance(options, str) else {}),
            )
            placeholder, blob = "%s", "BYTEA"
        self.connection.execute(ddl.format(blob=blob))
        self.upsert_sql = upsert.format(p=placeholder)
        self.select_sql = select.format(p=placeholder)
        self.insert_sql = self.insert_sql.format(p=placeholder)
        self.cursor = self.connection.cursor()
        self.set = self._set
        self.get = self._get

    def _set(self, key: str, value: bytes) -> None:
        nonce = os.urandom(12)
        sealed = nonce + self.aead.encrypt(nonce, value, key.encode())
        self.cursor.execute(self.upsert_sql, (NAMESPACE, key, sealed))

    def _get(self, key: str) -> bytes | None:
        self.cursor.execute(self.select_sql, (NAMESPACE, key))
        row = self.cursor.fetchone()
        if row is None:
            return None
        sealed = memoryview(row[0])
        return self.aead.decrypt(sealed[:12], sealed[12:], key.encode())

    def close(self) -> None:
        self.connection.close()


FACTORIES: dict[str, Callable[[str, str], KeyValue]] = {
    SECURE: lambda url, table: SecureKV(url),
    CORE: PlainCore,
    CORE_AUTOCOMMIT: PlainCoreAutocommit,
    UTILS: SqlalchemyUtils,
    RAW: RawAesGcm,
}
