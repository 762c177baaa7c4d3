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
    ``set_many``/``get_many`` are the floor of a batch: one ``executemany`` upsert in one
    transaction, one select of every key, and AES-GCM over each value in a Python loop.

The encryption libraries a user would pick instead (the *peers*). Each stores through plain
Core's table and statements (above: the same engine settings, upsert and select), so what
differs is only the encryption, done the way the library's documentation recommends:

AWS Encryption SDK
    ``aws-encryption-sdk`` 4 with the Material Providers Library: a raw AES keyring
    (``ALG_AES256_GCM_IV12_TAG16``) and the client's defaults (commitment policy
    ``REQUIRE_ENCRYPT_REQUIRE_DECRYPT``, algorithm suite
    ``AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384``: a fresh data key and an ECDSA P-384
    signature per message). The encryption context ``{namespace, key}`` binds a value to its
    key; decrypt is given it back, so a moved value fails, as the SDK's docs advise.

AWS Encryption SDK, caching CMM
    The same SDK with the caching cryptographic materials manager its docs recommend for
    throughput (``CachingCryptoMaterialsManager`` over a ``LocalCryptoMaterialsCache`` of
    4,096 entries, max age 10 minutes), over a raw AES master key (the caching CMM takes a
    master-key provider, not an MPL keyring). Defaults otherwise. The encryption context is
    part of the cache key, so each key's materials are cached once the key was written.
    Decrypt checks the context read back, as the docs show.

Tink
    ``tink`` (Google's C++ core through pybind11): an ``Aead`` primitive from a keyset made
    with the ``AES256_GCM`` template; associated data is the key, as Tink's docs recommend.

MultiFernet
    pyca ``cryptography``'s ``MultiFernet`` over two ``Fernet`` keys (the current one first,
    as for a key rotation): AES-128-CBC plus HMAC-SHA256, base64 tokens. Fernet has no
    associated data, so a value moved to another key still opens: a weaker contract.
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

from bench._harness import SQLITE_MMAP_BYTES, sqlite_pragmas
from secure_kv import SecureStore
from secure_kv.keys import StaticMasterKey

NAMESPACE = "bench"

SECURE = "secure_kv"
CORE = "plain Core"
CORE_AUTOCOMMIT = "Core, autocommit"
UTILS = "sqlalchemy-utils"
RAW = "raw + AES-GCM"
AWS_SDK = "AWS Encryption SDK"
AWS_CACHING = "AWS Encryption SDK, caching"
TINK = "Tink"
MULTIFERNET = "MultiFernet"
PEERS = (AWS_SDK, AWS_CACHING, TINK, MULTIFERNET)


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
            self.connection.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
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
        self.select_many_sql = f"SELECT key, value FROM {table_name} WHERE namespace = {placeholder} AND key"
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

    def bulk_load(self, items: list[tuple[str, bytes]]) -> None:
        rows = []
        for key, value in items:
            nonce = os.urandom(12)
            rows.append((NAMESPACE, key, nonce + self.aead.encrypt(nonce, value, key.encode())))
        if isinstance(self.connection, sqlite3.Connection):
            self.cursor.execute("BEGIN")
            self.cursor.executemany(self.insert_sql, rows)
            self.cursor.execute("COMMIT")
        else:
            with self.connection.transaction():
                self.cursor.executemany(self.insert_sql, rows)

    def close(self) -> None:
        self.connection.close()


class RawBatchFloor(RawAesGcm):
    """The floor of a batch on the same held connection: what a batch cannot go below."""

    def set_many(self, items: list[tuple[str, bytes]]) -> None:
        nonces = os.urandom(12 * len(items))
        rows = []
        for index, (key, value) in enumerate(items):
            nonce = nonces[12 * index : 12 * index + 12]
            rows.append((NAMESPACE, key, nonce + self.aead.encrypt(nonce, value, key.encode())))
        if isinstance(self.connection, sqlite3.Connection):
            self.cursor.execute("BEGIN")
            self.cursor.executemany(self.upsert_sql, rows)
            self.cursor.execute("COMMIT")
        else:
            with self.connection.transaction():
                self.cursor.executemany(self.upsert_sql, rows)

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        if isinstance(self.connection, sqlite3.Connection):
            marks = ", ".join("?" * len(keys))
            self.cursor.execute(
                f"{self.select_many_sql} IN ({marks})",
                (NAMESPACE, *keys),
            )
        else:
            self.cursor.execute(f"{self.select_many_sql} = ANY(%s)", (NAMESPACE, keys))
        result = {}
        for key, blob in self.cursor.fetchall():
            sealed = memoryview(blob)
            result[key] = self.aead.decrypt(sealed[:12], sealed[12:], key.encode())
        return result


class EncryptedCore(PlainCore):
    """A peer: plain Core's table and statements, values sealed by an encryption library."""

    def seal(self, key: str, value: bytes) -> bytes:
        raise NotImplementedError

    def open(self, key: str, blob: bytes) -> bytes:
        raise NotImplementedError

    def _set(self, key: str, value: bytes) -> None:
        sealed = self.seal(key, value)
        with self.engine.begin() as connection:
            connection.execute(self.upsert, {"namespace": NAMESPACE, "key": key, "value": sealed})

    def _get(self, key: str) -> bytes | None:
        with self.engine.connect() as connection:
            row = connection.execute(self.select, {"namespace": NAMESPACE, "key": key}).first()
        return None if row is None else self.open(key, row[0])

    def bulk_load(self, items: list[tuple[str, bytes]]) -> None:
        super().bulk_load([(key, self.seal(key, value)) for key, value in items])


class AwsEncryptionSdk(EncryptedCore):
    """AWS Encryption SDK, raw AES keyring (Material Providers Library), SDK defaults."""

    name = AWS_SDK

    def __init__(self, url: str, table_name: str) -> None:
        import aws_encryption_sdk
        from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
        from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
        from aws_cryptographic_material_providers.mpl.models import (
            AesWrappingAlg,
            CreateRawAesKeyringInput,
        )

        super().__init__(url, table_name)
        providers = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
        self.keyring = providers.create_raw_aes_keyring(
            input=CreateRawAesKeyringInput(
                key_namespace="bench",
                key_name="wrapping-key-1",
                wrapping_key=os.urandom(32),
                wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
            )
        )
        self.client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=aws_encryption_sdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )

    def seal(self, key: str, value: bytes) -> bytes:
        sealed, _ = self.client.encrypt(
            source=value, keyring=self.keyring, encryption_context={"namespace": NAMESPACE, "key": key}
        )
        return bytes(sealed)

    def open(self, key: str, blob: bytes) -> bytes:
        value, _ = self.client.decrypt(
            source=blob, keyring=self.keyring, encryption_context={"namespace": NAMESPACE, "key": key}
        )
        return bytes(value)


class AwsEncryptionSdkCaching(EncryptedCore):
    """AWS Encryption SDK with its caching cryptographic materials manager."""

    name = AWS_CACHING

    def __init__(self, url: str, table_name: str) -> None:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.key_providers.raw import RawMasterKey, WrappingKey

        super().__init__(url, table_name)
        master_key = RawMasterKey(
            provider_id="bench",
            key_id=b"wrapping-key-1",
            wrapping_key=WrappingKey(
                wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=os.urandom(32),
                wrapping_key_type=EncryptionKeyType.SYMMETRIC,
            ),
        )
        self.materials = aws_encryption_sdk.CachingCryptoMaterialsManager(
            master_key_provider=master_key,
            cache=aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=4096),
            max_age=600.0,
        )
        self.client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=aws_encryption_sdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )

    def seal(self, key: str, value: bytes) -> bytes:
        sealed, _ = self.client.encrypt(
            source=value,
            materials_manager=self.materials,
            encryption_context={"namespace": NAMESPACE, "key": key},
        )
        return bytes(sealed)

    def open(self, key: str, blob: bytes) -> bytes:
        value, header = self.client.decrypt(source=blob, materials_manager=self.materials)
        context = header.encryption_context
        if context.get("namespace") != NAMESPACE or context.get("key") != key:
            raise ValueError("encryption context does not match: the value was moved")
        return bytes(value)


class TinkAead(EncryptedCore):
    """Tink's AEAD primitive from an AES256_GCM keyset; the key as associated data."""

    name = TINK

    def __init__(self, url: str, table_name: str) -> None:
        import tink
        from tink import aead

        super().__init__(url, table_name)
        aead.register()
        handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
        self.aead = handle.primitive(aead.Aead)

    def seal(self, key: str, value: bytes) -> bytes:
        return bytes(self.aead.encrypt(value, key.encode()))

    def open(self, key: str, blob: bytes) -> bytes:
        return bytes(self.aead.decrypt(blob, key.encode()))


class MultiFernetCore(EncryptedCore):
    """pyca's MultiFernet over two keys, current first (no associated data: see above)."""

    name = MULTIFERNET

    def __init__(self, url: str, table_name: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        super().__init__(url, table_name)
        self.fernet = MultiFernet([Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())])

    def seal(self, key: str, value: bytes) -> bytes:
        return self.fernet.encrypt(value)

    def open(self, key: str, blob: bytes) -> bytes:
        return self.fernet.decrypt(bytes(blob))


FACTORIES: dict[str, Callable[[str, str], KeyValue]] = {
    SECURE: lambda url, table: SecureKV(url),
    CORE: PlainCore,
    CORE_AUTOCOMMIT: PlainCoreAutocommit,
    UTILS: SqlalchemyUtils,
    RAW: RawAesGcm,
    AWS_SDK: AwsEncryptionSdk,
    AWS_CACHING: AwsEncryptionSdkCaching,
    TINK: TinkAead,
    MULTIFERNET: MultiFernetCore,
}
