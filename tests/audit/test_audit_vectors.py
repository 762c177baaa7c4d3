"""The audit event format, pinned by vectors kept as data (tests/vectors/audit_v1.json) and
re-derived here from the byte layout in docs/compliance.md, independently of the code."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_kv.audit.events import (
    Event,
    anchor_digest,
    checkpoint_message,
    event_digest,
    genesis_digest,
    retired_chains_digest,
)
from secure_kv.audit.signing_keys import _kek_tag

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = json.loads((VECTORS_DIR / "audit_v1.json").read_text(encoding="utf-8"))


def spec_digest(v: dict[str, Any]) -> bytes:
    """The layout exactly as the docs write it."""

    def text(value: str) -> bytes:
        raw = value.encode("utf-8")
        return struct.pack(">I", len(raw)) + raw

    def optional(raw: bytes | None) -> bytes:
        return b"\x00" if raw is None else b"\x01" + raw

    workspace = None if v["workspace"] is None else bytes.fromhex(v["workspace"])
    key = None if v["key"] is None else bytes.fromhex(v["key"])
    return hashlib.sha256(
        b"secure_kv/v1/audit-event"
        + struct.pack(">QQ", v["chain"], v["seq"])
        + bytes.fromhex(v["previous"])
        + struct.pack(">q", v["occurred_at"])
        + text(v["actor"])
        + text(v["action"])
        + optional(None if workspace is None else struct.pack(">I", len(workspace)) + workspace)
        + optional(None if key is None else struct.pack(">I", len(key)) + key)
        + optional(None if v["category"] is None else text(v["category"]))
        + optional(None if v["dek_version"] is None else struct.pack(">q", v["dek_version"]))
        + text(v["outcome"])
        + optional(None if v["detail"] is None else text(v["detail"]))
    ).digest()


def as_event(v: dict[str, Any]) -> Event:
    return Event(
        v["occurred_at"],
        v["actor"],
        v["action"],
        None if v["workspace"] is None else bytes.fromhex(v["workspace"]),
        None if v["key"] is None else bytes.fromhex(v["key"]),
        v["category"],
        v["dek_version"],
        v["outcome"],
        v["detail"],
    )


def test_genesis_digest_matches_the_vector() -> None:
    g = VECTORS["genesis"]
    expected = hashlib.sha256(
        b"secure_kv/v1/audit-genesis" + struct.pack(">QQ", g["chain"], g["signing_key_id"])
    )
    assert genesis_digest(g["chain"], g["signing_key_id"]).hex() == g["digest"] == expected.hexdigest()


def test_event_digests_match_the_vectors_and_the_documented_layout() -> None:
    for v in VECTORS["events"]:
        digest = event_digest(v["chain"], v["seq"], bytes.fromhex(v["previous"]), as_event(v))
        assert digest.hex() == v["digest"] == spec_digest(v).hex()


def test_signatures_verify_with_the_public_key_alone() -> None:
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTORS["signing_public_key"]))
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["signing_private_key"]))
    for v in VECTORS["events"]:
        public.verify(bytes.fromhex(v["signature"]), bytes.fromhex(v["digest"]))
        assert private.sign(bytes.fromhex(v["digest"])).hex() == v["signature"]  # Ed25519 is deterministic
    c = VECTORS["checkpoint"]
    message = checkpoint_message(c["chain"], c["seq"], bytes.fromhex(c["digest"]), c["created_at"])
    public.verify(bytes.fromhex(c["signature"]), message)


def test_anchor_digest_matches_the_vector() -> None:
    a = VECTORS["anchor"]
    heads = [(chain, seq, bytes.fromhex(digest)) for chain, seq, digest in a["heads"]]
    keys = [(key_id, bytes.fromhex(public)) for key_id, public in a["keys"]]
    assert anchor_digest(a["id"], a["created_at"], heads, keys).hex() == a["digest"]


RETIRED = json.loads((VECTORS_DIR / "audit_retired_v1.json").read_text(encoding="utf-8"))


def test_a_retired_signing_keys_mark_matches_the_documented_layout_and_the_vector() -> None:
    heads = [(chain, seq, bytes.fromhex(digest)) for chain, seq, digest in RETIRED["heads"]]
    spec = b"secure_kv/v1/audit-retired-chains" + struct.pack(">QI", RETIRED["key_id"], len(heads))
    for chain, seq, digest in sorted(heads):
        spec += struct.pack(">QQ", chain, seq) + digest
    assert hashlib.sha256(spec).hexdigest() == RETIRED["retired_chains_digest"]
    assert retired_chains_digest(RETIRED["key_id"], heads).hex() == RETIRED["retired_chains_digest"]
    assert retired_chains_digest(RETIRED["empty_key_id"], []).hex() == RETIRED["empty_retired_chains_digest"]
    tag = hashlib.sha256(b"secure_kv/v1/audit-retired-kek|" + RETIRED["kek_id"].encode()).digest()[:16]
    assert tag.hex() == RETIRED["kek_tag"] == _kek_tag(RETIRED["kek_id"]).hex()
