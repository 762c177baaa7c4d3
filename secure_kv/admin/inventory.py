"""What the store holds, from metadata only: never a value, and no key needed.

:func:`store_status` is ``secure-kv status``: master keys, workspaces, data-key versions and
how many records each still covers, rotations due or under way. :func:`iter_keys` is
``secure-kv list``: one workspace's keys with their category and times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from secure_kv._clock import format_time, now_micros
from secure_kv.errors import InvalidInputError
from secure_kv.sql import statements
from secure_kv.sql.database import Database, safe_url
from secure_kv.sql.migrate import current_revision

__all__ = [
    "DataKeyStatus",
    "KeyInfo",
    "StoreStatus",
    "WorkspaceStatus",
    "check_workspace_exists",
    "iter_keys",
    "store_status",
    "workspaces_mid_rotation",
]

_MICROS_PER_DAY = 86_400 * 1_000_000
_LIST_BATCH = 1000


@dataclass(frozen=True)
class DataKeyStatus:
    version: int
    kek_id: str
    created_at: int
    #: records sealed under this version
    records: int
    #: the key material was destroyed (a shred under way)
    destroyed: bool


@dataclass(frozen=True)
class WorkspaceStatus:
    name: str
    current_version: int
    data_keys: tuple[DataKeyStatus, ...]
    #: the outcome of the newest rotation event about this workspace (or about all of
    #: them) since its newest data key was made: "started", "interrupted", "ok", ... or None
    rotation_event: str | None = None

    @property
    def records(self) -> int:
        return sum(key.records for key in self.data_keys)

    @property
    def rotation_in_progress(self) -> bool:
        """Older versions still exist: a rotation has not finished (run it again)."""
        live = [key for key in self.data_keys if not key.destroyed]
        return len(live) > 1

    @property
    def shred_in_progress(self) -> bool:
        """Some data keys destroyed, yet records or live keys remain (run shred again)."""
        return any(key.destroyed for key in self.data_keys) and not self.shredded

    @property
    def shredded(self) -> bool:
        """Crypto-shredded: it had data keys, none is left live, and no record remains."""
        return (
            self.current_version > 0
            and self.records == 0
            and not any(not key.destroyed for key in self.data_keys)
        )

    @property
    def rotation_state(self) -> str | None:
        """``None`` (no rotation unfinished), ``"running"`` (started, not ended: a process
        is at it, or died without a word, as after SIGKILL), ``"interrupted"`` (Ctrl-C or
        a failure: run it again) or ``"unfinished"`` (older keys remain for another reason).
        """
        if not self.rotation_in_progress:
            return None
        if self.rotation_event == "started":
            return "running"
        if self.rotation_event == "interrupted":
            return "interrupted"
        return "unfinished"

    def current_key_age_days(self, now: int) -> float | None:
        for key in self.data_keys:
            if key.version == self.current_version and not key.destroyed:
                return (now - key.created_at) / _MICROS_PER_DAY
        return None


@dataclass(frozen=True)
class StoreStatus:
    database: str
    schema_revision: str | None
    #: the current master key's kek_id, or None when the key is unavailable
    kek_id: str | None
    #: why the master key is unavailable (never key material)
    master_key_problem: str | None
    previous_kek_ids: tuple[str, ...]
    workspaces: tuple[WorkspaceStatus, ...]
    dek_max_age_days: float
    now: int

    @property
    def data_keys_by_kek(self) -> dict[str, int]:
        """Live (not destroyed) data keys per master key that wraps them."""
        counts: dict[str, int] = {}
        for workspace in self.workspaces:
            for key in workspace.data_keys:
                if not key.destroyed:
                    counts[key.kek_id] = counts.get(key.kek_id, 0) + 1
        return counts

    @property
    def master_rotation_pending(self) -> int:
        """Live data keys not wrapped by the current master key (``rotate master`` moves them)."""
        if self.kek_id is None:
            return 0
        return sum(count for kek, count in self.data_keys_by_kek.items() if kek != self.kek_id)

    def rotation_state(self, workspace: WorkspaceStatus) -> str | None:
        return workspace.rotation_state

    def rotation_due(self, workspace: WorkspaceStatus) -> bool:
        age = workspace.current_key_age_days(self.now)
        return age is not None and age > self.dek_max_age_days

    def to_json(self) -> dict[str, object]:
        return {
            "database": self.database,
            "schema_revision": self.schema_revision,
            "kek_id": self.kek_id,
            "master_key_problem": self.master_key_problem,
            "previous_kek_ids": list(self.previous_kek_ids),
            "data_keys_by_kek_id": self.data_keys_by_kek,
            "master_rotation_pending": self.master_rotation_pending,
            "dek_max_age_days": self.dek_max_age_days,
            "workspaces": [
                {
                    "name": workspace.name,
                    "current_version": workspace.current_version,
                    "records": workspace.records,
                    "rotation_due": self.rotation_due(workspace),
                    "rotation_in_progress": workspace.rotation_in_progress,
                    "rotation_state": workspace.rotation_state,
                    "shred_in_progress": workspace.shred_in_progress,
                    "shredded": workspace.shredded,
                    "current_key_age_days": workspace.current_key_age_days(self.now),
                    "data_keys": [
                        {
                            "version": key.version,
                            "kek_id": key.kek_id,
                            "created_at": format_time(key.created_at),
                            "records": key.records,
                            "destroyed": key.destroyed,
                        }
                        for key in workspace.data_keys
                    ],
                }
                for workspace in self.workspaces
            ],
        }


def store_status(
    database: Database,
    *,
    kek_id: str | None,
    previous_kek_ids: tuple[str, ...] = (),
    master_key_problem: str | None = None,
    dek_max_age_days: float = 90,
    rotation_events: str | None = None,
) -> StoreStatus:
    """Read the status from metadata (three queries, one of them counting every record).

    ``rotation_events`` names the audit action whose newest outcome tells a running
    rotation from an interrupted one (read only for workspaces with one unfinished).
    """
    with database.connect() as connection, connection.begin():
        revision = current_revision(connection)
        names = connection.execute(statements.select_workspaces()).all()
        by_workspace = _data_keys_by_workspace(connection)
    outcomes: dict[str, str] = {}
    if rotation_events is not None:
        unfinished = _unfinished_rotations(names, by_workspace)
        if unfinished:
            outcomes = _rotation_outcomes(database, rotation_events, unfinished)
    return StoreStatus(
        database=safe_url(database.url),
        schema_revision=revision,
        kek_id=kek_id,
        master_key_problem=master_key_problem,
        previous_kek_ids=previous_kek_ids,
        workspaces=tuple(
            WorkspaceStatus(
                name=bytes(name).decode("utf-8", "replace"),
                current_version=int(last),
                data_keys=tuple(by_workspace.get(int(workspace_id), ())),
                rotation_event=outcomes.get(bytes(name).decode("utf-8", "replace")),
            )
            for workspace_id, name, last in names
        ),
        dek_max_age_days=dek_max_age_days,
        now=now_micros(),
    )


def _data_keys_by_workspace(connection: sa.Connection) -> dict[int, list[DataKeyStatus]]:
    """Every data key with the number of records it seals, by workspace id, oldest version
    first (two queries, in the caller's snapshot)."""
    keys = connection.execute(statements.select_all_data_keys()).all()
    counts = {
        (int(workspace_id), int(version)): int(count)
        for workspace_id, version, count in connection.execute(statements.count_records_by_data_key()).all()
    }
    by_workspace: dict[int, list[DataKeyStatus]] = {}
    for workspace_id, version, kek, created_at, destroyed in keys:
        by_workspace.setdefault(int(workspace_id), []).append(
            DataKeyStatus(
                version=int(version),
                kek_id=str(kek),
                created_at=int(created_at),
                records=counts.get((int(workspace_id), int(version)), 0),
                destroyed=bool(destroyed),
            )
        )
    return by_workspace


def _unfinished_rotations(
    names: Sequence[Any], by_workspace: dict[int, list[DataKeyStatus]]
) -> list[tuple[bytes, int]]:
    """(name, its oldest live data key's time) of each workspace with more than one live
    data key: a rotation not finished, whose events tell running from interrupted."""
    return [
        (bytes(name), min(k.created_at for k in by_workspace[int(workspace_id)] if not k.destroyed))
        for workspace_id, name, _ in names
        if sum(not key.destroyed for key in by_workspace.get(int(workspace_id), ())) > 1
    ]


def _rotation_outcomes(
    database: Database, action: str, unfinished: list[tuple[bytes, int]]
) -> dict[str, str]:
    """For each (workspace, its oldest live data key's time): the newest ``action`` event's
    outcome about that workspace or about every workspace (``--all``) since then: the
    rotation that is retiring that key started after it was made.
    """
    found: dict[str, str] = {}
    with database.connect() as connection, connection.begin():
        for name, since in unfinished:
            outcome = connection.execute(statements.select_newest_outcome(action, name, since)).scalar()
            if outcome is not None:
                found[name.decode("utf-8", "replace")] = str(outcome)
    return found


def workspaces_mid_rotation(database: Database) -> list[str]:
    """Workspaces with more than one live data key: a rotation not finished."""
    with database.connect() as connection, connection.begin():
        rows = connection.execute(statements.select_workspace_names_mid_rotation()).scalars()
        return [bytes(name).decode("utf-8", "replace") for name in rows]


def check_workspace_exists(database: Database, name: bytes, shown_name: str) -> None:
    """Raise :class:`InvalidInputError` ("no workspace named ...") unless it exists."""
    with database.connect() as connection, connection.begin():
        found = connection.execute(statements.select_workspace_id(name)).scalar()
    if found is None:
        raise InvalidInputError(f"no workspace named {shown_name!r} in this store")


@dataclass(frozen=True)
class KeyInfo:
    """One record's metadata, as ``secure-kv list`` shows it (never the value)."""

    key: str
    category: str
    created_at: int
    updated_at: int
    expires_at: int | None
    dek_version: int
    size: int

    def expired(self, now: int) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def to_json(self, now: int) -> dict[str, object]:
        return {
            "key": self.key,
            "category": self.category,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "expires_at": format_time(self.expires_at),
            "expired": self.expired(now),
            "dek_version": self.dek_version,
            "sealed_bytes": self.size,
        }


def iter_keys(
    database: Database, workspace: bytes, *, after: bytes = b"", limit: int | None = None
) -> Iterator[KeyInfo]:
    """The records of ``workspace`` in key order (bytewise), after the key ``after``, at
    most ``limit`` of them; fetched a batch at a time, so memory stays bounded.
    """
    with database.connect() as connection:
        with connection.begin():
            workspace_id = connection.execute(statements.select_workspace_id(workspace)).scalar()
        if workspace_id is None:
            return
        left = limit
        while left is None or left > 0:
            batch = _LIST_BATCH if left is None else min(_LIST_BATCH, left)
            with connection.begin():
                rows = connection.execute(statements.select_record_metadata(workspace_id, after, batch)).all()
            for key, category, created_at, updated_at, expires_at, version, size in rows:
                yield KeyInfo(
                    key=bytes(key).decode("utf-8", "replace"),
                    category=str(category),
                    created_at=int(created_at),
                    updated_at=int(updated_at),
                    expires_at=None if expires_at is None else int(expires_at),
                    dek_version=int(version),
                    size=int(size),
                )
            if len(rows) < batch:
                return
            if left is not None:
                left -= len(rows)
            after = bytes(rows[-1][0])
