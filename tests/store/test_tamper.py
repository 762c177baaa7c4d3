"""Tampering with real stored bytes is detected; a wrong master key is told apart from it."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.errors import AuthenticationError, MasterKeyError, UnsupportedVersionError
from secure_kv.keys import StaticMasterKey
from tests.adversarial.raw import RawDatabase


class Raw(RawDatabase):
    """Direct SQL access to a store's tables, as an attacker with database access has."""

    def record(self, workspace: str, key: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(
                sa.text("SELECT * FROM skv_records WHERE workspace_id = :w AND record_key = :k"),
                {"w": self.workspace_id(workspace), "k": key.encode()},
            ).one()
            return dict(row._mapping)

    def update(self, workspace: str, key: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = :{name}" for name in columns)
        with self.engine.begin() as c:
            result = c.execute(
                sa.text(f"UPDATE skv_records SET {assignments} WHERE workspace_id = :w AND record_key = :k"),
                {**columns, "w": self.workspace_id(workspace), "k": key.encode()},
            )
            assert result.rowcount == 1

    def wrapped_key(self, workspace: str, version: int = 1) -> bytes:
        with self.engine.connect() as c:
            return bytes(
                c.execute(
                    sa.text("SELECT wrapped FROM skv_data_keys WHERE workspace_id = :w AND version = :v"),
                    {"w": self.workspace_id(workspace), "v": version},
                ).scalar_one()
            )

    def set_wrapped_key(self, workspace: str, wrapped: bytes, version: int = 1) -> None:
        with self.engine.begin() as c:
            c.execute(
                sa.text("UPDATE skv_data_keys SET wrapped = :b WHERE workspace_id = :w AND version = :v"),
                {"b": wrapped, "w": self.workspace_id(workspace), "v": version},
            )

    def all_cells(self) -> list[bytes]:
        cells: list[bytes] = []
        with self.engine.connect() as c:
            names = [n for n in sa.inspect(c).get_table_names() if n.startswith("skv_")]
            assert {"skv_records", "skv_data_keys", "skv_workspaces"} <= set(names)
            for name in names:
                for row in c.execute(sa.text(f"SELECT * FROM {name}")):
                    for cell in row:
                        if isinstance(cell, (bytes, bytearray, memoryview)):
                            cells.append(bytes(cell))
                        elif cell is not None:
                            cells.append(str(cell).encode())
        return cells


@pytest.fixture
def raw(database_url: str) -> Any:
    handle = Raw(database_url)
    yield handle
    handle.close()


def _reopen(url: str, key: StaticMasterKey) -> SecureStore:
    return SecureStore.open(url, master_key=key)


def test_untouched_records_still_open(store: SecureStore) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v", category=Category.TOKEN)
    assert ws.get("k") == b"v"


@pytest.mark.parametrize("offset", [0, 1, 5, 6, 22, 34, -1], ids=lambda o: f"byte{o}")
def test_a_flipped_bit_anywhere_is_detected(
    database_url: str, master_key: StaticMasterKey, raw: Raw, offset: int
) -> None:
    with _reopen(database_url, master_key) as store:
        store.workspace("w").set("k", b"secret value")
    blob = bytearray(raw.record("w", "k")["value"])
    blob[offset] ^= 0x01
    raw.update("w", "k", value=bytes(blob))
    with _reopen(database_url, master_key) as store:
        with pytest.raises(AuthenticationError) as caught:
            store.workspace("w").get("k")
    message = str(caught.value)
    assert "'k'" in message and "'w'" in message
    assert "secret value" not in message


def test_truncated_record_is_detected(database_url: str, master_key: StaticMasterKey, raw: Raw) -> None:
    with _reopen(database_url, master_key) as store:
        store.workspace("w").set("k", b"secret value")
    blob = bytes(raw.record("w", "k")["value"])
    for cut in (blob[:-1], blob[:40], blob[:2], b""):
        raw.update("w", "k", value=cut)
        with _reopen(database_url, master_key) as store, pytest.raises(AuthenticationError):
            store.workspace("w").get("k")


def test_blobs_swapped_between_keys_fail(store: SecureStore, raw: Raw) -> None:
    ws = store.workspace("w")
    ws.set("a", b"value a")
    ws.set("b", b"value b")
    a, b = raw.record("w", "a")["value"], raw.record("w", "b")["value"]
    raw.update("w", "a", value=b)
    raw.update("w", "b", value=a)
    for key in ("a", "b"):
        with pytest.raises(AuthenticationError):
            ws.get(key)


def test_blob_moved_between_workspaces_fails(store: SecureStore, raw: Raw) -> None:
    store.workspace("one").set("k", b"from one")
    store.workspace("two").set("k", b"from two")
    raw.update("two", "k", value=raw.record("one", "k")["value"])
    with pytest.raises(AuthenticationError):
        store.workspace("two").get("k")
    assert store.workspace("one").get("k") == b"from one"


@pytest.mark.parametrize(
    ("stored", "forged"), [("token", "preference"), ("preference", "cache"), ("cache", "token")]
)
def test_changed_category_fails(store: SecureStore, raw: Raw, stored: str, forged: str) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v", category=stored, ttl=3600)
    raw.update("w", "k", category=forged)
    with pytest.raises(AuthenticationError):
        ws.get("k")


def test_unknown_category_in_the_database_fails(store: SecureStore, raw: Raw) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v")
    raw.update("w", "k", category="secret")
    with pytest.raises(AuthenticationError):
        ws.get("k")


def test_extended_expiry_is_detected(store: SecureStore, raw: Raw) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v", category=Category.CACHE, ttl=60)
    expires = int(raw.record("w", "k")["expires_at"])
    raw.update("w", "k", expires_at=expires + 3_600_000_000)
    with pytest.raises(AuthenticationError):
        ws.get("k")
    raw.update("w", "k", expires_at=None)
    with pytest.raises(AuthenticationError):
        ws.get("k")


def test_expiry_added_to_a_permanent_entry_is_detected(store: SecureStore, raw: Raw) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v")
    raw.update("w", "k", expires_at=2**52)  # year 2112: still in the future
    with pytest.raises(AuthenticationError):
        ws.get("k")


def test_wrapped_data_key_moved_to_another_workspace_fails(
    database_url: str, master_key: StaticMasterKey, raw: Raw
) -> None:
    with _reopen(database_url, master_key) as store:
        store.workspace("victim").set("k", b"victim data")
        store.workspace("attacker").set("k", b"attacker data")
    raw.set_wrapped_key("victim", raw.wrapped_key("attacker"))
    with _reopen(database_url, master_key) as store:
        with pytest.raises(AuthenticationError, match="data key 1 of workspace 'victim'"):
            store.workspace("victim").get("k")
        with pytest.raises(AuthenticationError):
            store.workspace("victim").set("k2", b"new")
        assert store.workspace("attacker").get("k") == b"attacker data"


def test_record_of_a_newer_format_is_refused_clearly(store: SecureStore, raw: Raw) -> None:
    ws = store.workspace("w")
    ws.set("k", b"v")
    blob = bytearray(raw.record("w", "k")["value"])
    blob[0] = 2
    raw.update("w", "k", value=bytes(blob))
    with pytest.raises(UnsupportedVersionError, match="newer secure_kv"):
        ws.get("k")


def test_wrong_master_key_is_a_master_key_error(database_url: str, master_key: StaticMasterKey) -> None:
    with _reopen(database_url, master_key) as store:
        store.workspace("w").set("k", b"v")
    with pytest.raises(MasterKeyError, match="wrong master key") as caught:
        SecureStore.open(database_url, master_key=StaticMasterKey(os.urandom(32)))
    assert not isinstance(caught.value, AuthenticationError)


def test_data_key_under_an_unknown_master_key_is_a_master_key_error(
    database_url: str, master_key: StaticMasterKey, raw: Raw
) -> None:
    with _reopen(database_url, master_key) as store:
        store.workspace("mine").set("k", b"v")
        store.workspace("other").set("k", b"v")
    foreign = StaticMasterKey(os.urandom(32)).current_key().kek_id
    with raw.engine.begin() as c:
        c.execute(
            sa.text("UPDATE skv_data_keys SET kek_id = :k WHERE workspace_id = :w"),
            {"k": foreign, "w": raw.workspace_id("mine")},
        )
    with _reopen(database_url, master_key) as store:
        with pytest.raises(MasterKeyError, match=foreign):
            store.workspace("mine").get("k")
        assert store.workspace("other").get("k") == b"v"


def test_no_plaintext_or_master_key_in_any_stored_cell(
    database_url: str, master_key: StaticMasterKey, raw: Raw
) -> None:
    raw_key = os.urandom(32)
    key = StaticMasterKey(raw_key)
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    with _reopen(database_url, key) as store:
        for category in Category:
            store.workspace("w").set(
                f"k-{category.value}", marker + b"-" + category.value.encode(), category=category
            )
    cells = raw.all_cells()
    assert cells
    for needle in (marker, raw_key, base64.urlsafe_b64encode(raw_key)):
        assert not any(needle in cell for cell in cells)


def test_no_plaintext_in_sqlite_database_wal_or_shm_files(tmp_path: Path) -> None:
    raw_key = os.urandom(32)
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        ws = store.workspace("w")
        for i in range(50):
            ws.set(
                f"k{i}", marker + str(i).encode(), category=Category.TOKEN if i % 2 else Category.PREFERENCE
            )
        files = sorted(tmp_path.glob("store.db*"))
        assert {p.name for p in files} >= {"store.db", "store.db-wal", "store.db-shm"}
        contents = b"".join(p.read_bytes() for p in files)
    assert marker not in contents
    assert raw_key not in contents
    assert base64.urlsafe_b64encode(raw_key) not in contents
    assert b"k1" in contents  # names are stored in plaintext, as documented: the scan sees real data


def test_sqlite_files_are_private(tmp_path: Path, master_key: StaticMasterKey) -> None:
    path = tmp_path / "sub" / "store.db"
    with SecureStore.open(f"sqlite:///{path}", master_key=master_key) as store:
        store.workspace("w").set("k", b"v")
        for file in path.parent.glob("store.db*"):
            assert file.stat().st_mode & 0o077 == 0, file
    assert path.parent.stat().st_mode & 0o077 == 0
