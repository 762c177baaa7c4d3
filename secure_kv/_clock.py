"""The one clock and the one time format: every timestamp is microseconds since the epoch
(UTC), shown as ISO 8601 with six fraction digits (``2026-11-25T10:00:00.000000Z``), so the
same instant reads the same in ``list``, ``audit log``, reports and JSON, and sorts as text.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from secure_kv.errors import InvalidInputError

__all__ = ["format_time", "now_micros", "parse_time"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def now_micros() -> int:
    return time.time_ns() // 1000


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Records written in the same second share the prefix: a report formats several
    # times per row, so the cache keeps formatting off the profile.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_time(micros: int | None) -> str | None:
    """ISO 8601 in UTC, always with microseconds, or ``None`` for no time."""
    if micros is None:
        return None
    seconds, fraction = divmod(int(micros), 1_000_000)
    if not 0 <= seconds < 253_402_300_800:  # time.gmtime's range on every platform: years 1970-9999
        moment = _EPOCH + timedelta(microseconds=int(micros))
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{_second(seconds)}.{fraction:06d}Z"


def parse_time(text: str, *, now: datetime | None = None) -> int:
    """ISO 8601 (a time without zone is UTC) or a span back from now (``90s``, ``24h``,
    ``7d``, ``2w``) -> microseconds since the epoch."""
    now = now or datetime.now(UTC)
    stripped = text.strip()
    span = _SPAN.fullmatch(stripped)
    if span is not None:
        try:
            moment = now - timedelta(seconds=float(span.group(1)) * _SPAN_SECONDS[span.group(2)])
        except OverflowError:
            raise InvalidInputError(f"{stripped!r} reaches back before the year 1") from None
    else:
        try:
            moment = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(
                f"{stripped!r} is not a time: use ISO 8601 (2026-01-31 or 2026-01-31T12:00:00Z) "
                "or a span such as 90s, 30m, 24h, 7d, 2w"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic: a float timestamp loses the last microsecond of far-off times.
    return (moment - _EPOCH) // timedelta(microseconds=1)
