"""Every provider shipped here passes the reusable contract tests, each against its real service
(SoftHSM2, gnome-keyring; moto's server as the stand-in for AWS KMS)."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from secure_kv.keys import (
    AwsKmsMasterKey,
    EnvMasterKey,
    FileMasterKey,
    KeyringMasterKey,
    MasterKeyProvider,
    Pkcs11MasterKey,
    RawKeyProvider,
    RawMasterKey,
    ReloadingProvider,
    StaticMasterKey,
)
from secure_kv.keys.base import generate_master_key
from secure_kv.testing.providers import MasterKeyProviderContract
from tests.keyring_backend import MemoryKeyring

from .services import Kms, SoftHsm

_STATIC = (os.urandom(32), os.urandom(32))
_TEXT = (generate_master_key(), generate_master_key())


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


class TestSecretServiceKeyringMasterKey(MasterKeyProviderContract):
    """The real gnome-keyring-daemon, through keyring's SecretService backend."""

    @pytest.fixture(autouse=True)
    def _keyring(self, secret_service: Any) -> None:
        KeyringMasterKey(create=True).generate_new_key()  # a current key and one previous

    def make_provider(self) -> MasterKeyProvider:
        return KeyringMasterKey()


class TestSoftHsmMasterKey(MasterKeyProviderContract):
    """A real PKCS#11 token (SoftHSM2)."""

    @pytest.fixture(autouse=True)
    def _token(self, softhsm: SoftHsm) -> None:
        self.hsm = softhsm
        softhsm.provider("master-2", "master-1")

    def make_provider(self) -> MasterKeyProvider:
        return Pkcs11MasterKey(self.hsm.module, self.hsm.token_label, ["master-2", "master-1"], self.hsm.pin)


class TestMotoKmsMasterKey(MasterKeyProviderContract):
    """AWS KMS's API as served by moto (a stand-in for AWS), over HTTP through boto3."""

    @pytest.fixture(autouse=True)
    def _keys(self, kms: Kms) -> None:
        self.key_ids = [kms.create_key(alias=f"alias/skv-{uuid.uuid4().hex[:8]}"), kms.create_key()]

    def make_provider(self) -> MasterKeyProvider:
        return AwsKmsMasterKey(self.key_ids)


class _VaultMasterKey(ReloadingProvider, RawKeyProvider):
    """A third party's provider on the public bases: keys read from a source that changes
    while the process runs (a vault, say)."""

    RELOAD_INTERVAL = 0.0

    def __init__(self, source: list[bytes]) -> None:
        self.source = source
        super().__init__(RawMasterKey(key) for key in source)
        self._loaded()

    def _reload(self) -> None:
        self._keys = [RawMasterKey(key) for key in self.source]


class TestAThirdPartyProviderOnThePublicBases(MasterKeyProviderContract):
    def make_provider(self) -> MasterKeyProvider:
        return _VaultMasterKey(list(_STATIC))


def test_a_third_party_provider_on_the_reloading_base_finds_a_key_added_after_it_started() -> None:
    source = [os.urandom(32)]
    provider = _VaultMasterKey(source)
    added = os.urandom(32)
    kek_id = RawMasterKey(added).kek_id
    source.append(added)  # a rotation elsewhere adds a key this process has not read yet
    found = provider.find(kek_id)
    assert found is not None and found.kek_id == kek_id
