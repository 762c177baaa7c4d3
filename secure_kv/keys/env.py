"""Master keys from environment variables (12-factor deployments, container secrets).

The variables are removed from ``os.environ`` once read: every program the process starts
(a shell-out, a subprocess, a plugin's helper) would otherwise inherit the master key, and
``/proc/<pid>/environ`` of those children would show it. The process keeps what it took, so
a second ``EnvMasterKey()`` or ``SecureStore.from_settings()`` in the same process still
finds the key; a new value set in ``os.environ`` later replaces it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from ..errors import MasterKeyError
from .base import RawMasterKey, _RawKeyProvider, parse_master_key

__all__ = ["EnvMasterKey", "forget_environment_keys"]

CURRENT_VARIABLE = "SECURE_KV_MASTER_KEY"
PREVIOUS_VARIABLE = "SECURE_KV_PREVIOUS_MASTER_KEYS"
_VARIABLES = (CURRENT_VARIABLE, PREVIOUS_VARIABLE)

_lock = threading.Lock()
# The variables this process removed from os.environ, kept for later providers.
_taken: dict[str, str] = {}


def environment_keys() -> dict[str, str]:
    """The two variables: from ``os.environ`` if the current key is set there, else as taken."""
    with _lock:
        if os.environ.get(CURRENT_VARIABLE, "").strip():
            return {name: os.environ[name] for name in _VARIABLES if name in os.environ}
        return dict(_taken)


def take_from_environment(values: Mapping[str, str]) -> None:
    """Remove the variables whose value was read from ``os.environ``, keeping them here.

    A variable is removed only if it still holds the value read, so a value set meanwhile
    is not lost.
    """
    with _lock:
        read_now = {name: values[name] for name in _VARIABLES if name in values}
        read_now = {name: value for name, value in read_now.items() if os.environ.get(name) == value}
        if CURRENT_VARIABLE in read_now:
            _taken.clear()  # a new current key: previous keys come with it or not at all
        _taken.update(read_now)
        for name in read_now:
            os.environ.pop(name, None)


def forget_environment_keys() -> None:
    """Drop the keys this process took from its environment (tests; or after the last open)."""
    with _lock:
        _taken.clear()


class EnvMasterKey(_RawKeyProvider):
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
