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
from dataclasses import dataclass, field

import sqlalchemy as sa

from secure_kv._clock import now_micros
from secure_kv.admin.retirement import lock_data_keys, retire_when_unreferenced, try_transaction
from secure_kv.errors import InvalidInputError, StorageError
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.sql.database import SQLITE_BUSY_TIMEOUT_SECONDS
from secure_kv.sql.schema import data_keys, records, workspaces
from secure_kv.store import SecureStore
from secure_kv.validation import check_workspace_name

log = logging.getLogger("secure_kv")

__all__ = ["PurgeReport", "ShredReport", "purge", "shred"]

DEFAULT_BATCH_RECORDS = 1000

_d, _r, _w = data_keys.c, records.c, workspaces.c


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
    database = store._db
    with database.connect(lock=True) as connection, connection.begin():
        row = connection.execute(
            # Locked, so no key version is made current while we destroy the keys.
            sa.select(_w.id, _w.last_dek_version).where(_w.name == name).with_for_update()
        ).first()
        if row is None:
            raise InvalidInputError(f"no workspace named {workspace!r} in this store")
        workspace_id, up_to = int(row[0]), int(row[1])
        destroyed = connection.execute(
            sa.update(data_keys)
            .where(_d.workspace_id == workspace_id, _d.version <= up_to, _d.wrapped.isnot(None))
            .values(wrapped=None)
        ).rowcount
        store._record_event(
            "admin.shred",
            connection=connection,
            workspace=workspace,
            dek_version=up_to,
            detail=f"destroyed {destroyed} data key(s), versions up to {up_to}",
        )
    store._keys.forget_workspace(name, workspace_id)

    doomed = sa.and_(_r.workspace_id == workspace_id, _r.dek_version <= up_to)
    with database.connect() as connection, connection.begin():
        total = connection.execute(sa.select(sa.func.count()).where(doomed)).scalar_one()
    progress.start(total, f"deleting the records of {workspace}")
    deleted = 0

    def sweep() -> None:
        nonlocal deleted
        after = b""
        with database.connect(lock=True) as connection:
            while True:
                with connection.begin():
                    # The batch ends at the batch_size-th key: one bounded range delete.
                    last = connection.execute(
                        sa.select(_r.record_key)
                        .where(doomed, _r.record_key > after)
                        .order_by(_r.record_key)
                        .offset(batch_size - 1)
                        .limit(1)
                    ).scalar()
                    bounded = [_r.record_key <= last] if last is not None else []
                    count = connection.execute(
                        sa.delete(records).where(doomed, _r.record_key > after, *bounded)
                    ).rowcount
                deleted += count
                progress.advance(count)
                if last is None:
                    return
                after = bytes(last)

    retired = sa.and_(_d.workspace_id == workspace_id, _d.version <= up_to)
    deleted_keys = 0

    def work(connection: sa.Connection) -> bool:
        nonlocal deleted, deleted_keys
        lock_data_keys(connection, retired)
        stragglers = connection.execute(
            sa.select(sa.func.count()).select_from(
                sa.select(_r.record_key).where(doomed).limit(batch_size + 1).subquery()
            )
        ).scalar_one()
        if stragglers > batch_size:
            return False
        count = connection.execute(sa.delete(records).where(doomed)).rowcount
        deleted_keys = connection.execute(sa.delete(data_keys).where(retired)).rowcount
        deleted += count
        store._record_event(
            "admin.shred_complete",
            connection=connection,
            workspace=workspace,
            dek_version=up_to,
            detail=f"deleted {deleted} record(s) and {deleted_keys} destroyed data key(s)",
        )
        return True

    def finish() -> bool | None:
        with database.connect(lock=True) as connection:
            return try_transaction(database, connection, work)

    retire_when_unreferenced(
        sweep,
        finish,
        patience=max(30.0, 2 * store.settings.dek_cache_seconds),
        stuck=lambda: StorageError(
            f"workspace {workspace!r}: a process keeps writing under its destroyed data keys "
            "(it cached them before the shred); run the shred again"
        ),
    )
    store._keys.forget_workspace(name, workspace_id)
    if database.dialect_name == "sqlite":
        # The WAL still holds earlier images of the pages with the wrapped keys: copy the
        # current pages back and empty it, so no file in the directory keeps them.
        with database.connect() as connection:
            # Wait a second for readers, not the usual busy timeout: a reader that stays
            # only delays the emptying, which the warning below tells the operator.
            connection.exec_driver_sql("PRAGMA busy_timeout=1000")
            try:
                busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").scalar()
            finally:
                connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        if busy:
            log.warning(
                "shred of workspace %r: another connection kept the SQLite WAL busy, so it still "
                "holds old copies of the destroyed keys until its next checkpoint; close the "
                "other processes' stores (or run the shred again) to empty it",
                workspace,
            )
    return ShredReport(
        workspace=workspace,
        destroyed_keys=destroyed,
        up_to_version=up_to,
        deleted_records=deleted,
        deleted_keys=deleted_keys,
        seconds=time.monotonic() - started,
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
    database = store._db
    now = now_micros()
    # "> 0": a stored expiry of -1 (or any other value no write produces) is tampering, for
    # `audit verify` to report, not an expired entry to delete.
    expired = sa.and_(_r.expires_at.isnot(None), _r.expires_at > 0, _r.expires_at <= now)
    # SQLite and PostgreSQL walk the partial expiry index: deleted rows leave it, so every
    # batch starts at its beginning. MySQL/MariaDB have no such index; they walk the
    # primary key once instead of scanning the table for every batch.
    walk_primary_key = database.dialect_name == "mysql"
    per_workspace: Counter[str] = Counter()
    with database.connect() as connection, connection.begin():
        total = connection.execute(sa.select(sa.func.count()).where(expired)).scalar_one()
    progress.start(total, "deleting expired entries")
    after: tuple[int, bytes] = (-1, b"")
    with database.connect(lock=True) as connection:
        while True:
            with connection.begin():
                query = sa.select(_r.workspace_id, _r.record_key, _w.name).join(
                    workspaces, _w.id == _r.workspace_id
                )
                if walk_primary_key:
                    query = query.where(
                        expired,
                        sa.or_(
                            _r.workspace_id > after[0],
                            sa.and_(_r.workspace_id == after[0], _r.record_key > after[1]),
                        ),
                    ).order_by(_r.workspace_id, _r.record_key)
                else:
                    query = query.where(expired).order_by(_r.expires_at)
                rows = connection.execute(query.limit(batch_size)).all()
                if not rows:
                    break
                batch: dict[int, tuple[str, list[bytes]]] = {}
                for workspace_id, key, raw_name in rows:
                    shown = bytes(raw_name).decode("utf-8", "replace")
                    batch.setdefault(workspace_id, (shown, []))[1].append(bytes(key))
                for workspace_id, (shown, keys) in batch.items():
                    count = connection.execute(
                        sa.delete(records).where(
                            _r.workspace_id == workspace_id, _r.record_key.in_(keys), expired
                        )
                    ).rowcount
                    if count:
                        per_workspace[shown] += count
                        store._record_event(
                            "admin.purge",
                            connection=connection,
                            workspace=shown,
                            detail=f"deleted {count} expired entries",
                        )
            after = (rows[-1][0], bytes(rows[-1][1]))
            progress.advance(len(rows))
    return PurgeReport(
        deleted=sum(per_workspace.values()),
        workspaces=dict(per_workspace),
        seconds=time.monotonic() - started,
    )
