"""Workspace data keys: finding, creating and caching them.

Creation is race-free across processes and hosts without any lock: a new version is
inserted with "insert unless it exists" on (workspace, version), then the workspace's
version pointer is advanced with a compare-and-set, then everyone re-reads the pointer. Two
racers end up using the same key; a crash between the steps leaves nothing unreadable.

New records are sealed only under a data key that was *created under the current master
key* (``DataKey.created_under``, which the wrap's associated data authenticates). A key the
workspace's pointer names that is wrapped by a previous master key, or that a master-key
rotation rewrapped, is used for reading only: the next write creates a fresh version under
the current key instead. So whoever holds a leaked previous master key and can write to the
database cannot plant a data key of their choosing for new writes (SECURITY.md).

Unwrapped keys are cached per process, bounded in number (``SECURE_KV_DEK_CACHE_SIZE``) and
in age (``SECURE_KV_DEK_CACHE_SECONDS``). The age bound is also how long a process keeps
writing with a workspace's previous key after a rotation. Nothing relies on it for safety:
a record names its key version through a foreign key, so once a rotation or shred deleted
that version's row, the database refuses a stale writer's record (``Workspace.set`` then
reloads the key and writes again).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from secure_kv._clock import now_micros
from secure_kv.envelope import DataKey, new_data_key_bytes, unwrap_data_key, wrap_data_key
from secure_kv.errors import AuthenticationError, MasterKeyError, StorageError
from secure_kv.keys.base import MasterKeyProvider
from secure_kv.sql.database import Database, UndecodableTextError
from secure_kv.sql.statements import Statements, select_live_data_key_kek, select_live_data_key_under

if TYPE_CHECKING:
    from secure_kv.audit.log import AuditLog

__all__ = ["DataKeys", "MissingDataKeyError", "check_master_key"]

_MAX_CREATE_ATTEMPTS = 8


class MissingDataKeyError(AuthenticationError):
    """A record names a data-key version that has no row: altered, or (read just before a
    rotation retired that version) stale. ``Workspace.get`` reads the record again once.
    """


class _BoundedCache:
    """A dict that forgets entries after ``max_age`` seconds and its oldest beyond ``size``."""

    def __init__(self, size: int, max_age: float) -> None:
        self._size = size
        self.max_age = max_age
        self.entries: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.max_age:
            self.discard(key)  # an expired key is dropped, not kept until evicted
            return None
        return entry[1]

    def put(self, key: Any, value: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self.entries.pop(key, None)
            # Entries are in insertion order, so the oldest come first: drop the expired
            # ones, then the oldest beyond the size bound.
            while self.entries:
                oldest = next(iter(self.entries))
                if len(self.entries) < self._size and now - self.entries[oldest][0] <= self.max_age:
                    break
                del self.entries[oldest]
            self.entries[key] = (now, value)

    def discard(self, key: Any) -> None:
        with self._lock:
            self.entries.pop(key, None)

    def discard_where(self, predicate: Any) -> None:
        with self._lock:
            for key in [key for key in self.entries if predicate(key)]:
                del self.entries[key]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()


class DataKeys:
    """Finds, creates and caches the data keys of every workspace a store touches."""

    def __init__(
        self,
        database: Database,
        statements: Statements,
        provider: MasterKeyProvider,
        *,
        cache_size: int,
        max_age: float,
        audit: AuditLog | None = None,
    ) -> None:
        self._db = database
        self._sql = statements
        self._provider = provider
        self._audit = audit
        # name -> (workspace id, current DataKey)
        self._current = _BoundedCache(cache_size, max_age)
        # (workspace id, version) -> DataKey
        self._versions = _BoundedCache(cache_size, max_age)
        # name -> workspace id; ids never change (workspace rows are never deleted).
        self._ids: dict[bytes, int] = {}
        self._load_lock = threading.Lock()

    def workspace_id(self, name: bytes) -> int | None:
        """The workspace's id, or ``None`` if nothing was ever written there."""
        found = self._ids.get(name)
        if found is None:
            row = self._db.fetchone(self._sql.select_workspace_id, name)
            if row is None:
                return None
            found = int(row[0])
            self._remember_id(name, found)
        return found

    def current(self, name: bytes) -> tuple[int, DataKey]:
        """The workspace's id and the data key new records are sealed with (created if need be)."""
        cached = self._current.get(name)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        with self._load_lock:
            cached = self._current.get(name)
            if cached is None:
                cached = self._load_current(name)
                self._current.put(name, cached)
                self._versions.put((cached[0], cached[1].version), cached[1])
        return cached  # type: ignore[no-any-return]

    def forget_current(self, name: bytes) -> None:
        """Drop the cached current key, so the next write re-reads it (after a rotation)."""
        self._current.discard(name)

    def forget_workspace(self, name: bytes, workspace_id: int) -> None:
        """Drop every cached key of one workspace (its keys were just destroyed)."""
        self._current.discard(name)
        self._versions.discard_where(lambda entry: entry[0] == workspace_id)

    def cached_version(self, workspace_id: int, version: int) -> DataKey | None:
        """The data key of one version if this process holds it now, else ``None``."""
        # _BoundedCache.get, inlined: this runs on every read.
        cache = self._versions
        entry = cache.entries.get((workspace_id, version))
        if entry is None or time.monotonic() - entry[0] > cache.max_age:
            return None
        return entry[1]  # type: ignore[no-any-return]

    def version(self, workspace_id: int, name: bytes, version: int) -> DataKey | None:
        """The data key of one version, for opening records; ``None`` if it was destroyed."""
        found = self._versions.get((workspace_id, version))
        if found is not None:
            return found  # type: ignore[no-any-return]
        try:
            row = self._db.fetchone(self._sql.select_data_key, workspace_id, version)
        except UndecodableTextError:
            raise self._altered(name, version) from None
        if row is None:
            raise MissingDataKeyError(
                f"a record of workspace {_show(name)} names data key version {version}, "
                "which does not exist: the record was altered"
            )
        kek_id, wrapped = row
        if wrapped is None:
            return None
        key = self._unwrap(name, version, kek_id, wrapped)
        self._versions.put((workspace_id, version), key)
        return key

    def clear(self) -> None:
        self._current.clear()
        self._versions.clear()

    def _remember_id(self, name: bytes, workspace_id: int) -> None:
        if len(self._ids) > 65536:
            self._ids.clear()
        self._ids[name] = workspace_id

    def _load_current(self, name: bytes) -> tuple[int, DataKey]:
        for _ in range(_MAX_CREATE_ATTEMPTS):
            try:
                row = self._db.fetchone(self._sql.select_current_key, name)
            except UndecodableTextError:
                raise self._altered(name, None) from None
            if row is None:
                self._db.execute(self._sql.insert_workspace, name, 0, now_micros())
                continue
            workspace_id, last_version, kek_id, wrapped = row
            if type(last_version) is not int or last_version < 0:
                raise AuthenticationError(
                    f"workspace {_show(name)} has a data-key version pointer no secure_kv writes: "
                    "it was altered (restore skv_workspaces.last_dek_version from a backup)"
                )
            workspace_id = int(workspace_id)
            self._remember_id(name, workspace_id)
            if wrapped is not None:
                key = self._unwrap(name, last_version, kek_id, wrapped)
                if self.writable(key):
                    return workspace_id, key
                # Readable, but not created under the current master key (a master rotation
                # rewrapped it, or someone holding a previous key planted it): never adopted
                # for writing. A fresh version takes its place.
                self._versions.put((workspace_id, last_version), key)
            self.create_version(workspace_id, name, last_version + 1)
        raise StorageError(f"could not create a data key for workspace {_show(name)}: retry the call")

    def writable(self, key: DataKey) -> bool:
        """Whether new records may be sealed under ``key``: it was created under the current
        master key (and is still wrapped by it with the "created" label)."""
        return key.created_under is not None and key.created_under == self._provider.current_key().kek_id

    def create_version(self, workspace_id: int, name: bytes, version: int) -> None:
        """Make data key ``version`` the workspace's current one (idempotent, race-free).

        With an audit log, the key, the pointer and a ``datakey.create`` event commit in one
        transaction. The pointer moves first: it locks the workspace row, so racing
        creators queue there (no deadlock between the two tables), and whoever moved it
        inserts the key; the others find the pointer already advanced and do nothing.
        """
        master = self._provider.current_key()
        wrapped = wrap_data_key(master, new_data_key_bytes(), name, version)
        now = now_micros()
        audit = self._audit
        if audit is None:

            def insert(connection: Any) -> None:
                self._sql.insert_data_key.run(connection, workspace_id, version, master.kek_id, wrapped, now)
                self._sql.advance_version.run(connection, version, workspace_id, version)

            self._db.run(insert)
            return
        event = audit.event(
            "datakey.create",
            workspace=name,
            dek_version=version,
            detail=f"wrapped by master key {master.kek_id}",
        )

        def create(connection: Any, append: Any) -> None:
            if self._sql.advance_version.run(connection, version, workspace_id, version) != 1:
                return  # another writer created this version (or a later one) first
            self._sql.insert_data_key.run(connection, workspace_id, version, master.kek_id, wrapped, now)
            append(event)

        audit.run(create)

    @staticmethod
    def _altered(name: bytes, version: int | None) -> AuthenticationError:
        which = "the current data key" if version is None else f"data key {version}"
        return AuthenticationError(
            f"{which} of workspace {_show(name)} failed authentication: it was altered"
        )

    def _unwrap(self, name: bytes, version: int, kek_id: Any, wrapped: Any) -> DataKey:
        if not isinstance(kek_id, str) or not isinstance(wrapped, (bytes, bytearray, memoryview)):
            # A cell of another type (SQLite stores whatever it is given): altered.
            raise self._altered(name, version)
        master = self._provider.find(kek_id)
        if master is None:
            held = ", ".join(key.kek_id for key in self._provider.all_keys())
            raise MasterKeyError(
                f"data key {version} of workspace {_show(name)} is wrapped by master key "
                f"{kek_id}, but the provider holds only {held}: use that master key "
                "(or list it as a previous key while rotating)"
            )
        try:
            return unwrap_data_key(master, bytes(wrapped), name, version)
        except AuthenticationError:
            raise AuthenticationError(
                f"data key {version} of workspace {_show(name)} failed authentication: "
                "it was altered or moved from another workspace"
            ) from None


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "replace"))


def check_master_key(database: Database, provider: MasterKeyProvider) -> None:
    """Refuse a master key that wrapped none of the store's data keys: a wrong key.

    Told apart from tampering by the public ``kek_id`` every wrapped key records. Keys
    destroyed by a shred (``wrapped`` NULL) do not count: they need no master key. Both
    queries stop at the first row found.
    """
    ids = [key.kek_id for key in provider.all_keys()]
    with database.connect() as connection, connection.begin():
        if connection.execute(select_live_data_key_under(ids)).first():
            return
        foreign = connection.execute(select_live_data_key_kek()).scalar()
    # Another process may have created a data key under our key between the two queries.
    if foreign is not None and foreign not in ids:
        raise MasterKeyError(
            f"wrong master key: this store's data keys are wrapped by master key {foreign}, "
            f"but the key given has kek_id {ids[0]}; use the store's master key (or give it as "
            "a previous key and run `secure-kv rotate master` to move to a new one)"
        )
