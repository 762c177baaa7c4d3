"""What every master key and provider promises: no bytes in reprs, no pickling."""

from __future__ import annotations

import base64
import copy
import os
import pickle

import pytest

from secure_kv.errors import MasterKeyError
from secure_kv.keys import EnvMasterKey, MasterKeyProvider, StaticMasterKey
from secure_kv.keys.base import RawMasterKey, generate_master_key, parse_master_key


def _providers(raw: bytes) -> list[MasterKeyProvider]:
    text = base64.urlsafe_b64encode(raw).decode()
    return [StaticMasterKey(raw), EnvMasterKey({"SECURE_KV_MASTER_KEY": text})]


def test_reprs_show_the_fingerprint_never_the_key() -> None:
    raw = os.urandom(32)
    text = base64.urlsafe_b64encode(raw).decode()
    for provider in _providers(raw):
        for shown in (
            repr(provider),
            str(provider),
            repr(provider.current_key()),
            str(provider.current_key()),
        ):
            assert provider.current_key().kek_id in shown
            assert text not in shown and raw.hex() not in shown and str(raw) not in shown


def test_keys_and_providers_refuse_pickling_and_copying() -> None:
    for provider in _providers(os.urandom(32)):
        for item in (provider, provider.current_key()):
            with pytest.raises(TypeError):
                pickle.dumps(item)
            with pytest.raises(TypeError):
                copy.copy(item)
            with pytest.raises(TypeError):
                copy.deepcopy(item)


def test_kek_id_is_stable_and_distinct() -> None:
    raw = os.urandom(32)
    assert RawMasterKey(raw).kek_id == RawMasterKey(raw).kek_id
    assert RawMasterKey(raw).kek_id != RawMasterKey(os.urandom(32)).kek_id
    assert len(RawMasterKey(raw).kek_id) == 16


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_raw_keys_must_be_32_bytes(size: int) -> None:
    with pytest.raises(MasterKeyError, match="32 bytes"):
        RawMasterKey(os.urandom(size))


def test_generated_keys_parse_back() -> None:
    text = generate_master_key()
    assert len(text) == 44
    assert parse_master_key(text, "test").kek_id == RawMasterKey(base64.urlsafe_b64decode(text)).kek_id


def test_keys_parse_without_padding_and_with_whitespace() -> None:
    text = generate_master_key()
    assert parse_master_key(" " + text.rstrip("=") + "\n", "t").kek_id == parse_master_key(text, "t").kek_id


@pytest.mark.parametrize(
    "bad", ["", "not base64 !!!", "c2hvcnQ=", base64.b64encode(os.urandom(32)).decode() + "AAAA"]
)
def test_malformed_key_text_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(MasterKeyError, match="SOURCE") as caught:
        parse_master_key(bad, "SOURCE")
    if bad:
        assert bad not in str(caught.value)


def test_wrap_and_unwrap_round_trip_with_binding() -> None:
    key = RawMasterKey(os.urandom(32))
    wrapped = key.wrap(b"secret-data-key", b"context")
    assert key.unwrap(wrapped, b"context") == b"secret-data-key"
    from secure_kv.errors import AuthenticationError

    with pytest.raises(AuthenticationError):
        key.unwrap(wrapped, b"other context")
    with pytest.raises(AuthenticationError):
        RawMasterKey(os.urandom(32)).unwrap(wrapped, b"context")
