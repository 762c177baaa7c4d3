"""Sealing values and wrapping data keys: the byte layouts live here.

Format 1 of a sealed value (all integers big-endian; specified in docs/architecture.md and
pinned by tests/vectors/envelope_v1.json)::

    offset  size  field
    0       1     format version (1)
    1       1     algorithm (1 = AES-256-GCM, subkey = HKDF-Expand-SHA256(DEK, label || salt))
    2       4     data-key (DEK) version
    6       16    salt: names the writer's subkey
    22      12    nonce, random
    34      n     ciphertext
    34+n    16    GCM tag

The associated data is the 34-byte header followed by the record's context::

    u16 len | workspace (UTF-8) | u16 len | key (UTF-8) | u8 category | i64 expires_at
    (microseconds since the Unix epoch, UTC; -1 for no expiry)

so a blob moved to another key, workspace or category, or given another expiry, fails. The
encoding is injective over the values a record can hold: an expiry is always a positive
number of microseconds, so -1 stands only for "none" (a NULL column). Readers refuse any
other stored value (see :func:`row_in_domain`), so "-1 in the column" cannot pass for
"no expiry".

A data key's wrap binds its workspace and version, and whether it was *created* under the
key that wraps it (label ``secure_kv/v1/dek``) or moved there by a master-key rotation
(label ``secure_kv/v1/dek-rewrapped``). Only a key created under the current master key is
used for new writes (see ``store/datakeys.py``): whoever holds a previous master key can wrap a
key of their own choosing, but never one that unwraps under the current key with the
"created" label.

Nonce budget. NIST SP 800-38D allows at most 2^32 encryptions with random 96-bit nonces
under one key. Each writer (a process, or a forked child) derives its own subkey from the
DEK and a fresh random 128-bit salt, and replaces it after ``SUBKEY_MAX_WRITES`` (2^24)
encryptions, so no AES key ever sees more than 2^24 nonces, however many processes and
hosts share the DEK; no counter is shared between writers. SECURITY.md gives the numbers.
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from secure_kv import _fork
from secure_kv.errors import AuthenticationError, UnsupportedVersionError
from secure_kv.keys.base import MasterKey
from secure_kv.validation import Buffer

__all__ = [
    "FORMAT_VERSION",
    "NO_EXPIRY",
    "SEAL_OVERHEAD",
    "DataKey",
    "Header",
    "context_prefix",
    "key_context",
    "open_record",
    "open_value",
    "parse_header",
    "record_context",
    "record_contexts",
    "reseal_value",
    "rewrap_data_key",
    "row_in_domain",
    "seal_records",
    "seal_value",
    "seal_values",
    "unwrap_data_key",
    "wrap_data_key",
]

FORMAT_VERSION = 1
ALGORITHM_AES256GCM_HKDF = 1
ALGORITHM_NAMES = {ALGORITHM_AES256GCM_HKDF: "AES-256-GCM/HKDF-SHA256"}
HEADER = struct.Struct(">BBI16s12s")
HEADER_BYTES = HEADER.size  # 34
TAG_BYTES = 16
SALT_BYTES = 16
NONCE_BYTES = 12
SEAL_OVERHEAD = HEADER_BYTES + TAG_BYTES
DATA_KEY_BYTES = 32
NO_EXPIRY = -1
# A subkey is retired after this many encryptions: 2^24 random 96-bit nonces collide with
# probability at most q^2/2^97 = 2^-49, far inside NIST's 2^32-per-key limit.
SUBKEY_MAX_WRITES = 1 << 24
SUBKEY_LABEL = b"secure_kv/v1/value-subkey"
DATA_KEY_LABEL = b"secure_kv/v1/dek"
# A data key moved under another master key by a rotation: readable, never written with.
REWRAPPED_DATA_KEY_LABEL = b"secure_kv/v1/dek-rewrapped"
# The largest expiry the i64 field holds; a stored expiry outside 1..this fails to open.
MAX_EXPIRES_AT = (1 << 63) - 1
_MAX_DEK_VERSION = (1 << 32) - 1
# Above this size the sealed blob is built in place (encrypt_into) instead of by
# concatenation, so a large value is never copied once more than needed.
_IN_PLACE_THRESHOLD = 64 * 1024
# Reader subkeys cached per data key: one per writer salt seen recently.
_READER_CACHE_SIZE = 256

_CONTEXT_TAIL = struct.Struct(">Bq")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# A forked child must not keep encrypting with its parent's subkey (_fork.generation):
# both would draw nonces for the same key without sharing a count.


def _subkey(dek: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDFExpand(algorithm=SHA256(), length=32, info=SUBKEY_LABEL + salt).derive(dek))


class DataKey:
    """An unwrapped workspace data key, ready to seal and open values.

    Holds the writer subkey of this process and a small cache of reader subkeys. It never
    shows its bytes and cannot be pickled.
    """

    __slots__ = ("_dek", "_lock", "_readers", "_writer", "created_under", "version", "workspace")

    def __init__(self, dek: bytes, workspace: bytes, version: int, created_under: str | None = None) -> None:
        if len(dek) != DATA_KEY_BYTES:
            raise AuthenticationError("data key has the wrong length")
        self._dek = dek
        self.workspace = workspace
        self.version = version
        #: kek_id of the master key this data key was created under and is still wrapped by;
        #: ``None`` for a key a master rotation rewrapped. Only a key created under the
        #: current master key is used for new writes.
        self.created_under = created_under
        self._lock = threading.Lock()
        self._readers: dict[bytes, AESGCM] = {}
        self._writer: tuple[bytes, AESGCM, itertools.count[int], int] | None = None

    def writer(self) -> tuple[bytes, AESGCM]:
        """The (salt, subkey) to encrypt with now; a new one after the write budget or a fork."""
        writer = self._writer
        if writer is not None and writer[3] == _fork.generation and next(writer[2]) < SUBKEY_MAX_WRITES:
            return writer[0], writer[1]
        with self._lock:
            writer = self._writer
            if writer is None or writer[3] != _fork.generation or next(writer[2]) >= SUBKEY_MAX_WRITES:
                salt = os.urandom(SALT_BYTES)
                aead = _subkey(self._dek, salt)
                writer = (salt, aead, itertools.count(1), _fork.generation)
                self._writer = writer
                self._remember_reader(salt, aead)
            return writer[0], writer[1]

    def reader(self, salt: bytes) -> AESGCM:
        aead = self._readers.get(salt)
        if aead is None:
            aead = _subkey(self._dek, salt)
            with self._lock:
                self._remember_reader(salt, aead)
        return aead

    def _remember_reader(self, salt: bytes, aead: AESGCM) -> None:
        if len(self._readers) >= _READER_CACHE_SIZE:
            self._readers.clear()
        self._readers[salt] = aead

    def rewrapped_under(self, master: MasterKey) -> bytes:
        """This key wrapped under ``master``, labelled as rewrapped (see :func:`rewrap_data_key`)."""
        return master.wrap(
            self._dek, data_key_associated_data(self.workspace, self.version, REWRAPPED_DATA_KEY_LABEL)
        )

    def __repr__(self) -> str:
        return f"<DataKey version={self.version}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("DataKey holds key material and cannot be pickled")


def data_key_associated_data(workspace: bytes, version: int, label: bytes = DATA_KEY_LABEL) -> bytes:
    return label + _U16.pack(len(workspace)) + workspace + _U32.pack(version)


def new_data_key_bytes() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def wrap_data_key(master: MasterKey, dek: bytes, workspace: bytes, version: int) -> bytes:
    """Wrap a DEK under the master key, bound to its workspace and version."""
    return master.wrap(dek, data_key_associated_data(workspace, version))


def unwrap_data_key(master: MasterKey, wrapped: bytes, workspace: bytes, version: int) -> DataKey:
    """Raise :class:`AuthenticationError` if the wrapped key was altered or moved.

    The result's ``created_under`` is ``master.kek_id`` for a key created under ``master``,
    ``None`` for one a master-key rotation rewrapped.
    """
    wrapped = bytes(wrapped)
    try:
        dek = master.unwrap(wrapped, data_key_associated_data(workspace, version))
    except AuthenticationError:
        # Either label may apply; the wrapped form does not say which (it is the
        # provider's own format), so the second is tried only when the first fails.
        dek = master.unwrap(wrapped, data_key_associated_data(workspace, version, REWRAPPED_DATA_KEY_LABEL))
        return DataKey(dek, workspace, version)
    return DataKey(dek, workspace, version, master.kek_id)


def rewrap_data_key(old: MasterKey, new: MasterKey, wrapped: bytes, workspace: bytes, version: int) -> bytes:
    """Unwrap a DEK with ``old`` and wrap it under ``new``, bound to the same workspace and
    version (master-key rotation), labelled as rewrapped: readable under ``new``, never
    adopted for new writes. Raise :class:`AuthenticationError` if it was altered or moved.
    """
    return unwrap_data_key(old, wrapped, workspace, version).rewrapped_under(new)


def record_context(workspace: bytes, key: bytes, category_code: int, expires_at: int | None) -> bytes:
    """The record's identity as bound into the associated data (see the module docstring)."""
    return key_context(context_prefix(workspace), key, category_code, expires_at)


def context_prefix(workspace: bytes) -> bytes:
    """The workspace's part of every record context, computed once per workspace."""
    return _U16.pack(len(workspace)) + workspace


def key_context(prefix: bytes, key: bytes, category_code: int, expires_at: int | None) -> bytes:
    """:func:`record_context` from a workspace's :func:`context_prefix`."""
    return prefix + _U16.pack(len(key)) + key + _context_tail(category_code, expires_at)


def _context_tail(category_code: int, expires_at: int | None) -> bytes:
    if expires_at is None:
        return _CONTEXT_TAIL.pack(category_code, NO_EXPIRY)
    if type(expires_at) is not int or not 0 < expires_at <= MAX_EXPIRES_AT:
        # -1 would alias "no expiry"; other values are not ones secure_kv writes.
        raise AuthenticationError("record expiry is outside its domain")
    return _CONTEXT_TAIL.pack(category_code, expires_at)


def seal_value(data_key: DataKey, context: bytes, plaintext: Buffer) -> Buffer:
    """Encrypt ``plaintext`` for the record described by ``context`` (from :func:`record_context`).

    The writer's subkey (salt) and a random nonce are always chosen here: no caller can
    make two seals share a nonce.
    """
    salt, aead = data_key.writer()
    return _seal(aead, data_key.version, salt, os.urandom(NONCE_BYTES), context, plaintext)


def seal_for_test_vectors(
    data_key: DataKey, context: bytes, plaintext: Buffer, salt: bytes, nonce: bytes
) -> Buffer:
    """Seal with a fixed salt and nonce: the test-vector hook (tests/vectors, Dify's record
    vectors), kept out of ``__all__``. Never for data: a nonce must not be reused."""
    return _seal(data_key.reader(salt), data_key.version, salt, nonce, context, plaintext)


def row_in_domain(dek_version: object, expires_at: object, blob: object) -> bool:
    """Whether a stored record's cells hold values of the kinds secure_kv writes: a DEK
    version that fits the header's u32 (above 0); no expiry (NULL), or a positive whole
    number of microseconds that fits the i64 field; and bytes. Anything else (an expiry of
    -1, so that exactly one stored value means "no expiry"; a float or text where a number
    belongs, as SQLite allows) was not written by secure_kv and must fail to open."""
    return (
        type(dek_version) is int
        and 0 < dek_version <= _MAX_DEK_VERSION
        and (expires_at is None or (type(expires_at) is int and 0 < expires_at <= MAX_EXPIRES_AT))
        and isinstance(blob, (bytes, bytearray, memoryview))
    )


def seal_values(data_key: DataKey, items: list[tuple[bytes, Buffer]]) -> list[Buffer]:
    """:func:`seal_value` for many (context, plaintext) pairs: the same sealed format, with
    the random nonces drawn from the OS in one call instead of one call each."""
    nonces = os.urandom(NONCE_BYTES * len(items))
    sealed = []
    for index, (context, plaintext) in enumerate(items):
        salt, aead = data_key.writer()  # counts every encryption against the subkey's budget
        nonce = nonces[index * NONCE_BYTES : (index + 1) * NONCE_BYTES]
        sealed.append(_seal(aead, data_key.version, salt, nonce, context, plaintext))
    return sealed


def seal_records(
    data_key: DataKey, prefix: bytes, items: list[tuple[bytes, int, int | None, Buffer]]
) -> list[Buffer]:
    """:func:`seal_values` for many records of one workspace, given as (key, category code,
    expiry, plaintext) with the workspace's :func:`context_prefix`: each record's context is
    built here, its constant tail once per (category, expiry)."""
    nonces = os.urandom(NONCE_BYTES * len(items))
    tails: dict[tuple[int, int | None], bytes] = {}
    version = data_key.version
    sealed: list[Buffer] = []
    append = sealed.append
    for index, (key, code, expires_at, plaintext) in enumerate(items):
        tail = tails.get((code, expires_at))
        if tail is None:
            tail = tails[(code, expires_at)] = _context_tail(code, expires_at)
        salt, aead = data_key.writer()  # counts every encryption against the subkey's budget
        nonce = nonces[index * NONCE_BYTES : (index + 1) * NONCE_BYTES]
        append(_seal(aead, version, salt, nonce, prefix + _U16.pack(len(key)) + key + tail, plaintext))
    return sealed


def _seal(aead: AESGCM, version: int, salt: bytes, nonce: bytes, context: bytes, plaintext: Buffer) -> Buffer:
    header = HEADER.pack(FORMAT_VERSION, ALGORITHM_AES256GCM_HKDF, version, salt, nonce)
    aad = header + context
    size = len(plaintext) if not isinstance(plaintext, memoryview) else plaintext.nbytes
    if size < _IN_PLACE_THRESHOLD:
        return header + aead.encrypt(nonce, plaintext, aad)
    sealed = bytearray(HEADER_BYTES + size + TAG_BYTES)
    sealed[:HEADER_BYTES] = header
    aead.encrypt_into(nonce, plaintext, aad, memoryview(sealed)[HEADER_BYTES:])
    return sealed


def record_contexts(workspace: bytes) -> Callable[[bytes, int, int | None], bytes]:
    """:func:`record_context` for many records of one workspace, its part encoded once."""
    return functools.partial(key_context, context_prefix(workspace))


def reseal_value(old: DataKey, new: DataKey, context: bytes, blob: bytes) -> Buffer:
    """Open ``blob`` with ``old`` and seal its plaintext under ``new`` for the same record
    (workspace-key rotation). Raise :class:`AuthenticationError` on any mismatch, including
    a header that names another data-key version than ``old``.
    """
    # The checks of parse_header and open_value, without building a Header: a rotation
    # runs this once per record.
    if len(blob) < SEAL_OVERHEAD or blob[0] != FORMAT_VERSION or blob[1] != ALGORITHM_AES256GCM_HKDF:
        parse_header(blob)  # raises the precise error
    _, _, version, salt, nonce = HEADER.unpack_from(blob)
    if version != old.version:
        raise AuthenticationError("sealed value names another data key version")
    if len(blob) < _IN_PLACE_THRESHOLD:
        ciphertext: Buffer = blob[HEADER_BYTES:]
    else:
        ciphertext = memoryview(blob)[HEADER_BYTES:]  # no copy of a large value
    try:
        plaintext = old.reader(salt).decrypt(nonce, ciphertext, blob[:HEADER_BYTES] + context)
    except InvalidTag:
        raise AuthenticationError("sealed value failed authentication") from None
    return seal_value(new, context, plaintext)


class Header(NamedTuple):
    """A sealed value's header. A named tuple: built on every read, it must be cheap
    (a frozen dataclass cost ~2 µs a call through ``object.__setattr__``)."""

    format_version: int
    algorithm: int
    dek_version: int
    salt: bytes
    nonce: bytes

    @property
    def algorithm_name(self) -> str:
        return ALGORITHM_NAMES.get(self.algorithm, f"unknown-{self.algorithm}")


def parse_header(blob: Buffer) -> Header:
    """Read a sealed value's header; refuse newer formats and malformed blobs."""
    if len(blob) >= SEAL_OVERHEAD:
        fields = HEADER.unpack_from(blob)
        if fields[0] == FORMAT_VERSION and fields[1] == ALGORITHM_AES256GCM_HKDF:
            return Header._make(fields)
    if len(blob) < 2:
        raise AuthenticationError("sealed value is truncated")
    if blob[0] > FORMAT_VERSION or blob[1] > ALGORITHM_AES256GCM_HKDF:
        raise UnsupportedVersionError(
            f"sealed value has format {blob[0]}, algorithm {blob[1]}: it was written by a "
            f"newer secure_kv (this one reads format {FORMAT_VERSION}); upgrade secure_kv"
        )
    raise AuthenticationError("sealed value is malformed or truncated")


def open_value(data_key: DataKey, context: bytes, blob: Buffer, header: Header | None = None) -> bytes:
    """Decrypt a sealed value; raise :class:`AuthenticationError` on any mismatch."""
    if header is None:
        header = parse_header(blob)
    if header.dek_version != data_key.version:
        raise AuthenticationError("sealed value names another data key version")
    aead = data_key.reader(header.salt)
    try:
        if len(blob) < _IN_PLACE_THRESHOLD:  # slicing copies a little; cheaper than views
            return aead.decrypt(header.nonce, blob[HEADER_BYTES:], bytes(blob[:HEADER_BYTES]) + context)
        with memoryview(blob) as view:  # a large value is never copied whole
            return aead.decrypt(header.nonce, view[HEADER_BYTES:], view[:HEADER_BYTES].tobytes() + context)
    except InvalidTag:
        raise AuthenticationError("sealed value failed authentication") from None


def open_record(
    data_key: DataKey, prefix: bytes, key: bytes, category_code: int, expires_at: int | None, blob: Buffer
) -> bytes:
    """``open_value(data_key, key_context(prefix, key, ...), blob)`` in one step, for batches:
    a well-formed small blob is opened without building a :class:`Header`; anything else
    takes the general path (and raises what it raises)."""
    if SEAL_OVERHEAD <= len(blob) < _IN_PLACE_THRESHOLD:
        form, algorithm, version, salt, nonce = HEADER.unpack_from(blob)
        if form == FORMAT_VERSION and algorithm == ALGORITHM_AES256GCM_HKDF and version == data_key.version:
            aad = b"".join(
                (
                    blob[:HEADER_BYTES],
                    prefix,
                    _U16.pack(len(key)),
                    key,
                    _context_tail(category_code, expires_at),
                )
            )
            # The reader cache read inline (this module owns DataKey): a call saved per record.
            aead = data_key._readers.get(salt) or data_key.reader(salt)  # noqa: SLF001
            try:
                return aead.decrypt(nonce, blob[HEADER_BYTES:], aad)
            except InvalidTag:
                raise AuthenticationError("sealed value failed authentication") from None
    return open_value(data_key, key_context(prefix, key, category_code, expires_at), blob)
