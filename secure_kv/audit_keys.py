"""The audit log's signing keys: random Ed25519 keys stored wrapped under the master key.

The signing key is not derived from the master key: an auditor checks signatures with the
public half alone (stored in clear), and the history stays verifiable after the master key
that wrapped it is retired. ``secure-kv rotate master`` rewraps it with
:func:`rewrap_signing_keys`, as it rewraps data keys.

The wrap binds the public key (associated data ``"secure_kv/v1/audit-signing-key" |
public key``), so a wrapped key moved to another row fails, and whoever holds the master
key can check that every public key in the table belongs to a key the store created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .database import Database
from .errors import AuthenticationError, MasterKeyError
from .keys.base import MasterKey, MasterKeyProvider
from .schema import audit_signing_keys

__all__ = [
    "SigningKey",
    "authenticate_signing_keys",
    "load_signing_key",
    "public_keys",
    "rewrap_signing_keys",
    "verify_signature",
]

log = logging.getLogger("secure_kv.audit")

SIGNING_KEY_LABEL = b"secure_kv/v1/audit-signing-key"
_MAX_ATTEMPTS = 4


def _associated_data(public_key: bytes) -> bytes:
    return SIGNING_KEY_LABEL + bytes(public_key)


class SigningKey:
    """An unwrapped audit signing key. Never shows its bytes; refuses to be pickled."""

    __slots__ = ("_private", "id", "public_key")

    def __init__(self, key_id: int, private: Ed25519PrivateKey, public_key: bytes) -> None:
        self.id = key_id
        self._private = private
        self.public_key = public_key

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


def _unwrap(master: MasterKey, key_id: int, public_key: bytes, wrapped: bytes) -> Ed25519PrivateKey:
    try:
        raw = master.unwrap(bytes(wrapped), _associated_data(public_key))
        private = Ed25519PrivateKey.from_private_bytes(raw)
    except (AuthenticationError, ValueError):
        raise AuthenticationError(
            f"audit signing key {key_id} failed authentication: it was altered or its public key "
            "was replaced; restore skv_audit_signing_keys from a backup"
        ) from None
    if private.public_key().public_bytes_raw() != bytes(public_key):
        raise AuthenticationError(f"audit signing key {key_id} does not match its public key")
    return private


def load_signing_key(database: Database, provider: MasterKeyProvider, now: int) -> SigningKey:
    """The store's signing key: the oldest one a held master key wrapped, created if none.

    Racing processes may each create one; everyone then uses the lowest id, so they settle
    on a single key. Raises :class:`AuthenticationError` if the chosen key was tampered with.
    """
    table = audit_signing_keys
    held = {key.kek_id: key for key in provider.all_keys()}
    for _ in range(_MAX_ATTEMPTS):
        with database.connect() as connection:
            rows = connection.execute(
                sa.select(table.c.id, table.c.public_key, table.c.kek_id, table.c.wrapped)
                .where(table.c.kek_id.in_(list(held)))
                .order_by(table.c.id)
                .limit(1)
            ).all()
        if rows:
            key_id, public_key, kek_id, wrapped = rows[0]
            private = _unwrap(held[kek_id], key_id, public_key, wrapped)
            return SigningKey(int(key_id), private, bytes(public_key))
        private = Ed25519PrivateKey.generate()
        public_key = private.public_key().public_bytes_raw()
        master = provider.current_key()
        wrapped = master.wrap(private.private_bytes_raw(), _associated_data(public_key))
        with database.connect() as connection, connection.begin():
            connection.execute(
                table.insert().values(
                    public_key=public_key, kek_id=master.kek_id, wrapped=wrapped, created_at=now
                )
            )
    raise MasterKeyError("could not create or load the audit signing key: retry")


def public_keys(connection: sa.Connection) -> dict[int, bytes]:
    """Every signing key's public half, by id: all an auditor needs besides the events."""
    table = audit_signing_keys
    return {
        int(key_id): bytes(public)
        for key_id, public in connection.execute(sa.select(table.c.id, table.c.public_key))
    }


def authenticate_signing_keys(connection: sa.Connection, provider: MasterKeyProvider) -> list[KeyProblem]:
    """Unwrap every signing key with the provider's keys; list those that fail or cannot be checked."""
    table = audit_signing_keys
    problems = []
    for key_id, public_key, kek_id, wrapped in connection.execute(
        sa.select(table.c.id, table.c.public_key, table.c.kek_id, table.c.wrapped).order_by(table.c.id)
    ):
        master = provider.find(kek_id)
        if master is None:
            problems.append(
                KeyProblem(
                    int(key_id),
                    f"wrapped by master key {kek_id}, which the provider does not hold: its public "
                    "key cannot be authenticated (pin it with an anchor, or give that master key)",
                )
            )
            continue
        try:
            _unwrap(master, int(key_id), public_key, wrapped)
        except AuthenticationError as error:
            problems.append(KeyProblem(int(key_id), str(error)))
    return problems


def rewrap_signing_keys(connection: sa.Connection, provider: MasterKeyProvider) -> int:
    """Rewrap every audit signing key under the provider's current master key.

    For ``secure-kv rotate master``: call it inside the rotation's transaction, after the
    data keys. Returns how many keys were rewrapped. A key wrapped by a master key the
    provider does not hold is left as it is (logged): its public half still verifies the
    events it signed, and a new signing key is created on the next write.
    """
    table = audit_signing_keys
    current = provider.current_key()
    count = 0
    rows = connection.execute(
        sa.select(table.c.id, table.c.public_key, table.c.kek_id, table.c.wrapped)
        .where(table.c.kek_id != current.kek_id)
        .order_by(table.c.id)
    ).all()
    for key_id, public_key, kek_id, wrapped in rows:
        master = provider.find(kek_id)
        if master is None:
            log.warning(
                "audit signing key %s is wrapped by master key %s, which the provider does not "
                "hold; left as it is",
                key_id,
                kek_id,
            )
            continue
        private = _unwrap(master, int(key_id), public_key, wrapped)
        rewrapped = current.wrap(private.private_bytes_raw(), _associated_data(public_key))
        connection.execute(
            table.update()
            .where(table.c.id == key_id, table.c.kek_id == kek_id)
            .values(kek_id=current.kek_id, wrapped=rewrapped)
        )
        count += 1
    return count
