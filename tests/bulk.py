"""Filling a workspace with many records quickly, for tests and benchmarks.

``Workspace.set`` commits each record on its own, which is right for an application and
slow for building a workspace of 100,000 records. :func:`fill_workspace` seals records
exactly as ``set`` does (same data key, same context, same layout) and inserts them in
large batches, one transaction each, so they read back through ``get`` like any other.

Kept out of the wheel (it was ``secure_kv.testing.bulk``): it writes tokens without their
audit events, which no application should be able to do through an installed package.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from secure_kv.categories import CATEGORY_CODES, Category, parse_category
from secure_kv.envelope import record_context, seal_value
from secure_kv.sql.schema import records
from secure_kv.store import SecureStore
from secure_kv.store.datakeys import now_micros
from secure_kv.store.internals import store_parts
from secure_kv.validation import check_key, check_workspace_name

__all__ = ["default_value", "fill_workspace", "record_name"]


def record_name(index: int) -> str:
    return f"record-{index:08d}"


def default_value(index: int) -> bytes:
    return f"value of record {index}".encode()


def fill_workspace(
    store: SecureStore,
    workspace: str,
    count: int,
    *,
    start: int = 0,
    key: Callable[[int], str] = record_name,
    value: Callable[[int], bytes] = default_value,
    category: Category | str = Category.PREFERENCE,
    batch_size: int = 5000,
) -> None:
    """Insert records ``key(i)`` = ``value(i)`` for ``i`` in ``start .. start+count-1``.

    The keys must not exist yet. Sealed under the workspace's current data key.
    """
    name = check_workspace_name(workspace)
    chosen = parse_category(category)
    code = CATEGORY_CODES[chosen]
    parts = store_parts(store)
    database = parts.database
    workspace_id, data_key = parts.data_keys.current(name)
    statement = sa.insert(records)
    with database.connect(lock=True) as connection:
        for first in range(start, start + count, batch_size):
            rows = []
            now = now_micros()
            for index in range(first, min(first + batch_size, start + count)):
                key_bytes = check_key(key(index))
                sealed = seal_value(data_key, record_context(name, key_bytes, code, None), value(index))
                rows.append(
                    {
                        "workspace_id": workspace_id,
                        "record_key": key_bytes,
                        "category": chosen.value,
                        "dek_version": data_key.version,
                        "created_at": now,
                        "updated_at": now,
                        "expires_at": None,
                        "value": database.sendable(sealed),
                    }
                )
            with connection.begin():
                connection.execute(statement, rows)
