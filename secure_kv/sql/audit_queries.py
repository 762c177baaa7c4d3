"""The audit log's statements outside the hot path: chains and their heads, signing keys,
checkpoints and anchors, and the event queries of ``audit verify``, ``audit log``,
``audit anchor``, ``audit prune`` and the HTML report.

Each builder returns a SQLAlchemy statement that the caller executes on a connection
(``Database.connect``), in its own transaction. Only the tables ``skv_audit_*`` are read or
written here; the audited hot path's compiled statements are
:class:`~secure_kv.sql.statements.AuditStatements`, and every statement on records and data
keys (the reports' and ``audit verify``'s included) is in :mod:`secure_kv.sql.statements`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from secure_kv.sql.schema import (
    audit_anchors,
    audit_chains,
    audit_checkpoints,
    audit_events,
    audit_signing_keys,
)

__all__ = [
    "count_token_reads_by_actor_and_day",
    "delete_checkpoint",
    "delete_events_through",
    "insert_anchor",
    "insert_chain",
    "insert_checkpoint",
    "insert_event",
    "insert_signing_key",
    "lock_chain_signing_key",
    "retire_signing_key",
    "select_anchor",
    "select_chain_heads",
    "select_chain_keys",
    "select_chains_with_events_before",
    "select_checkpoint",
    "select_checkpoint_head",
    "select_checkpoint_heads",
    "select_checkpoint_heads_of_key",
    "select_checkpoints",
    "select_event_heads_of_key",
    "select_events",
    "select_events_by_chain",
    "select_events_of_chain",
    "select_first_seq_from",
    "select_last_event",
    "select_last_seq",
    "select_public_keys",
    "select_recent_anchors",
    "select_recent_events",
    "select_signatures",
    "select_signing_keys",
    "set_anchor_digest",
    "set_chain_head",
]


# --- chains (audit/log.py) --------------------------------------------------------------


def insert_chain(signing_key_id: int, created_at: int, *, empty_head: bool = False) -> sa.Insert:
    """Insert a chain signed by ``signing_key_id`` (``empty_head``: also head_seq 0, no head digest)."""
    if empty_head:
        return audit_chains.insert().values(
            signing_key_id=signing_key_id, created_at=created_at, head_seq=0, head_digest=None
        )
    return audit_chains.insert().values(signing_key_id=signing_key_id, created_at=created_at)


def lock_chain_signing_key(chain_id: int) -> sa.Select[Any]:
    """Read a chain's signing key id, locking its row (FOR UPDATE) for the transaction."""
    table = audit_chains
    return sa.select(table.c.signing_key_id).where(table.c.id == chain_id).with_for_update()


def insert_event(**values: Any) -> sa.Insert:
    """Insert one event row (``values``: its columns by name, see ``EVENT_COLUMNS``)."""
    return audit_events.insert().values(**values)


def set_chain_head(chain_id: int, seq: int, digest: bytes) -> sa.Update:
    """Write a chain's head hint (head_seq, head_digest)."""
    table = audit_chains
    return table.update().where(table.c.id == chain_id).values(head_seq=seq, head_digest=digest)


def select_last_event(chain_id: int) -> sa.Select[Any]:
    """Read the (seq, digest) of a chain's last stored event."""
    e = audit_events.c
    return sa.select(e.seq, e.digest).where(e.chain_id == chain_id).order_by(e.seq.desc()).limit(1)


def select_checkpoint_head(chain_id: int) -> sa.Select[Any]:
    """Read the (seq, digest) of a chain's prune checkpoint."""
    c = audit_checkpoints.c
    return sa.select(c.seq, c.digest).where(c.chain_id == chain_id)


def select_chain_keys() -> sa.Select[Any]:
    """Read every chain's (id, signing_key_id)."""
    return sa.select(audit_chains.c.id, audit_chains.c.signing_key_id)


# --- signing keys (audit/signing_keys.py) -----------------------------------------------


def select_signing_keys(kek_id: str | None = None) -> sa.Select[Any]:
    """Read each signing key's (id, public_key, kek_id, wrapped) by id; only ``kek_id``'s if given."""
    table = audit_signing_keys
    where = () if kek_id is None else (table.c.kek_id == kek_id,)
    return (
        sa.select(table.c.id, table.c.public_key, table.c.kek_id, table.c.wrapped)
        .where(*where)
        .order_by(table.c.id)
    )


def insert_signing_key(public_key: bytes, kek_id: str, wrapped: bytes, created_at: int) -> sa.Insert:
    """Insert a signing key row (its public half and its wrapped seed)."""
    return audit_signing_keys.insert().values(
        public_key=public_key, kek_id=kek_id, wrapped=wrapped, created_at=created_at
    )


def select_public_keys() -> sa.Select[Any]:
    """Read every signing key's (id, public_key)."""
    table = audit_signing_keys
    return sa.select(table.c.id, table.c.public_key)


def retire_signing_key(
    key_id: int, kek_id: str, wrapped: bytes, new_kek_id: str, new_wrapped: bytes
) -> sa.Update:
    """Rewrite a signing key's (kek_id, wrapped), only if the row still holds ``kek_id`` and ``wrapped``."""
    table = audit_signing_keys
    return (
        table.update()
        .where(table.c.id == key_id, table.c.kek_id == kek_id, table.c.wrapped == wrapped)
        .values(kek_id=new_kek_id, wrapped=new_wrapped)
    )


def _chains_of_key(key_id: int) -> sa.Select[Any]:
    ch = audit_chains.c
    return sa.select(ch.id).where(ch.signing_key_id == key_id)


def select_checkpoint_heads_of_key(key_id: int) -> sa.Select[Any]:
    """Read the (chain_id, seq, digest) of the prune checkpoints of the chains ``key_id`` signed."""
    c = audit_checkpoints.c
    return sa.select(c.chain_id, c.seq, c.digest).where(c.chain_id.in_(_chains_of_key(key_id)))


def select_event_heads_of_key(key_id: int) -> sa.Select[Any]:
    """Read the (chain_id, seq, digest) of the last event of each chain ``key_id`` signed."""
    e = audit_events.c
    chains = _chains_of_key(key_id)
    top = (
        sa.select(e.chain_id.label("chain"), sa.func.max(e.seq).label("top"))
        .where(e.chain_id.in_(chains))
        .group_by(e.chain_id)
        .subquery("h")
    )
    return sa.select(e.chain_id, e.seq, e.digest).join(
        top, sa.and_(top.c.chain == e.chain_id, top.c.top == e.seq)
    )


# --- verify (audit/verify.py) -----------------------------------------------------------


def select_anchor(anchor_id: int) -> sa.Select[Any]:
    """Read an anchor's (created_at, heads)."""
    return sa.select(audit_anchors.c.created_at, audit_anchors.c.heads).where(audit_anchors.c.id == anchor_id)


def select_checkpoints() -> sa.Select[Any]:
    """Read every prune checkpoint, all columns."""
    return sa.select(audit_checkpoints)


def select_events_by_chain() -> sa.Select[Any]:
    """Read every event, all columns, in (chain_id, seq) order."""
    return sa.select(audit_events).order_by(audit_events.c.chain_id, audit_events.c.seq)


def select_signatures(chain_id: int) -> sa.Select[Any]:
    """Read a chain's events' (seq, digest, signature) in seq order."""
    e = audit_events.c
    return sa.select(e.seq, e.digest, e.signature).where(e.chain_id == chain_id).order_by(e.seq)


# --- list, anchor, prune (audit/maintenance.py) -----------------------------------------


def select_events(workspace: bytes | None = None, since: int | None = None) -> sa.Select[Any]:
    """Read events, all columns, oldest first; of ``workspace`` and from ``since`` if given."""
    e = audit_events.c
    query = sa.select(audit_events).order_by(e.occurred_at, e.chain_id, e.seq)
    if workspace is not None:
        query = query.where(e.workspace == workspace)
    if since is not None:
        query = query.where(e.occurred_at >= since)
    return query


def select_chain_heads() -> sa.Select[Any]:
    """Read the (chain_id, seq, digest) of each chain's last event."""
    e = audit_events.c
    return sa.select(e.chain_id, e.seq, e.digest).join_from(
        audit_events,
        sa.select(e.chain_id.label("chain"), sa.func.max(e.seq).label("top"))
        .group_by(e.chain_id)
        .subquery("h"),
        sa.and_(sa.literal_column("h.chain") == e.chain_id, sa.literal_column("h.top") == e.seq),
    )


def select_checkpoint_heads() -> sa.Select[Any]:
    """Read every prune checkpoint's (chain_id, seq, digest)."""
    c = audit_checkpoints.c
    return sa.select(c.chain_id, c.seq, c.digest)


def insert_anchor(created_at: int, heads: str) -> sa.Insert:
    """Insert an anchor record (``heads``: its JSON), its digest empty until :func:`set_anchor_digest`."""
    return audit_anchors.insert().values(created_at=created_at, heads=heads, digest=b"")


def set_anchor_digest(anchor_id: int, digest: bytes) -> sa.Update:
    """Write an anchor's digest."""
    return audit_anchors.update().where(audit_anchors.c.id == anchor_id).values(digest=digest)


def select_chains_with_events_before(before: int) -> sa.Select[Any]:
    """Read the ids of the chains with an event older than ``before``, in id order."""
    e = audit_events.c
    return sa.select(e.chain_id).where(e.occurred_at < before).group_by(e.chain_id).order_by(e.chain_id)


def select_first_seq_from(chain_id: int, since: int) -> sa.Select[Any]:
    """Read the lowest seq of a chain's events from ``since`` on (NULL if none)."""
    e = audit_events.c
    return sa.select(sa.func.min(e.seq)).where(e.chain_id == chain_id, e.occurred_at >= since)


def select_last_seq(chain_id: int) -> sa.Select[Any]:
    """Read the highest seq of a chain's events (NULL if none)."""
    e = audit_events.c
    return sa.select(sa.func.max(e.seq)).where(e.chain_id == chain_id)


def select_checkpoint(chain_id: int) -> sa.Select[Any]:
    """Read a chain's prune checkpoint, all columns."""
    return sa.select(audit_checkpoints).where(audit_checkpoints.c.chain_id == chain_id)


def delete_checkpoint(chain_id: int) -> sa.Delete:
    """Delete a chain's prune checkpoint."""
    return sa.delete(audit_checkpoints).where(audit_checkpoints.c.chain_id == chain_id)


def insert_checkpoint(
    chain_id: int, seq: int, digest: bytes, signing_key_id: int, created_at: int, signature: bytes
) -> sa.Insert:
    """Insert a chain's signed prune checkpoint."""
    return audit_checkpoints.insert().values(
        chain_id=chain_id,
        seq=seq,
        digest=digest,
        signing_key_id=signing_key_id,
        created_at=created_at,
        signature=signature,
    )


def delete_events_through(chain_id: int, seq: int) -> sa.Delete:
    """Delete a chain's events up to ``seq`` included."""
    e = audit_events.c
    return sa.delete(audit_events).where(e.chain_id == chain_id, e.seq <= seq)


def select_events_of_chain(chain_id: int, after: int, through: int, *, yield_per: int) -> sa.Select[Any]:
    """Read a chain's events after ``after`` up to ``through``, all columns, in seq order, streamed."""
    e = audit_events.c
    return (
        sa.select(audit_events)
        .where(e.chain_id == chain_id, e.seq > after, e.seq <= through)
        .order_by(e.seq)
        .execution_options(stream_results=True, yield_per=yield_per)
    )


# --- the HTML report (audit/report_html.py) ---------------------------------------------


def count_token_reads_by_actor_and_day(day_micros: int, workspace: bytes | None = None) -> sa.Select[Any]:
    """Read (actor, day, n): how many token reads each actor made each day (of ``workspace`` if given)."""
    e = audit_events.c
    day = (e.occurred_at // day_micros).label("day")
    query = (
        sa.select(e.actor, day, sa.func.count().label("n"))
        .where(e.action == "record.read", e.category == "token")
        .group_by(e.actor, day)
    )
    if workspace is not None:
        query = query.where(e.workspace == workspace)
    return query


def select_recent_events(actions: Collection[str], limit: int) -> sa.Select[Any]:
    """Read (occurred_at, actor, action, outcome, detail) of the newest ``limit`` events of ``actions``."""
    e = audit_events.c
    return (
        sa.select(e.occurred_at, e.actor, e.action, e.outcome, e.detail)
        .where(e.action.in_(actions))
        .order_by(e.occurred_at.desc())
        .limit(limit)
    )


def select_recent_anchors(limit: int) -> sa.Select[Any]:
    """Read the (id, created_at) of the newest ``limit`` anchors."""
    return (
        sa.select(audit_anchors.c.id, audit_anchors.c.created_at)
        .order_by(audit_anchors.c.id.desc())
        .limit(limit)
    )
