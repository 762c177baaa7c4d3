"""The store's internal interface: how admin/, commands/ and audit maintenance reach a store's
parts (database, provider, settings, statements, data keys, audit log) without reading its
underscore attributes.

Package-private: not part of the public API, free to change with the code that uses it.

>>> parts = store_parts(store)                       # doctest: +SKIP
>>> parts.data_keys.forget_current(b"tenant")          # doctest: +SKIP
>>> record_event(store, "admin.purge_complete", detail="deleted 3 expired entries")  # doctest: +SKIP
>>> with open_store(settings, create_schema=False) as store: ...  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from secure_kv.audit.log import AuditLog
from secure_kv.categories import Category, parse_category
from secure_kv.errors import MasterKeyError
from secure_kv.keys import MasterKeyProvider, provider_from_settings
from secure_kv.settings import Settings
from secure_kv.sql.database import Database, safe_url
from secure_kv.sql.migrate import ensure_schema
from secure_kv.sql.statements import Statements
from secure_kv.store.datakeys import DataKeys, check_master_key

if TYPE_CHECKING:
    from secure_kv.store.secure_store import SecureStore
    from secure_kv.store.workspace import Workspace

__all__ = ["StoreParts", "open_store", "read_with_category", "record_event", "store_parts"]

log = logging.getLogger("secure_kv")


@dataclass(frozen=True, slots=True)
class StoreParts:
    """What a :class:`SecureStore` is made of; built once when the store opens."""

    database: Database
    provider: MasterKeyProvider
    settings: Settings
    statements: Statements
    data_keys: DataKeys
    audit: AuditLog
    check_open: Callable[[], None]  # raises StorageError once the store is closed


def store_parts(store: SecureStore) -> StoreParts:
    """The parts of ``store``; call ``check_open()`` on them before using them for a call
    that must refuse a closed store (``record_event`` does)."""
    # The one sanctioned reach-in: SecureStore keeps its parts private to its users, and
    # hands them to the package's own admin code here and nowhere else.
    return store._internal_parts()  # noqa: SLF001


def read_with_category(workspace: Workspace, key: str) -> tuple[bytes, Category] | None:
    """``workspace.get(key)`` with the entry's category, read from the same row (the
    operator's ``get`` masks a token by it)."""
    # The second sanctioned reach-in: the read itself is Workspace's own code.
    return workspace._read(key)  # noqa: SLF001


def record_event(
    store: SecureStore,
    action: str,
    *,
    connection: Any = None,
    workspace: str | None = None,
    key: str | None = None,
    category: Category | str | None = None,
    dek_version: int | None = None,
    outcome: str = "ok",
    detail: str | None = None,
) -> None:
    """The audit hook every admin operation reports to (never with a value).

    ``connection`` is the SQLAlchemy connection of the transaction making the change: the
    event is written in that same transaction and commits or rolls back with it. Without
    one, the event is written in a transaction of its own. Raises if the event cannot be
    written, so an admin operation never goes unrecorded.
    """
    parts = store_parts(store)
    parts.check_open()
    audit = parts.audit
    event = audit.event(
        action,
        workspace=None if workspace is None else workspace.encode("utf-8"),
        key=None if key is None else key.encode("utf-8"),
        category=None if category is None else parse_category(category).value,
        dek_version=dek_version,
        outcome=outcome,
        detail=detail,
    )
    if connection is None:
        audit.record(event)
    else:
        audit.record_in(connection, event)


def open_store(
    settings: Settings, master_key: MasterKeyProvider | None = None, *, create_schema: bool = True
) -> SecureStore:
    """Open a store with settings already loaded (the admin commands).

    ``master_key`` defaults to the provider the settings name. ``create_schema=False``
    refuses a database without the schema instead of creating it.
    """
    from secure_kv.store.secure_store import SecureStore  # here: secure_store imports this module

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
