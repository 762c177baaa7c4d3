"""The parts a :class:`~secure_kv.store.SecureStore` is made of, as one object, and the
one place that hands them out (see store/internals.py, the interface admin code uses).

At the bottom of the store package: its other modules import this one, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from secure_kv.audit.log import AuditLog
from secure_kv.categories import Category, parse_category
from secure_kv.keys import MasterKeyProvider
from secure_kv.settings import Settings
from secure_kv.sql.database import Database
from secure_kv.sql.statements import Statements
from secure_kv.store.datakeys import DataKeys

__all__ = ["HasParts", "StoreParts", "record_event", "store_parts"]


class HasParts(Protocol):
    """A :class:`~secure_kv.store.SecureStore`, as this module sees it (no import cycle)."""

    def _internal_parts(self) -> StoreParts: ...


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


def store_parts(store: HasParts) -> StoreParts:
    """The parts of ``store``; call ``check_open()`` on them before using them for a call
    that must refuse a closed store (``record_event`` does)."""
    # The one sanctioned reach-in: SecureStore keeps its parts private to its users, and
    # hands them to the package's own admin code here and nowhere else.
    return store._internal_parts()  # noqa: SLF001


def record_event(
    store: HasParts,
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
