"""Attacker: write access to the database (records and data keys), alone or with a leaked
*previous* master key.

They can change any cell of any row, insert and delete rows, but hold no current master
key. With a leaked previous master key (kept by the provider while a rotation is under way,
as the incident runbook says), they can also wrap a data key of their own choosing. What
must hold: new writes and rotations never seal under a key they chose; every stored value
outside its column's domain fails to open with AuthenticationError naming the record
(never quoting ciphertext), and `audit verify` names it and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.admin.erasure import purge
from secure_kv.admin.rotation import rotate_master, rotate_workspace
from secure_kv.envelope import DataKey, data_key_associated_data, open_value, parse_header, record_context
from secure_kv.errors import AuthenticationError
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import RawMasterKey

from .raw import RawDatabase, verify_store

WS = "tenant-a"


@pytest.fixture
def raw(database_url: str) -> Iterator[RawDatabase]:
    attacker = RawDatabase(database_url)
    yield attacker
    attacker.close()


def _sealed_under(dek: bytes, raw: RawDatabase, key: str, category: Category) -> bool:
    """Whether the stored record opens with ``dek``: the attacker can read it."""
    row = raw.record(WS, key)
    blob = bytes(row["value"])
    data_key = DataKey(dek, WS.encode(), parse_header(blob).dek_version)
    context = record_context(
        WS.encode(), key.encode(), {"token": 1, "preference": 2, "cache": 3}[category.value], None
    )
    try:
        open_value(data_key, context, blob)
    except AuthenticationError:
        return False
    return True


def _plant(raw: RawDatabase, leaked: RawMasterKey) -> tuple[int, bytes]:
    """DEK version N+1, bytes the attacker chose, wrapped by the leaked key, made latest."""
    version = raw.last_version(WS) + 1
    chosen = os.urandom(32)
    wrapped = leaked.wrap(chosen, data_key_associated_data(WS.encode(), version))
    raw.plant_data_key(WS, version, leaked.kek_id, wrapped)
    return version, chosen


def test_a_data_key_planted_with_a_leaked_previous_master_key_is_never_written_with(
    database_url: str, raw: RawDatabase
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    leaked = RawMasterKey(old)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as store:
        store.workspace(WS).set("before", b"written under the old key", category=Category.TOKEN)
    # Incident runbook: the new key becomes current, the leaked one stays as a previous key.
    provider = StaticMasterKey(new, previous=[old])
    with SecureStore.open(database_url, master_key=provider) as store:
        assert rotate_master(store).complete
    planted, chosen = _plant(raw, leaked)

    with SecureStore.open(database_url, master_key=provider) as store:
        ws = store.workspace(WS)
        ws.set("after", b"a new secret", category=Category.TOKEN)
        assert ws.get("after") == b"a new secret"
        assert raw.record(WS, "after")["dek_version"] > planted
        assert not _sealed_under(chosen, raw, "after", Category.TOKEN)
        # The runbook's own workspace rotation seals every record under a fresh key.
        rotation = rotate_workspace(store, WS)
        assert rotation.to_version is not None and rotation.to_version > planted
        assert raw.data_key_kek_id(WS, rotation.to_version) == RawMasterKey(new).kek_id
        for key in ("before", "after"):
            assert not _sealed_under(chosen, raw, key, Category.TOKEN)
        assert ws.get("before") == b"written under the old key"

    # Planted again, then `rotate master` rewraps it under the new key: still never adopted.
    planted, chosen = _plant(raw, leaked)
    with SecureStore.open(database_url, master_key=provider) as store:
        assert rotate_master(store).rewrapped == 1
        assert raw.data_key_kek_id(WS, planted) == RawMasterKey(new).kek_id
    with SecureStore.open(database_url, master_key=StaticMasterKey(new)) as store:
        store.workspace(WS).set("later", b"another secret", category=Category.TOKEN)
        assert raw.record(WS, "later")["dek_version"] > planted
        assert not _sealed_under(chosen, raw, "later", Category.TOKEN)
        rotation = rotate_workspace(store, WS)
        assert rotation.to_version is not None and rotation.to_version > planted
        for key in ("before", "after", "later"):
            assert not _sealed_under(chosen, raw, key, Category.TOKEN)


def test_a_key_rewrapped_by_a_master_rotation_is_read_but_not_written_with(
    database_url: str, raw: RawDatabase
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(old)) as store:
        store.workspace(WS).set("a", b"1")
    provider = StaticMasterKey(new, previous=[old])
    with SecureStore.open(database_url, master_key=provider) as store:
        rotate_master(store)
    with SecureStore.open(database_url, master_key=StaticMasterKey(new)) as store:
        ws = store.workspace(WS)
        assert ws.get("a") == b"1"  # read under the rewrapped key
        ws.set("b", b"2")
        assert raw.record(WS, "b")["dek_version"] == raw.record(WS, "a")["dek_version"] + 1


def _expect_refused(store: SecureStore, key: str) -> str:
    ws = store.workspace(WS)
    with pytest.raises(AuthenticationError) as raised:
        ws.get(key)
    with pytest.raises(AuthenticationError) as raised_many:
        ws.get_many(["fine", key])
    try:  # exist() decrypts nothing: it answers, or refuses an expiry it cannot read
        ws.exist(key)
    except AuthenticationError as error:
        assert repr(key) in str(error)
    for message in (str(raised.value), str(raised_many.value)):
        assert repr(key) in message and repr(WS) in message
    return str(raised.value)


def test_an_expiry_of_minus_one_is_not_a_second_way_to_say_none(
    database_url: str, raw: RawDatabase, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(database_url, master_key=master_key) as store:
        ws = store.workspace(WS)
        ws.set_many({"fine": b"0", "k": b"forever"})
        raw.set_record(WS, "k", "expires_at = -1")
    with SecureStore.open(database_url, master_key=master_key) as store:
        _expect_refused(store, "k")
        report = verify_store(store, master_key)
        assert not report.ok
        assert [str(f.subject) for f in report.failures] == [f"record 'k' of workspace {WS!r}"]
        purge(store)
    assert raw.record(WS, "k")["expires_at"] == -1  # left for verify to report, not purged


def _poisons(dialect: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, SQL assignment, parameters): stored values outside each column's domain."""
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("negative expiry", "expires_at = -5", {}),
        ("zero expiry", "expires_at = 0", {}),
        ("huge expiry", "expires_at = :e", {"e": (1 << 63) - 1}),
        ("negative version", "dek_version = -1", {}),
        ("unknown category", "category = 'tokens'", {}),
        ("empty value", "value = :b", {"b": b""}),
    ]
    if dialect == "sqlite":  # any cell holds any type
        cases += [
            ("text expiry", "expires_at = 'tomorrow'", {}),
            # Not integral, so SQLite's INTEGER affinity keeps it REAL.
            ("real expiry", "expires_at = 1700000000000000.5", {}),
            ("text value", "value = 'plain text'", {}),
            ("undecodable text value", "value = CAST(value AS TEXT)", {}),
            ("text version", "dek_version = 'one'", {}),
            ("real version", "dek_version = 1.5", {}),
            ("undecodable category", "category = CAST(X'ff746f6b656e' AS TEXT)", {}),
            ("blob category", "category = X'746f6b656e'", {}),
            ("integer value", "value = 42", {}),
        ]
    return cases


def test_cells_outside_their_domain_fail_with_the_documented_error(
    database_url: str, raw: RawDatabase, master_key: StaticMasterKey
) -> None:
    with SecureStore.open(database_url, master_key=master_key) as store:
        store.workspace(WS).set_many({"fine": b"0", "k": b"s3cret"}, category=Category.TOKEN)
        original = raw.record(WS, "k")
    ciphertext = bytes(original["value"])
    tried = 0
    for label, assignment, params in _poisons(raw.dialect):
        try:
            raw.set_record(WS, "k", assignment, **params)
        except sa.exc.DBAPIError:  # a server refusing the value is a fine outcome
            if raw.dialect == "sqlite":
                raise
            continue
        tried += 1
        with SecureStore.open(database_url, master_key=master_key) as store:
            message = _expect_refused(store, "k")
            assert ciphertext[34:].hex() not in message and "with text" not in message, label
            assert store.workspace(WS).get("fine") == b"0"
            report = verify_store(store, master_key)
            assert report.records == 2, label  # verify went on past the bad row
            subjects = {str(f.subject) for f in report.failures}
            assert f"record 'k' of workspace {WS!r}" in subjects, label
            # SQLite's cell-type scan may name the row a second time; nothing else fails.
            assert subjects <= {
                f"record 'k' of workspace {WS!r}",
                f"row ('{raw.workspace_id(WS)}', 'k') of skv_records",
            }, (
                label,
                subjects,
            )
        raw.set_record(
            WS,
            "k",
            "category = :c, dek_version = :d, expires_at = :e, value = :v",
            c=original["category"],
            d=original["dek_version"],
            e=original["expires_at"],
            v=ciphertext,
        )
    assert tried >= 4
