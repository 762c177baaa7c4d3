"""One fork counter for every per-process cache (pooled connections, AEAD writers, audit
chains): a child must never reuse its parent's nonce counters, chain heads or sockets, and
comparing one integer on the hot path is cheaper than a pid lookup.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["generation", "in_child_after_fork"]

generation = 0
"""Bumped in every child process right after ``fork``; read as ``_fork.generation``."""


def _bump() -> None:
    global generation
    generation += 1


def in_child_after_fork(callback: Callable[[], None]) -> None:
    """Run ``callback`` in every child right after ``fork`` (after the counter moved)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=callback)


in_child_after_fork(_bump)
