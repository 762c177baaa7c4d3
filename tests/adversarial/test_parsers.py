"""Capability: database write access, and write access to Dify's plugin storage.

Whoever can write the stored bytes chooses what every parser of stored bytes reads: sealed
values and their headers, wrapped data keys, audit signing keys and their retirement marks,
signatures of events and checkpoints, anchor records and the anchor line, Dify's records and
data-key entries. Each parser is fed arbitrary bytes and mutations of its own valid output
(bit flips, truncation, extension, splices) and must answer with its documented error only:
never another exception type, a crash or a hang. ``make fuzz`` runs the same properties with
the ``fuzz`` profile (thousands of examples each).
"""

from __future__ import annotations

import base64
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from secure_kv import Category, SecureStore
from secure_kv.audit.events import anchor_digest
from secure_kv.audit.maintenance import take_anchor
from secure_kv.audit.signing_keys import (
    _associated_data,
    _Retired,
    _retired_associated_data,
    _unwrap,
    verify_signature,
)
from secure_kv.audit.verify import VerifyReport, _check_anchor, parse_anchor
from secure_kv.envelope import (
    DataKey,
    context_prefix,
    new_data_key_bytes,
    open_record,
    open_value,
    parse_header,
    record_context,
    reseal_value,
    seal_value,
    unwrap_data_key,
    wrap_data_key,
)
from secure_kv.errors import AuthenticationError, InvalidInputError, MasterKeyError, UnsupportedVersionError
from secure_kv.integrations import dify
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import parse_master_key
from secure_kv.sql.schema import audit_anchors

MASTER = StaticMasterKey(os.urandom(32))
KEK = MASTER.current_key()
WORKSPACE = b"tenant-1:plugin"
DEK = DataKey(new_data_key_bytes(), WORKSPACE, 3)
NEW_DEK = DataKey(new_data_key_bytes(), WORKSPACE, 4)
CONTEXT = record_context(WORKSPACE, b"api-key", 1, None)
SEALED = bytes(seal_value(DEK, CONTEXT, b"sk-live-0123456789"))
WRAPPED = wrap_data_key(KEK, new_data_key_bytes(), WORKSPACE, 3)

# What a stored-bytes parser may raise: the store's authentication error, or the refusal of
# a format written by a newer secure_kv.
STORED_BYTES_ERRORS = (AuthenticationError, UnsupportedVersionError)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` after one to four edits: a bit flip, a cut, an extension or a splice."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(("flip", "truncate", "extend", "splice")))
        if edit == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif edit == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif edit == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        else:
            start = draw(st.integers(0, len(data)))
            end = draw(st.integers(start, len(data)))
            data[start:end] = draw(st.binary(max_size=48))
    return bytes(data)


def stored(valid: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or a mutation of a real stored form (most inputs)."""
    return st.one_of(st.binary(max_size=256), mutated(valid), mutated(valid), mutated(valid))


def only(errors: tuple[type[BaseException], ...], call: Callable[[], Any]) -> Any:
    """Run ``call``; an exception outside ``errors`` fails the test (pytest shows it whole)."""
    try:
        return call()
    except errors:
        return None


# --- sealed values ------------------------------------------------------------------------


@given(blob=stored(SEALED))
def test_a_sealed_value_header_parses_or_raises_the_documented_error(blob: bytes) -> None:
    header = only(STORED_BYTES_ERRORS, lambda: parse_header(blob))
    if header is not None:
        assert header.format_version == 1 and len(header.salt) == 16 and len(header.nonce) == 12


@given(blob=stored(SEALED))
def test_a_sealed_value_opens_only_unaltered(blob: bytes) -> None:
    for open_it in (
        lambda: open_value(DEK, CONTEXT, blob),
        lambda: open_value(DEK, CONTEXT, bytearray(blob)),
        lambda: open_record(DEK, context_prefix(WORKSPACE), b"api-key", 1, None, blob),
        lambda: reseal_value(DEK, NEW_DEK, CONTEXT, blob),
    ):
        opened = only(STORED_BYTES_ERRORS, open_it)
        if opened is not None:
            assert blob == SEALED  # only the real blob authenticates


# --- wrapped data keys and the master key's wrapping --------------------------------------


@given(wrapped=stored(WRAPPED))
def test_a_wrapped_data_key_unwraps_only_unaltered(wrapped: bytes) -> None:
    key = only(STORED_BYTES_ERRORS, lambda: unwrap_data_key(KEK, wrapped, WORKSPACE, 3))
    assert key is None or wrapped == WRAPPED


@given(wrapped=stored(KEK.wrap(b"\x07" * 48, b"any")), associated_data=st.binary(max_size=64))
def test_the_master_key_unwrap_raises_only_the_documented_error(
    wrapped: bytes, associated_data: bytes
) -> None:
    only(STORED_BYTES_ERRORS, lambda: KEK.unwrap(wrapped, associated_data))


# --- the master key as text (environment, key file, keyring) ------------------------------

KEY_TEXT = base64.urlsafe_b64encode(os.urandom(32)).decode()


@given(
    text=st.one_of(
        st.text(max_size=80),
        mutated(KEY_TEXT.encode()).map(lambda b: b.decode("latin-1")),
    )
)
def test_a_master_key_text_parses_or_raises_master_key_error_without_echoing_it(text: str) -> None:
    try:
        key = parse_master_key(text, "SECURE_KV_MASTER_KEY")
    except MasterKeyError as error:
        assert len(text.strip()) < 12 or text.strip() not in str(error)  # longer: never echoed
    else:
        assert len(base64.urlsafe_b64decode("".join(text.split()) + "==")) == 32
        assert key.kek_id


# --- audit signing keys, retirement marks, signatures -------------------------------------

SEED = os.urandom(32)


def _public_of(seed: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


PUBLIC = _public_of(SEED)
WRAPPED_SEED = KEK.wrap(SEED, _associated_data(PUBLIC))
RETIRED_MARK = KEK.wrap(os.urandom(48), _retired_associated_data(PUBLIC))


@given(
    wrapped=st.one_of(stored(WRAPPED_SEED), stored(RETIRED_MARK)),
    public=st.one_of(st.just(PUBLIC), stored(PUBLIC)),
)
def test_a_stored_signing_key_or_retirement_mark_raises_only_the_documented_error(
    wrapped: bytes, public: bytes
) -> None:
    try:
        _unwrap(KEK, 1, public, wrapped)
    except (AuthenticationError, UnsupportedVersionError, _Retired):
        pass  # _Retired: an authentic mark, which verify reads as "retired"


@given(length=st.integers(0, 200).filter(lambda n: n != 48))
def test_an_authentic_retirement_mark_of_the_wrong_length_is_refused(length: int) -> None:
    mark = KEK.wrap(os.urandom(length), _retired_associated_data(PUBLIC))
    with pytest.raises(AuthenticationError):
        _unwrap(KEK, 1, PUBLIC, mark)


@given(public=stored(PUBLIC), signature=st.binary(max_size=96), message=st.binary(max_size=64))
def test_a_stored_signature_check_answers_false_never_raises(
    public: bytes, signature: bytes, message: bytes
) -> None:
    assert verify_signature(public, signature, message) in (True, False)


# --- anchors: the line kept outside, and the record in the database -----------------------

ANCHOR_LINE = "skv-anchor:v1:7:" + "ab" * 32


@given(
    text=st.one_of(st.text(max_size=120), mutated(ANCHOR_LINE.encode()).map(lambda b: b.decode("latin-1")))
)
def test_an_anchor_line_parses_or_raises_invalid_input(text: str) -> None:
    only((InvalidInputError,), lambda: parse_anchor(text))


@pytest.fixture(scope="module")
def anchored_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureStore, int, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('anchor') / 'store.db'}"
    with SecureStore.open(url, master_key=MASTER) as store:
        store.workspace("w").set("t", b"secret", category=Category.TOKEN)
        anchor = take_anchor(store)
        anchor_id, _ = parse_anchor(anchor.text)
        with store._db.engine.connect() as connection:
            text = connection.execute(
                sa.select(audit_anchors.c.heads).where(audit_anchors.c.id == anchor_id)
            ).scalar_one()
        yield store, anchor_id, text


_JSON_TRICKS = st.sampled_from(
    [
        '{"heads": [[1e999, 1, "00"]], "keys": []}',  # int(inf): OverflowError
        '{"heads": [[1, -1e999, "00"]], "keys": []}',
        '{"heads": [], "keys": [[1e400, "00"]]}',
        '{"heads": [[NaN, 1, "00"]], "keys": []}',
        '{"heads": "abc", "keys": []}',
        '{"heads": [[1, 2, 3]], "keys": []}',
        '{"heads": null}',
        "[" * 5000 + "]" * 5000,  # nesting deeper than the recursion limit
        '{"heads": [' + "[" * 3000 + "]" * 3000 + '], "keys": []}',
        "",
    ]
)


@given(data=st.data())
def test_an_anchor_record_is_reported_malformed_never_raises(
    anchored_store: tuple[SecureStore, int, str], data: st.DataObject
) -> None:
    store, anchor_id, valid = anchored_store
    mutations = mutated(valid.encode()).map(lambda b: b.decode("utf-8", "replace"))
    text = data.draw(st.one_of(st.text(max_size=200), _JSON_TRICKS, mutations))
    with store._db.engine.connect() as connection:
        with connection.begin():
            connection.execute(
                audit_anchors.update().where(audit_anchors.c.id == anchor_id).values(heads=text)
            )
        report = VerifyReport()
        digest = anchor_digest(anchor_id, 0, [], [])
        heads, keys = _check_anchor(connection, (anchor_id, digest), report)
        connection.rollback()
    assert (heads, keys) == ({}, {}) and report.failure_count == 1
    json.dumps(report.failures[0].check)  # a plain message


# --- Dify's plugin storage -----------------------------------------------------------------


class DictStorage:
    """Dify's plugin storage as the plugin sees it (set/get/delete/exist over bytes), held in
    a dict so that each example can plant the bytes an attacker with storage access writes."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, val: bytes) -> None:
        self.data[key] = bytes(val)

    def get(self, key: str) -> bytes:
        if key not in self.data:
            raise Exception("key not found")  # what the SDK raises for a missing key
        return self.data[key]

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def exist(self, key: str) -> bool:
        return key in self.data


def encrypted_storage(storage: DictStorage) -> dify.EncryptedStorage:
    options: dict[str, Any] = {"master_key": MASTER}
    if "tenant_secret" in inspect.signature(dify.EncryptedStorage).parameters:
        options["tenant_secret"] = "t" * 40  # the per-tenant binding, where this version has one
    return dify.EncryptedStorage(storage, **options)


def _valid_dify_entries() -> dict[str, bytes]:
    storage = DictStorage()
    encrypted_storage(storage).set("openai", b"sk-0123456789abcdef", category=Category.TOKEN)
    return dict(storage.data)


DIFY_ENTRIES = _valid_dify_entries()
DIFY_RECORD = DIFY_ENTRIES["openai"]
DIFY_KEY_NAMES = sorted(name for name in DIFY_ENTRIES if name.startswith(dify.RESERVED_PREFIX))


@given(blob=stored(DIFY_RECORD))
def test_a_dify_record_header_parses_or_raises_the_documented_error(blob: bytes) -> None:
    only(STORED_BYTES_ERRORS, lambda: dify._parse_record(blob))


@given(blob=stored(DIFY_ENTRIES[DIFY_KEY_NAMES[0]]))
def test_a_dify_data_key_entry_parses_or_raises_the_documented_error(blob: bytes) -> None:
    only(STORED_BYTES_ERRORS, lambda: dify._parse_key_record(blob))


@given(
    target=st.sampled_from(["openai", *DIFY_KEY_NAMES]),
    data=st.data(),
)
def test_dify_get_over_planted_bytes_raises_only_the_documented_error(
    target: str, data: st.DataObject
) -> None:
    storage = DictStorage()
    storage.data.update(DIFY_ENTRIES)
    storage.data[target] = data.draw(stored(DIFY_ENTRIES[target]))
    reader = encrypted_storage(storage)
    # MasterKeyError: a data-key entry naming a kek_id the provider does not hold (documented).
    value = only((*STORED_BYTES_ERRORS, MasterKeyError), lambda: reader.get("openai"))
    assert value is None or value == b"sk-0123456789abcdef"
    reader.exist("openai")  # reads the header only; never raises on planted bytes


def test_a_planted_kek_id_is_shown_escaped() -> None:
    """The kek_id in a Dify data-key entry is the attacker's text: it must not reach a
    terminal or a log as control characters."""
    storage = DictStorage()
    storage.data.update(DIFY_ENTRIES)
    name = next(name for name in DIFY_KEY_NAMES if "/dek-" in name)
    _, _, wrapped = dify._parse_key_record(DIFY_ENTRIES[name])
    kek = b"\x1b[2J\nforged"
    header = DIFY_ENTRIES[name][:9]  # magic, format, key id
    for planted in DIFY_KEY_NAMES:  # the named entry and the pointer's copy
        storage.data[planted] = header + bytes([len(kek)]) + kek + wrapped
    with pytest.raises(MasterKeyError) as raised:
        encrypted_storage(storage).get("openai")
    assert "\x1b" not in str(raised.value) and "\n" not in str(raised.value)


def test_the_mutation_strategy_reaches_every_edit(tmp_path: Path) -> None:
    """A guard on the fuzzer itself: the strategy can produce each kind of edit."""
    from hypothesis import find

    assert len(find(mutated(SEALED), lambda b: len(b) > len(SEALED))) > len(SEALED)
    assert len(find(mutated(SEALED), lambda b: len(b) < len(SEALED))) < len(SEALED)
    flipped = find(mutated(SEALED), lambda b: len(b) == len(SEALED) and b != SEALED)
    assert flipped != SEALED
