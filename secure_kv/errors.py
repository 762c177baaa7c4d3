"""The errors secure_kv raises.

One root, :class:`SecureKVError`, and a handful of subclasses a caller would branch on.
Each is also the builtin it resembles, so ``except ValueError`` keeps working for bad input.
Messages name the workspace and key involved and say how to fix the problem; they never
contain a value, a key's bytes or a wrapped key.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "InvalidInputError",
    "InvalidTypeError",
    "MasterKeyError",
    "SecureKVError",
    "StorageError",
    "UnsupportedVersionError",
]


class SecureKVError(Exception):
    """Root of every error secure_kv raises on purpose."""


class InvalidInputError(SecureKVError, ValueError):
    """A key, value, category, TTL or name was refused; nothing was stored."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument had the wrong type (a ``str`` value, an ``int`` key, a ``bool`` TTL...)."""


class MasterKeyError(SecureKVError):
    """The master key is missing, malformed, unavailable, or not the one the data needs."""


class AuthenticationError(SecureKVError):
    """A stored record or wrapped key failed authentication: tampered, swapped or truncated.

    The message names the workspace and key, never why the check failed byte by byte: one
    vague failure leaves an attacker no oracle.
    """


class StorageError(SecureKVError):
    """The database is unusable: bad URL, unreachable server, lost connection, bad schema."""


class UnsupportedVersionError(StorageError):
    """A record, key or schema was written by a newer secure_kv than this one; upgrade."""


class ConfigurationError(SecureKVError, ValueError):
    """A setting (``SECURE_KV_*`` or an option to ``SecureStore.open``) is invalid."""
