"""Master keys made for the operator: ``secure-kv keygen``.

Kept apart from the store's commands so that making a key imports no SQLAlchemy (scripts
call ``secure-kv keygen`` in loops).
"""

from __future__ import annotations

from dataclasses import dataclass

from secure_kv.keys import generate_master_key, load_provider
from secure_kv.settings import Settings, load_settings

__all__ = ["KeyCreated", "create_provider_key", "keygen"]


def keygen() -> str:
    """A new random master key: url-safe base64 of 32 bytes."""
    return generate_master_key()


@dataclass(frozen=True)
class KeyCreated:
    """What :func:`create_provider_key` did: the key's public fingerprint, and whether it
    was made now (``False``: the provider already held it)."""

    provider: str
    kek_id: str
    created: bool


def create_provider_key(provider: str, settings: Settings | None = None) -> KeyCreated:
    """Make the current master key inside the named provider (``pkcs11``: generated in the
    token, non-extractable; ``keyring``: stored in the OS keyring), configured by settings."""
    settings = settings if settings is not None else load_settings()
    made = load_provider(provider, settings, create=True)
    return KeyCreated(provider, made.current_key().kek_id, bool(getattr(made, "created", False)))
