"""Attacker: database write access (the audit log's part), and a leaked previous master key
plus write access.

With write access alone they can add, change and delete any row of the audit tables, and
compute every public hash, but hold no master key, so they cannot produce a signing key
row that authenticates under it. With a leaked old master key and any copy of the database
they also unwrap the audit signing seed that key wrapped. What must hold, on every
database: ``audit prune`` never erases a chain that does not verify under a trusted key,
chain-only verification with an anchor trusts only the keys the anchor pinned, an anchor
pins only keys that authenticate, events signed with a seed retired by ``rotate master``
are refused, and a cut tail of the admin chain is never spliced over.

Every attack is done with SQL on the real stored bytes, then the operator's real commands
run (``audit prune``, ``audit anchor``, ``audit verify``, ``rotate master``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_kv import Category, SecureStore
from secure_kv._clock import parse_time
from secure_kv.admin.rotation import rotate_master, rotate_workspace
from secure_kv.audit.events import Event, event_digest, genesis_digest
from secure_kv.audit.maintenance import prune, take_anchor
from secure_kv.audit.verify import VerifyReport, verify
from secure_kv.cli import main
from secure_kv.commands import audit_prune, audit_verify
from secure_kv.errors import AuthenticationError
from secure_kv.keys import StaticMasterKey
from secure_kv.settings import load_settings

SEED_LABEL = b"secure_kv/v1/audit-signing-key"  # docs/compliance.md: a wrapped signing key's AD
INSERT_EVENT = (
    "INSERT INTO skv_audit_events (chain_id, seq, occurred_at, actor, action, workspace, record_key, "
    "category, dek_version, outcome, detail, digest, signature) VALUES (:chain, :seq, :at, :actor, "
    ":action, :workspace, :key, :category, :version, :outcome, :detail, :digest, :signature)"
)


class Attacker:
    """SQL access to the store's database, and nothing else (no master key)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)

    def sql(self, statement: str, **params: Any) -> Any:
        with self.engine.begin() as connection:
            result = connection.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else None

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(statement), params).scalar()

    def events(self, chain: int) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT * FROM skv_audit_events WHERE chain_id = :c ORDER BY seq"), {"c": chain}
            )
            return [dict(row._mapping) for row in rows]

    def plant_key(self, private: Ed25519PrivateKey) -> int:
        """A signing key row of the attacker's own; it cannot wrap it under the master key."""
        public = private.public_key().public_bytes_raw()
        kek_id = self.scalar("SELECT kek_id FROM skv_audit_signing_keys ORDER BY id")
        self.sql(
            "INSERT INTO skv_audit_signing_keys (public_key, kek_id, wrapped, created_at) "
            "VALUES (:p, :k, :w, 0)",
            p=public, k=kek_id, w=os.urandom(61),
        )  # fmt: skip
        return int(self.scalar("SELECT id FROM skv_audit_signing_keys WHERE public_key = :p", p=public))

    def new_chain(self, key_id: int) -> int:
        self.sql("INSERT INTO skv_audit_chains (signing_key_id, created_at) VALUES (:k, 0)", k=key_id)
        return int(self.scalar("SELECT MAX(id) FROM skv_audit_chains"))

    def write_chain(
        self,
        chain: int,
        key_id: int,
        signer: Ed25519PrivateKey,
        events: list[Event],
        *,
        after: tuple[int, bytes] | None = None,
    ) -> None:
        """Append ``events`` to ``chain`` (from its genesis, or after ``after``), each digest
        computed as the format says and signed by ``signer``."""
        seq, previous = after if after is not None else (0, genesis_digest(chain, key_id))
        for event in events:
            seq += 1
            digest = event_digest(chain, seq, previous, event)
            self.sql(
                INSERT_EVENT,
                chain=chain, seq=seq, at=event.occurred_at, actor=event.actor, action=event.action,
                workspace=event.workspace, key=event.key, category=event.category,
                version=event.dek_version, outcome=event.outcome, detail=event.detail,
                digest=digest, signature=signer.sign(digest),
            )  # fmt: skip
            previous = digest

    def close(self) -> None:
        self.engine.dispose()


def alice_read(occurred_at: int = 1_700_000_000_000_000) -> Event:
    """The forged event: "alice read token t"."""
    return Event(occurred_at, "alice", "record.read", b"w", b"t", "token", 1)


def as_event(row: dict[str, Any], occurred_at: int) -> Event:
    return Event(
        occurred_at, row["actor"], row["action"],
        None if row["workspace"] is None else bytes(row["workspace"]),
        None if row["record_key"] is None else bytes(row["record_key"]),
        row["category"], row["dek_version"], row["outcome"], row["detail"],
    )  # fmt: skip


def verified(url: str, key: StaticMasterKey) -> VerifyReport:
    """The operator's ``secure-kv audit verify`` with the master key."""
    return audit_verify(settings=load_settings(database_url=url), master_key=key)


def failures(report: VerifyReport) -> str:
    return "\n".join(str(failure) for failure in report.failures)


@pytest.fixture
def attacker(database_url: str) -> Iterator[Attacker]:
    handle = Attacker(database_url)
    yield handle
    handle.close()


@pytest.fixture
def store(database_url: str, master_key: StaticMasterKey) -> Iterator[SecureStore]:
    """A store whose token ``t`` in workspace ``w`` was written and read twice (audited)."""
    with SecureStore.open(database_url, master_key=master_key) as opened:
        ws = opened.workspace("w")
        ws.set("t", b"sk-secret", category=Category.TOKEN)
        assert ws.get("t") == b"sk-secret"
        assert ws.get("t") == b"sk-secret"
        yield opened


# --- finding 1: prune trusted public keys read from the database -----------------------


def test_prune_refuses_a_chain_signed_by_a_planted_key_and_verify_still_fails(
    store: SecureStore, attacker: Attacker, master_key: StaticMasterKey, database_url: str
) -> None:
    anchor = take_anchor(store).text
    chain = int(attacker.scalar("SELECT chain_id FROM skv_audit_events WHERE action = 'record.read'"))
    original = attacker.events(chain)
    anchored_top = original[-1]["seq"]
    real_key = int(attacker.scalar("SELECT signing_key_id FROM skv_audit_chains WHERE id = :c", c=chain))
    # Plant a key, point the chain at it, rewrite the chain without its reads, dated 1970,
    # padded past the anchored position, signed by the planted key.
    mallory = Ed25519PrivateKey.generate()
    planted = attacker.plant_key(mallory)
    attacker.sql("UPDATE skv_audit_chains SET signing_key_id = :k WHERE id = :c", k=planted, c=chain)
    kept = [row for row in original if row["action"] != "record.read"]
    kept += [kept[-1]] * (anchored_top + 2 - len(kept))
    attacker.sql("DELETE FROM skv_audit_events WHERE chain_id = :c", c=chain)
    attacker.write_chain(chain, planted, mallory, [as_event(row, n) for n, row in enumerate(kept, 1)])

    # The operator's routine retention, `secure-kv audit prune --before 2000-01-01`.
    report = audit_prune(
        parse_time("2000-01-01"), settings=load_settings(database_url=database_url), master_key=master_key
    )

    assert report.removed == 0 and report.chains == 0
    assert len(report.refused) == 1 and report.refused[0].startswith(f"chain {chain}:")
    assert len(attacker.events(chain)) == len(kept)  # left whole: the evidence stays
    assert attacker.scalar("SELECT COUNT(*) FROM skv_audit_checkpoints") == 0
    # The attacker covers its tracks; verify with the master key and the anchor still fails.
    attacker.sql("UPDATE skv_audit_chains SET signing_key_id = :k WHERE id = :c", k=real_key, c=chain)
    attacker.sql("DELETE FROM skv_audit_signing_keys WHERE id = :k", k=planted)
    result = verify(store._db, master_key, anchor=anchor)
    assert not result.ok
    assert f"chain {chain}" in failures(result)


def test_prune_refuses_to_build_on_a_forged_checkpoint(
    store: SecureStore, attacker: Attacker, master_key: StaticMasterKey
) -> None:
    chain = int(attacker.scalar("SELECT chain_id FROM skv_audit_events WHERE action = 'record.read'"))
    events = attacker.events(chain)
    # Delete the first events and claim, with an unsigned checkpoint, that a prune did it.
    cut = events[1]
    attacker.sql("DELETE FROM skv_audit_events WHERE chain_id = :c AND seq <= :s", c=chain, s=cut["seq"])
    attacker.sql(
        "INSERT INTO skv_audit_checkpoints (chain_id, seq, digest, signing_key_id, created_at, signature) "
        "VALUES (:c, :s, :d, :k, 0, :g)",
        c=chain, s=cut["seq"], d=bytes(cut["digest"]), k=1, g=bytes(64),
    )  # fmt: skip
    report = prune(store, parse_time("2100-01-01"))
    assert any(problem.startswith(f"chain {chain}:") for problem in report.refused)
    result = verify(store._db, master_key)
    assert f"prune checkpoint of chain {chain}: its signature is invalid" in failures(result)


# --- finding 2: chain-only verification with an anchor, and what an anchor pins --------


def test_chain_only_verify_with_an_anchor_refuses_a_key_and_chain_the_anchor_did_not_pin(
    store: SecureStore, attacker: Attacker, database_url: str
) -> None:
    anchor = take_anchor(store).text
    mallory = Ed25519PrivateKey.generate()
    planted = attacker.plant_key(mallory)
    chain = attacker.new_chain(planted)
    attacker.write_chain(chain, planted, mallory, [alice_read()])

    result = verify(store._db, None, anchor=anchor)

    assert not result.ok
    text = failures(result)
    assert f"audit signing key {planted}: not pinned by the anchor" in text
    assert f"chain {chain}: its signing key {planted} is missing or not trusted" in text
    # The auditor's command exits non-zero and names them.
    run = CliRunner().invoke(
        main, ["--database-url", database_url, "audit", "verify", "--chain-only", "--anchor", anchor]
    )
    assert run.exit_code != 0
    assert f"audit signing key {planted}" in run.output + run.stderr


def test_an_anchor_pins_only_signing_keys_that_authenticate_under_the_master_key(
    store: SecureStore, attacker: Attacker
) -> None:
    mallory = Ed25519PrivateKey.generate()
    planted = attacker.plant_key(mallory)
    chain = attacker.new_chain(planted)
    attacker.write_chain(chain, planted, mallory, [alice_read()])

    anchor = take_anchor(store)  # the operator's routine anchor, after the planting

    result = verify(store._db, None, anchor=anchor.text)
    assert f"audit signing key {planted}: not pinned by the anchor" in failures(result)
    assert any(f"audit signing key {planted}" in line for line in anchor.untrusted)
    assert any(line.startswith(f"chain {chain}:") for line in anchor.untrusted)


# --- finding 5: rotate master must replace the signing key -----------------------------


@pytest.mark.parametrize("where", ["new chain", "old chain"])
def test_a_seed_unwrapped_with_a_leaked_master_key_signs_nothing_after_rotate_master(
    database_url: str, attacker: Attacker, where: str
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as store:
        store.workspace("w").set("t", b"sk-secret", category=Category.TOKEN)
    # The attacker: the leaked key and a copy of the database give it the signing seed.
    key_id, public, wrapped = attacker.sql("SELECT id, public_key, wrapped FROM skv_audit_signing_keys")[0]
    seed = StaticMasterKey(old).current_key().unwrap(bytes(wrapped), SEED_LABEL + bytes(public))
    stolen = Ed25519PrivateKey.from_private_bytes(seed)
    old_chain = int(
        attacker.scalar("SELECT MIN(id) FROM skv_audit_chains WHERE signing_key_id = :k", k=key_id)
    )
    # The operator follows the runbook: new key current, rotate master, drop the old key.
    with SecureStore.open(database_url, master_key=StaticMasterKey(new, previous=[old])) as store:
        rotation = rotate_master(store)
        assert store.workspace("w").get("t") == b"sk-secret"
    assert rotation.complete
    assert verified(database_url, StaticMasterKey(new)).ok

    # The attacker forges "alice read token t" with the stolen seed.
    if where == "new chain":
        chain = attacker.new_chain(key_id)
        attacker.write_chain(chain, key_id, stolen, [alice_read()])
    else:
        head = attacker.events(old_chain)[-1]
        attacker.write_chain(
            old_chain, key_id, stolen, [alice_read()], after=(head["seq"], bytes(head["digest"]))
        )

    result = verified(database_url, StaticMasterKey(new))
    assert not result.ok
    assert f"audit signing key {key_id}: retired by a master rotation" in failures(result)
    # The store signs with a new key, and the old seed is gone from the live database.
    signing_keys = attacker.sql(
        "SELECT DISTINCT c.signing_key_id FROM skv_audit_events e JOIN skv_audit_chains c "
        "ON c.id = e.chain_id WHERE e.action = 'record.read'"
    )
    assert [tuple(row) for row in signing_keys] != [(key_id,)]
    (wrapped_now,) = attacker.sql("SELECT wrapped FROM skv_audit_signing_keys WHERE id = :k", k=key_id)[0]
    with pytest.raises(AuthenticationError):
        StaticMasterKey(old).current_key().unwrap(bytes(wrapped_now), SEED_LABEL + bytes(public))


# --- finding 12a: the admin chain's head hint ------------------------------------------


def test_a_cut_admin_chain_tail_is_not_spliced_over_by_the_next_admin_event(
    store: SecureStore, attacker: Attacker, master_key: StaticMasterKey
) -> None:
    take_anchor(store)
    anchor = take_anchor(store).text  # the last anchor kept outside
    chain = int(attacker.scalar("SELECT chain_id FROM skv_audit_events WHERE action = 'audit.anchor'"))
    anchored = attacker.events(chain)[-2]  # the second anchor's own event follows what it pinned
    rotate_workspace(store, "w")  # admin events after the anchor, on the same chain
    assert attacker.events(chain)[-1]["seq"] > anchored["seq"] + 1
    # Cut them, and set the row's head hint back over the cut.
    attacker.sql("DELETE FROM skv_audit_events WHERE chain_id = :c AND seq > :s", c=chain, s=anchored["seq"])
    attacker.sql(
        "UPDATE skv_audit_chains SET head_seq = :s, head_digest = :d WHERE id = :c",
        s=anchored["seq"], d=bytes(anchored["digest"]), c=chain,
    )  # fmt: skip

    rotate_workspace(store, "w")  # the next admin operation

    result = verify(store._db, master_key, anchor=anchor)
    assert not result.ok
    assert f"chain {chain}: event(s)" in failures(result) and "missing (deleted)" in failures(result)
