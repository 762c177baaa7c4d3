from __future__ import annotations

import os

import pytest

from secure_kv.errors import MasterKeyError
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import RawMasterKey


def test_current_and_previous_keys() -> None:
    current, old1, old2 = os.urandom(32), os.urandom(32), os.urandom(32)
    provider = StaticMasterKey(current, previous=[old1, old2])
    assert provider.current_key().kek_id == RawMasterKey(current).kek_id
    assert [k.kek_id for k in provider.previous_keys()] == [
        RawMasterKey(old1).kek_id,
        RawMasterKey(old2).kek_id,
    ]
    assert provider.find(RawMasterKey(old2).kek_id) is not None
    assert provider.find("0" * 16) is None


def test_a_previous_key_equal_to_the_current_one_is_listed_once() -> None:
    key = os.urandom(32)
    assert len(StaticMasterKey(key, previous=[key]).all_keys()) == 1


def test_text_instead_of_bytes_is_refused() -> None:
    with pytest.raises(MasterKeyError):
        StaticMasterKey("a" * 32)  # type: ignore[arg-type]
