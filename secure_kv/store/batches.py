"""The batch calls of a workspace: ``set_many``, ``get_many``, ``delete_many``.

They are methods of :class:`~secure_kv.store.Workspace`, defined here in its base class
:class:`WorkspaceBatches`: they read the workspace's private state as ``self``, and that
state is declared below in one place.

Each is one transaction and a handful of statements (``executemany`` for writes, ``IN``
lists for reads and deletes), and all or nothing: every key, value, category and TTL is
checked before the database is touched. Tokens are audited as the single calls audit them,
inside the same transaction: a batch never writes, reads or deletes a token without its
event, and a failed event fails the whole batch.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from secure_kv._clock import now_micros
from secure_kv.audit.events import Event
from secure_kv.audit.log import Appender
from secure_kv.categories import CATEGORY_CODES, CODE_BY_VALUE, Category, parse_category
from secure_kv.credentials import find_credential
from secure_kv.envelope import HEADER_BYTES, DataKey, open_record, row_in_domain, seal_records
from secure_kv.errors import (
    AuthenticationError,
    InvalidInputError,
    InvalidTypeError,
    SecureKVError,
    StorageError,
)
from secure_kv.sql.database import UndecodableTextError
from secure_kv.sql.statements import in_list_chunks
from secure_kv.store.datakeys import MissingDataKeyError
from secure_kv.store.policy import expiry_for
from secure_kv.validation import Buffer, check_key, check_ttl, check_value

if TYPE_CHECKING:
    from secure_kv.store.datakeys import DataKeys
    from secure_kv.store.parts import StoreParts

__all__ = ["WorkspaceBatches"]

_TOKEN = Category.TOKEN.value
_BY_KEY = operator.itemgetter(1)
# Rows per executemany call: bounds what a driver buffers at once.
_WRITE_CHUNK = 1000
# Retries when a cached data key was retired meanwhile, or a token changed under a read.
_RETRIES = 3


class _Changed(Exception):
    """A token changed between the batch's read and its audit event: read again."""


class _MissingKey(Exception):
    """A record names a data-key version that has no row (see ``MissingDataKeyError``)."""

    def __init__(self, key: str, key_bytes: bytes, error: MissingDataKeyError) -> None:
        super().__init__(str(error))
        self.key, self.key_bytes, self.error = key, key_bytes, error


class WorkspaceBatches:
    """The batch calls of a workspace, one transaction each, all or nothing."""

    __slots__ = ()

    if TYPE_CHECKING:  # What the batches use of their Workspace (store/workspace.py).
        name: str
        _name_bytes: bytes
        _context_prefix: bytes
        _parts: StoreParts
        _keys: DataKeys

        def _describe(self, key: str) -> str: ...
        def _tampered(self, key: str) -> AuthenticationError: ...
        def _apply_credential_policy(self, key: str, value: Any, category: Category) -> Category: ...
        def _record_auth_failure(
            self, key_bytes: bytes, category_value: Any, dek_version: Any, error: Exception
        ) -> None: ...
        def _open(
            self, key: str, key_bytes: bytes, workspace_id: int, row: Any
        ) -> tuple[bytes, Category] | None: ...

    def _token_read_event(self, key_bytes: bytes, dek_version: int) -> Event:
        """The event every token read is audited with (single gets and batches alike)."""
        return self._parts.audit.event(
            "record.read", workspace=self._name_bytes, key=key_bytes, category=_TOKEN, dek_version=dek_version
        )

    def set_many(
        self,
        items: Mapping[str, Buffer] | Iterable[tuple[str, Buffer]],
        *,
        category: Category | str = Category.PREFERENCE,
        ttl: float | Any = None,
    ) -> None:
        """Store every value of ``items`` (a mapping, or (key, value) pairs) at once.

        One transaction: either every entry is written or none is. Every key and value is
        checked before the database is touched, so bad input changes nothing. All entries
        get the same ``category`` and ``ttl``, with the meaning they have for :meth:`set`
        (the credential policy applies to each entry). A key given twice keeps its last value.
        """
        parts = self._parts
        max_bytes = parts.settings.max_value_bytes
        chosen = parse_category(category)
        seconds = check_ttl(ttl)
        checked: dict[bytes, tuple[str, Buffer]] = {}
        for index, (key, val) in enumerate(_pairs(items)):
            try:
                key_bytes = check_key(key)
            except InvalidInputError as error:
                # By position: the rejected key is not echoed (it might be a misplaced secret).
                raise type(error)(f"set_many: key {index}: {error}") from None
            try:
                checked[key_bytes] = (key, check_value(val, max_bytes))
            except InvalidInputError as error:
                raise type(error)(f"set_many: {self._describe(key)}: {error}") from None
        parts.check_open()
        if not checked:
            return
        # The credential policy runs per entry, before anything is written: "reject" refuses
        # the whole batch, "promote" turns the entries it flags into tokens. Only the entries
        # it flags pay for more than the scan.
        categories: dict[bytes, Category] = {}
        if chosen is not Category.TOKEN:
            for key_bytes, (key, value) in checked.items():
                if find_credential(value) is not None:
                    categories[key_bytes] = self._apply_credential_policy(key, value, chosen)
        now = now_micros()
        default_ttl = parts.settings.default_cache_ttl
        expiry = {c: expiry_for(c, seconds, now, default_ttl) for c in {chosen, *categories.values()}}
        code, expires_at = CATEGORY_CODES[chosen], expiry[chosen]
        to_seal = [
            (key_bytes, code, expires_at, value)
            if key_bytes not in categories
            else (key_bytes, CATEGORY_CODES[categories[key_bytes]], expiry[categories[key_bytes]], value)
            for key_bytes, (_, value) in checked.items()
        ]
        database, audit = parts.database, parts.audit
        prefix = self._context_prefix
        for _ in range(_RETRIES):
            workspace_id, data_key = self._keys.current(self._name_bytes)
            sealed_values = seal_records(data_key, prefix, to_seal)
            if database.sends_bytes_only:
                sealed_values = [database.sendable_checked(sealed) for sealed in sealed_values]
            version, value_of = data_key.version, chosen.value
            rows = [
                (workspace_id, key_bytes, value_of, version, now, now, expires_at, sealed)
                if key_bytes not in categories
                else (
                    workspace_id,
                    key_bytes,
                    categories[key_bytes].value,
                    version,
                    now,
                    now,
                    expiry[categories[key_bytes]],
                    sealed,
                )
                for key_bytes, sealed in zip(checked, sealed_values, strict=True)
            ]
            # Every batch takes its row locks in key order, so two batches never deadlock.
            rows.sort(key=_BY_KEY)
            try:
                audit.run(lambda connection, append: self._write_rows(rows, connection, append))  # noqa: B023
                return
            except database.integrity_error:
                # As in set(): the data key was retired meanwhile; nothing was written.
                self._keys.forget_current(self._name_bytes)
        raise StorageError(
            f"could not write {len(checked)} records of workspace {self.name!r}: its data key keeps "
            "changing; retry the call"
        )

    def _write_rows(self, rows: list[tuple[Any, ...]], connection: Any, append: Appender) -> None:
        parts = self._parts
        audit, sql = parts.audit, parts.statements
        audited = [row for row in rows if row[2] == _TOKEN or audit.audit_all_writes]
        plain = [row for row in rows if not (row[2] == _TOKEN or audit.audit_all_writes)]
        replaced: set[bytes] = set()
        if plain:
            # Writes that are not audited must not replace a token unseen: the guarded upsert
            # leaves tokens alone, and whatever is still a token afterwards is written again,
            # with its event. Row locks from the upsert keep the answer stable until COMMIT.
            guarded = audit.statements.upsert_unless_token
            written = 0
            for start in range(0, len(plain), _WRITE_CHUNK):
                written += guarded.run_many(connection, plain[start : start + _WRITE_CHUNK])
            # SQLite and psycopg count one row per key inserted or overwritten and none where the
            # guard refused, so a full count means no token was in the way: skip the locking
            # read. MySQL's count cannot tell (see the guarded upsert), so it always reads.
            if parts.database.dialect_name == "mysql" or written != len(plain):
                workspace_id = plain[0][0]
                for chunk in in_list_chunks([row[1] for row in plain]):
                    locked = sql.lock_records(len(chunk)).fetchall(connection, workspace_id, *chunk)
                    replaced.update(bytes(key) for key, category, _ in locked if category == _TOKEN)
        rewrite = audited + [row for row in plain if row[1] in replaced]
        for start in range(0, len(rewrite), _WRITE_CHUNK):
            sql.upsert_record.run_many(connection, rewrite[start : start + _WRITE_CHUNK])
        for row in rewrite:
            append(
                audit.event(
                    "record.write",
                    workspace=self._name_bytes,
                    key=row[1],
                    category=row[2],
                    dek_version=row[3],
                    detail="replaced a token" if row[1] in replaced else None,
                )
            )

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of ``keys`` that exist and have not expired, by key.

        One snapshot: a concurrent writer's batch is seen whole or not at all. Missing and
        expired keys are absent from the result; a key asked twice appears once. Every token
        read is audited, as with :meth:`get`.
        """
        wanted = _checked_keys(keys, "get_many")
        parts = self._parts
        parts.check_open()
        if not wanted:
            return {}
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return {}
        missing_seen = False
        for _ in range(_RETRIES):
            try:
                return self._read_many(workspace_id, wanted)
            except _Changed:
                continue
            except _MissingKey as missing:
                # As in get(): a rotation may have retired that key version between the read
                # and the key lookup. Read again; a record still naming it was altered.
                if missing_seen:
                    self._record_auth_failure(missing.key_bytes, None, None, missing.error)
                    raise AuthenticationError(
                        f"cannot open {self._describe(missing.key)}: {missing.error}"
                    ) from None
                missing_seen = True
        # Writers keep replacing tokens between the read and its events: read once more with
        # the rows locked, so the reads and their events cannot be separated.
        return self._read_many(workspace_id, wanted, locked=True)

    def _read_many(
        self, workspace_id: int, wanted: dict[bytes, str], *, locked: bool = False
    ) -> dict[str, bytes]:
        parts = self._parts
        sql = parts.statements
        select = sql.select_records_locked if locked else sql.select_records

        chunks = in_list_chunks(sorted(wanted))  # key order: see set_many

        def read(connection: Any) -> list[Any]:
            rows: list[Any] = []
            for chunk in chunks:
                rows.extend(select(len(chunk)).fetchall(connection, workspace_id, *chunk))
            return rows

        try:
            if locked:
                # Rows locked, then opened and their token events appended, in one transaction.
                return parts.audit.run(
                    lambda connection, append: self._open_rows(workspace_id, wanted, read(connection), append)
                )
            # One snapshot: a concurrent writer's batch is seen whole or not at all. One
            # statement reads from one snapshot on every database, so it needs no transaction
            # (on PostgreSQL that saves the BEGIN and COMMIT round trips).
            if len(chunks) == 1:
                rows = parts.database.run(read)
            else:
                rows = parts.database.transaction(read, write=False)
        except UndecodableTextError:
            self._name_undecodable(workspace_id, wanted)
            raise
        return self._open_rows(workspace_id, wanted, rows, None)

    def _name_undecodable(self, workspace_id: int, wanted: dict[bytes, str]) -> None:
        """A row of the batch holds text that is not UTF-8 (SQLite): find it, one key at a time
        (only on this failure path), and raise AuthenticationError naming it."""
        parts = self._parts
        for key_bytes, key in wanted.items():
            try:
                parts.database.fetchone(parts.statements.select_record, workspace_id, key_bytes)
            except UndecodableTextError as error:
                self._record_auth_failure(key_bytes, None, None, error)
                raise self._tampered(key) from None

    def _open_rows(
        self, workspace_id: int, wanted: dict[bytes, str], rows: list[Any], append: Appender | None
    ) -> dict[str, bytes]:
        """Open the rows read; audit the token reads (with ``append``, in its transaction, else
        in a transaction of their own, guarded against a token changed since the read)."""
        found = {bytes(row[0]): row for row in rows}
        now = now_micros()
        prefix = self._context_prefix
        data_keys: dict[int, DataKey] = {}  # by version, for this call
        result: dict[str, bytes] = {}
        tokens: list[tuple[bytes, int, bytes]] = []
        for key_bytes, key in wanted.items():
            row = found.get(key_bytes)
            if row is None:
                continue
            _, category_value, dek_version, expires_at, blob = row
            if not row_in_domain(dek_version, expires_at, blob):
                self._open(key, key_bytes, workspace_id, row[1:])  # refuses it, naming the record
            if expires_at is not None and expires_at <= now:
                continue
            # The common case in a few steps; anything unusual (a data key not yet seen in
            # this call, a tampered or destroyed record) goes the way get() goes.
            data_key = data_keys.get(dek_version)
            code = CODE_BY_VALUE.get(category_value)
            value: bytes | None = None
            if data_key is not None and code is not None:
                try:
                    value = open_record(data_key, prefix, key_bytes, code, expires_at, blob)
                except SecureKVError:
                    value = None
            if value is None:
                try:
                    opened = self._open(key, key_bytes, workspace_id, row[1:])
                except MissingDataKeyError as error:
                    raise _MissingKey(key, key_bytes, error) from None
                if opened is None:
                    continue
                value = opened[0]
                found_key = self._keys.version(workspace_id, self._name_bytes, dek_version)
                if found_key is not None:
                    data_keys[dek_version] = found_key
            if category_value == _TOKEN:
                tokens.append((key_bytes, dek_version, bytes(blob[:HEADER_BYTES])))
            result[key] = value
        if tokens and append is not None:
            for key_bytes, dek_version, _ in tokens:
                append(self._token_read_event(key_bytes, dek_version))
        elif tokens:
            self._audit_batch_token_reads(workspace_id, tokens)
        return result

    def _audit_batch_token_reads(self, workspace_id: int, tokens: list[tuple[bytes, int, bytes]]) -> None:
        """One event per token read, in one transaction, each written only if the record still
        holds what was read; otherwise nothing is written and the batch reads again."""
        audit = self._parts.audit

        def body(connection: Any, append: Appender) -> None:
            for key_bytes, dek_version, header in tokens:
                event = self._token_read_event(key_bytes, dek_version)
                if not append(event, unchanged_since_read=(workspace_id, key_bytes, dek_version, header)):
                    raise _Changed

        try:
            audit.run(body)
        except (_Changed, StorageError):
            raise
        except SecureKVError as error:
            raise type(error)(
                f"reading {len(tokens)} tokens of workspace {self.name!r} refused: their audit events "
                f"could not be written ({error})"
            ) from None

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key of ``keys`` in one transaction; missing keys are not an error."""
        wanted = _checked_keys(keys, "delete_many")
        parts = self._parts
        parts.check_open()
        if not wanted:
            return
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return
        audit, sql = parts.audit, parts.statements

        def body(connection: Any, append: Appender) -> None:
            # Lock what is there first, so the events name exactly the rows this deletes.
            present: list[tuple[bytes, str, int]] = []
            for chunk in in_list_chunks(sorted(wanted)):  # key order: see set_many
                for key, category, dek_version in sql.lock_records(len(chunk)).fetchall(
                    connection, workspace_id, *chunk
                ):
                    present.append((bytes(key), category, dek_version))
            if not present:
                return
            for chunk in in_list_chunks([key for key, _, _ in present]):
                sql.delete_records(len(chunk)).run(connection, workspace_id, *chunk)
            for key, category, dek_version in present:
                if category == _TOKEN or audit.audit_all_writes:
                    append(
                        audit.event(
                            "record.delete",
                            workspace=self._name_bytes,
                            key=key,
                            category=category,
                            dek_version=dek_version,
                        )
                    )

        audit.run(body)


def _checked_keys(keys: Iterable[str], method: str) -> dict[bytes, str]:
    """Every key checked, by its UTF-8 bytes, first occurrence first."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, Iterable):
        raise InvalidTypeError(
            f"{method}: keys must be an iterable of str (a list, for example), not {type(keys).__name__}"
        )
    wanted: dict[bytes, str] = {}
    for index, key in enumerate(keys):
        wanted.setdefault(_checked_key(key, method, index), key)
    return wanted


def _pairs(items: object) -> Iterable[tuple[Any, Any]]:
    if isinstance(items, Mapping):
        return items.items()
    if isinstance(items, (str, bytes, bytearray, memoryview)) or not isinstance(items, Iterable):
        raise InvalidTypeError(
            "set_many: items must be a mapping of str to bytes, or (key, value) pairs, "
            f"not {type(items).__name__}"
        )
    return (_pair(item, index) for index, item in enumerate(items))


def _pair(item: object, index: int) -> tuple[Any, Any]:
    if not isinstance(item, tuple) or len(item) != 2:
        raise InvalidTypeError(
            f"set_many: item {index} must be a (key, value) tuple, not {type(item).__name__}"
        )
    return item


def _checked_key(key: object, method: str, index: int) -> bytes:
    try:
        return check_key(key)
    except InvalidInputError as error:
        # By position: the rejected key is not echoed (it might be a misplaced secret).
        raise type(error)(f"{method}: key {index}: {error}") from None
