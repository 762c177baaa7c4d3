"""Reading and maintaining the audit log: list events, take an anchor, prune old events.

Listing needs no secret. Taking an anchor and pruning record an event of their own, and
pruning signs a checkpoint where it cuts, so they need the master key (through the store).

Both trust only signing keys that authenticate under the master key: a key row and a chain
added by someone with write access are never pinned by an anchor, and never pruned (a
prune would sign a real checkpoint over them and erase the evidence).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from secure_kv._clock import format_time, now_micros
from secure_kv.audit.events import anchor_digest, checkpoint_message, event_digest, genesis_digest
from secure_kv.audit.signing_keys import trusted_signing_keys, verify_signature
from secure_kv.audit.verify import ANCHOR_PREFIX, event_from_row, stream_rows
from secure_kv.errors import AuthenticationError
from secure_kv.sql.audit_queries import (
    delete_checkpoint,
    delete_events_through,
    insert_anchor,
    insert_checkpoint,
    select_chain_heads,
    select_chain_keys,
    select_chains_with_events_before,
    select_checkpoint,
    select_checkpoint_heads,
    select_events,
    select_events_of_chain,
    select_first_seq_from,
    select_last_seq,
    set_anchor_digest,
)
from secure_kv.sql.database import Database
from secure_kv.store.internals import record_event, store_parts

if TYPE_CHECKING:
    from secure_kv.store import SecureStore

__all__ = ["Anchor", "PruneReport", "iter_events", "prune", "take_anchor"]


def _text(name: Any) -> str | None:
    return None if name is None else bytes(name).decode("utf-8", "replace")


def iter_events(
    database: Database, *, workspace: str | None = None, since: int | None = None
) -> Iterator[dict[str, Any]]:
    """Events as plain dicts, oldest first, streamed. Never a value: there is none to show."""
    query = select_events(None if workspace is None else workspace.encode("utf-8"), since)
    for row in stream_rows(database, query):
        yield {
            "time": format_time(row.occurred_at),
            "actor": row.actor,
            "action": row.action,
            "workspace": _text(row.workspace),
            "key": _text(row.record_key),
            "category": row.category,
            "dek_version": row.dek_version,
            "outcome": row.outcome,
            "detail": row.detail,
            "chain": row.chain_id,
            "seq": row.seq,
        }


@dataclass(frozen=True)
class Anchor:
    """What ``secure-kv audit anchor`` prints; keep :attr:`text` outside the database."""

    anchor_id: int
    created_at: int
    digest: bytes
    chains: int
    events: int
    #: signing keys not pinned (and their chains left out), because they do not authenticate
    untrusted: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return f"{ANCHOR_PREFIX}{self.anchor_id}:{self.digest.hex()}"


def take_anchor(store: SecureStore) -> Anchor:
    """Record every chain's head and the signing keys; return the digest to keep outside.

    Only signing keys that authenticate under the master key are pinned, with the heads of
    their chains; any other key (planted, altered, or under a master key the provider does
    not hold) is left out with its chains and listed in :attr:`Anchor.untrusted`, so a
    later ``audit verify --chain-only --anchor`` reports them instead of trusting them.
    """
    parts = store_parts(store)
    database = parts.database
    now = now_micros()
    with database.connect(lock=True) as connection, connection.begin():
        heads = {
            int(chain): (int(seq), bytes(digest))
            for chain, seq, digest in connection.execute(select_chain_heads())
        }
        for chain, seq, digest in connection.execute(select_checkpoint_heads()):
            heads.setdefault(int(chain), (int(seq), bytes(digest)))
        trusted = trusted_signing_keys(connection, parts.provider)
        keys = trusted.public
        chain_keys = {int(chain): int(key_id) for chain, key_id in connection.execute(select_chain_keys())}
        untrusted = [f"audit signing key {p.key_id}: {p.problem}" for p in trusted.problems]
        for chain in sorted(heads):
            if chain_keys.get(chain) not in keys:
                untrusted.append(
                    f"chain {chain}: its signing key {chain_keys.get(chain)} is missing or not "
                    "trusted; not anchored"
                )
                del heads[chain]
        listed = [(chain, seq, digest) for chain, (seq, digest) in sorted(heads.items())]
        text = json.dumps(
            {
                "heads": [[chain, seq, digest.hex()] for chain, seq, digest in listed],
                "keys": [[key_id, public.hex()] for key_id, public in sorted(keys.items())],
            }
        )
        result = connection.execute(insert_anchor(now, text))
        key = result.inserted_primary_key
        assert key is not None
        anchor_id = int(key[0])
        digest = anchor_digest(anchor_id, now, listed, sorted(keys.items()))
        connection.execute(set_anchor_digest(anchor_id, digest))
        events = sum(seq for _, seq, _ in listed)
        record_event(
            store,
            "audit.anchor",
            connection=connection,
            detail=f"anchor {anchor_id}: {len(listed)} chains, {events} events"
            + (f"; left out {len(untrusted)} untrusted keys and chains" if untrusted else ""),
            outcome="ok" if not untrusted else "partial",
        )
    return Anchor(anchor_id, now, digest, len(listed), events, tuple(untrusted))


@dataclass(frozen=True)
class PruneReport:
    before: int
    removed: int
    chains: int
    refused: list[str]


def prune(store: SecureStore, before: int) -> PruneReport:
    """Remove every event older than ``before`` (µs), chain by chain, from the start.

    Where a chain is cut, a signed checkpoint keeps the last removed event's position and
    digest, so what remains still verifies. A chain whose removed part does not verify is
    left whole and listed in ``refused``: pruning never erases evidence of tampering.
    """
    parts = store_parts(store)
    database = parts.database
    signer = parts.audit.signer()
    with database.connect() as connection:
        chains = [int(chain) for (chain,) in connection.execute(select_chains_with_events_before(before))]
        keys = trusted_signing_keys(connection, parts.provider).public
        chain_keys = {int(chain): int(key_id) for chain, key_id in connection.execute(select_chain_keys())}
    removed, cut_chains, refused = 0, 0, []
    for chain in chains:
        with database.connect(lock=True) as connection, connection.begin():
            first_kept = connection.execute(select_first_seq_from(chain, before)).scalar()
            cut = (
                int(first_kept) - 1
                if first_kept is not None
                else connection.execute(select_last_seq(chain)).scalar()
            )
            checkpoint = connection.execute(select_checkpoint(chain)).first()
            start = int(checkpoint.seq) if checkpoint is not None else 0
            if cut is None or int(cut) <= start:
                continue
            cut = int(cut)
            try:
                digest = _check_segment(connection, chain, chain_keys.get(chain), keys, checkpoint, cut)
            except AuthenticationError as error:
                refused.append(f"chain {chain}: {error}")
                continue
            created_at = now_micros()
            connection.execute(delete_checkpoint(chain))
            connection.execute(
                insert_checkpoint(
                    chain_id=chain,
                    seq=cut,
                    digest=digest,
                    signing_key_id=signer.id,
                    created_at=created_at,
                    signature=signer.sign(checkpoint_message(chain, cut, digest, created_at)),
                )
            )
            removed += connection.execute(delete_events_through(chain, cut)).rowcount
            cut_chains += 1
    record_event(
        store,
        "audit.prune",
        detail=f"removed {removed} events older than {format_time(before)} from {cut_chains} chains"
        + (f"; refused {len(refused)} chains that do not verify" if refused else ""),
        outcome="ok" if not refused else "partial",
    )
    return PruneReport(before, removed, cut_chains, refused)


def _check_segment(
    connection: sa.Connection,
    chain: int,
    key_id: int | None,
    keys: dict[int, bytes],
    checkpoint: Any,
    cut: int,
) -> bytes:
    """Walk events up to ``cut``: links, positions and the signature at the cut. Returns its digest.

    ``keys`` holds only the trusted signing keys, so a chain signed by a planted key fails
    here; a previous checkpoint counts only if its signature holds under a trusted key.
    """
    if key_id is None or key_id not in keys:
        raise AuthenticationError(
            "its chain record is missing, or its signing key is missing or does not authenticate "
            "under the master key"
        )
    if checkpoint is not None:
        checkpoint_key = keys.get(int(checkpoint.signing_key_id))
        message = checkpoint_message(
            chain, int(checkpoint.seq), bytes(checkpoint.digest), int(checkpoint.created_at)
        )
        if checkpoint_key is None or not verify_signature(
            checkpoint_key, bytes(checkpoint.signature), message
        ):
            raise AuthenticationError("its prune checkpoint's signature is invalid (forged or edited)")
        seq, previous = int(checkpoint.seq), bytes(checkpoint.digest)
    else:
        seq, previous = 0, genesis_digest(chain, key_id)
    signature = b""
    rows = connection.execute(select_events_of_chain(chain, seq, cut, yield_per=2000))
    for row in rows:
        seq += 1
        if int(row.seq) != seq or event_digest(chain, seq, previous, event_from_row(row)) != bytes(
            row.digest
        ):
            raise AuthenticationError(f"event {seq} does not verify")
        previous, signature = bytes(row.digest), bytes(row.signature)
    if seq != cut or not verify_signature(keys[key_id], signature, previous):
        raise AuthenticationError(f"event {cut} does not verify")
    return previous
