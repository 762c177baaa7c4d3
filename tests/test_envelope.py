"""The byte layouts, pinned by vectors kept as data and re-derived from the spec by hand."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from secure_kv import envelope
from secure_kv.categories import CATEGORY_CODES, Category
from secure_kv.envelope import (
    DataKey,
    open_value,
    parse_header,
    record_context,
    record_contexts,
    reseal_value,
    rewrap_data_key,
    seal_value,
    unwrap_data_key,
    wrap_data_key,
)
from secure_kv.errors import AuthenticationError, UnsupportedVersionError
from secure_kv.keys.base import RawMasterKey

VECTORS = Path(__file__).parent / "vectors"
ENVELOPE_VECTORS = json.loads((VECTORS / "envelope_v1.json").read_text(encoding="utf-8"))["vectors"]
WRAP_VECTORS = json.loads((VECTORS / "wrap_v1.json").read_text(encoding="utf-8"))["vectors"]
REWRAPPED_VECTORS = json.loads((VECTORS / "wrap_rewrapped_v1.json").read_text(encoding="utf-8"))["vectors"]


def _hkdf_expand(key: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDFExpand(algorithm=SHA256(), length=length, info=info).derive(key)


def _spec_context(v: dict[str, Any]) -> bytes:
    """The associated-data tail exactly as docs/architecture.md describes it."""
    workspace, key = v["workspace"].encode(), v["key"].encode()
    code = {"token": 1, "preference": 2, "cache": 3}[v["category"]]
    return (
        struct.pack(">H", len(workspace))
        + workspace
        + struct.pack(">H", len(key))
        + key
        + struct.pack(">Bq", code, v["expires_at"])
    )


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=lambda v: v["key"])
def test_sealed_value_vectors_match_the_written_spec(v: dict[str, Any]) -> None:
    dek, salt, nonce = bytes.fromhex(v["dek"]), bytes.fromhex(v["salt"]), bytes.fromhex(v["nonce"])
    header = struct.pack(">BBI", 1, 1, v["dek_version"]) + salt + nonce
    subkey = _hkdf_expand(dek, b"secure_kv/v1/value-subkey" + salt)
    expected = header + AESGCM(subkey).encrypt(
        nonce, bytes.fromhex(v["plaintext"]), header + _spec_context(v)
    )
    assert expected.hex() == v["sealed"]


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=lambda v: v["key"])
def test_code_seals_and_opens_the_vectors(v: dict[str, Any]) -> None:
    workspace = v["workspace"].encode()
    data_key = DataKey(bytes.fromhex(v["dek"]), workspace, v["dek_version"])
    expires = None if v["expires_at"] == -1 else v["expires_at"]
    context = record_context(workspace, v["key"].encode(), CATEGORY_CODES[Category(v["category"])], expires)
    assert context == _spec_context(v)
    sealed = envelope.seal_for_test_vectors(  # the test-only path: fixed salt and nonce
        data_key, context, bytes.fromhex(v["plaintext"]), bytes.fromhex(v["salt"]), bytes.fromhex(v["nonce"])
    )
    assert bytes(sealed).hex() == v["sealed"]
    assert open_value(data_key, context, bytes.fromhex(v["sealed"])) == bytes.fromhex(v["plaintext"])


@pytest.mark.parametrize("v", WRAP_VECTORS, ids=lambda v: v["kek_id"])
def test_wrapped_key_vectors_match_the_written_spec(v: dict[str, Any]) -> None:
    master = base64.urlsafe_b64decode(v["master_key"])
    assert _hkdf_expand(master, b"secure_kv/v1/kek-id", 8).hex() == v["kek_id"]
    assert RawMasterKey(master).kek_id == v["kek_id"]
    wrapped = bytes.fromhex(v["wrapped"])
    assert wrapped[0] == 1
    workspace = v["workspace"].encode()
    associated = (
        b"secure_kv/v1/dek" + struct.pack(">H", len(workspace)) + workspace + struct.pack(">I", v["version"])
    )
    wrap_key = _hkdf_expand(master, b"secure_kv/v1/kek-wrap")
    nonce = wrapped[1:13]
    assert AESGCM(wrap_key).encrypt(nonce, bytes.fromhex(v["dek"]), associated) == wrapped[13:]
    opened = unwrap_data_key(RawMasterKey(master), wrapped, workspace, v["version"])
    assert opened._dek == bytes.fromhex(v["dek"])


def test_wrapped_key_bound_to_workspace_and_version() -> None:
    v = WRAP_VECTORS[0]
    master = RawMasterKey(base64.urlsafe_b64decode(v["master_key"]))
    wrapped = bytes.fromhex(v["wrapped"])
    with pytest.raises(AuthenticationError):
        unwrap_data_key(master, wrapped, b"another-workspace", v["version"])
    with pytest.raises(AuthenticationError):
        unwrap_data_key(master, wrapped, v["workspace"].encode(), v["version"] + 1)


def _data_key() -> DataKey:
    return DataKey(os.urandom(32), b"w", 1)


def _context(key: bytes = b"k") -> bytes:
    return record_context(b"w", key, CATEGORY_CODES[Category.PREFERENCE], None)


@pytest.mark.parametrize("size", [0, 1, 100, 64 * 1024 - 1, 64 * 1024, 300_000])
def test_round_trip_at_sizes_around_the_in_place_threshold(size: int) -> None:
    data_key, plaintext = _data_key(), os.urandom(size)
    sealed = seal_value(data_key, _context(), plaintext)
    assert len(sealed) == size + envelope.SEAL_OVERHEAD
    assert open_value(data_key, _context(), sealed) == plaintext


def test_each_seal_uses_a_fresh_nonce() -> None:
    data_key = _data_key()
    nonces = {parse_header(seal_value(data_key, _context(), b"same")).nonce for _ in range(200)}
    assert len(nonces) == 200


def test_writer_subkey_is_replaced_after_its_write_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "SUBKEY_MAX_WRITES", 5)
    data_key = _data_key()
    salts = [parse_header(seal_value(data_key, _context(), b"v")).salt for _ in range(12)]
    runs = [salts[i : i + 5] for i in range(0, 10, 5)]
    assert all(len(set(run)) == 1 for run in runs)
    assert len(set(salts)) == 3
    sealed = [seal_value(data_key, _context(), b"v") for _ in range(3)]
    assert all(open_value(data_key, _context(), blob) == b"v" for blob in sealed)


def _seal_salt_in_child(data_key: DataKey, queue: Any) -> None:
    queue.put(parse_header(seal_value(data_key, _context(), b"child")).salt)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_draws_its_own_subkey() -> None:
    data_key = _data_key()
    parent_salt = parse_header(seal_value(data_key, _context(), b"parent")).salt
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_seal_salt_in_child, args=(data_key, queue))
    child.start()
    child_salt = queue.get(timeout=30)
    child.join(timeout=30)
    assert child_salt != parent_salt
    assert parse_header(seal_value(data_key, _context(), b"parent")).salt == parent_salt


def test_newer_format_or_algorithm_is_refused_as_unsupported() -> None:
    sealed = bytearray(seal_value(_data_key(), _context(), b"v"))
    for index in (0, 1):
        changed = bytearray(sealed)
        changed[index] = 9
        with pytest.raises(UnsupportedVersionError, match="newer"):
            parse_header(changed)


def test_unknown_older_format_is_an_authentication_error() -> None:
    sealed = bytearray(seal_value(_data_key(), _context(), b"v"))
    sealed[0] = 0
    with pytest.raises(AuthenticationError):
        parse_header(sealed)


def test_opening_with_another_context_fails() -> None:
    data_key = _data_key()
    sealed = seal_value(data_key, _context(b"a"), b"v")
    with pytest.raises(AuthenticationError):
        open_value(data_key, _context(b"b"), sealed)


def test_data_key_hides_its_bytes_and_refuses_pickling() -> None:
    data_key = _data_key()
    assert repr(data_key) == "<DataKey version=1>"
    assert data_key._dek.hex() not in repr(data_key)
    with pytest.raises(TypeError):
        pickle.dumps(data_key)


def test_wrapped_key_of_a_newer_format_is_refused_as_unsupported() -> None:
    key = RawMasterKey(os.urandom(32))
    wrapped = bytearray(key.wrap(os.urandom(32), b"ad"))
    wrapped[0] = 2
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        key.unwrap(bytes(wrapped), b"ad")


def test_record_contexts_match_record_context() -> None:
    context = record_contexts(b"tenant")
    for key, code, expires_at in [
        (b"k", 1, None),
        (b"key \xe2\x82\xac", 3, 1_700_000_000_000_000),
        (b"", 2, 1),
    ]:
        assert context(key, code, expires_at) == record_context(b"tenant", key, code, expires_at)


def test_reseal_value_moves_a_record_to_another_key_and_checks_it() -> None:
    old, new = DataKey(os.urandom(32), b"ws", 1), DataKey(os.urandom(32), b"ws", 2)
    context = record_context(b"ws", b"k", 2, None)
    for size in (0, 100, 70_000):
        value = os.urandom(size)
        resealed = reseal_value(old, new, context, bytes(seal_value(old, context, value)))
        assert parse_header(resealed).dek_version == 2
        assert open_value(new, context, resealed) == value
    blob = bytearray(seal_value(old, context, b"v"))
    blob[-1] ^= 1
    with pytest.raises(AuthenticationError):
        reseal_value(old, new, context, bytes(blob))
    with pytest.raises(AuthenticationError):
        reseal_value(new, old, context, bytes(seal_value(old, context, b"v")))
    with pytest.raises(AuthenticationError):
        reseal_value(old, new, context, b"\x01\x01short")


def test_rewrap_data_key_moves_a_data_key_to_another_master_key_bound_to_the_same_place() -> None:
    old, new = RawMasterKey(os.urandom(32)), RawMasterKey(os.urandom(32))
    dek = os.urandom(32)
    rewrapped = rewrap_data_key(old, new, wrap_data_key(old, dek, b"ws", 3), b"ws", 3)
    assert unwrap_data_key(new, rewrapped, b"ws", 3)._dek == dek
    with pytest.raises(AuthenticationError):
        unwrap_data_key(new, rewrapped, b"other", 3)
    with pytest.raises(AuthenticationError):
        rewrap_data_key(old, new, wrap_data_key(old, dek, b"ws", 3), b"ws", 4)


@pytest.mark.parametrize("size", [0, 100, 70_000])
def test_batch_sealing_and_opening_match_the_single_functions(size: int) -> None:
    data_key = DataKey(os.urandom(32), b"ws", 3)
    prefix = envelope.context_prefix(b"ws")
    context = envelope.key_context(prefix, b"k", 2, 1234)
    assert context == record_context(b"ws", b"k", 2, 1234)
    plaintexts = [os.urandom(size) for _ in range(3)]
    sealed = envelope.seal_values(data_key, [(context, p) for p in plaintexts])
    assert len({parse_header(s).nonce for s in sealed}) == 3
    for blob, plaintext in zip(sealed, plaintexts, strict=True):
        assert open_value(data_key, context, blob) == plaintext
        assert envelope.open_record(data_key, prefix, b"k", 2, 1234, blob) == plaintext
        with pytest.raises(AuthenticationError):
            envelope.open_record(data_key, prefix, b"other", 2, 1234, blob)
        with pytest.raises(AuthenticationError):
            envelope.open_record(DataKey(os.urandom(32), b"ws", 4), prefix, b"k", 2, 1234, blob)


@pytest.mark.parametrize("v", WRAP_VECTORS, ids=lambda v: v["kek_id"])
def test_a_v1_wrapped_key_opens_as_created_under_its_master_key(v: dict[str, Any]) -> None:
    master = RawMasterKey(base64.urlsafe_b64decode(v["master_key"]))
    opened = unwrap_data_key(master, bytes.fromhex(v["wrapped"]), v["workspace"].encode(), v["version"])
    assert opened.created_under == master.kek_id


@pytest.mark.parametrize("v", REWRAPPED_VECTORS, ids=lambda v: v["kek_id"])
def test_rewrapped_key_vectors_open_but_are_not_created_under_the_key(v: dict[str, Any]) -> None:
    raw = base64.urlsafe_b64decode(v["master_key"])
    workspace = v["workspace"].encode()
    wrapped = bytes.fromhex(v["wrapped"])
    associated = (
        b"secure_kv/v1/dek-rewrapped"
        + struct.pack(">H", len(workspace))
        + workspace
        + struct.pack(">I", v["version"])
    )
    nonce = wrapped[1:13]
    assert (
        AESGCM(_hkdf_expand(raw, b"secure_kv/v1/kek-wrap")).encrypt(
            nonce, bytes.fromhex(v["dek"]), associated
        )
        == (wrapped[13:])
    )
    opened = unwrap_data_key(RawMasterKey(raw), wrapped, workspace, v["version"])
    assert opened._dek.hex() == v["dek"]
    assert opened.created_under is None


def test_rewrapping_labels_the_key_as_rewrapped() -> None:
    old, new = RawMasterKey(os.urandom(32)), RawMasterKey(os.urandom(32))
    fresh = unwrap_data_key(old, wrap_data_key(old, os.urandom(32), b"ws", 1), b"ws", 1)
    assert fresh.created_under == old.kek_id
    moved = unwrap_data_key(
        new, rewrap_data_key(old, new, wrap_data_key(old, fresh._dek, b"ws", 1), b"ws", 1), b"ws", 1
    )
    assert moved.created_under is None
    assert moved._dek == fresh._dek


def test_seal_value_takes_no_caller_chosen_nonce_or_salt() -> None:
    data_key = DataKey(os.urandom(32), b"w", 1)
    with pytest.raises(TypeError):
        seal_value(data_key, _context(), b"v", nonce=b"\0" * 12)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        seal_value(data_key, _context(), b"v", salt=b"\0" * 16)  # type: ignore[call-arg]
    assert "seal_for_test_vectors" not in envelope.__all__


@pytest.mark.parametrize("expires_at", [-1, 0, -(2**63), 2**63, 1.5, "123", True])
def test_an_expiry_outside_its_domain_has_no_record_context(expires_at: Any) -> None:
    # -1 would give the same associated data as "no expiry"; the others are no stored expiry.
    with pytest.raises(AuthenticationError):
        record_context(b"w", b"k", 2, expires_at)


@pytest.mark.parametrize("size", [0, 100, 70_000])
def test_records_sealed_in_a_batch_open_only_as_their_own_key_category_and_expiry(size: int) -> None:
    data_key = DataKey(os.urandom(32), b"ws", 3)
    prefix = envelope.context_prefix(b"ws")
    items = [(b"a", 2, None, os.urandom(size)), (b"b", 3, 1234, os.urandom(size)), (b"c", 2, None, b"")]
    sealed = envelope.seal_records(data_key, prefix, items)
    assert len({parse_header(s).nonce for s in sealed}) == 3
    for blob, (key, code, expires_at, plaintext) in zip(sealed, items, strict=True):
        context = record_context(b"ws", key, code, expires_at)
        assert open_value(data_key, context, blob) == plaintext
        assert envelope.open_record(data_key, prefix, key, code, expires_at, blob) == plaintext
        for other in ((b"x", code, expires_at), (key, 1, expires_at), (key, code, 99)):
            with pytest.raises(AuthenticationError):
                envelope.open_record(data_key, prefix, *other, blob)
