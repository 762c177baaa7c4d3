"""The master-key variables this process took out of ``os.environ`` (see keys/env.py).

A foundation module so that settings (which picks the env provider when a key is there) and
the env provider share one record of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

__all__ = [
    "CURRENT_VARIABLE",
    "PREVIOUS_VARIABLE",
    "environment_keys",
    "forget_environment_keys",
    "take_from_environment",
]

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
