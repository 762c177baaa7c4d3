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
from secure_kv.audit.signing_keys import SigningKeyReplacement, replace_signing_keys
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
from secure_kv.keys.base import MasterKey
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.sql import statements
from secure_kv.store import SecureStore
from secure_kv.store.datakeys import MissingDataKeyError
from secure_kv.store.internals import StoreParts, record_event, store_parts
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
    parts = store_parts(store)
    current = parts.provider.current_key()
    with parts.database.connect(lock=True) as connection:
        total, already = _count_data_keys(connection, current.kek_id)
        progress.start(total, f"rewrapping data keys under master key {current.kek_id}")
        rewrap = _Rewrap(store, parts, connection, current)
        rewrap.run(batch_size, progress)
        signing = _replace_signing_keys(parts, connection)
        remaining, signing_remaining = _count_remaining(connection, current.kek_id)
    report = MasterRotation(
        kek_id=current.kek_id,
        rewrapped=rewrap.rewrapped,
        already_current=already,
        failed=tuple(rewrap.failures),
        remaining=remaining,
        seconds=time.monotonic() - started,
        signing_keys_created=signing.created,
        signing_keys_retired=signing.retired,
        signing_keys_remaining=signing_remaining,
    )
    _record_master_rotation(store, report)
    return report


def _count_data_keys(connection: sa.Connection, kek_id: str) -> tuple[int, int]:
    """(to rewrap, already under ``kek_id``): the live data keys, counted in one
    transaction before any is rewrapped: the progress bar's total and the report's
    ``already_current``."""
    with connection.begin():
        total = connection.execute(statements.count_data_keys_to_rewrap(kek_id)).scalar_one()
        already = connection.execute(statements.count_data_keys_wrapped_by(kek_id)).scalar_one()
    return int(total), int(already)


class _Rewrap:
    """Rewraps the data keys under other master keys, a page of keys per transaction.

    A crash or Ctrl-C leaves every data key wrapped by one master key or the other (each
    row update is atomic, its audit event in the same transaction); a rerun finds the rest
    still under other keys.
    """

    def __init__(
        self, store: SecureStore, parts: StoreParts, connection: sa.Connection, current: MasterKey
    ) -> None:
        self.store = store
        self.connection = connection
        self.provider = parts.provider
        self.current = current
        self.update = statements.rewrap_data_key(parts.database.engine.dialect)
        self.rewrapped = 0
        self.failures: list[DataKeyFailure] = []

    def run(self, batch_size: int, progress: Progress) -> None:
        """Every data key to rewrap, in (workspace, version) order: a page of
        ``batch_size`` read and rewritten per transaction, progress after each commit."""
        after = (-1, -1)
        while True:
            with self.connection.begin():
                rows = self.connection.execute(
                    statements.select_data_keys_to_rewrap(self.current.kek_id, after, batch_size)
                ).all()
                for workspace_id, version, kek_id, wrapped, raw_name in rows:
                    self.rewrap_one(workspace_id, bytes(raw_name), version, kek_id, bytes(wrapped))
            if not rows:
                return
            after = (rows[-1][0], rows[-1][1])
            progress.advance(len(rows))

    def rewrap_one(self, workspace_id: int, name: bytes, version: int, kek_id: str, wrapped: bytes) -> None:
        """Rewrap one data key and record its "datakey.rewrap" event, in the page's
        transaction. A key that cannot be unwrapped is noted in ``failures``: one bad key
        must not keep the others under a master key that may have leaked."""
        new_wrapped = self.rewrapped_key(name, version, kek_id, wrapped)
        if new_wrapped is None:
            return
        new_kek, connection = self.current.kek_id, self.connection.connection
        changed = self.update.run(connection, new_kek, new_wrapped, workspace_id, version, kek_id, wrapped)
        if changed:  # else shredded, retired or rewrapped meanwhile: nothing to do
            self.rewrapped += 1
            record_event(
                self.store,
                "datakey.rewrap",
                connection=self.connection,
                workspace=name.decode("utf-8", "replace"),
                dek_version=version,
                detail=f"master key {kek_id} -> {self.current.kek_id}",
            )

    def rewrapped_key(self, name: bytes, version: int, kek_id: str, wrapped: bytes) -> bytes | None:
        """``wrapped`` opened with its master key and wrapped under the current one; ``None``
        (a failure noted) if the provider lacks that master key or the key fails to open."""
        shown = name.decode("utf-8", "replace")
        old = self.provider.find(kek_id)
        if old is None:
            reason = "its master key is not among the provider's keys"
            self.failures.append(DataKeyFailure(shown, version, kek_id, reason))
            return None
        try:
            return rewrap_data_key(old, self.current, wrapped, name, version)
        except (AuthenticationError, UnsupportedVersionError) as error:
            self.failures.append(DataKeyFailure(shown, version, kek_id, str(error)))
            return None


def _replace_signing_keys(parts: StoreParts, connection: sa.Connection) -> SigningKeyReplacement:
    """Replace the audit log's signing keys instead of rewrapping them.

    Whoever holds a leaked old master key and any copy of the database has unwrapped their
    seeds, so rewrapping them would let them go on signing. A new key replaces them; the old
    seeds are destroyed, their public halves kept (authenticated under the current master
    key) to verify old events.
    """
    with connection.begin():
        signing = replace_signing_keys(connection, parts.provider, now_micros())
    parts.audit.signing_keys_replaced()
    return signing


def _count_remaining(connection: sa.Connection, kek_id: str) -> tuple[dict[str, int], int]:
    """(data keys by kek_id, audit signing keys) still under another master key than
    ``kek_id`` afterwards: what makes the rotation incomplete (failures, or keys a writer
    created under an old master key meanwhile)."""
    with connection.begin():
        remaining = {
            found: int(count)
            for found, count in connection.execute(statements.count_data_keys_to_rewrap_by_kek(kek_id)).all()
        }
        signing = connection.execute(statements.count_signing_keys_not_wrapped_by(kek_id)).scalar_one()
    return remaining, int(signing)


def _record_master_rotation(store: SecureStore, report: MasterRotation) -> None:
    """The "admin.rotate_master" event: one line an auditor reads to know whether every key
    moved ("ok") or the rotation must run again ("incomplete")."""
    record_event(
        store,
        "admin.rotate_master",
        dek_version=None,
        outcome="ok" if report.complete else "incomplete",
        detail=f"{report.rewrapped} data keys rewrapped under master key {report.kek_id}, "
        f"{len(report.failed)} failed, {sum(report.remaining.values())} still under other master keys; "
        f"audit signing keys: {report.signing_keys_created} created, "
        f"{report.signing_keys_retired} retired",
    )


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
    row = connection.execute(statements.select_workspace(name)).first()
    if row is None:
        return None
    keys = connection.execute(statements.select_data_key_states(int(row[0]))).all()
    return _WorkspaceState(
        workspace_id=int(row[0]),
        last_version=int(row[1]),
        live_versions=tuple(int(version) for version, destroyed in keys if not destroyed),
        destroyed=any(bool(destroyed) for _, destroyed in keys),
    )


class _Reencryption:
    """Moves one workspace's records from older data-key versions to ``target``."""

    def __init__(
        self,
        store: SecureStore,
        parts: StoreParts,
        state: _WorkspaceState,
        name: bytes,
        target: DataKey,
        batch_size: int,
    ) -> None:
        self.store = store
        self.database = parts.database
        self.keys = parts.data_keys
        self.workspace_id = state.workspace_id
        self.name = name
        self.target = target
        self.batch_size = batch_size
        self.resealed = 0
        dialect = parts.database.engine.dialect
        self.update = statements.reseal_record(dialect, HEADER_BYTES)
        self.select = statements.select_records_to_reseal(dialect, INLINE_VALUE_BYTES)
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
        for key, category, version, expires_at, blob in rows:
            key = bytes(key)
            if blob is None:  # a large value: fetched on its own, with the metadata it was
                # sealed with (a writer may have replaced the row since the batch was read)
                fetched = connection.execute(
                    statements.select_record_to_reseal(self.workspace_id, key, version)
                ).first()
                if fetched is None:
                    continue  # deleted or rewritten under the new key meanwhile
                category, expires_at, blob = fetched
            changes.append(self.resealed_row(key, category, version, expires_at, blob))
        if changes:
            self.update.run_many(connection.connection, changes)
        return len(changes)

    def resealed_row(
        self, key: bytes, category: str, version: int, expires_at: int | None, blob: Any
    ) -> tuple[Any, ...]:
        """The update's values for one record, opened with its old key and sealed under the
        target. A record that fails authentication stops the rotation (:meth:`tampered`):
        sealing it again would launder whatever was written into it."""
        if not row_in_domain(version, expires_at, blob):
            raise self.tampered(key)  # a cell no secure_kv writes (SQLite stores anything)
        blob = bytes(blob)
        code = CODE_BY_VALUE.get(category)
        old = self.old_keys.get(version) or self.old_key(key, version)
        if code is None:
            raise self.tampered(key)
        try:
            sealed = reseal_value(old, self.target, self.context(key, code, expires_at), blob)
        except AuthenticationError:
            raise self.tampered(key) from None
        sealed = self.database.sendable(sealed)
        return (self.target.version, sealed, self.workspace_id, key, blob[:HEADER_BYTES])

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
        with self.database.connect(lock=True) as connection:
            return try_transaction(self.database, connection, self.retire_old_versions)

    def retire_old_versions(self, connection: sa.Connection) -> bool:
        """:meth:`finish`'s transaction: the old versions' rows locked first (see
        ``retirement.py``), so no writer slips a record under them in; ``False`` when more
        stragglers remain than one batch (sweep again first)."""
        through = self.target.version - 1
        lock_data_keys(connection, self.workspace_id, through)
        rows = self.select_batch(connection, b"", self.batch_size + 1)
        if len(rows) > self.batch_size:
            return False  # a writer added many: sweep again first
        self.resealed += self.reseal_rows(connection, rows)
        retired = connection.execute(statements.select_data_key_versions(self.workspace_id, through))
        versions = [int(v) for v in retired.scalars()]
        connection.execute(statements.delete_data_keys(self.workspace_id, through))
        record_event(
            self.store,
            "datakey.retire",
            connection=connection,
            workspace=self.name.decode("utf-8", "replace"),
            dek_version=self.target.version,
            detail=f"retired versions {versions}; records now under version {self.target.version}",
        )
        return True


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
    parts = store_parts(store)
    state = _rotatable_state(parts, name, workspace)
    if not state.live_versions:
        return WorkspaceRotation(workspace, (), None, False, 0, time.monotonic() - started)
    target, resumed = _target(parts, state, name, workspace)
    parts.data_keys.forget_current(name)  # this process writes under the new key at once
    moved_before, retiring = _moved_and_retiring(parts, state, target.version)
    progress.describe(f"re-encrypting {workspace}")
    progress.advance(moved_before)  # records an interrupted run (or new writes) already moved
    job = _Reencryption(store, parts, state, name, target, batch_size)
    _reencrypt(store, job, workspace, retiring, progress)
    return WorkspaceRotation(
        workspace=workspace,
        from_versions=retiring,
        to_version=target.version,
        resumed=resumed,
        records=job.resealed,
        seconds=time.monotonic() - started,
    )


def _rotatable_state(parts: StoreParts, name: bytes, workspace: str) -> _WorkspaceState:
    """The workspace's data-key versions. Refuses a workspace that does not exist, and one
    a shred has begun on: a new key would outlive the shred, which must finish first."""
    with parts.database.connect() as connection, connection.begin():
        state = _workspace_state(connection, name)
    if state is None:
        raise InvalidInputError(f"no workspace named {workspace!r} in this store")
    if state.destroyed:
        raise _being_shredded(name)
    return state


def _target(parts: StoreParts, state: _WorkspaceState, name: bytes, workspace: str) -> tuple[DataKey, bool]:
    """The data key to re-encrypt under, and whether it resumes an interrupted rotation:
    one whose newest version is live while older live versions remain, so a rerun after a
    crash finishes that rotation instead of starting yet another version."""
    resumed = state.last_version in state.live_versions and state.live_versions[0] < state.last_version
    target = _fresh_target(parts, state, name, workspace, resume=resumed)
    if target is None:
        raise _being_shredded(name)
    return target, resumed and target.version == state.last_version


def _moved_and_retiring(
    parts: StoreParts, state: _WorkspaceState, target_version: int
) -> tuple[int, tuple[int, ...]]:
    """(records already under the target version, the older versions to retire), in one
    snapshot: the first starts the progress bar where an interrupted run (or new writes)
    left it, the second goes in the report."""
    with parts.database.connect() as connection, connection.begin():
        moved = connection.execute(
            statements.count_records_from_version(state.workspace_id, target_version)
        ).scalar_one()
        retiring = tuple(
            int(v)
            for v in connection.execute(
                statements.select_data_key_versions(state.workspace_id, target_version - 1)
            ).scalars()
        )
    return int(moved), retiring


def _reencrypt(
    store: SecureStore, job: _Reencryption, workspace: str, retiring: tuple[int, ...], progress: Progress
) -> None:
    """Sweep the records over and retire the old versions, sweeping again while writers
    that cached an old key add stragglers (``retirement.py``); gives up after the patience
    a writer needs to drop its cached key, with a message saying to run it again."""
    retire_when_unreferenced(
        lambda: job.sweep(progress),
        job.finish,
        patience=_patience(store),
        stuck=lambda: StorageError(
            f"workspace {workspace!r}: a process keeps writing under data key versions "
            f"{list(retiring)} (it cached them before the rotation); run the rotation again"
        ),
    )


def _fresh_target(
    parts: StoreParts, state: _WorkspaceState, name: bytes, workspace: str, *, resume: bool
) -> DataKey | None:
    """The data key to re-encrypt under: one created under the current master key.

    An interrupted run's key is resumed only if it was created under the current master key;
    a key found at the pointer that was not (rewrapped by a master rotation, or planted by
    someone holding a previous master key) is never adopted: a fresh version is created.
    ``None`` if the workspace is being shredded.
    """
    keys = parts.data_keys
    if resume:
        found = keys.version(state.workspace_id, name, state.last_version)
        if found is None or keys.writable(found):
            return found
    for _ in range(_MAX_TARGET_ATTEMPTS):
        version = _create_version(parts, state, name)
        found = keys.version(state.workspace_id, name, version)
        if found is None or keys.writable(found):
            return found
        state = _WorkspaceState(state.workspace_id, version, state.live_versions, state.destroyed)
    raise StorageError(
        f"workspace {workspace!r}: could not create a data key under the current master key "
        "(its newest versions keep changing); run the rotation again"
    )


def _create_version(parts: StoreParts, state: _WorkspaceState, name: bytes) -> int:
    """Create the next data-key version and make it current; return the current version."""
    version = state.last_version + 1
    # Records its own "datakey.create" audit event, in the transaction that creates the key.
    parts.data_keys.create_version(state.workspace_id, name, version)
    with parts.database.connect() as connection:
        with connection.begin():
            current = connection.execute(statements.select_last_dek_version(state.workspace_id)).scalar_one()
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
    names, total = _workspaces_to_rotate(store_parts(store), names)
    progress.start(total, "re-encrypting records")
    rotations: list[WorkspaceRotation] = []
    failed: list[tuple[str, str]] = []
    for name in names:
        try:
            rotations.append(rotate_workspace(store, name, batch_size=batch_size, progress=progress))
        except SecureKVError as error:
            failed.append((name, str(error)))
    return WorkspaceRotations(tuple(rotations), tuple(failed), time.monotonic() - started)


def _workspaces_to_rotate(parts: StoreParts, names: Sequence[str] | None) -> tuple[Sequence[str], int]:
    """The workspaces to rotate (``names``, or every one with a data key) and how many
    records they hold: one progress bar's total over all of them."""
    with parts.database.connect() as connection, connection.begin():
        if names is None:
            rows = connection.execute(statements.select_workspace_names_with_data_keys()).scalars()
            names = [bytes(raw).decode("utf-8", "replace") for raw in rows]
            total = connection.execute(statements.count_records()).scalar_one()
        else:
            encoded = [check_workspace_name(name) for name in names]
            total = connection.execute(statements.count_records_in_workspaces(encoded)).scalar_one()
    return names, int(total)
