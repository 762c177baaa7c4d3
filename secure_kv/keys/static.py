"""Raw keys handed over in memory: for tests, and keys that come from elsewhere."""

from __future__ import annotations

from collections.abc import Iterable

from secure_kv.keys.base import RawKeyProvider, RawMasterKey

__all__ = ["StaticMasterKey"]


class StaticMasterKey(RawKeyProvider):
    """``StaticMasterKey(key, previous=())``: raw 32-byte keys, current first.

    Example::

        provider = StaticMasterKey(os.urandom(32))
    """

    def __init__(self, key: bytes, previous: Iterable[bytes] = ()) -> None:
        super().__init__([RawMasterKey(key), *(RawMasterKey(old) for old in previous)])
