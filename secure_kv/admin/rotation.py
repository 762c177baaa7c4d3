"""Key rotation, online and resumable.

Master key (:func:`rotate_master`): every data key (DEK) wrapped by another master key is
unwrapped with it (the provider's previous keys) and wrapped again under the current one.
One row update per DEK, each atomic, so a crash leaves every DEK wrapped by one key or the
other and a rerun picks up the rest. Records are not touched: the cost grows with the
number of workspaces (and their DEK versions), not of records.

Workspace key (:func:`rotate_workspace`): a new DEK version becomes current, then every
record under an older version is opened and sealed again under the new one, in batches of
one transaction each, then the old versions' rows are deleted (see ``retirement.py``). A
rerun after a crash resumes with the version the crashed run created. Readers and writers
keep working throughout: a record is readable under either version at every instant, and
each process moves its new writes to the new version once its cached copy of the current
key ages out (``SECURE_KV_DEK_CACHE_SECONDS``), or at once when the old version's row is
gone and the foreign key refuses its write.

Re-encryption keeps a record's category, expiry, ``created_at`` and ``updated_at``:
``updated_at`` says when the application last wrote the value, which a rotation does not
change (the row's ``dek_version`` tells which key sealed it). A record is rewritten only if
it still holds the exact sealed value that was read: its first 34 bytes (the header, with
the seal's random salt and nonce) are compared in the UPDATE, so a concurrent write is
never overwritten with the older value; a record written meanwhile under the old key is
picked up by the next sweep.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from secure_kv._clock import now_micros
from secure_kv.admin.retirement import lock_data_keys, retire_when_unreferenced, try_transaction
from secure_kv.audit.signing_keys import replace_signing_keys
from secure_kv.categories import CODE_BY_VALUE
from secure_kv.envelope import (
    HEADER_BYTES,
    DataKey,
    record_contexts,
    reseal_value,
    rewrap_data_key,
    row_in_domain,
)
from secure_kv.errors import (
    AuthenticationError,
    InvalidInputError,
    SecureKVError,
    StorageError,
    UnsupportedVersionError,
)
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.sql.schema import audit_signing_keys, data_keys, records, workspaces
from secure_kv.sql.statements import Statement
from secure_kv.store import SecureStore
from secure_kv.store.datakeys import MissingDataKeyError
from secure_kv.validation import check_workspace_name

__all__ = [
    "DataKeyFailure",
    "MasterRotation",
    "WorkspaceRotation",
    "WorkspaceRotations",
    "rotate_master",
    "rotate_workspace",
    "rotate_workspaces",
]

# Records per re-encryption batch (one transaction; on SQLite, writers wait for one batch).
DEFAULT_BATCH_RECORDS = 1000
# Data keys rewrapped per transaction by a master rotation.
DEFAULT_BATCH_KEYS = 500
# Values up to this size come with the batch query; larger ones are fetched one at a time,
# so a batch holds at most batch size x this much, however large the values grow.
INLINE_VALUE_BYTES = 16 * 1024
# Fresh data-key versions a workspace rotation tries to create before giving up.
_MAX_TARGET_ATTEMPTS = 8

_d, _r, _w = data_keys.c, records.c, workspaces.c


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "replace"))


def _being_shredded(name: bytes) -> StorageError:
    return StorageError(
        f"workspace {_show(name)} is being shredded: run `secure-kv shred` on it again to finish"
    )


def _patience(store: SecureStore) -> float:
    # Writers that cached a retired key move off it within their cache age.
    return max(30.0, 2 * store.settings.dek_cache_seconds)


# --- master key -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataKeyFailure:
    """A data key that could not be rewrapped, and why (never key material)."""

    workspace: str
    version: int
    kek_id: str
    reason: str


@dataclass(frozen=True)
class MasterRotation:
    """What :func:`rotate_master` did."""

    kek_id: str
    rewrapped: int
    already_current: int
    failed: tuple[DataKeyFailure, ...]
    #: live data keys still wrapped by another master key afterwards, by kek_id
    remaining: dict[str, int]
    seconds: float
    #: new audit signing keys created under the current master key (0 or 1)
    signing_keys_created: int = 0
    #: old audit signing keys retired: seed destroyed, public half kept to verify old events
    signing_keys_retired: int = 0
    #: audit signing keys still wrapped by another master key afterwards
    signing_keys_remaining: int = 0

    @property
    def complete(self) -> bool:
        """Every live data key and audit signing key is wrapped by the current master key."""
        return not self.failed and not self.remaining and not self.signing_keys_remaining


def rotate_master(
    store: SecureStore, *, batch_size: int = DEFAULT_BATCH_KEYS, progress: Progress = NO_PROGRESS
) -> MasterRotation:
    """Rewrap every data key under the provider's current master key, and replace the
    audit signing key (old seeds destroyed, old public halves kept to verify old events).

    Keys wrapped by a master key the provider does not hold, or that fail authentication,
    are reported in ``failed`` and left as they are; the rest are rewrapped. Idempotent.
    """
    started = time.monotonic()
    provider = store._provider
    current = provider.current_key()
    database = store._db
    live = _d.wrapped.isnot(None)
    pending = sa.and_(live, _d.kek_id != current.kek_id)
    # A compare-and-set: the row is rewritten only if it still holds what was read (not
    # shredded, retired or rewrapped by another run meanwhile).
    rewrap = Statement(
        sa.update(data_keys)
        .where(
            _d.workspace_id == sa.bindparam("b_workspace"),
            _d.version == sa.bindparam("b_version"),
            _d.kek_id == sa.bindparam("b_old_kek"),
            _d.wrapped == sa.bindparam("b_old_wrapped"),
        )
        .values(kek_id=sa.bindparam("b_new_kek"), wrapped=sa.bindparam("b_new_wrapped")),
        database.engine.dialect,
        ("b_new_kek", "b_new_wrapped", "b_workspace", "b_version", "b_old_kek", "b_old_wrapped"),
    )
    failures: list[DataKeyFailure] = []
    rewrapped = 0
    with database.connect(lock=True) as connection:
        with connection.begin():
            total = connection.execute(sa.select(sa.func.count()).where(pending)).scalar_one()
            already = connection.execute(
                sa.select(sa.func.count()).where(live, _d.kek_id == current.kek_id)
            ).scalar_one()
        progress.start(total, f"rewrapping data keys under master key {current.kek_id}")
        after = (-1, -1)
        while True:
            with connection.begin():
                rows = connection.execute(
                    sa.select(_d.workspace_id, _d.version, _d.kek_id, _d.wrapped, _w.name)
                    .join(workspaces, _w.id == _d.workspace_id)
                    .where(
                        pending,
                        sa.or_(
                            _d.workspace_id > after[0],
                            sa.and_(_d.workspace_id == after[0], _d.version > after[1]),
                        ),
                    )
                    .order_by(_d.workspace_id, _d.version)
                    .limit(batch_size)
                ).all()
                for workspace_id, version, kek_id, wrapped, raw_name in rows:
                    name = bytes(raw_name)
                    shown = name.decode("utf-8", "replace")
                    old = provider.find(kek_id)
                    if old is None:
                        failures.append(
                            DataKeyFailure(
                                shown, version, kek_id, "its master key is not among the provider's keys"
                            )
                        )
                        continue
                    try:
                        new_wrapped = rewrap_data_key(old, current, bytes(wrapped), name, version)
                    except (AuthenticationError, UnsupportedVersionError) as error:
                        failures.append(DataKeyFailure(shown, version, kek_id, str(error)))
                        continue
                    changed = rewrap.run(
                        connection.connection,
                        current.kek_id,
                        new_wrapped,
                        workspace_id,
                        version,
                        kek_id,
                        bytes(wrapped),
                    )
                    if changed:  # else shredded, retired or rewrapped meanwhile: nothing to do
                        rewrapped += 1
                        store._record_event(
                            "datakey.rewrap",
                            connection=connection,
                            workspace=shown,
                            dek_version=version,
                            detail=f"master key {kek_id} -> {current.kek_id}",
                        )
            if not rows:
                break
            after = (rows[-1][0], rows[-1][1])
            progress.advance(len(rows))
        # The audit log's signing keys: whoever holds a leaked old master key and any copy
        # of the database has unwrapped their seeds, so rewrapping them would let them go on
        # signing. A new key replaces them; the old seeds are destroyed, their public
        # halves kept (authenticated under the current master key) to verify old events.
        with connection.begin():
            signing = replace_signing_keys(connection, provider, now_micros())
        store._audit.signing_keys_replaced()
        with connection.begin():
            remaining = {
                kek_id: count
                for kek_id, count in connection.execute(
                    sa.select(_d.kek_id, sa.func.count()).where(pending).group_by(_d.kek_id)
                ).all()
            }
            signing_remaining = connection.execute(
                sa.select(sa.func.count())
                .select_from(audit_signing_keys)
                .where(audit_signing_keys.c.kek_id != current.kek_id)
            ).scalar_one()
    report = MasterRotation(
        kek_id=current.kek_id,
        rewrapped=rewrapped,
        already_current=already,
        failed=tuple(failures),
        remaining=remaining,
        seconds=time.monotonic() - started,
        signing_keys_created=signing.created,
        signing_keys_retired=signing.retired,
        signing_keys_remaining=int(signing_remaining),
    )
    store._record_event(
        "admin.rotate_master",
        dek_version=None,
        outcome="ok" if report.complete else "incomplete",
        detail=f"{rewrapped} data keys rewrapped under master key {current.kek_id}, "
        f"{len(failures)} failed, {sum(remaining.values())} still under other master keys; "
        f"audit signing keys: {signing.created} created, {signing.retired} retired",
    )
    return report


# --- workspace key ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceRotation:
    """What :func:`rotate_workspace` did for one workspace."""

    workspace: str
    #: versions retired (their records moved to ``to_version``)
    from_versions: tuple[int, ...]
    #: the current version afterwards; ``None`` if the workspace had no data key
    to_version: int | None
    #: true when this run finished a rotation that an earlier, interrupted run began
    resumed: bool
    #: records sealed again by this run
    records: int
    seconds: float


@dataclass(frozen=True)
class _WorkspaceState:
    workspace_id: int
    last_version: int
    live_versions: tuple[int, ...]
    destroyed: bool


def _workspace_state(connection: sa.Connection, name: bytes) -> _WorkspaceState | None:
    row = connection.execute(sa.select(_w.id, _w.last_dek_version).where(_w.name == name)).first()
    if row is None:
        return None
    keys = connection.execute(
        sa.select(_d.version, _d.wrapped.is_(None)).where(_d.workspace_id == row[0]).order_by(_d.version)
    ).all()
    return _WorkspaceState(
        workspace_id=int(row[0]),
        last_version=int(row[1]),
        live_versions=tuple(int(version) for version, destroyed in keys if not destroyed),
        destroyed=any(bool(destroyed) for _, destroyed in keys),
    )


class _Reencryption:
    """Moves one workspace's records from older data-key versions to ``target``."""

    def __init__(
        self, store: SecureStore, state: _WorkspaceState, name: bytes, target: DataKey, batch_size: int
    ) -> None:
        self.store = store
        self.database = store._db
        self.keys = store._keys
        self.workspace_id = state.workspace_id
        self.name = name
        self.target = target
        self.batch_size = batch_size
        self.resealed = 0
        # Compiled once and run with the driver's executemany: SQLAlchemy's per-row
        # parameter handling would cost more than the cryptography.
        self.update = Statement(
            sa.update(records)
            .where(
                _r.workspace_id == sa.bindparam("b_workspace"),
                _r.record_key == sa.bindparam("b_key"),
                # The row still holds the very seal we opened (see the module docstring).
                sa.func.substr(_r.value, sa.literal_column("1"), sa.literal_column(str(HEADER_BYTES)))
                == sa.bindparam("b_header"),
            )
            .values(dek_version=sa.bindparam("b_version"), value=sa.bindparam("b_sealed")),
            store._db.engine.dialect,
            # SET before WHERE: SQLite's positional parameters then need no reordering.
            ("b_version", "b_sealed", "b_workspace", "b_key", "b_header"),
        )
        self.select = Statement(
            sa.select(
                _r.record_key,
                _r.category,
                _r.dek_version,
                _r.expires_at,
                sa.case(
                    (sa.func.length(_r.value) <= sa.literal_column(str(INLINE_VALUE_BYTES)), _r.value),
                    else_=sa.null(),
                ),
            )
            .where(
                _r.workspace_id == sa.bindparam("b_workspace"),
                _r.dek_version < sa.bindparam("b_target"),
                _r.record_key > sa.bindparam("b_after"),
            )
            .order_by(_r.record_key)
            .limit(sa.bindparam("b_limit"))
            # Explicit, so SQLite's compiler adds no OFFSET parameter of its own.
            .offset(sa.literal_column("0")),
            store._db.engine.dialect,
            ("b_workspace", "b_target", "b_after", "b_limit"),
        )
        self.old_keys: dict[int, DataKey] = {}
        self.context = record_contexts(name)

    def select_batch(self, connection: sa.Connection, after: bytes, limit: int) -> list[Any]:
        """Up to ``limit`` records still under an older version, after key ``after``."""
        return self.select.fetchall(
            connection.connection, self.workspace_id, self.target.version, after, limit
        )

    def reseal_rows(self, connection: sa.Connection, rows: Sequence[Any]) -> int:
        """Seal ``rows`` again under the target key and write them (if still unchanged)."""
        changes = []
        target, workspace_id, context = self.target, self.workspace_id, self.context
        for key, category, version, expires_at, blob in rows:
            key = bytes(key)
            if blob is None:  # a large value: fetched on its own, with the metadata it was
                # sealed with (a writer may have replaced the row since the batch was read)
                fetched = connection.execute(
                    sa.select(_r.category, _r.expires_at, _r.value).where(
                        _r.workspace_id == workspace_id, _r.record_key == key, _r.dek_version == version
                    )
                ).first()
                if fetched is None:
                    continue  # deleted or rewritten under the new key meanwhile
                category, expires_at, blob = fetched
            if not row_in_domain(version, expires_at, blob):
                raise self.tampered(key)  # a cell no secure_kv writes (SQLite stores anything)
            blob = bytes(blob)
            code = CODE_BY_VALUE.get(category)
            old = self.old_keys.get(version) or self.old_key(key, version)
            if code is None:
                raise self.tampered(key)
            try:
                sealed = reseal_value(old, target, context(key, code, expires_at), blob)
            except AuthenticationError:
                raise self.tampered(key) from None
            sealed = self.database.sendable(sealed)
            changes.append((target.version, sealed, workspace_id, key, blob[:HEADER_BYTES]))
        if changes:
            self.update.run_many(connection.connection, changes)
        return len(changes)

    def old_key(self, key: bytes, version: int) -> DataKey:
        """The data key of an older version (cached for the whole rotation)."""
        try:
            found = self.keys.version(self.workspace_id, self.name, version)
        except MissingDataKeyError:
            raise self.tampered(key) from None
        if found is None:
            raise _being_shredded(self.name)
        self.old_keys[version] = found
        return found

    def tampered(self, key: bytes) -> AuthenticationError:
        return AuthenticationError(
            f"record {_show(key)} of workspace {_show(self.name)} failed authentication, so the "
            "rotation stopped (records already moved stay readable): delete or restore that "
            "record, then run the rotation again"
        )

    def sweep(self, progress: Progress) -> None:
        """One pass over every record still under an older version, a batch at a time."""
        after = b""
        with self.database.connect(lock=True) as connection:
            while True:
                with connection.begin():
                    rows = self.select_batch(connection, after, self.batch_size)
                    if not rows:
                        return
                    self.resealed += self.reseal_rows(connection, rows)
                after = bytes(rows[-1][0])
                progress.advance(len(rows))

    def finish(self) -> bool | None:
        """Move the last stragglers and delete the old versions' rows, in one transaction."""
        retired = sa.and_(_d.workspace_id == self.workspace_id, _d.version < self.target.version)

        def work(connection: sa.Connection) -> bool:
            lock_data_keys(connection, retired)
            rows = self.select_batch(connection, b"", self.batch_size + 1)
            if len(rows) > self.batch_size:
                return False  # a writer added many: sweep again first
            self.resealed += self.reseal_rows(connection, rows)
            versions = [int(v) for v in connection.execute(sa.select(_d.version).where(retired)).scalars()]
            connection.execute(sa.delete(data_keys).where(retired))
            self.store._record_event(
                "datakey.retire",
                connection=connection,
                workspace=self.name.decode("utf-8", "replace"),
                dek_version=self.target.version,
                detail=f"retired versions {versions}; records now under version {self.target.version}",
            )
            return True

        with self.database.connect(lock=True) as connection:
            return try_transaction(self.database, connection, work)


def rotate_workspace(
    store: SecureStore,
    workspace: str,
    *,
    batch_size: int = DEFAULT_BATCH_RECORDS,
    progress: Progress = NO_PROGRESS,
) -> WorkspaceRotation:
    """Make a new data key current for ``workspace`` and re-encrypt its records under it.

    Resumes an interrupted rotation instead of starting another. Raises
    :class:`InvalidInputError` for a workspace that does not exist, and
    :class:`AuthenticationError` naming a record that fails authentication (the records
    already moved stay so; delete or restore that record and run it again).
    """
    started = time.monotonic()
    name = check_workspace_name(workspace)
    database = store._db
    with database.connect() as connection, connection.begin():
        state = _workspace_state(connection, name)
    if state is None:
        raise InvalidInputError(f"no workspace named {workspace!r} in this store")
    if state.destroyed:
        raise _being_shredded(name)
    if not state.live_versions:
        return WorkspaceRotation(workspace, (), None, False, 0, time.monotonic() - started)
    resumed = state.last_version in state.live_versions and state.live_versions[0] < state.last_version
    target = _fresh_target(store, state, name, workspace, resume=resumed)
    if target is None:
        raise _being_shredded(name)
    if target.version != state.last_version:
        resumed = False
    target_version = target.version
    store._keys.forget_current(name)  # this process writes under the new key at once
    with database.connect() as connection, connection.begin():
        moved_before = connection.execute(
            sa.select(sa.func.count()).where(
                _r.workspace_id == state.workspace_id, _r.dek_version >= target_version
            )
        ).scalar_one()
        retiring = tuple(
            int(v)
            for v in connection.execute(
                sa.select(_d.version).where(
                    _d.workspace_id == state.workspace_id, _d.version < target_version
                )
            ).scalars()
        )
    progress.describe(f"re-encrypting {workspace}")
    progress.advance(moved_before)  # records an interrupted run (or new writes) already moved
    job = _Reencryption(store, state, name, target, batch_size)
    retire_when_unreferenced(
        lambda: job.sweep(progress),
        job.finish,
        patience=_patience(store),
        stuck=lambda: StorageError(
            f"workspace {workspace!r}: a process keeps writing under data key versions "
            f"{list(retiring)} (it cached them before the rotation); run the rotation again"
        ),
    )
    return WorkspaceRotation(
        workspace=workspace,
        from_versions=retiring,
        to_version=target_version,
        resumed=resumed,
        records=job.resealed,
        seconds=time.monotonic() - started,
    )


def _fresh_target(
    store: SecureStore, state: _WorkspaceState, name: bytes, workspace: str, *, resume: bool
) -> DataKey | None:
    """The data key to re-encrypt under: one created under the current master key.

    An interrupted run's key is resumed only if it was created under the current master key;
    a key found at the pointer that was not (rewrapped by a master rotation, or planted by
    someone holding a previous master key) is never adopted: a fresh version is created.
    ``None`` if the workspace is being shredded.
    """
    keys = store._keys
    if resume:
        found = keys.version(state.workspace_id, name, state.last_version)
        if found is None or keys.writable(found):
            return found
    for _ in range(_MAX_TARGET_ATTEMPTS):
        version = _create_version(store, state, name, workspace)
        found = keys.version(state.workspace_id, name, version)
        if found is None or keys.writable(found):
            return found
        state = _WorkspaceState(state.workspace_id, version, state.live_versions, state.destroyed)
    raise StorageError(
        f"workspace {workspace!r}: could not create a data key under the current master key "
        "(its newest versions keep changing); run the rotation again"
    )


def _create_version(store: SecureStore, state: _WorkspaceState, name: bytes, workspace: str) -> int:
    """Create the next data-key version and make it current; return the current version."""
    version = state.last_version + 1
    # Records its own "datakey.create" audit event, in the transaction that creates the key.
    store._keys.create_version(state.workspace_id, name, version)
    with store._db.connect() as connection:
        with connection.begin():
            current = connection.execute(
                sa.select(_w.last_dek_version).where(_w.id == state.workspace_id)
            ).scalar_one()
    return int(current)


@dataclass(frozen=True)
class WorkspaceRotations:
    """What :func:`rotate_workspaces` did: one entry per workspace, and the failures."""

    rotations: tuple[WorkspaceRotation, ...]
    #: (workspace, one-line reason) for each workspace that could not be rotated
    failed: tuple[tuple[str, str], ...]
    seconds: float

    @property
    def records(self) -> int:
        return sum(rotation.records for rotation in self.rotations)


def rotate_workspaces(
    store: SecureStore,
    names: Sequence[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_RECORDS,
    progress: Progress = NO_PROGRESS,
) -> WorkspaceRotations:
    """Rotate each workspace in ``names`` (``None``: every workspace with a data key).

    A workspace that fails is reported and the others go on.
    """
    started = time.monotonic()
    database = store._db
    with database.connect() as connection, connection.begin():
        if names is None:
            rows = connection.execute(
                sa.select(_w.name).where(sa.exists().where(_d.workspace_id == _w.id)).order_by(_w.name)
            ).scalars()
            names = [bytes(raw).decode("utf-8", "replace") for raw in rows]
            total = connection.execute(sa.select(sa.func.count()).select_from(records)).scalar_one()
        else:
            encoded = [check_workspace_name(name) for name in names]
            total = connection.execute(
                sa.select(sa.func.count())
                .select_from(records.join(workspaces, _w.id == _r.workspace_id))
                .where(_w.name.in_(encoded))
            ).scalar_one()
    progress.start(total, "re-encrypting records")
    rotations: list[WorkspaceRotation] = []
    failed: list[tuple[str, str]] = []
    for name in names:
        try:
            rotations.append(rotate_workspace(store, name, batch_size=batch_size, progress=progress))
        except SecureKVError as error:
            failed.append((name, str(error)))
    return WorkspaceRotations(tuple(rotations), tuple(failed), time.monotonic() - started)
