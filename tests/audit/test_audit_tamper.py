"""Edited, deleted, reordered and inserted events, a cut tail and tampered records are all
found by ``audit verify``, which names them; real rows are edited with SQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.audit.events import Event, event_digest
from secure_kv.audit.maintenance import prune, take_anchor
from secure_kv.audit.verify import VerifyReport, verify
from secure_kv.keys import StaticMasterKey
from secure_kv.store.datakeys import now_micros


class Log:
    """A store with a few events on one chain, and SQL access to its tables."""

    def __init__(self, url: str, key: StaticMasterKey) -> None:
        self.url = url
        self.key = key
        self.store = SecureStore.open(url, master_key=key)
        ws = self.store.workspace("w")
        for i in range(4):
            ws.set(f"t{i}", f"secret-{i}".encode(), category=Category.TOKEN)
        self.engine = sa.create_engine(url)

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()

    def verify(self, anchor: str | None = None, *, chain_only: bool = False) -> VerifyReport:
        return verify(self.store._db, None if chain_only else self.key, anchor=anchor)

    def sql(self, statement: str, **params: Any) -> Any:
        with self.engine.begin() as c:
            return c.execute(sa.text(statement), params)

    def event(self, seq: int, chain: int = 1) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(
                sa.text("SELECT * FROM skv_audit_events WHERE chain_id = :c AND seq = :s"),
                {"c": chain, "s": seq},
            ).one()
            return dict(row._mapping)


@pytest.fixture
def log(database_url: str, master_key: StaticMasterKey) -> Iterator[Log]:
    handle = Log(database_url, master_key)
    yield handle
    handle.close()


def failures(report: VerifyReport) -> list[str]:
    return [str(f) for f in report.failures]


def test_an_untouched_log_verifies_with_and_without_secrets(log: Log) -> None:
    assert log.verify().ok
    chain_only = log.verify(chain_only=True)
    assert chain_only.ok and chain_only.events == 5


def test_an_edited_event_is_named(log: Log) -> None:
    log.sql("UPDATE skv_audit_events SET actor = 'mallory' WHERE chain_id = 1 AND seq = 3")
    report = log.verify(chain_only=True)
    assert failures(report) == [
        "event 3 of chain 1: its content, position or link does not match its digest "
        "(edited, reordered, or moved)"
    ]


def test_an_edited_event_with_a_recomputed_digest_fails_its_signature(log: Log) -> None:
    row = log.event(3)
    previous = bytes(log.event(2)["digest"])
    forged = Event(
        row["occurred_at"], "mallory", row["action"], bytes(row["workspace"]), bytes(row["record_key"]),
        row["category"], row["dek_version"], row["outcome"], row["detail"],
    )  # fmt: skip
    log.sql(
        "UPDATE skv_audit_events SET actor = 'mallory', digest = :d WHERE chain_id = 1 AND seq = 3",
        d=event_digest(1, 3, previous, forged),
    )
    report = log.verify(chain_only=True)
    assert not report.ok
    text = "\n".join(failures(report))
    assert "event 3 of chain 1: its signature is invalid" in text
    assert "event 4 of chain 1" in text  # no longer links to the forged digest


def test_a_deleted_event_is_named(log: Log) -> None:
    log.sql("DELETE FROM skv_audit_events WHERE chain_id = 1 AND seq = 2")
    assert failures(log.verify(chain_only=True)) == ["chain 1: event(s) 2 missing (deleted)"]


def test_reordered_events_are_named(log: Log) -> None:
    log.sql("UPDATE skv_audit_events SET seq = 100 WHERE chain_id = 1 AND seq = 2")
    log.sql("UPDATE skv_audit_events SET seq = 2 WHERE chain_id = 1 AND seq = 3")
    log.sql("UPDATE skv_audit_events SET seq = 3 WHERE chain_id = 1 AND seq = 100")
    text = "\n".join(failures(log.verify(chain_only=True)))
    assert "event 2 of chain 1: its content, position or link does not match" in text
    assert "event 3 of chain 1: its content, position or link does not match" in text


def test_an_inserted_event_is_named(log: Log) -> None:
    head = log.event(5)
    fake = Event(now_micros(), "mallory", "record.read", b"w", b"t0", "token", 1)
    digest = event_digest(1, 6, bytes(head["digest"]), fake)  # the hash is public; the key is not
    log.sql(
        "INSERT INTO skv_audit_events (chain_id, seq, occurred_at, actor, action, workspace, record_key, "
        "category, dek_version, outcome, detail, digest, signature) VALUES (1, 6, :t, 'mallory', "
        "'record.read', :w, :k, 'token', 1, 'ok', NULL, :d, :s)",
        t=fake.occurred_at, w=b"w", k=b"t0", d=digest, s=bytes(64),
    )  # fmt: skip
    assert failures(log.verify(chain_only=True)) == [
        "event 6 of chain 1: its signature is invalid (inserted or rewritten without the signing key)"
    ]


def test_a_cut_tail_is_found_against_an_anchor_and_not_without(log: Log) -> None:
    anchor = take_anchor(log.store).text
    assert log.verify(anchor).ok
    log.sql("DELETE FROM skv_audit_events WHERE chain_id = 1 AND seq >= 4")
    assert log.verify(chain_only=True).ok  # documented: a cut tail needs an anchor
    report = log.verify(anchor, chain_only=True)
    assert failures(report) == [
        "chain 1: cut: the anchor has events up to 5, the log ends at 3 (tail deleted)"
    ]


def test_a_deleted_chain_and_an_edited_anchor_record_are_found(log: Log) -> None:
    anchor = take_anchor(log.store).text
    log.sql("DELETE FROM skv_audit_events WHERE chain_id = 1")
    assert "chain 1: missing: the anchor has it up to event 5 (deleted)" in failures(log.verify(anchor))
    log.sql("UPDATE skv_audit_anchors SET heads = REPLACE(heads, '[1, 5,', '[1, 0,')")
    assert any("does not match the anchor kept outside" in f for f in failures(log.verify(anchor)))


def test_a_replaced_signing_key_is_found_against_an_anchor(log: Log) -> None:
    anchor = take_anchor(log.store).text
    log.sql("UPDATE skv_audit_signing_keys SET public_key = :p", p=os.urandom(32))
    text = "\n".join(failures(log.verify(anchor, chain_only=True)))
    assert "audit signing key 1: its public key differs from the anchored one (replaced)" in text
    assert "failed authentication" in "\n".join(failures(log.verify()))  # the master key sees it too


def test_prune_leaves_the_rest_verifiable_behind_a_signed_checkpoint(log: Log) -> None:
    cut_time = int(log.event(3)["occurred_at"]) + 1
    anchor = take_anchor(log.store).text
    result = prune(log.store, cut_time)
    assert (result.removed, result.chains, result.refused) == (3, 1, [])
    report = log.verify(anchor)
    assert report.ok, failures(report)
    log.sql("DELETE FROM skv_audit_events WHERE chain_id = 1 AND seq = 4")
    assert failures(log.verify(chain_only=True)) == ["chain 1: event(s) 4 missing (deleted)"]


def test_a_forged_checkpoint_is_found(log: Log) -> None:
    prune(log.store, int(log.event(3)["occurred_at"]) + 1)
    log.sql("UPDATE skv_audit_checkpoints SET seq = 4")
    text = "\n".join(failures(log.verify(chain_only=True)))
    assert "prune checkpoint of chain 1: its signature is invalid" in text


def test_prune_refuses_to_erase_a_part_that_does_not_verify(log: Log) -> None:
    log.sql("UPDATE skv_audit_events SET actor = 'mallory' WHERE chain_id = 1 AND seq = 2")
    result = prune(log.store, int(log.event(3)["occurred_at"]) + 1)
    assert result.removed == 0 and len(result.refused) == 1
    assert not log.verify(chain_only=True).ok  # the evidence is still there


def test_verify_authenticates_records_and_data_keys(log: Log) -> None:
    log.sql("UPDATE skv_records SET category = 'preference' WHERE record_key = :k", k=b"t1")
    log.sql("UPDATE skv_records SET record_key = :n WHERE record_key = :k", n=b"moved", k=b"t2")
    report = log.verify()
    assert failures(report) == [
        "record 'moved' of workspace 'w': it failed authentication (altered, truncated, or moved)",
        "record 't1' of workspace 'w': it failed authentication (altered, truncated, or moved)",
    ]
    log.sql("UPDATE skv_data_keys SET wrapped = :b", b=bytes(61))
    text = "\n".join(failures(log.verify()))
    assert "data key 1 of workspace 'w'" in text
