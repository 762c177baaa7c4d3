"""Every provider shipped here, and a KMS-shaped one, passes the reusable contract tests."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from secure_kv.keys import EnvMasterKey, FileMasterKey, KeyringMasterKey, MasterKeyProvider, StaticMasterKey
from secure_kv.keys.base import generate_master_key
from secure_kv.testing.providers import MasterKeyProviderContract
from tests.keyring_backend import MemoryKeyring

from .fake_kms import FakeKmsMasterKey, FakeKmsService

_STATIC = (os.urandom(32), os.urandom(32))
_TEXT = (generate_master_key(), generate_master_key())
_KMS = FakeKmsService()
_KMS_IDS = (_KMS.create_key(), _KMS.create_key())


class TestStaticMasterKey(MasterKeyProviderContract):
    def make_provider(self) -> MasterKeyProvider:
        return StaticMasterKey(_STATIC[0], previous=[_STATIC[1]])


class TestEnvMasterKey(MasterKeyProviderContract):
    def make_provider(self) -> MasterKeyProvider:
        return EnvMasterKey({"SECURE_KV_MASTER_KEY": _TEXT[0], "SECURE_KV_PREVIOUS_MASTER_KEYS": _TEXT[1]})


class TestFileMasterKey(MasterKeyProviderContract):
    @pytest.fixture(autouse=True)
    def _key_file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "master.keys"
        self.path.write_text("\n".join(_TEXT) + "\n")
        self.path.chmod(0o600)

    def make_provider(self) -> MasterKeyProvider:
        return FileMasterKey(self.path)


class TestKeyringMasterKey(MasterKeyProviderContract):
    @pytest.fixture(autouse=True)
    def _keyring(self, memory_keyring: MemoryKeyring) -> None:
        memory_keyring.set_password("secure-kv", "master-key", _TEXT[0])
        old = base64.urlsafe_b64decode(_TEXT[1])
        old_id = StaticMasterKey(old).current_key().kek_id
        memory_keyring.set_password("secure-kv", "master-key.previous", old_id)
        memory_keyring.set_password("secure-kv", f"master-key.{old_id}", _TEXT[1])

    def make_provider(self) -> MasterKeyProvider:
        return KeyringMasterKey()


class TestFakeKmsMasterKey(MasterKeyProviderContract):
    def make_provider(self) -> MasterKeyProvider:
        return FakeKmsMasterKey(_KMS, _KMS_IDS[0], previous=[_KMS_IDS[1]])
