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

from secure_kv.categories import Category
from secure_kv.store.parts import StoreParts, record_event, store_parts
from secure_kv.store.secure_store import open_store
from secure_kv.store.workspace import Workspace

__all__ = ["StoreParts", "open_store", "read_with_category", "record_event", "store_parts"]


def read_with_category(workspace: Workspace, key: str) -> tuple[bytes, Category] | None:
    """``workspace.get(key)`` with the entry's category, read from the same row (the
    operator's ``get`` masks a token by it)."""
    # The second sanctioned reach-in: the read itself is Workspace's own code.
    return workspace._read(key)  # noqa: SLF001
