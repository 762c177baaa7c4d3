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
public half still authenticates and still verifies the events it signed.
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

from .database import Database
from .errors import AuthenticationError, MasterKeyError, UnsupportedVersionError
from .keys.base import MasterKey, MasterKeyProvider
from .schema import audit_signing_keys

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


def _retired_mark(public_key: bytes) -> tuple[bytes, bytes]:
    """(plaintext, associated data) of a retired key's mark: 32 bytes, as any provider wraps."""
    associated = RETIRED_LABEL + bytes(public_key)
    return hashlib.sha256(associated).digest(), associated


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


def _unwrap(master: MasterKey, key_id: int, public_key: bytes, wrapped: bytes) -> Ed25519PrivateKey:
    """The private key of an active row; :class:`_Retired` for a retired one (mark authentic)."""
    try:
        raw = master.unwrap(bytes(wrapped), _associated_data(public_key))
        private = Ed25519PrivateKey.from_private_bytes(raw)
    except (AuthenticationError, ValueError):
        mark, associated = _retired_mark(public_key)
        try:
            if master.unwrap(bytes(wrapped), associated) == mark:
                raise _Retired from None
        except (AuthenticationError, ValueError):
            pass
        raise AuthenticationError(
            f"audit signing key {key_id} failed authentication under master key {master.kek_id}: "
            "it was altered, its public key replaced, or it was planted by someone without the "
            "master key; events it signed are not trusted"
        ) from None
    if private.public_key().public_bytes_raw() != bytes(public_key):
        raise AuthenticationError(f"audit signing key {key_id} does not match its public key")
    return private


def _key_rows(connection: sa.Connection, *where: Any) -> list[Any]:
    table = audit_signing_keys
    return list(
        connection.execute(
            sa.select(table.c.id, table.c.public_key, table.c.kek_id, table.c.wrapped)
            .where(*where)
            .order_by(table.c.id)
        ).all()
    )


def load_signing_key(database: Database, provider: MasterKeyProvider, now: int) -> SigningKey:
    """The store's signing key: the oldest active key the current master key wraps, else the
    oldest active key a previous master key wraps (until ``rotate master`` replaces it), else
    a new one under the current master key.

    Racing processes may each create one; everyone then uses the lowest id, so they settle
    on a single key. A row that fails authentication is never used (``audit verify`` names it).
    """
    held = {key.kek_id: key for key in provider.all_keys()}
    current = provider.current_key()
    for _ in range(_MAX_ATTEMPTS):
        with database.connect() as connection:
            rows = _key_rows(connection, audit_signing_keys.c.kek_id.in_(list(held)))
        rows.sort(key=lambda row: (row.kek_id != current.kek_id, row.id))
        for key_id, public_key, kek_id, wrapped in rows:
            try:
                private = _unwrap(held[kek_id], int(key_id), public_key, wrapped)
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
    insert = audit_signing_keys.insert().values(
        public_key=public_key, kek_id=master.kek_id, wrapped=wrapped, created_at=now
    )
    if isinstance(database, sa.Connection):
        database.execute(insert)
        return
    with database.connect() as connection, connection.begin():
        connection.execute(insert)


def public_keys(connection: sa.Connection) -> dict[int, bytes]:
    """Every signing key's public half as stored, by id, unauthenticated: see
    :func:`trusted_signing_keys` for the ones whose signatures count."""
    table = audit_signing_keys
    return {
        int(key_id): bytes(public)
        for key_id, public in connection.execute(sa.select(table.c.id, table.c.public_key))
    }


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
        except _Retired:
            pass
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
    table = audit_signing_keys
    current = provider.current_key()
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
            is_active = True
        except _Retired:
            is_active = False
        except (AuthenticationError, UnsupportedVersionError) as error:
            log.error("%s; left as it is", error)
            remaining += 1
            continue
        if kek_id == current.kek_id:
            active_current = active_current or is_active
            continue
        mark, associated = _retired_mark(public_key)
        connection.execute(
            table.update()
            .where(table.c.id == key_id, table.c.kek_id == kek_id, table.c.wrapped == wrapped)
            .values(kek_id=current.kek_id, wrapped=current.wrap(mark, associated))
        )
        retired += is_active
    if not active_current:
        _insert_new_key(connection, current, now)
        created = 1
    return SigningKeyReplacement(created, retired, remaining)
