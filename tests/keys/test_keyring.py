"""KeyringMasterKey against the real keyring package and backends."""

from __future__ import annotations

import os
from pathlib import Path

import keyring
import pytest
from keyring.backends import chainer, fail, null
from keyrings.alt.file import PlaintextKeyring

from secure_kv import SecureStore
from secure_kv.errors import MasterKeyError
from secure_kv.keys import KeyringMasterKey
from secure_kv.keys.base import parse_master_key
from tests.keyring_backend import MemoryKeyring


def test_missing_key_says_to_run_init(memory_keyring: MemoryKeyring) -> None:
    with pytest.raises(MasterKeyError, match="secure-kv init"):
        KeyringMasterKey()


def test_create_stores_a_new_key_that_later_loads(memory_keyring: MemoryKeyring) -> None:
    created = KeyringMasterKey(create=True)
    text = keyring.get_password("secure-kv", "master-key")
    assert text is not None
    assert parse_master_key(text, "t").kek_id == created.current_key().kek_id
    assert KeyringMasterKey().current_key().kek_id == created.current_key().kek_id


def test_store_opens_with_the_keyring_provider_from_settings(
    memory_keyring: MemoryKeyring, sqlite_url: str
) -> None:
    KeyringMasterKey(create=True)
    with SecureStore.open(sqlite_url) as store:  # SECURE_KV_KEY_PROVIDER defaults to keyring
        store.workspace("w").set("k", b"v")
        assert store.workspace("w").get("k") == b"v"


def test_generated_new_key_keeps_the_old_one_as_previous(
    memory_keyring: MemoryKeyring, sqlite_url: str
) -> None:
    provider = KeyringMasterKey(create=True)
    old_id = provider.current_key().kek_id
    with SecureStore.open(sqlite_url, master_key=provider) as store:
        store.workspace("w").set("k", b"v")
    new = provider.generate_new_key()
    assert new.kek_id != old_id
    reloaded = KeyringMasterKey()
    assert reloaded.current_key().kek_id == new.kek_id
    assert [k.kek_id for k in reloaded.previous_keys()] == [old_id]
    assert memory_keyring.get_password("secure-kv", f"master-key.{old_id}") is not None
    with SecureStore.open(sqlite_url, master_key=reloaded) as store:
        assert store.workspace("w").get("k") == b"v"


@pytest.mark.parametrize("backend", [fail.Keyring(), null.Keyring()], ids=["fail", "null"])
def test_no_usable_backend_gives_a_clear_error(backend: object) -> None:
    with pytest.raises(MasterKeyError) as caught:
        KeyringMasterKey(backend=backend)
    message = str(caught.value)
    assert "keyrings.cryptfile" in message and "SECURE_KV_KEY_PROVIDER=env" in message


def test_the_default_backend_on_a_machine_without_one_is_refused() -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(MasterKeyError, match="install"):
            KeyringMasterKey()
    finally:
        keyring.set_keyring(previous)


def test_plaintext_backend_is_refused(tmp_path: Path) -> None:
    plaintext = PlaintextKeyring()
    plaintext.file_path = str(tmp_path / "keyring.cfg")
    with pytest.raises(MasterKeyError, match="not secure enough"):
        KeyringMasterKey(backend=plaintext)
    assert not (tmp_path / "keyring.cfg").exists()


def test_chainer_containing_a_plaintext_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [MemoryKeyring(), PlaintextKeyring()])
    with pytest.raises(MasterKeyError, match="PlaintextKeyring"):
        KeyringMasterKey(backend=chainer.ChainerBackend())


def test_chainer_with_no_backends_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [])
    with pytest.raises(MasterKeyError, match="no usable"):
        KeyringMasterKey(backend=chainer.ChainerBackend())


def test_keyring_holding_garbage_names_the_entry(memory_keyring: MemoryKeyring) -> None:
    memory_keyring.set_password("secure-kv", "master-key", "garbage-" + os.urandom(4).hex())
    with pytest.raises(MasterKeyError, match="keyring entry secure-kv/master-key") as caught:
        KeyringMasterKey()
    assert "garbage-" not in str(caught.value)
