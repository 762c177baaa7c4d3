"""Checks on what callers pass in, done before anything touches the database.

Messages never echo the rejected input: a misplaced argument may well be a secret.
"""

from __future__ import annotations

import math
from datetime import timedelta

from secure_kv.errors import InvalidInputError, InvalidTypeError

__all__ = ["MAX_KEY_BYTES", "check_key", "check_ttl", "check_value", "check_workspace_name"]

MAX_KEY_BYTES = 256
MAX_WORKSPACE_BYTES = 256
# Far beyond any sensible expiry, and small enough that microseconds since the epoch still
# fit a signed 64-bit column.
MAX_TTL_SECONDS = 1e12

Buffer = bytes | bytearray | memoryview


def _check_name(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be str, not {type(value).__name__}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    if not encoded:
        raise InvalidInputError(f"{what} must not be empty")
    if len(encoded) > limit:
        raise InvalidInputError(f"{what} is {len(encoded)} bytes of UTF-8; at most {limit} are allowed")
    if b"\x00" in encoded:
        raise InvalidInputError(f"{what} must not contain a NUL character")
    return encoded


def check_key(key: object) -> bytes:
    """Return the key's UTF-8 bytes: 1-256 of them, no NUL."""
    if type(key) is str and 0 < len(key) <= MAX_KEY_BYTES // 4 and key.isascii():
        # Fast path for the common case: short ASCII keys need no further length check.
        if "\x00" not in key:
            return key.encode("ascii")
    return _check_name(key, "key", MAX_KEY_BYTES)


def check_workspace_name(name: object) -> bytes:
    return _check_name(name, "workspace name", MAX_WORKSPACE_BYTES)


def check_value(value: object, max_bytes: int) -> Buffer:
    """Accept bytes, bytearray or a contiguous memoryview of at most ``max_bytes``."""
    if isinstance(value, (bytes, bytearray)):
        size = len(value)
    elif isinstance(value, memoryview):
        if not value.c_contiguous:
            raise InvalidInputError("value memoryview must be C-contiguous")
        if value.format != "B" or value.ndim != 1:
            value = value.cast("B")
        size = value.nbytes
    else:
        hint = " (encode text first, for example value.encode())" if isinstance(value, str) else ""
        raise InvalidTypeError(
            f"value must be bytes, bytearray or memoryview, not {type(value).__name__}{hint}"
        )
    if size > max_bytes:
        raise InvalidInputError(
            f"value is {size} bytes; the limit is {max_bytes} (SECURE_KV_MAX_VALUE_BYTES)"
        )
    return value


def check_ttl(ttl: object) -> float | None:
    """Return the TTL in seconds: positive and finite, or ``None`` for no expiry."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float, timedelta)):
        raise InvalidTypeError(
            f"ttl must be seconds as int or float, or a timedelta, not {type(ttl).__name__}"
        )
    if isinstance(ttl, int) and ttl > MAX_TTL_SECONDS:  # float() would overflow on huge ints
        raise InvalidInputError(f"ttl must be at most {MAX_TTL_SECONDS:.0e} seconds")
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise InvalidInputError("ttl must be a positive, finite number of seconds")
    if seconds > MAX_TTL_SECONDS:
        raise InvalidInputError(f"ttl must be at most {MAX_TTL_SECONDS:.0e} seconds")
    return seconds
