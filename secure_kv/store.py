"""SecureStore and Workspace: the ``set``/``get``/``exist``/``delete`` surface.

A :class:`Workspace` speaks Dify's plugin-storage interface; every value is sealed with
the workspace's data key before it reaches the database, and opened (authenticated) on
the way back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import Any

from .categories import CATEGORY_CODES, Category, parse_category
from .database import Database, safe_url
from .datakeys import DataKeys, check_master_key, now_micros
from .envelope import (
    DataKey,
    context_prefix,
    key_context,
    open_record,
    open_value,
    parse_header,
    seal_value,
    seal_values,
)
from .errors import (
    AuthenticationError,
    InvalidInputError,
    InvalidTypeError,
    MasterKeyError,
    SecureKVError,
    StorageError,
    UnsupportedVersionError,
)
from .keys import MasterKeyProvider, provider_from_settings
from .migrate import ensure_schema
from .settings import Settings, load_settings
from .statements import Statement, Statements, in_list_chunks
from .validation import Buffer, check_key, check_ttl, check_value, check_workspace_name

__all__ = ["SecureStore", "Workspace"]

# By the value string: hashing a Category itself runs Enum.__hash__ in Python.
_CODE_BY_VALUE = {category.value: CATEGORY_CODES[category] for category in Category}
# Retries when a write races a rotation or shred that retired the data key it used.
_STALE_KEY_RETRIES = 3
# Rows per executemany call of set_many: bounds what a driver buffers at once.
_WRITE_CHUNK = 1000


class SecureStore:
    """An encrypted key-value store over one database.

    Thread-safe: share one store between threads. Open it with :meth:`open` or
    :meth:`from_settings`; close it (or use it as a context manager) to release connections.
    """

    def __init__(self, database: Database, provider: MasterKeyProvider, settings: Settings) -> None:
        """Use :meth:`open`; this constructor expects parts already checked."""
        self._db = database
        self._provider = provider
        self._settings = settings
        self._sql = Statements(database.engine.dialect, database.dialect_name)
        self._keys = DataKeys(
            database,
            self._sql,
            provider,
            cache_size=settings.dek_cache_size,
            max_age=settings.dek_cache_seconds,
        )
        self._closed = False

    @classmethod
    def open(
        cls,
        url: str | None = None,
        master_key: MasterKeyProvider | None = None,
        **options: Any,
    ) -> SecureStore:
        """Open (and on an empty database, create) the store at ``url``.

        ``url`` defaults to ``SECURE_KV_DATABASE_URL``; ``master_key`` to the provider that
        ``SECURE_KV_KEY_PROVIDER`` names. ``options`` override settings by name, for example
        ``credential_policy="reject"`` or ``actor="ops@example"``.
        """
        if url is not None and not isinstance(url, str):
            raise InvalidTypeError(f"url must be a str, not {type(url).__name__}")
        if master_key is not None and not isinstance(master_key, MasterKeyProvider):
            raise InvalidTypeError(
                "master_key must be a provider from secure_kv.keys (for raw bytes, "
                f"StaticMasterKey(key)), not {type(master_key).__name__}"
            )
        settings = load_settings(database_url=url, **options)
        provider = master_key if master_key is not None else provider_from_settings(settings)
        provider.current_key()  # fail now, not on the first write, if the key is unavailable
        database = Database(settings.database_url, settings)
        try:
            ensure_schema(database, create=True)
            check_master_key(database, provider)
        except BaseException:
            database.close()
            raise
        return cls(database, provider, settings)

    @classmethod
    def from_settings(cls, **options: Any) -> SecureStore:
        """Open the store that the ``SECURE_KV_*`` settings describe."""
        return cls.open(None, None, **options)

    def workspace(self, name: str) -> Workspace:
        """One isolated namespace (for Dify, the tenant and plugin), with its own data keys."""
        self._check_open()
        return Workspace(self, name)

    @property
    def kek_id(self) -> str:
        """Public fingerprint of the current master key."""
        return self._provider.current_key().kek_id

    @property
    def settings(self) -> Settings:
        return self._settings

    def close(self) -> None:
        """Release database connections and forget every cached data key."""
        if not self._closed:
            self._closed = True
            self._keys.clear()
            self._db.close()

    def __enter__(self) -> SecureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SecureStore {safe_url(self._db.url)} kek_id={self.kek_id}{state}>"

    def __reduce__(self) -> Any:
        raise TypeError("SecureStore holds key material and cannot be pickled")

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    def _record_event(
        self,
        action: str,
        *,
        connection: Any = None,
        workspace: str | None = None,
        key: str | None = None,
        category: Category | None = None,
        dek_version: int | None = None,
        outcome: str = "ok",
        detail: str | None = None,
    ) -> None:
        """The audit hook every admin operation reports to (never with a value).

        ``connection`` is the SQLAlchemy connection of the transaction making the change,
        so the event can be written in that same transaction. Until the audit log exists
        this records nothing.
        """


class Workspace:
    """One namespace of a :class:`SecureStore`, with Dify's plugin-storage interface."""

    __slots__ = ("_context_prefix", "_keys", "_name_bytes", "_store", "name")

    def __init__(self, store: SecureStore, name: str) -> None:
        self._name_bytes = check_workspace_name(name)
        self._context_prefix = context_prefix(self._name_bytes)
        self.name = name
        self._store = store
        self._keys = store._keys

    def set(
        self,
        key: str,
        val: bytes | bytearray | memoryview,
        *,
        category: Category | str = Category.PREFERENCE,
        ttl: float | Any = None,
    ) -> None:
        """Store ``val`` under ``key``, replacing any previous value.

        ``ttl`` (seconds or a timedelta) makes the entry expire; a cache entry always
        expires (``SECURE_KV_DEFAULT_CACHE_TTL`` when no ``ttl`` is given). An overwrite
        without ``ttl`` clears the previous expiry.
        """
        store = self._store
        settings = store._settings
        key_bytes = check_key(key)
        value = check_value(val, settings.max_value_bytes)
        chosen = parse_category(category)
        seconds = check_ttl(ttl)
        store._check_open()
        now, expires_at = self._expiry(chosen, seconds)
        category_value = chosen._value_
        context = key_context(self._context_prefix, key_bytes, _CODE_BY_VALUE[category_value], expires_at)
        database, statement = store._db, store._sql.upsert_record
        as_bytes = database.dialect_name == "mysql"  # PyMySQL cannot send a bytearray
        for _ in range(_STALE_KEY_RETRIES):
            workspace_id, data_key = self._keys.current(self._name_bytes)
            sealed = seal_value(data_key, context, value)
            if as_bytes and not isinstance(sealed, bytes):
                sealed = bytes(sealed)
            row = (workspace_id, key_bytes, category_value, data_key.version, now, now, expires_at, sealed)
            try:
                database.execute(statement, *row)
                return
            except database.integrity_error:
                # The data key was retired (rotation) or destroyed (shred) since we cached
                # it: the foreign key refused the record. Reload and seal again.
                self._keys.forget_current(self._name_bytes)
        raise StorageError(
            f"could not write {self._describe(key)}: its data key keeps changing; retry the call"
        )

    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` if the key is missing or expired.

        Raises :class:`AuthenticationError` if the stored record was tampered with.
        """
        key_bytes = check_key(key)
        store = self._store
        store._check_open()
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return None
        row = store._db.fetchone(store._sql.select_record, workspace_id, key_bytes)
        if row is None:
            return None
        return self._open_row(key, key_bytes, workspace_id, now_micros(), *row)

    def exist(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value (the value is not decrypted)."""
        key_bytes = check_key(key)
        store = self._store
        store._check_open()
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return False
        row = store._db.fetchone(store._sql.select_expiry, workspace_id, key_bytes)
        return row is not None and (row[0] is None or row[0] > now_micros())

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        key_bytes = check_key(key)
        store = self._store
        store._check_open()
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return
        store._db.execute(store._sql.delete_record, workspace_id, key_bytes)

    # --- batches: one transaction each, all or nothing ---------------------------------

    def set_many(
        self,
        items: Mapping[str, Buffer] | Iterable[tuple[str, Buffer]],
        *,
        category: Category | str = Category.PREFERENCE,
        ttl: float | Any = None,
    ) -> None:
        """Store every value of ``items`` (a mapping, or (key, value) pairs) at once.

        One transaction: either every entry is written or none is. Every key and value is
        checked before the database is touched, so bad input changes nothing. All entries
        get the same ``category`` and ``ttl``, with the meaning they have for :meth:`set`.
        A key given twice (as pairs) keeps its last value, as ``dict(pairs)`` would.
        """
        store = self._store
        settings = store._settings
        chosen = parse_category(category)
        seconds = check_ttl(ttl)
        checked: dict[bytes, Buffer] = {}
        for index, (key, val) in enumerate(_pairs(items)):
            key_bytes = _checked_key(key, "set_many", index)
            try:
                checked[key_bytes] = check_value(val, settings.max_value_bytes)
            except InvalidInputError as error:
                raise type(error)(f"set_many: {self._describe(key)}: {error}") from None
        store._check_open()
        if not checked:
            return
        now, expires_at = self._expiry(chosen, seconds)
        category_value = chosen._value_
        code, prefix = _CODE_BY_VALUE[category_value], self._context_prefix
        to_seal = [
            (key_context(prefix, key_bytes, code, expires_at), value) for key_bytes, value in checked.items()
        ]
        database, statement = store._db, store._sql.upsert_record
        as_bytes = database.dialect_name == "mysql"  # PyMySQL cannot send a bytearray
        for _ in range(_STALE_KEY_RETRIES):
            workspace_id, data_key = self._keys.current(self._name_bytes)
            version = data_key.version
            rows = [
                (
                    workspace_id,
                    key_bytes,
                    category_value,
                    version,
                    now,
                    now,
                    expires_at,
                    bytes(sealed) if as_bytes and not isinstance(sealed, bytes) else sealed,
                )
                for key_bytes, sealed in zip(checked, seal_values(data_key, to_seal), strict=True)
            ]
            try:
                database.transaction(partial(_write_rows, statement, rows), write=True)
                return
            except database.integrity_error:
                # As in set(): the data key was retired meanwhile; nothing was written.
                self._keys.forget_current(self._name_bytes)
        raise StorageError(
            f"could not write {len(rows)} records of workspace {self.name!r}: its data key keeps "
            "changing; retry the call"
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of ``keys`` that exist and have not expired, by key.

        One transaction (one snapshot): a concurrent writer's batch is seen whole or not at
        all. Missing and expired keys are absent from the result; a key asked twice appears
        once. The result follows the order of ``keys``. Raises :class:`AuthenticationError`
        (naming the key) if any record read was tampered with.
        """
        wanted = self._checked_keys(keys, "get_many")
        store = self._store
        store._check_open()
        if not wanted:
            return {}
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return {}
        sql = store._sql

        def read(connection: Any) -> list[Any]:
            rows: list[Any] = []
            for chunk in in_list_chunks(list(wanted)):
                rows.extend(sql.select_records(len(chunk)).fetchall(connection, workspace_id, *chunk))
            # The audit step for token reads belongs here, in this transaction.
            return rows

        found = {bytes(row[0]): row for row in store._db.transaction(read, write=False)}
        now = now_micros()
        prefix = self._context_prefix
        data_keys: dict[int, DataKey] = {}  # by version, for this call
        result: dict[str, bytes] = {}
        for key_bytes, key in wanted.items():
            row = found.get(key_bytes)
            if row is None:
                continue
            _, category_value, dek_version, expires_at, blob = row
            if expires_at is not None and expires_at <= now:
                continue
            # The common case in a few steps; anything unusual (a data key not yet seen in
            # this call, a tampered or destroyed record) goes the way get() goes.
            data_key = data_keys.get(dek_version)
            code = _CODE_BY_VALUE.get(category_value)
            value: bytes | None = None
            if data_key is not None and code is not None:
                try:
                    value = open_record(data_key, prefix, key_bytes, code, expires_at, blob)
                except SecureKVError:
                    value = None
            if value is None:
                value = self._open_row(key, key_bytes, workspace_id, now, *row[1:])
                if value is None:
                    continue
                found_key = self._keys.version(workspace_id, self._name_bytes, dek_version)
                if found_key is not None:
                    data_keys[dek_version] = found_key
            result[key] = value
        return result

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key of ``keys`` in one transaction; missing keys are not an error."""
        wanted = self._checked_keys(keys, "delete_many")
        store = self._store
        store._check_open()
        if not wanted:
            return
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return
        sql = store._sql

        def delete(connection: Any) -> None:
            # The audit step for token deletes belongs here, before the rows are gone.
            for chunk in in_list_chunks(list(wanted)):
                sql.delete_records(len(chunk)).run(connection, workspace_id, *chunk)

        store._db.transaction(delete, write=True)

    # --- shared by the single and batch calls ------------------------------------------

    def _expiry(self, category: Category, seconds: float | None) -> tuple[int, int | None]:
        """Now and the expiry time, both in microseconds (a cache entry always expires)."""
        if seconds is None and category is Category.CACHE:
            seconds = self._store._settings.default_cache_ttl
        now = now_micros()
        return now, None if seconds is None else now + max(1, math.ceil(seconds * 1_000_000))

    def _checked_keys(self, keys: Iterable[str], method: str) -> dict[bytes, str]:
        """Every key checked, by its UTF-8 bytes, first occurrence first."""
        if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, Iterable):
            raise InvalidTypeError(
                f"{method}: keys must be an iterable of str (a list, for example), not {type(keys).__name__}"
            )
        wanted: dict[bytes, str] = {}
        for index, key in enumerate(keys):
            wanted.setdefault(_checked_key(key, method, index), key)
        return wanted

    def _open_row(
        self,
        key: str,
        key_bytes: bytes,
        workspace_id: int,
        now: int,
        category_value: str,
        dek_version: int,
        expires_at: int | None,
        blob: Buffer,
    ) -> bytes | None:
        """Authenticate and decrypt one record as read; ``None`` if it expired before ``now``."""
        if expires_at is not None and expires_at <= now:
            return None
        code = _CODE_BY_VALUE.get(category_value)
        if code is None:
            raise self._tampered(key)
        try:
            header = parse_header(blob)
        except UnsupportedVersionError as error:
            raise UnsupportedVersionError(f"{self._describe(key)}: {error}") from None
        except AuthenticationError:
            raise self._tampered(key) from None
        if header.dek_version != dek_version:
            raise self._tampered(key)
        try:
            data_key = self._keys.version(workspace_id, self._name_bytes, dek_version)
        except (AuthenticationError, MasterKeyError) as error:
            raise type(error)(f"cannot open {self._describe(key)}: {error}") from None
        if data_key is None:
            return None  # its data key was destroyed: the workspace is being shredded
        context = key_context(self._context_prefix, key_bytes, code, expires_at)
        try:
            return open_value(data_key, context, blob, header)
        except AuthenticationError:
            raise self._tampered(key) from None

    def _describe(self, key: str) -> str:
        return f"record {key!r} of workspace {self.name!r}"

    def _tampered(self, key: str) -> AuthenticationError:
        return AuthenticationError(
            f"{self._describe(key)} failed authentication: the stored record was altered, "
            "truncated or moved from another key, workspace or category"
        )

    def __repr__(self) -> str:
        return f"<Workspace {self.name!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("Workspace belongs to an open store and cannot be pickled")


def _write_rows(statement: Statement, rows: list[tuple[Any, ...]], connection: Any) -> None:
    for start in range(0, len(rows), _WRITE_CHUNK):
        statement.run_many(connection, rows[start : start + _WRITE_CHUNK])
    # The audit step for token writes belongs here, in this transaction.


def _pairs(items: object) -> Iterable[tuple[Any, Any]]:
    if isinstance(items, Mapping):
        return items.items()
    if isinstance(items, (str, bytes, bytearray, memoryview)) or not isinstance(items, Iterable):
        raise InvalidTypeError(
            "set_many: items must be a mapping of str to bytes, or (key, value) pairs, "
            f"not {type(items).__name__}"
        )
    return (_pair(item, index) for index, item in enumerate(items))


def _pair(item: object, index: int) -> tuple[Any, Any]:
    if not isinstance(item, tuple) or len(item) != 2:
        raise InvalidTypeError(
            f"set_many: item {index} must be a (key, value) tuple, not {type(item).__name__}"
        )
    return item


def _checked_key(key: object, method: str, index: int) -> bytes:
    try:
        return check_key(key)
    except InvalidInputError as error:
        # By position: the rejected key is not echoed (it might be a misplaced secret).
        raise type(error)(f"{method}: key {index}: {error}") from None
