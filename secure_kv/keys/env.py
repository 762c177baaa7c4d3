"""Master keys from environment variables (12-factor deployments, container secrets).

The variables are removed from ``os.environ`` once read: every program the process starts
(a shell-out, a subprocess, a plugin's helper) would otherwise inherit the master key, and
``/proc/<pid>/environ`` of those children would show it. The process keeps what it took, so
a second ``EnvMasterKey()`` or ``SecureStore.from_settings()`` in the same process still
finds the key; a new value set in ``os.environ`` later replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from secure_kv._env_keys import (
    CURRENT_VARIABLE,
    PREVIOUS_VARIABLE,
    environment_keys,
    forget_environment_keys,
    take_from_environment,
)
from secure_kv.errors import MasterKeyError
from secure_kv.keys.base import RawKeyProvider, RawMasterKey, parse_master_key

if TYPE_CHECKING:
    from secure_kv.settings import Settings

__all__ = ["EnvMasterKey", "forget_environment_keys"]


class EnvMasterKey(RawKeyProvider):
    """``SECURE_KV_MASTER_KEY`` (current) and ``SECURE_KV_PREVIOUS_MASTER_KEYS``
    (comma-separated, still accepted for reading), each url-safe base64 of 32 bytes.

    The variables are read once, at construction. Read from ``os.environ`` (no
    ``environ`` given), they are then removed from it (see the module docstring); a given
    mapping, such as a Dify plugin's credentials, is left as it is.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        from_process = environ is None
        values = environment_keys() if environ is None else environ
        current = values.get(CURRENT_VARIABLE, "").strip()
        if not current:
            raise MasterKeyError(
                f"no master key: set {CURRENT_VARIABLE} (run `secure-kv keygen` to make one)"
            )
        keys: list[RawMasterKey] = [parse_master_key(current, CURRENT_VARIABLE)]
        previous = values.get(PREVIOUS_VARIABLE, "")
        for position, text in enumerate(part for part in previous.split(",") if part.strip()):
            keys.append(parse_master_key(text, f"{PREVIOUS_VARIABLE} entry {position + 1}"))
        super().__init__(keys)
        if from_process:
            take_from_environment(values)

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> EnvMasterKey:
        environ = {}
        if settings.master_key is not None:
            environ[CURRENT_VARIABLE] = settings.master_key.get_secret_value()
        if settings.previous_master_keys is not None:
            environ[PREVIOUS_VARIABLE] = settings.previous_master_keys.get_secret_value()
        if CURRENT_VARIABLE not in environ:  # taken out of os.environ by an earlier open
            environ = {**environment_keys(), **environ}
        provider = cls(environ)
        take_from_environment(environ)  # child processes must not inherit the key
        return provider
