"""Hypothesis round-trips: any valid key and value come back exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_kv import Category, SecureStore

keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=64
).filter(lambda k: len(k.encode()) <= 256)
values = st.binary(max_size=4096)
categories = st.sampled_from(list(Category))


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStore]:
    import os

    from secure_kv.keys import StaticMasterKey

    url = f"sqlite:///{tmp_path_factory.mktemp('props') / 'store.db'}"
    with SecureStore.open(url, master_key=StaticMasterKey(os.urandom(32))) as store:
        yield store


@given(key=keys, value=values, category=categories)
def test_any_key_and_value_round_trip(
    shared_store: SecureStore, key: str, value: bytes, category: Category
) -> None:
    ws = shared_store.workspace("props")
    ws.set(key, value, category=category, ttl=3600 if category is Category.CACHE else None)
    assert ws.get(key) == value
    assert ws.exist(key)


@given(entries=st.dictionaries(keys, values, max_size=20))
def test_a_batch_of_writes_reads_back_as_a_dict(shared_store: SecureStore, entries: dict[str, bytes]) -> None:
    ws = shared_store.workspace("props-batch")
    for key, value in entries.items():
        ws.set(key, value)
    for key, value in entries.items():
        assert ws.get(key) == value
    for key in entries:
        ws.delete(key)
        assert ws.get(key) is None
