"""The audit log's write side: signed, hash-chained events, one chain per writer.

Each writer (a store, and within it each thread appending at the same moment) leases a
chain of its own and keeps the chain's head in memory, so an event costs one INSERT in the
transaction of the change it records: no row shared by every process is read or updated.
A chain whose last append has an unknown outcome (an error after the INSERT was sent) is
never used again; a new one is leased. Forked children drop their parent's chains.

Events written inside a caller's SQLAlchemy transaction (admin operations) go to a chain
whose row is read ``FOR UPDATE`` in that same transaction (so a rollback undoes the event,
and threads take turns). The next event links to the head this process wrote, never to a
head read from the database: a tail cut off the chain leaves a gap that ``audit verify``
names, instead of being spliced over (see :meth:`AuditLog.record_in`).

After ``secure-kv rotate master`` replaces the signing key, a store notices within a
minute (when its provider's current master key is not the one that wraps its signing key)
and signs new chains with the new key.

Every event is signed (Ed25519) when written: the head of every chain is always signed,
with no unsigned tail for someone with write access to rewrite. docs/compliance.md gives
the measurements behind both choices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPIConnection

from secure_kv import _fork
from secure_kv._clock import now_micros
from secure_kv.audit.events import Event, event_digest, genesis_digest
from secure_kv.audit.signing_keys import SigningKey, load_signing_key
from secure_kv.envelope import HEADER_BYTES
from secure_kv.errors import StorageError
from secure_kv.keys.base import MasterKeyProvider
from secure_kv.settings import AuditWrites, Settings
from secure_kv.sql.audit_queries import (
    insert_chain,
    insert_event,
    lock_chain_signing_key,
    select_checkpoint_head,
    select_last_event,
    set_chain_head,
)
from secure_kv.sql.database import Database
from secure_kv.sql.statements import AuditStatements

__all__ = ["Appender", "AuditLog"]

log = logging.getLogger("secure_kv.audit")

T = TypeVar("T")

# Idle chains a store keeps for reuse; more are created when more threads append at once.
_MAX_IDLE_CHAINS = 32
# How often a store whose signing key is wrapped by an older master key looks for the key
# that `rotate master` created (providers pick a new master key up on the same scale).
_SIGNER_RECHECK_SECONDS = 60.0

# A child must not append to its parent's chains (_fork.generation): both would write
# the same positions.


class _Chain:
    __slots__ = ("digest", "generation", "id", "reusable", "seq", "signer", "signing_key_id")

    def __init__(self, chain_id: int, signer: SigningKey) -> None:
        self.id = chain_id
        self.signer = signer
        self.signing_key_id = signer.id
        self.seq = 0
        self.digest = genesis_digest(chain_id, signer.id)
        self.generation = _fork.generation
        self.reusable = True


class Appender:
    """Signs and inserts events into one leased chain, inside one transaction."""

    __slots__ = ("_chain", "_connection", "_log", "_pending", "sent")

    def __init__(self, audit: AuditLog, connection: DBAPIConnection, chain: _Chain) -> None:
        self._log = audit
        self._connection = connection
        self._chain = chain
        self._pending: tuple[int, bytes] | None = None
        self.sent = False

    def __call__(
        self, event: Event, *, unchanged_since_read: tuple[int, bytes, int, bytes] | None = None
    ) -> bool:
        """Insert ``event``; with ``unchanged_since_read`` = (workspace id, key, DEK version,
        header), only if that record still holds that exact sealing. Returns whether it was written.
        """
        chain = self._chain
        seq, previous = self._pending if self._pending is not None else (chain.seq, chain.digest)
        seq += 1
        digest = event_digest(chain.id, seq, previous, event)
        signature = chain.signer.sign(digest)
        values = (
            chain.id,
            seq,
            event.occurred_at,
            event.actor,
            event.action,
            event.workspace,
            event.key,
            event.category,
            event.dek_version,
            event.outcome,
            event.detail,
            digest,
            signature,
        )
        sql = self._log.statements
        self.sent = True
        if unchanged_since_read is None:
            written = sql.insert_event.run(self._connection, *values) == 1
        else:
            written = sql.insert_read_event.run(self._connection, *values, *unchanged_since_read) == 1
        if written:
            self._pending = (seq, digest)
        return written

    def committed(self) -> None:
        """The transaction holding the appended events committed: the chain moves on to
        the last of them (called by :class:`AuditLog`, never by the body)."""
        if self._pending is not None:
            self._chain.seq, self._chain.digest = self._pending


class AuditLog:
    """Appends events for one store. Thread-safe."""

    def __init__(self, database: Database, provider: MasterKeyProvider, settings: Settings) -> None:
        self._db = database
        self._provider = provider
        self.actor = settings.actor[:255]
        self.audit_all_writes = settings.audit_writes is AuditWrites.ALL
        self.statements = AuditStatements(
            database.engine.dialect, database.dialect_name, header_bytes=HEADER_BYTES
        )
        self._begin_sql = "BEGIN IMMEDIATE" if database.dialect_name == "sqlite" else "BEGIN"
        self._signer: SigningKey | None = None
        self._lock = threading.Lock()
        self._idle: list[_Chain] = []
        self._signer_checked = 0.0
        # The admin chain (record_in): its id, the head this process last wrote to it and the
        # transaction that wrote it, and the last head it saw committed.
        self._locked_chain_id: int | None = None
        self._admin_written: tuple[int, bytes] | None = None
        self._admin_committed: tuple[int, bytes] | None = None
        self._admin_transaction: Any = None

    # --- keys and chains ---------------------------------------------------------------

    def signer(self) -> SigningKey:
        """The signing key, loaded (or created) on first use."""
        signer = self._signer
        if signer is None or self._stale(signer):
            with self._lock:
                if self._signer is None or self._signer is signer:
                    try:
                        self._signer = load_signing_key(self._db, self._provider, now_micros())
                    except Exception as error:
                        if signer is None:
                            raise
                        # Moving to the new key can wait for the next look; events cannot.
                        log.error("the new audit signing key cannot be loaded yet: %s", _first_line(error))
                        self._signer = signer
                    self._signer_checked = time.monotonic()
                signer = self._signer
        assert signer is not None
        return signer

    def _stale(self, signer: SigningKey) -> bool:
        """Whether to look again for the signing key: rarely, and only while the current
        master key is not the one wrapping the key in use (``rotate master`` then replaces it)."""
        if time.monotonic() - self._signer_checked < _SIGNER_RECHECK_SECONDS:
            return False
        try:
            stale = self._provider.current_key().kek_id != signer.kek_id
        except Exception:  # the provider is unreachable: keep signing with the key in hand
            stale = False
        self._signer_checked = time.monotonic()
        return stale

    def signing_keys_replaced(self) -> None:
        """Drop the signing key and idle chains: the next event uses the key now current."""
        with self._lock:
            self._signer = None
            self._idle.clear()

    def prepare(self) -> None:
        """Load (or create) the signing key now, outside any caller's transaction.

        Events written inside a caller's transaction then never need a second connection,
        which on SQLite would wait for the caller's own write lock. A failure is logged and
        tried again on the first event, which fails closed if it persists.
        """
        try:
            self.signer()
        except Exception as error:
            log.error("the audit signing key cannot be loaded: %s", _first_line(error))

    def _lease(self) -> _Chain:
        signer = self.signer()
        with self._lock:
            while self._idle:
                chain = self._idle.pop()
                if chain.generation == _fork.generation and chain.signer is signer:
                    return chain
        with self._db.connect() as connection, connection.begin():
            result = connection.execute(insert_chain(signer.id, now_micros()))
            chain_id = int(_first_key(result))
        return _Chain(chain_id, signer)

    def _release(self, chain: _Chain) -> None:
        if not chain.reusable or chain.generation != _fork.generation or chain.signer is not self._signer:
            return
        with self._lock:
            if len(self._idle) < _MAX_IDLE_CHAINS:
                self._idle.append(chain)

    def event(self, action: str, **fields: Any) -> Event:
        """An event by this store's actor, now."""
        return Event(now_micros(), self.actor, action, **fields).clipped()

    # --- appending -----------------------------------------------------------------------

    def run(self, body: Callable[[DBAPIConnection, Appender], T], *, transaction: bool = True) -> T:
        """Run ``body`` on a pooled connection, in one transaction (``BEGIN`` ... ``COMMIT``)
        unless ``transaction`` is false (then ``body`` runs one auto-committed statement that
        appends). ``body`` appends events through the :class:`Appender` it is given.

        A lost connection is retried once, on a new chain: the old chain's last append may or
        may not have committed, so it is never used again.
        """
        leased: list[_Chain] = []

        def work(connection: DBAPIConnection) -> T:
            chain = self._lease()
            leased.append(chain)
            append = Appender(self, connection, chain)
            try:
                if transaction:
                    _execute(connection, self._begin_sql)
                result = body(connection, append)
                if transaction:
                    _execute(connection, "COMMIT")
            except BaseException:
                if append.sent:
                    chain.reusable = False
                if transaction:
                    _rollback_quietly(connection)
                raise
            append.committed()
            return result

        try:
            return self._db.run(work)
        finally:
            for chain in leased:
                self._release(chain)

    def append_now(
        self,
        connection: DBAPIConnection,
        event: Event,
        unchanged_since_read: tuple[int, bytes, int, bytes] | None = None,
    ) -> bool:
        """Append ``event`` with one auto-committed statement on ``connection`` (the token
        read's path: no second pooled connection). Same rules as :meth:`run`."""
        chain = self._lease()
        append = Appender(self, connection, chain)
        try:
            written = append(event, unchanged_since_read=unchanged_since_read)
        except BaseException:
            chain.reusable = False
            self._release(chain)
            raise
        append.committed()
        self._release(chain)
        return written

    def record(self, event: Event) -> None:
        """Write ``event`` in a transaction of its own."""
        self.run(lambda connection, append: append(event), transaction=False)

    def record_in(self, connection: sa.Connection, event: Event) -> None:
        """Write ``event`` inside the caller's transaction on ``connection`` (SQLAlchemy).

        The chain's row is locked in that transaction, so the event commits or rolls back
        with the caller's change. The event links to the head this process last wrote
        (checked against the stored chain, to tell a rolled-back transaction from a cut
        tail), never to the ``head_seq``/``head_digest`` hint in the row, which anyone with
        write access could set back over deleted events.
        """
        signer = self.signer()
        chain_id = self._locked_chain_id
        row = None
        if chain_id is not None:
            row = connection.execute(lock_chain_signing_key(chain_id)).first()
        transaction = connection.get_transaction()
        head = None
        if chain_id is not None and row is not None and row[0] == signer.id:
            head = self._admin_head(connection, chain_id, transaction)
        if chain_id is None or head is None:
            # First use, the transaction that created our chain was rolled back, or a new
            # signing key: a new chain, created in this transaction so that it is locked by it.
            result = connection.execute(insert_chain(signer.id, event.occurred_at, empty_head=True))
            chain_id = int(_first_key(result))
            self._locked_chain_id = chain_id
            self._admin_committed = None
            seq, previous = 0, genesis_digest(chain_id, signer.id)
        else:
            seq, previous = head
        seq += 1
        digest = event_digest(chain_id, seq, previous, event)
        connection.execute(
            insert_event(
                chain_id=chain_id,
                seq=seq,
                occurred_at=event.occurred_at,
                actor=event.actor,
                action=event.action,
                workspace=event.workspace,
                record_key=event.key,
                category=event.category,
                dek_version=event.dek_version,
                outcome=event.outcome,
                detail=event.detail,
                digest=digest,
                signature=signer.sign(digest),
            )
        )
        connection.execute(set_chain_head(chain_id, seq, digest))
        self._admin_written = (seq, digest)
        self._admin_transaction = transaction

    def _admin_head(
        self, connection: sa.Connection, chain_id: int, transaction: Any
    ) -> tuple[int, bytes] | None:
        """Where the next admin event links: the head this process wrote, or, if the
        transaction that wrote it rolled back, the head before it (``None``: a new chain)."""
        written = self._admin_written
        if written is None:
            return None
        if transaction is not None and transaction is self._admin_transaction and transaction.is_active:
            return written  # the same transaction: our own head, not yet committed
        stored = connection.execute(select_last_event(chain_id)).first()
        if stored is None:
            stored = connection.execute(select_checkpoint_head(chain_id)).first()  # pruned up to its head
        found = None if stored is None else (int(stored[0]), bytes(stored[1]))
        if found == written:
            self._admin_committed = written
            return written
        if found is not None and found == self._admin_committed:
            return found  # our last transaction rolled back
        log.error(
            "audit chain %s no longer ends at event %s that this process wrote (its tail was cut "
            "or replaced): the next event follows event %s, and `secure-kv audit verify` names the gap",
            chain_id,
            written[0],
            written[0],
        )
        return written

    def record_or_log(self, event: Event) -> None:
        """Write ``event``; if it cannot be written, log it (for failures being reported anyway)."""
        try:
            self.record(event)
        except Exception as error:
            log.error(
                "audit event %s (workspace %r, key %r, outcome %s) could not be written: %s",
                event.action,
                _show(event.workspace),
                _show(event.key),
                event.outcome,
                _first_line(error),
            )

    def close(self) -> None:
        with self._lock:
            self._idle.clear()
            self._signer = None


def _first_key(result: sa.CursorResult[Any]) -> Any:
    key = result.inserted_primary_key
    assert key is not None
    return key[0]


def _show(name: bytes | None) -> str | None:
    return None if name is None else name.decode("utf-8", "replace")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _execute(connection: DBAPIConnection, sql: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def _rollback_quietly(connection: DBAPIConnection) -> None:
    try:
        _execute(connection, "ROLLBACK")
    except Exception:  # noqa: S110 - the connection is dropped by Database.run if unusable
        pass


def refused(what: str, error: BaseException) -> StorageError:
    """The error for an operation refused because its audit event could not be written."""
    return StorageError(f"{what} refused: its audit event could not be written ({_first_line(error)})")
