"""Master keys from environment variables (12-factor deployments, container secrets)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import MasterKeyError
from .base import RawMasterKey, _RawKeyProvider, parse_master_key

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["EnvMasterKey"]

CURRENT_VARIABLE = "SECURE_KV_MASTER_KEY"
PREVIOUS_VARIABLE = "SECURE_KV_PREVIOUS_MASTER_KEYS"


class EnvMasterKey(_RawKeyProvider):
    """``SECURE_KV_MASTER_KEY`` (current) and ``SECURE_KV_PREVIOUS_MASTER_KEYS``
    (comma-separated, still accepted for reading), each url-safe base64 of 32 bytes.

    The variables are read once, at construction.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        current = environ.get(CURRENT_VARIABLE, "").strip()
        if not current:
            raise MasterKeyError(
                f"no master key: set {CURRENT_VARIABLE} (run `secure-kv keygen` to make one)"
            )
        keys: list[RawMasterKey] = [parse_master_key(current, CURRENT_VARIABLE)]
        previous = environ.get(PREVIOUS_VARIABLE, "")
        for position, text in enumerate(part for part in previous.split(",") if part.strip()):
            keys.append(parse_master_key(text, f"{PREVIOUS_VARIABLE} entry {position + 1}"))
        super().__init__(keys)

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> EnvMasterKey:
        environ = {}
        if settings.master_key is not None:
            environ[CURRENT_VARIABLE] = settings.master_key.get_secret_value()
        if settings.previous_master_keys is not None:
            environ[PREVIOUS_VARIABLE] = settings.previous_master_keys.get_secret_value()
        return cls(environ)
