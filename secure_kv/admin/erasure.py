"""Deleting data for good: purging expired entries, and shredding a whole workspace.

Shred (crypto-shredding) works in three steps, each safe to interrupt:

1. One transaction sets ``wrapped = NULL`` on every data key of the workspace up to its
   current version. The key material is gone from the database at that instant: ``get``
   returns ``None`` for every record sealed under those keys, and a process that had one
   of them cached keeps it for at most its cache age (and only until the record is
   deleted in step 2).
2. The records under those versions are deleted in batches, one transaction each, so
   other writers are never blocked for long.
3. The destroyed key rows are deleted, once no record names them (``retirement.py``): a
   process that cached a key before step 1 may still have written a record under it.

The workspace row stays, so its data-key versions never start again at 1 (a cached
(workspace, version) pair always means one key). A write after step 1 creates the next
version, a fresh key: the workspace starts empty. Running shred again finishes an
interrupted one (and destroys any key created since).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from secure_kv._clock import now_micros
from secure_kv.admin.retirement import lock_data_keys, retire_when_unreferenced, try_transaction
from secure_kv.errors import InvalidInputError, StorageError
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.sql import statements
from secure_kv.store import SecureStore
from secure_kv.store.internals import StoreParts, record_event, store_parts
from secure_kv.validation import check_workspace_name

log = logging.getLogger("secure_kv")

__all__ = ["PurgeReport", "ShredReport", "purge", "shred"]

DEFAULT_BATCH_RECORDS = 1000


@dataclass(frozen=True)
class ShredReport:
    """What :func:`shred` did."""

    workspace: str
    #: data keys whose material this run destroyed (0 when finishing an earlier run)
    destroyed_keys: int
    #: highest data-key version destroyed; later writes use newer versions
    up_to_version: int
    deleted_records: int
    deleted_keys: int
    seconds: float


def shred(
    store: SecureStore,
    workspace: str,
    *,
    batch_size: int = DEFAULT_BATCH_RECORDS,
    progress: Progress = NO_PROGRESS,
) -> ShredReport:
    """Crypto-shred ``workspace``: destroy its data keys at once, then delete its records
    and the keys' rows. Raises :class:`InvalidInputError` if there is no such workspace.
    """
    started = time.monotonic()
    name = check_workspace_name(workspace)
    parts = store_parts(store)
    workspace_id, up_to, destroyed = _destroy_data_keys(store, parts, name, workspace)
    parts.data_keys.forget_workspace(name, workspace_id)
    deletion = _Deletion(store, parts, workspace, workspace_id, up_to, batch_size)
    progress.start(deletion.count(), f"deleting the records of {workspace}")
    deletion.run(progress)
    parts.data_keys.forget_workspace(name, workspace_id)
    if parts.database.dialect_name == "sqlite":
        _empty_sqlite_wal(parts, workspace)
    return ShredReport(
        workspace=workspace,
        destroyed_keys=destroyed,
        up_to_version=up_to,
        deleted_records=deletion.deleted,
        deleted_keys=deletion.deleted_keys,
        seconds=time.monotonic() - started,
    )


def _destroy_data_keys(
    store: SecureStore, parts: StoreParts, name: bytes, workspace: str
) -> tuple[int, int, int]:
    """Step 1: destroy the material of every data key up to the current version and record
    "admin.shred", in one transaction. The workspace row is locked first, so no key version
    is made current while the keys are destroyed. Returns (workspace id, highest version
    destroyed, keys destroyed)."""
    with parts.database.connect(lock=True) as connection, connection.begin():
        row = connection.execute(statements.select_workspace(name, lock=True)).first()
        if row is None:
            raise InvalidInputError(f"no workspace named {workspace!r} in this store")
        workspace_id, up_to = int(row[0]), int(row[1])
        destroyed = connection.execute(statements.destroy_data_keys(workspace_id, up_to)).rowcount
        record_event(
            store,
            "admin.shred",
            connection=connection,
            workspace=workspace,
            dek_version=up_to,
            detail=f"destroyed {destroyed} data key(s), versions up to {up_to}",
        )
    return workspace_id, up_to, destroyed


class _Deletion:
    """Steps 2 and 3 of a shred: the records under the destroyed versions, then the key
    rows, once no record names them."""

    def __init__(
        self,
        store: SecureStore,
        parts: StoreParts,
        workspace: str,
        workspace_id: int,
        up_to: int,
        batch_size: int,
    ) -> None:
        self.store = store
        self.database = parts.database
        self.workspace = workspace
        self.workspace_id = workspace_id
        self.up_to = up_to
        self.batch_size = batch_size
        self.deleted = 0
        self.deleted_keys = 0

    def count(self) -> int:
        """The records to delete: the progress bar's total."""
        with self.database.connect() as connection, connection.begin():
            query = statements.count_records_through(self.workspace_id, self.up_to)
            return int(connection.execute(query).scalar_one())

    def run(self, progress: Progress) -> None:
        """Sweep and retire until the key rows are gone; a writer that cached a destroyed key
        may add records meanwhile (``retirement.py``), so give up, saying to run the shred
        again, after the patience such a writer needs to drop its key."""
        retire_when_unreferenced(
            lambda: self.sweep(progress),
            self.finish,
            patience=max(30.0, 2 * self.store.settings.dek_cache_seconds),
            stuck=lambda: StorageError(
                f"workspace {self.workspace!r}: a process keeps writing under its destroyed data keys "
                "(it cached them before the shred); run the shred again"
            ),
        )

    def sweep(self, progress: Progress) -> None:
        """Step 2: a pass over the records, a page per transaction, so other writers are
        never blocked for long; each page is one bounded range delete ending at its
        ``batch_size``-th key."""
        workspace_id, up_to = self.workspace_id, self.up_to
        after = b""
        with self.database.connect(lock=True) as connection:
            while True:
                with connection.begin():
                    last = connection.execute(
                        statements.select_page_end(workspace_id, up_to, after, self.batch_size)
                    ).scalar()
                    count = connection.execute(
                        statements.delete_records_through(workspace_id, up_to, after=after, last=last)
                    ).rowcount
                self.deleted += count
                progress.advance(count)
                if last is None:
                    return
                after = bytes(last)

    def finish(self) -> bool | None:
        """Step 3, in one transaction (see :meth:`delete_keys`)."""
        with self.database.connect(lock=True) as connection:
            return try_transaction(self.database, connection, self.delete_keys)

    def delete_keys(self, connection: sa.Connection) -> bool:
        """Delete the last stragglers and the key rows, and record "admin.shred_complete",
        the key rows locked first so no writer slips a record in; ``False`` when more
        stragglers remain than one batch (sweep again first)."""
        workspace_id, up_to = self.workspace_id, self.up_to
        lock_data_keys(connection, workspace_id, up_to)
        stragglers = connection.execute(
            statements.count_records_through(workspace_id, up_to, cap=self.batch_size + 1)
        ).scalar_one()
        if stragglers > self.batch_size:
            return False
        count = connection.execute(statements.delete_records_through(workspace_id, up_to)).rowcount
        self.deleted_keys = connection.execute(statements.delete_data_keys(workspace_id, up_to)).rowcount
        self.deleted += count
        record_event(
            self.store,
            "admin.shred_complete",
            connection=connection,
            workspace=self.workspace,
            dek_version=up_to,
            detail=f"deleted {self.deleted} record(s) and {self.deleted_keys} destroyed data key(s)",
        )
        return True


def _empty_sqlite_wal(parts: StoreParts, workspace: str) -> None:
    """The WAL still holds earlier images of the pages with the wrapped keys: copy the
    current pages back and empty it, so no file in the directory keeps them (or warn that
    another connection kept it busy)."""
    if parts.database.truncate_sqlite_wal():
        log.warning(
            "shred of workspace %r: another connection kept the SQLite WAL busy, so it still "
            "holds old copies of the destroyed keys until its next checkpoint; close the "
            "other processes' stores (or run the shred again) to empty it",
            workspace,
        )


@dataclass(frozen=True)
class PurgeReport:
    """What :func:`purge` did."""

    deleted: int
    #: entries deleted per workspace
    workspaces: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def purge(
    store: SecureStore, *, batch_size: int = DEFAULT_BATCH_RECORDS, progress: Progress = NO_PROGRESS
) -> PurgeReport:
    """Delete every entry that had expired when the purge began, in batches.

    An entry rewritten with a new expiry meanwhile is kept: each delete re-checks
    ``expires_at``.
    """
    started = time.monotonic()
    now = now_micros()
    parts = store_parts(store)
    with parts.database.connect() as connection, connection.begin():
        total = connection.execute(statements.count_expired(now)).scalar_one()
    progress.start(total, "deleting expired entries")
    per_workspace = _delete_expired(store, parts, now, batch_size, progress)
    return PurgeReport(
        deleted=sum(per_workspace.values()),
        workspaces=dict(per_workspace),
        seconds=time.monotonic() - started,
    )


def _delete_expired(
    store: SecureStore, parts: StoreParts, now: int, batch_size: int, progress: Progress
) -> Counter[str]:
    """The entries expired at ``now``, a page per transaction (progress after each commit,
    so an interrupted purge has deleted whole pages); the count deleted per workspace.

    MySQL/MariaDB walk the primary key once (they have no partial expiry index); the
    others take the first page of the expiry index each time (see
    :func:`statements.select_expired`).
    """
    walk_primary_key = parts.database.dialect_name == "mysql"
    per_workspace: Counter[str] = Counter()
    after: tuple[int, bytes] = (-1, b"")
    with parts.database.connect(lock=True) as connection:
        while True:
            with connection.begin():
                query = statements.select_expired(now, batch_size, after=after if walk_primary_key else None)
                rows = connection.execute(query).all()
                if not rows:
                    break
                _delete_page(store, connection, rows, now, per_workspace)
            after = (rows[-1][0], bytes(rows[-1][1]))
            progress.advance(len(rows))
    return per_workspace


def _delete_page(
    store: SecureStore, connection: sa.Connection, rows: Sequence[Any], now: int, per_workspace: Counter[str]
) -> None:
    """Delete one page's entries: per workspace, one delete (which re-checks the expiry)
    and one "admin.purge" event naming the count, in the page's transaction."""
    batch: dict[int, tuple[str, list[bytes]]] = {}
    for workspace_id, key, raw_name in rows:
        shown = bytes(raw_name).decode("utf-8", "replace")
        batch.setdefault(workspace_id, (shown, []))[1].append(bytes(key))
    for workspace_id, (shown, keys) in batch.items():
        count = connection.execute(statements.delete_expired(workspace_id, keys, now)).rowcount
        if count:
            per_workspace[shown] += count
            record_event(
                store,
                "admin.purge",
                connection=connection,
                workspace=shown,
                detail=f"deleted {count} expired entries",
            )
