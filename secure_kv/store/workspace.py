"""Workspace: one namespace of a store, with Dify's plugin-storage interface.

Every value is sealed with the workspace's data key before it reaches the database, and
opened (authenticated) on the way back. The batch calls live in store/batches.py.
"""

from __future__ import annotations

from typing import Any

from secure_kv._clock import now_micros
from secure_kv.audit.log import refused
from secure_kv.categories import CATEGORY_BY_VALUE, CATEGORY_CODES, CODE_BY_VALUE, Category, parse_category
from secure_kv.envelope import (
    HEADER_BYTES,
    context_prefix,
    key_context,
    open_record,
    open_value,
    parse_header,
    row_in_domain,
    seal_value,
)
from secure_kv.errors import (
    AuthenticationError,
    MasterKeyError,
    SecureKVError,
    StorageError,
    UnsupportedVersionError,
)
from secure_kv.sql.database import UndecodableTextError
from secure_kv.store.batches import WorkspaceBatches
from secure_kv.store.datakeys import MissingDataKeyError
from secure_kv.store.parts import HasParts, store_parts
from secure_kv.store.policy import apply_credential_policy, expiry_for
from secure_kv.validation import check_key, check_ttl, check_value, check_workspace_name

__all__ = ["Workspace"]

_TOKEN = Category.TOKEN.value
# Retries when a write races a rotation or shred that retired the data key it used.
_STALE_KEY_RETRIES = 3
# Retries when a token changes between its read and the read's audit event.
_CHANGED_RETRIES = 3


class Workspace(WorkspaceBatches):
    """One namespace of a :class:`SecureStore`, with Dify's plugin-storage interface."""

    __slots__ = ("_context_prefix", "_keys", "_name_bytes", "_parts", "name")

    def __init__(self, store: HasParts, name: str) -> None:
        self._name_bytes = check_workspace_name(name)
        self._context_prefix = context_prefix(self._name_bytes)
        self.name = name
        self._parts = store_parts(store)
        self._keys = self._parts.data_keys

    def set(
        self,
        key: str,
        val: bytes | bytearray | memoryview,
        *,
        category: Category | str = Category.PREFERENCE,
        ttl: float | Any = None,
    ) -> None:
        """Store ``val`` under ``key``, replacing any previous value.

        ``ttl`` (seconds or a timedelta) makes the entry expire; a cache entry always
        expires (``SECURE_KV_DEFAULT_CACHE_TTL`` when no ``ttl`` is given). An overwrite
        without ``ttl`` clears the previous expiry. A value that looks like a credential,
        stored under another category, is handled by ``SECURE_KV_CREDENTIAL_POLICY``.
        """
        parts = self._parts
        settings = parts.settings
        key_bytes = check_key(key)
        value = check_value(val, settings.max_value_bytes)
        chosen = parse_category(category)
        seconds = check_ttl(ttl)
        parts.check_open()
        if chosen is not Category.TOKEN:
            chosen = self._apply_credential_policy(key, value, chosen)
        now = now_micros()
        expires_at = expiry_for(chosen, seconds, now, settings.default_cache_ttl)
        context = key_context(self._context_prefix, key_bytes, CATEGORY_CODES[chosen], expires_at)
        database, audit = parts.database, parts.audit
        audited = chosen is Category.TOKEN or audit.audit_all_writes
        guarded = audit.statements.upsert_unless_token
        mysql = database.dialect_name == "mysql"
        for _ in range(_STALE_KEY_RETRIES):
            workspace_id, data_key = self._keys.current(self._name_bytes)
            sealed = seal_value(data_key, context, value)
            if mysql:
                sealed = database.sendable_checked(sealed)
            row = (workspace_id, key_bytes, chosen.value, data_key.version, now, now, expires_at, sealed)
            try:
                if audited:
                    self._write_audited(row, None)
                    return
                # Not audited, unless it would replace a token: then the guard refuses and
                # the write is made again with its event.
                count = database.execute(guarded, *row)
                if count == 1 and mysql:
                    found = database.fetchone(audit.statements.select_category, workspace_id, key_bytes)
                    count = 0 if found is not None and found[0] == _TOKEN else 1
                if count == 0:
                    self._write_audited(row, "replaced a token")
                return
            except database.integrity_error:
                # The data key was retired (rotation) or destroyed (shred) since we cached
                # it: the foreign key refused the record. Reload and seal again.
                self._keys.forget_current(self._name_bytes)
        raise StorageError(
            f"could not write {self._describe(key)}: its data key keeps changing; retry the call"
        )

    def _write_audited(self, row: tuple[Any, ...], detail: str | None) -> None:
        parts = self._parts
        audit, upsert = parts.audit, parts.statements.upsert_record
        event = audit.event(
            "record.write",
            workspace=self._name_bytes,
            key=row[1],
            category=row[2],
            dek_version=row[3],
            detail=detail,
        )

        def body(connection: Any, append: Any) -> None:
            upsert.run(connection, *row)
            append(event)

        audit.run(body)

    def _apply_credential_policy(self, key: str, value: Any, category: Category) -> Category:
        policy = self._parts.settings.credential_policy
        return apply_credential_policy(policy, value, category, self._describe(key))

    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` if the key is missing or expired.

        Raises :class:`AuthenticationError` if the stored record was tampered with. Every
        read of a token is recorded in the audit log; if its event cannot be written the
        read fails (:class:`StorageError`) and the value is not returned.
        """
        found = self._read(key)
        return None if found is None else found[0]

    def _read(self, key: str) -> tuple[bytes, Category] | None:
        """The value and its category, read from one row (the CLI masks tokens by it)."""
        key_bytes = check_key(key)
        parts = self._parts
        parts.check_open()
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return None
        database, statement = parts.database, parts.statements.select_record
        missing_key_seen = False
        for _ in range(_CHANGED_RETRIES):
            try:
                row = database.fetchone(statement, workspace_id, key_bytes)
            except UndecodableTextError as error:
                self._record_auth_failure(key_bytes, None, None, error)
                raise self._tampered(key) from None
            if row is None:
                return None
            if row[0] != _TOKEN:
                found = self._open_cached(key_bytes, workspace_id, row)
                if found is not None:
                    return found
            try:
                found = self._open(key, key_bytes, workspace_id, row)
            except MissingDataKeyError as error:
                # A rotation may have re-encrypted the record and retired the key version it
                # named between our two queries: read the row again. Only a record that
                # still names a missing version was altered.
                if missing_key_seen:
                    self._record_auth_failure(key_bytes, None, None, error)
                    raise AuthenticationError(f"cannot open {self._describe(key)}: {error}") from None
                missing_key_seen = True
                continue
            if found is None or row[0] != _TOKEN:
                return found
            # A token: its read is recorded before the value is returned, and only if the
            # record still holds what was read (otherwise read again). Fail closed.
            if database.run(lambda c: self._audit_token_read(c, key, key_bytes, workspace_id, row)):  # noqa: B023
                return found
        # Writers keep replacing this token between our read and its event: read it once
        # more with the row locked, so the read and its event cannot be separated.
        return self._read_token_locked(key, key_bytes, workspace_id)

    def _read_token_locked(
        self, key: str, key_bytes: bytes, workspace_id: int
    ) -> tuple[bytes, Category] | None:
        parts = self._parts
        audit, statement = parts.audit, parts.statements.select_record_locked

        def body(connection: Any, append: Any) -> tuple[bytes, Category] | None:
            row = statement.fetchone(connection, workspace_id, key_bytes)
            if row is None:
                return None
            found = self._open(key, key_bytes, workspace_id, row)
            if found is not None and row[0] == _TOKEN:
                append(self._token_read_event(key_bytes, row[1]))
            return found

        try:
            return audit.run(body)
        except UndecodableTextError:
            raise self._tampered(key) from None
        except (AuthenticationError, MasterKeyError, StorageError):
            raise
        except SecureKVError as error:
            raise type(error)(
                f"reading {self._describe(key)} refused: its audit event could not be written ({error})"
            ) from None

    def _audit_token_read(
        self, connection: Any, key: str, key_bytes: bytes, workspace_id: int, row: Any
    ) -> bool:
        audit = self._parts.audit
        dek_version, blob = row[1], row[3]
        event = self._token_read_event(key_bytes, dek_version)
        same_sealing = (workspace_id, key_bytes, dek_version, bytes(blob[:HEADER_BYTES]))
        try:
            return audit.append_now(connection, event, same_sealing)
        except SecureKVError as error:
            raise type(error)(
                f"reading {self._describe(key)} refused: its audit event could not be written ({error})"
            ) from None
        except self._parts.database.dbapi_error as error:
            if self._parts.database.engine.dialect.is_disconnect(error, connection, None):  # type: ignore[arg-type]
                raise  # the pool replaces the connection and records the read once more
            raise refused(f"reading {self._describe(key)}", error) from None

    def _open_cached(self, key_bytes: bytes, workspace_id: int, row: Any) -> tuple[bytes, Category] | None:
        """The common case in one step: an unexpired, well-formed row whose data key is
        cached. ``None`` for anything else (expired, a key not cached, a failure), which
        :meth:`_open` then handles in full: its checks, errors and audit events."""
        category_value, dek_version, expires_at, blob = row
        code = CODE_BY_VALUE.get(category_value)
        if code is None or not row_in_domain(dek_version, expires_at, blob):
            return None
        if expires_at is not None and expires_at <= now_micros():
            return None
        data_key = self._keys.cached_version(workspace_id, dek_version)
        if data_key is None:
            return None
        try:
            value = open_record(data_key, self._context_prefix, key_bytes, code, expires_at, blob)
        except SecureKVError:
            return None
        return value, CATEGORY_BY_VALUE[category_value]

    def _open(self, key: str, key_bytes: bytes, workspace_id: int, row: Any) -> tuple[bytes, Category] | None:
        category_value, dek_version, expires_at, blob = row
        if not row_in_domain(dek_version, expires_at, blob):
            # A cell no secure_kv writes (-1 or text for an expiry, text for a value...):
            # refused before anything compares or decrypts it.
            error = self._tampered(key)
            self._record_auth_failure(key_bytes, category_value, None, error)
            raise error
        if expires_at is not None and expires_at <= now_micros():
            return None
        try:
            return self._authenticate(key, key_bytes, workspace_id, row)
        except MissingDataKeyError:
            raise  # _read reads the row once more first: a rotation may have retired that key
        except (AuthenticationError, MasterKeyError) as error:
            self._record_auth_failure(key_bytes, category_value, dek_version, error)
            raise

    def _record_auth_failure(
        self, key_bytes: bytes, category_value: Any, dek_version: Any, error: Exception
    ) -> None:
        audit = self._parts.audit
        audit.record_or_log(
            audit.event(
                "auth.failure",
                workspace=self._name_bytes,
                key=key_bytes,
                category=category_value if category_value in CATEGORY_BY_VALUE else None,
                dek_version=dek_version if isinstance(dek_version, int) else None,
                outcome="failure",
                detail=type(error).__name__,
            )
        )

    def _authenticate(
        self, key: str, key_bytes: bytes, workspace_id: int, row: Any
    ) -> tuple[bytes, Category] | None:
        category_value, dek_version, expires_at, blob = row
        category = CATEGORY_BY_VALUE.get(category_value)
        if category is None:
            raise self._tampered(key)
        try:
            header = parse_header(blob)
        except UnsupportedVersionError as error:
            raise UnsupportedVersionError(f"{self._describe(key)}: {error}") from None
        except AuthenticationError:
            raise self._tampered(key) from None
        if header.dek_version != dek_version:
            raise self._tampered(key)
        try:
            data_key = self._keys.version(workspace_id, self._name_bytes, dek_version)
        except MissingDataKeyError:
            raise
        except (AuthenticationError, MasterKeyError) as error:
            raise type(error)(f"cannot open {self._describe(key)}: {error}") from None
        if data_key is None:
            return None  # its data key was destroyed: the workspace is being shredded
        context = key_context(self._context_prefix, key_bytes, CATEGORY_CODES[category], expires_at)
        try:
            return open_value(data_key, context, blob, header), category
        except AuthenticationError:
            raise self._tampered(key) from None

    def exist(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value (the value is not decrypted)."""
        key_bytes = check_key(key)
        parts = self._parts
        parts.check_open()
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return False
        try:
            row = parts.database.fetchone(parts.statements.select_expiry, workspace_id, key_bytes)
        except UndecodableTextError:
            raise self._tampered(key) from None
        if row is None:
            return False
        expires_at = row[0]
        if expires_at is not None and (type(expires_at) is not int or expires_at <= 0):
            raise self._tampered(key)  # -1, text, a float: no expiry secure_kv writes
        return expires_at is None or expires_at > now_micros()

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error.

        Deleting a token (every entry with ``SECURE_KV_AUDIT_WRITES=all``) is recorded in
        the audit log, in the same transaction.
        """
        key_bytes = check_key(key)
        parts = self._parts
        parts.check_open()
        workspace_id = self._keys.workspace_id(self._name_bytes)
        if workspace_id is None:
            return
        database, audit = parts.database, parts.audit
        sql = audit.statements
        if not audit.audit_all_writes:
            if database.execute(sql.delete_unless_token, workspace_id, key_bytes):
                return
            found = database.fetchone(sql.select_category, workspace_id, key_bytes)
            if found is None or found[0] != _TOKEN:
                return
        for _ in range(_CHANGED_RETRIES):
            if self._delete_audited(workspace_id, key_bytes):
                return
        raise StorageError(f"could not delete {self._describe(key)}: it keeps changing; retry the call")

    def _delete_audited(self, workspace_id: int, key_bytes: bytes) -> bool:
        audit = self._parts.audit
        sql = audit.statements

        def body(connection: Any, append: Any) -> bool:
            found = sql.select_category.fetchone(connection, workspace_id, key_bytes)
            if found is None:
                return True
            category, dek_version = found
            if not sql.delete_with_category.run(connection, workspace_id, key_bytes, category):
                return False  # its category changed under us (PostgreSQL, MariaDB): again
            append(
                audit.event(
                    "record.delete",
                    workspace=self._name_bytes,
                    key=key_bytes,
                    category=category,
                    dek_version=dek_version,
                )
            )
            return True

        return audit.run(body)

    def _describe(self, key: str) -> str:
        return f"record {key!r} of workspace {self.name!r}"

    def _tampered(self, key: str) -> AuthenticationError:
        return AuthenticationError(
            f"{self._describe(key)} failed authentication: the stored record was altered, "
            "truncated or moved from another key, workspace or category"
        )

    def __repr__(self) -> str:
        return f"<Workspace {self.name!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("Workspace belongs to an open store and cannot be pickled")
