"""The audit log's signing keys: random Ed25519 keys stored wrapped under the master key.

The signing key is not derived from the master key: an auditor checks signatures with the
public half alone (stored in clear), and the history stays verifiable after the master key
that wrapped it is retired.

The wrap binds the public key (associated data ``"secure_kv/v1/audit-signing-key" |
public key``), so a wrapped key moved to another row fails, and whoever holds the master
key can check that every public key in the table belongs to a key the store created. A
public key read from the table is trusted only when it authenticates so, or when an anchor
kept outside the database pinned it (:func:`trusted_signing_keys`): someone with write
access alone can add rows, but cannot make them authenticate.

``secure-kv rotate master`` replaces the keys (:func:`replace_signing_keys`): a new key is
created under the new master key, and each old key's seed is destroyed, its row keeping the
public half and, instead of the seed, a retirement mark wrapped under the current master
key (associated data ``"secure_kv/v1/audit-signing-key-retired" | public key``), so the old
public half still authenticates and still verifies the events it signed. The mark holds
the digest of the heads of every chain the key signed
(:func:`~secure_kv.audit.events.retired_chains_digest`) and a tag of the master key that
wrapped the seed: an event signed with the old seed afterwards, by whoever unwrapped it
with a leaked master key, makes the key untrusted. While that master key is still
accepted (as a previous key, during the rotation), ``rotate master`` run again moves the
heads on to take in events that running processes signed before they moved to the new
key; once it is retired, the heads are fixed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_kv.audit.events import retired_chains_digest
from secure_kv.errors import AuthenticationError, MasterKeyError, UnsupportedVersionError
from secure_kv.keys.base import MasterKey, MasterKeyProvider
from secure_kv.sql.audit_queries import (
    insert_signing_key,
    retire_signing_key,
    select_checkpoint_heads_of_key,
    select_event_heads_of_key,
    select_public_keys,
    select_signing_keys,
)
from secure_kv.sql.database import Database

__all__ = [
    "KeyProblem",
    "SigningKey",
    "SigningKeyReplacement",
    "TrustedKeys",
    "load_signing_key",
    "public_keys",
    "replace_signing_keys",
    "trusted_signing_keys",
    "verify_signature",
]

log = logging.getLogger("secure_kv.audit")

SIGNING_KEY_LABEL = b"secure_kv/v1/audit-signing-key"
RETIRED_LABEL = b"secure_kv/v1/audit-signing-key-retired"
_MAX_ATTEMPTS = 4


def _associated_data(public_key: bytes) -> bytes:
    return SIGNING_KEY_LABEL + bytes(public_key)


def _retired_associated_data(public_key: bytes) -> bytes:
    return RETIRED_LABEL + bytes(public_key)


def _kek_tag(kek_id: str) -> bytes:
    """16 bytes naming the master key that wrapped a retired seed (48-byte marks wrap anywhere)."""
    return hashlib.sha256(b"secure_kv/v1/audit-retired-kek|" + kek_id.encode("utf-8")).digest()[:16]


def _retired_heads(connection: sa.Connection, key_id: int) -> bytes:
    """The digest of the heads of every chain ``key_id`` signed, as the table holds them now:
    each chain's last event, or its prune checkpoint if every event was pruned."""
    heads: dict[int, tuple[int, bytes]] = {}
    for chain, seq, digest in connection.execute(select_checkpoint_heads_of_key(key_id)):
        heads[int(chain)] = (int(seq), bytes(digest))
    for chain, seq, digest in connection.execute(select_event_heads_of_key(key_id)):
        heads[int(chain)] = (int(seq), bytes(digest))
    return retired_chains_digest(key_id, [(chain, seq, digest) for chain, (seq, digest) in heads.items()])


class SigningKey:
    """An unwrapped audit signing key. Never shows its bytes; refuses to be pickled."""

    __slots__ = ("_private", "id", "kek_id", "public_key")

    def __init__(self, key_id: int, private: Ed25519PrivateKey, public_key: bytes, kek_id: str = "") -> None:
        self.id = key_id
        self._private = private
        self.public_key = public_key
        self.kek_id = kek_id  # the master key that wraps it: the store replaces it when that changes

    def sign(self, digest: bytes) -> bytes:
        return self._private.sign(digest)

    def __repr__(self) -> str:
        return f"<SigningKey id={self.id} public={self.public_key.hex()[:16]}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SigningKey holds key material and cannot be pickled")


@dataclass(frozen=True)
class KeyProblem:
    key_id: int
    problem: str


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True


class _Retired(Exception):
    """The row holds a retirement mark, not a seed: its key verifies old events, signs nothing."""

    def __init__(self, mark: bytes) -> None:
        super().__init__("retired")
        self.heads = mark[:32]  # retired_chains_digest of its chains
        self.kek_tag = mark[32:]  # _kek_tag of the master key its seed was under


def _unwrap(master: MasterKey, key_id: int, public_key: bytes, wrapped: bytes) -> Ed25519PrivateKey:
    """The private key of an active row; :class:`_Retired` for a retired one (mark authentic)."""
    try:
        raw = master.unwrap(bytes(wrapped), _associated_data(public_key))
        private = Ed25519PrivateKey.from_private_bytes(raw)
    except (AuthenticationError, ValueError):
        try:
            mark = master.unwrap(bytes(wrapped), _retired_associated_data(public_key))
        except (AuthenticationError, ValueError):
            mark = None
        if mark is not None and len(mark) == 48:
            raise _Retired(mark) from None
        raise AuthenticationError(
            f"audit signing key {key_id} failed authentication under master key {master.kek_id}: "
            "it was altered, its public key replaced, or it was planted by someone without the "
            "master key; events it signed are not trusted"
        ) from None
    if private.public_key().public_bytes_raw() != bytes(public_key):
        raise AuthenticationError(f"audit signing key {key_id} does not match its public key")
    return private


def _key_rows(connection: sa.Connection, kek_id: str | None = None) -> list[Any]:
    return list(connection.execute(select_signing_keys(kek_id)).all())


def load_signing_key(database: Database, provider: MasterKeyProvider, now: int) -> SigningKey:
    """The store's signing key: the oldest active key the current master key wraps, else a
    new one under it. A key under a previous master key is never used to sign: once a new
    master key is current, stores move to a key whose seed no old master key ever wrapped
    (within a minute, see ``AuditLog``), and ``rotate master`` retires the old one.

    Racing processes may each create one; everyone then uses the lowest id, so they settle
    on a single key. A row that fails authentication is never used (``audit verify`` names it).
    """
    current = provider.current_key()
    for _ in range(_MAX_ATTEMPTS):
        with database.connect() as connection:
            rows = _key_rows(connection, current.kek_id)
        for key_id, public_key, kek_id, wrapped in rows:
            try:
                private = _unwrap(current, int(key_id), public_key, wrapped)
            except _Retired:
                continue
            except AuthenticationError as error:
                log.error("%s; not used for signing", error)
                continue
            return SigningKey(int(key_id), private, bytes(public_key), kek_id)
        _insert_new_key(database, current, now)
    raise MasterKeyError("could not create or load the audit signing key: retry")


def _insert_new_key(database: Database | sa.Connection, master: MasterKey, now: int) -> None:
    private = Ed25519PrivateKey.generate()
    public_key = private.public_key().public_bytes_raw()
    wrapped = master.wrap(private.private_bytes_raw(), _associated_data(public_key))
    insert = insert_signing_key(public_key, master.kek_id, wrapped, now)
    if isinstance(database, sa.Connection):
        database.execute(insert)
        return
    with database.connect() as connection, connection.begin():
        connection.execute(insert)


def public_keys(connection: sa.Connection) -> dict[int, bytes]:
    """Every signing key's public half as stored, by id, unauthenticated: see
    :func:`trusted_signing_keys` for the ones whose signatures count."""
    return {int(key_id): bytes(public) for key_id, public in connection.execute(select_public_keys())}


@dataclass
class TrustedKeys:
    """The signing keys whose signatures count, and why each other key does not."""

    #: public key by id: authenticated under a held master key, or pinned by the anchor
    public: dict[int, bytes] = field(default_factory=dict)
    #: keys stored in the table that are not trusted, and why
    problems: list[KeyProblem] = field(default_factory=list)
    #: the public key of every row in the table (trusted or not), by id
    stored: dict[int, bytes] = field(default_factory=dict)


def trusted_signing_keys(
    connection: sa.Connection,
    provider: MasterKeyProvider | None,
    pinned: Mapping[int, bytes] | None = None,
) -> TrustedKeys:
    """The signing keys whose signatures may be trusted.

    A key counts if an anchor pinned it (its pinned public half is used, whatever the table
    now says), or if its row authenticates under one of ``provider``'s keys (active or
    retired). Every other row is listed in ``problems``: someone with write access can add
    a key and a chain signed by it, but not make either authenticate. With neither a
    provider nor an anchor nothing can be checked: every stored key is returned, unproven.
    """
    result = TrustedKeys()
    rows = _key_rows(connection)
    result.stored = {int(row.id): bytes(row.public_key) for row in rows}
    if provider is None and pinned is None:
        result.public = dict(result.stored)
        return result
    pinned = pinned or {}
    result.public.update(pinned)
    for key_id, public_key, kek_id, wrapped in rows:
        key_id = int(key_id)
        if key_id in pinned:
            continue
        master = provider.find(kek_id) if provider is not None else None
        if master is None:
            if provider is None:
                reason = (
                    "not pinned by the anchor (created after it was taken, or planted): events it "
                    "signed are not trusted; verify with the master key, or with a newer anchor"
                )
            else:
                reason = (
                    f"wrapped by master key {kek_id}, which the provider does not hold, and not "
                    "pinned by an anchor: events it signed are not trusted (give that master key "
                    "as a previous key, or verify with an anchor that pinned it)"
                )
            result.problems.append(KeyProblem(key_id, reason))
            continue
        try:
            _unwrap(master, key_id, public_key, wrapped)
        except _Retired as retired:
            if retired.heads != _retired_heads(connection, key_id):
                result.problems.append(
                    KeyProblem(
                        key_id,
                        "retired by a master rotation, but the chains it signed changed since "
                        "(events signed or chains added after it was retired, with a seed unwrapped "
                        "by an old master key, or by a process still signing with it): events it "
                        "signed are not trusted",
                    )
                )
                continue
        except (AuthenticationError, UnsupportedVersionError) as error:
            result.problems.append(KeyProblem(key_id, str(error)))
            continue
        result.public[key_id] = bytes(public_key)
    return result


@dataclass(frozen=True)
class SigningKeyReplacement:
    """What :func:`replace_signing_keys` did."""

    created: int
    retired: int
    #: keys still wrapped by another master key (not held, or failing authentication)
    remaining: int


def replace_signing_keys(
    connection: sa.Connection, provider: MasterKeyProvider, now: int
) -> SigningKeyReplacement:
    """Give the store a new signing key under the current master key and retire the others.

    For ``secure-kv rotate master``, in one transaction: whoever unwrapped a seed with an
    old (perhaps leaked) master key cannot sign what the store writes next. Each old active
    key's seed is destroyed (overwritten by a retirement mark wrapped under the current
    master key, bound to its public half); retired keys' marks are rewrapped. Rows wrapped
    by a master key the provider does not hold, or that fail authentication, are left as
    they are and counted in ``remaining``. An active key the current master key already
    wraps was never under an old key, and is kept. Run again, it changes nothing.
    """
    current = provider.current_key()
    previous = {_kek_tag(key.kek_id) for key in provider.previous_keys()}
    created = retired = remaining = 0
    active_current = False
    for key_id, public_key, kek_id, wrapped in _key_rows(connection):
        master = provider.find(kek_id)
        if master is None:
            log.warning(
                "audit signing key %s is wrapped by master key %s, which the provider does not "
                "hold; left as it is",
                key_id,
                kek_id,
            )
            remaining += 1
            continue
        try:
            _unwrap(master, int(key_id), public_key, wrapped)
            mark = None
        except _Retired as was_retired:
            mark = was_retired.heads + was_retired.kek_tag
            if was_retired.kek_tag in previous:
                # Its seed's master key is still accepted: processes may have signed with it
                # until they moved to the new key. Take their events in.
                moved = _retired_heads(connection, int(key_id)) + was_retired.kek_tag
                if kek_id == current.kek_id and moved == mark:
                    continue
                mark = moved
            elif kek_id == current.kek_id:
                continue
        except (AuthenticationError, UnsupportedVersionError) as error:
            log.error("%s; left as it is", error)
            remaining += 1
            continue
        if kek_id == current.kek_id and mark is None:
            active_current = True
            continue
        if mark is None:  # retire it: its chains end here
            mark = _retired_heads(connection, int(key_id)) + _kek_tag(kek_id)
            retired += 1
        connection.execute(
            retire_signing_key(
                key_id,
                kek_id,
                wrapped,
                current.kek_id,
                current.wrap(mark, _retired_associated_data(public_key)),
            )
        )
    if not active_current:
        _insert_new_key(connection, current, now)
        created = 1
    return SigningKeyReplacement(created, retired, remaining)
