from __future__ import annotations

import pytest

from secure_kv.errors import MasterKeyError
from secure_kv.keys import EnvMasterKey
from secure_kv.keys.base import generate_master_key, parse_master_key


def test_reads_current_and_previous_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    current, old1, old2 = generate_master_key(), generate_master_key(), generate_master_key()
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", current)
    monkeypatch.setenv("SECURE_KV_PREVIOUS_MASTER_KEYS", f"{old1}, {old2},")
    provider = EnvMasterKey()
    assert provider.current_key().kek_id == parse_master_key(current, "t").kek_id
    assert [k.kek_id for k in provider.previous_keys()] == [
        parse_master_key(old1, "t").kek_id,
        parse_master_key(old2, "t").kek_id,
    ]


def test_missing_key_says_how_to_make_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECURE_KV_MASTER_KEY", raising=False)
    with pytest.raises(MasterKeyError, match="secure-kv keygen"):
        EnvMasterKey()


def test_malformed_key_names_the_variable_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", "definitely-not-a-key-SECRETISH")
    with pytest.raises(MasterKeyError, match="SECURE_KV_MASTER_KEY") as caught:
        EnvMasterKey()
    assert "SECRETISH" not in str(caught.value)


def test_malformed_previous_key_names_its_position(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("SECURE_KV_PREVIOUS_MASTER_KEYS", f"{generate_master_key()},bogus")
    with pytest.raises(MasterKeyError, match="entry 2"):
        EnvMasterKey()
