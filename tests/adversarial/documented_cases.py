"""Tamper-matrix cases that are harmless or that nothing detects, each with the reason.

``test_tamper_matrix.py`` reads this table; SECURITY.md ("What the tamper matrix leaves to
documentation") mirrors it. A case is (table, column, mutation); ``"*"`` matches any.
"""

from __future__ import annotations

__all__ = ["DOCUMENTED", "documented_reason"]

# (table, column, mutation kind) -> reason. Mutation kinds are those test_tamper_matrix.py
# generates: flip, truncate, null, negative, zero, huge, text, real, empty, integer, blob,
# "undecodable text", "copy: another row|workspace|category|DEK version|store", "row copy: ...".
_TIMESTAMP = (
    "bookkeeping time, not authenticated: shown by `status`, `keys` and `audit report`, used "
    "by no check and no decision about a value; a changed value misleads a report, nothing else"
)
_POINTER = (
    "the pointer to the workspace's newest data key, used only to pick the key for new "
    "writes: a write uses it only if it names a key created under the current master key, "
    "else it creates a fresh version (and a pointer moved back makes the compare-and-set "
    "create the next free version), so no value is ever sealed under a key the attacker "
    "chose; reads never use it"
)
_HEAD_HINT = (
    "a hint for the next append of an admin chain, never trusted by `audit verify`, which "
    "recomputes every digest and checks the head's signature (issue 10, finding 12a: the "
    "append side is the audit helper's)"
)
_MIDDLE_SIGNATURE = (
    "a signature of an event that is not its chain's newest: redundant, since the newest "
    "event's signature covers every earlier event through the digest chain; verify checks "
    "each signature only when the head's fails, so this cell changes nothing that is trusted"
)
_ANCHOR_DIGEST = (
    "the anchor row's copy of its digest: verify recomputes the digest from the row's heads "
    "and keys and compares it with the copy the operator kept outside the database, never "
    "with this cell"
)
_DESTROYED = (
    "a data key set to NULL reads as destroyed (the state a shred leaves): records under it "
    "read as missing. The same effect as deleting them, which write access allows anyway "
    "(SECURITY.md: deletes and rollbacks are not detected)"
)
_SAME_MASTER_KEY = (
    "a data key and the records it sealed, copied together from another store that shares "
    "the master key, open: no store identity is bound into the associated data. Two stores "
    "under one master key are one trust domain; use a master key per store to keep them apart "
    "(SECURITY.md, 'Stores that share a master key')"
)

DOCUMENTED: dict[tuple[str, str, str], str] = {
    ("skv_workspaces", "created_at", "*"): _TIMESTAMP,
    ("skv_data_keys", "created_at", "*"): _TIMESTAMP,
    ("skv_records", "created_at", "*"): _TIMESTAMP,
    ("skv_records", "updated_at", "*"): _TIMESTAMP,
    ("skv_audit_chains", "created_at", "*"): _TIMESTAMP,
    ("skv_audit_signing_keys", "created_at", "*"): _TIMESTAMP,
    ("skv_workspaces", "last_dek_version", "*"): _POINTER,
    ("skv_data_keys", "wrapped", "null"): _DESTROYED,
    ("skv_audit_chains", "head_seq", "*"): _HEAD_HINT,
    ("skv_audit_chains", "head_digest", "*"): _HEAD_HINT,
    ("skv_audit_events", "signature", "*"): _MIDDLE_SIGNATURE,
    ("skv_audit_anchors", "digest", "*"): _ANCHOR_DIGEST,
    (
        "skv_records+skv_data_keys",
        "(workspace)",
        "copy: another store, key and records together",
    ): _SAME_MASTER_KEY,
}


def documented_reason(table: str, column: str, kind: str, dialect: str) -> str | None:
    """The documented reason for a case, or ``None`` if it is not documented."""
    for key in ((table, column, kind), (table, column, "*"), (table, "*", kind)):
        reason = DOCUMENTED.get(key)
        if reason is not None:
            return reason
    if kind.startswith("copy: ") or kind.startswith("row copy: "):
        return DOCUMENTED.get((table, column, "copy: *"))
    return None
