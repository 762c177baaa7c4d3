"""Tests every :class:`~secure_kv.keys.MasterKeyProvider` must pass.

Subclass :class:`MasterKeyProviderContract` in a test module and implement
:meth:`make_provider`; pytest collects the inherited tests (name the subclass ``Test...``).
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest

from secure_kv.errors import AuthenticationError
from secure_kv.keys.base import MasterKeyProvider

__all__ = ["MasterKeyProviderContract"]


class MasterKeyProviderContract:
    """The behaviour secure_kv relies on from a master-key provider."""

    def make_provider(self) -> MasterKeyProvider:
        """A provider with a current key (and, ideally, one previous key)."""
        raise NotImplementedError

    def test_current_key_wraps_and_unwraps(self) -> None:
        key = self.make_provider().current_key()
        secret = os.urandom(32)
        wrapped = key.wrap(secret, b"associated")
        assert secret not in wrapped
        assert key.unwrap(wrapped, b"associated") == secret

    def test_unwrap_refuses_other_associated_data_or_altered_bytes(self) -> None:
        key = self.make_provider().current_key()
        wrapped = key.wrap(os.urandom(32), b"associated")
        with pytest.raises(AuthenticationError):
            key.unwrap(wrapped, b"other")
        altered = bytearray(wrapped)
        altered[-1] ^= 1
        with pytest.raises(AuthenticationError):
            key.unwrap(bytes(altered), b"associated")

    def test_kek_id_is_a_stable_public_fingerprint(self) -> None:
        provider = self.make_provider()
        first = provider.current_key().kek_id
        assert isinstance(first, str) and 8 <= len(first) <= 64
        assert provider.current_key().kek_id == first
        assert provider.find(first) is not None

    def test_every_key_is_found_by_its_kek_id(self) -> None:
        provider = self.make_provider()
        for key in provider.all_keys():
            found = provider.find(key.kek_id)
            assert found is not None and found.kek_id == key.kek_id
        assert provider.find("not-a-kek-id") is None

    def test_previous_keys_unwrap_what_they_wrapped(self) -> None:
        provider = self.make_provider()
        for key in provider.previous_keys():
            secret = os.urandom(32)
            assert key.unwrap(key.wrap(secret, b"ad"), b"ad") == secret

    def test_wrapping_the_same_key_twice_gives_different_bytes(self) -> None:
        # A fresh nonce each time: a repeated nonce under one key breaks AES-GCM.
        key = self.make_provider().current_key()
        secret = os.urandom(32)
        assert key.wrap(secret, b"ad") != key.wrap(secret, b"ad")

    def test_a_key_refuses_what_another_key_wrapped(self) -> None:
        keys = self.make_provider().all_keys()
        if len(keys) < 2:
            pytest.skip("the provider under test has a single key")
        wrapped = keys[1].wrap(os.urandom(32), b"ad")
        with pytest.raises(AuthenticationError):
            keys[0].unwrap(wrapped, b"ad")

    def test_keys_and_provider_refuse_pickling_and_copying(self) -> None:
        provider = self.make_provider()
        for item in (provider, provider.current_key()):
            with pytest.raises(TypeError):
                pickle.dumps(item)
            with pytest.raises(TypeError):
                copy.deepcopy(item)

    def test_reprs_show_fingerprints(self) -> None:
        provider = self.make_provider()
        assert provider.current_key().kek_id in repr(provider.current_key())
        assert provider.current_key().kek_id in repr(provider)

    def test_a_store_round_trips_with_this_provider(self, tmp_path: Path) -> None:
        from secure_kv.store import SecureStore

        url = f"sqlite:///{tmp_path / 'contract.db'}"
        with SecureStore.open(url, master_key=self.make_provider()) as store:
            store.workspace("contract").set("k", b"value")
        with SecureStore.open(url, master_key=self.make_provider()) as store:
            assert store.workspace("contract").get("k") == b"value"
