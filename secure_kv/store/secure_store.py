"""SecureStore: an encrypted key-value store over one database, and its workspaces."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from secure_kv.audit.log import AuditLog
from secure_kv.errors import ConfigurationError, InvalidTypeError, MasterKeyError, StorageError
from secure_kv.keys import MasterKeyProvider, provider_from_settings
from secure_kv.settings import Settings, load_settings
from secure_kv.sql.database import Database, safe_url
from secure_kv.sql.migrate import ensure_schema
from secure_kv.sql.statements import Statements
from secure_kv.store.datakeys import DataKeys, check_master_key
from secure_kv.store.parts import StoreParts, store_parts
from secure_kv.store.workspace import Workspace

__all__ = ["SecureStore", "open_store"]

log = logging.getLogger("secure_kv")


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
        self._audit = AuditLog(database, provider, settings)
        self._keys = DataKeys(
            database,
            self._sql,
            provider,
            cache_size=settings.dek_cache_size,
            max_age=settings.dek_cache_seconds,
            audit=self._audit,
        )
        # The same parts again, as one object for admin code (store/internals.py); the
        # attributes above stay for the hot path, which reads them on every call.
        self._parts = StoreParts(
            database, provider, settings, self._sql, self._keys, self._audit, self._check_open
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
        if "database_url" in options:
            raise ConfigurationError("give the database URL as the first argument of SecureStore.open")
        settings = load_settings(database_url=url, **options)
        return open_store(settings, master_key)

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
            self._audit.close()
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

    def _internal_parts(self) -> StoreParts:
        """Its parts, for its workspaces and admin code: read through ``internals.store_parts``."""
        return self._parts


def open_store(
    settings: Settings, master_key: MasterKeyProvider | None = None, *, create_schema: bool = True
) -> SecureStore:
    """Open a store with settings already loaded (the admin commands).

    ``master_key`` defaults to the provider the settings name. ``create_schema=False``
    refuses a database without the schema instead of creating it.
    """
    provider = master_key if master_key is not None else provider_from_settings(settings)
    provider.current_key()  # fail now, not on the first write, if the key is unavailable
    database = Database(settings.database_url, settings, create=create_schema)
    try:
        ensure_schema(database, create=create_schema)
        check_master_key(database, provider)
    except MasterKeyError as error:
        database.close()
        # An authentication failure the audit log cannot record: without the right master
        # key there is no signing key. Say it where operators look instead.
        log.warning(
            "authentication failure: master key %s refused for %s (actor %s): %s",
            provider.current_key().kek_id,
            safe_url(database.url),
            settings.actor,
            error,
        )
        raise
    except BaseException:
        database.close()
        raise
    store = SecureStore(database, provider, settings)
    store_parts(store).audit.prepare()
    return store
