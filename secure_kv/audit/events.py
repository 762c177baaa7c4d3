"""Audit events as bytes: the canonical encoding, the hash chain and what gets signed.

Format 1 (all integers big-endian; specified in docs/compliance.md, pinned by
tests/vectors/audit_v1.json)::

    digest(event) = SHA-256(
        "secure_kv/v1/audit-event" | u64 chain | u64 seq | previous digest (32)
        | i64 occurred_at | str actor | str action | opt-bytes workspace | opt-bytes key
        | opt-str category | opt-i64 dek_version | str outcome | opt-str detail)

    str:   u32 length | UTF-8          opt-*: u8 0 (absent) or u8 1 | the value
    previous digest of seq 1 = SHA-256("secure_kv/v1/audit-genesis" | u64 chain | u64 signing key id)
    signature = Ed25519(signing key, digest)

Every event carries its chain and position, so an event moved to another chain or place,
edited, removed or inserted breaks the digest of its successor, and only the holder of the
signing key can sign a new head.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "DIGEST_BYTES",
    "MAX_ACTOR_CHARS",
    "MAX_DETAIL_CHARS",
    "Event",
    "anchor_digest",
    "checkpoint_message",
    "event_digest",
    "genesis_digest",
    "retired_chains_digest",
]

DIGEST_BYTES = 32
MAX_ACTOR_CHARS = 255
MAX_DETAIL_CHARS = 1000
MAX_ACTION_CHARS = 64

_EVENT_LABEL = b"secure_kv/v1/audit-event"
_GENESIS_LABEL = b"secure_kv/v1/audit-genesis"
_CHECKPOINT_LABEL = b"secure_kv/v1/audit-checkpoint"
_ANCHOR_LABEL = b"secure_kv/v1/audit-anchor"
_RETIRED_LABEL = b"secure_kv/v1/audit-retired-chains"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_POSITION = struct.Struct(">QQ")


@dataclass(frozen=True)
class Event:
    """What one audit event says. Never a value: names, category, key version, outcome."""

    occurred_at: int
    actor: str
    action: str
    workspace: bytes | None = None
    key: bytes | None = None
    category: str | None = None
    dek_version: int | None = None
    outcome: str = "ok"
    detail: str | None = None

    def clipped(self) -> Event:
        """The event with text cut to its column sizes, so what is stored is what is signed."""
        detail = self.detail
        if detail is not None and len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 1] + "…"
        if (
            len(self.actor) <= MAX_ACTOR_CHARS
            and len(self.action) <= MAX_ACTION_CHARS
            and detail is self.detail
        ):
            return self
        return Event(
            self.occurred_at,
            self.actor[:MAX_ACTOR_CHARS],
            self.action[:MAX_ACTION_CHARS],
            self.workspace,
            self.key,
            self.category,
            self.dek_version,
            self.outcome,
            detail,
        )


def _text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _U32.pack(len(encoded)) + encoded


def _optional_bytes(value: bytes | None) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x01" + _U32.pack(len(value)) + bytes(value)


def _optional_text(value: str | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + _text(value)


def _optional_int(value: int | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + _I64.pack(value)


def genesis_digest(chain_id: int, signing_key_id: int) -> bytes:
    """The "previous digest" of a chain's first event: binds the chain to its signing key."""
    return hashlib.sha256(_GENESIS_LABEL + _U64.pack(chain_id) + _U64.pack(signing_key_id)).digest()


def event_digest(chain_id: int, seq: int, previous: bytes, event: Event) -> bytes:
    """SHA-256 over the event's canonical bytes (see the module docstring)."""
    return hashlib.sha256(
        b"".join(
            (
                _EVENT_LABEL,
                _POSITION.pack(chain_id, seq),
                bytes(previous),
                _I64.pack(event.occurred_at),
                _text(event.actor),
                _text(event.action),
                _optional_bytes(event.workspace),
                _optional_bytes(event.key),
                _optional_text(event.category),
                _optional_int(event.dek_version),
                _text(event.outcome),
                _optional_text(event.detail),
            )
        )
    ).digest()


def checkpoint_message(chain_id: int, seq: int, digest: bytes, created_at: int) -> bytes:
    """What a prune checkpoint's signature covers: where the chain was cut, and its digest there."""
    return _CHECKPOINT_LABEL + _POSITION.pack(chain_id, seq) + bytes(digest) + _I64.pack(created_at)


def anchor_digest(
    anchor_id: int,
    created_at: int,
    heads: list[tuple[int, int, bytes]],
    public_keys: list[tuple[int, bytes]],
) -> bytes:
    """The digest an operator keeps outside the database: every chain head and signing key."""
    parts = [_ANCHOR_LABEL, _U64.pack(anchor_id), _I64.pack(created_at), _U32.pack(len(heads))]
    for chain_id, seq, digest in sorted(heads):
        parts += [_POSITION.pack(chain_id, seq), bytes(digest)]
    parts.append(_U32.pack(len(public_keys)))
    for key_id, public in sorted(public_keys):
        parts += [_U64.pack(key_id), bytes(public)]
    return hashlib.sha256(b"".join(parts)).digest()


def retired_chains_digest(key_id: int, heads: list[tuple[int, int, bytes]]) -> bytes:
    """What a retired signing key's mark holds: the head of every chain it signed, when it
    was retired. Pruning keeps heads (a checkpoint at the head), so this never changes
    afterwards; an event signed with the retired seed later (by whoever unwrapped it with a
    leaked master key) changes it."""
    parts = [_RETIRED_LABEL, _U64.pack(key_id), _U32.pack(len(heads))]
    for chain_id, seq, digest in sorted(heads):
        parts += [_POSITION.pack(chain_id, seq), bytes(digest)]
    return hashlib.sha256(b"".join(parts)).digest()
