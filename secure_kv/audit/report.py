"""``secure-kv audit report``: every record's metadata for an auditor, never a value.

Rows are streamed from a server-side cursor, so memory stays constant for millions of
records; the summary (counts per category, expired entries not yet purged, records on old
data-key versions, data keys due for rotation) is gathered on the way and by two aggregate
queries at the end. Only the first two bytes of each sealed value (format and algorithm)
are read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from secure_kv._clock import format_time, now_micros
from secure_kv.audit.verify import stream_rows
from secure_kv.envelope import ALGORITHM_NAMES
from secure_kv.sql.database import Database
from secure_kv.sql.statements import count_data_keys_due, select_report_rows

__all__ = ["REPORT_FIELDS", "ReportSummary", "iter_report", "iter_report_rows"]

REPORT_FIELDS = (
    "workspace",
    "key",
    "category",
    "created_at",
    "updated_at",
    "expires_at",
    "expired",
    "dek_version",
    "dek_current",
    "dek_created_at",
    "kek_id",
    "format_version",
    "algorithm",
)


@dataclass
class ReportSummary:
    """Filled in while :func:`iter_report` runs; complete once it is exhausted."""

    records: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    expired_not_purged: int = 0
    on_old_data_keys: int = 0
    shredded: int = 0
    data_keys_due: int = 0
    workspaces_due: int = 0
    max_age_days: float = 0.0

    def lines(self) -> list[str]:
        categories = (
            ", ".join(f"{name} {count}" for name, count in sorted(self.by_category.items())) or "none"
        )
        return [
            f"records: {self.records} ({categories})",
            f"expired but not purged: {self.expired_not_purged} (run `secure-kv purge`)",
            f"records on an old data-key version: {self.on_old_data_keys} (a rotation re-encrypts them)",
            f"records whose data key was destroyed (shredded): {self.shredded}",
            f"data keys older than {self.max_age_days:g} days: {self.data_keys_due} "
            f"({self.workspaces_due} workspaces' current keys are due for rotation)",
        ]


def iter_report(
    database: Database,
    summary: ReportSummary,
    *,
    workspace: str | None = None,
    max_age_days: float = 90.0,
) -> Iterator[dict[str, Any]]:
    """One dict per record (see :data:`REPORT_FIELDS`), in workspace and key order."""
    for row in iter_report_rows(database, summary, workspace=workspace, max_age_days=max_age_days):
        yield dict(zip(REPORT_FIELDS, row, strict=True))


def iter_report_rows(
    database: Database,
    summary: ReportSummary,
    *,
    workspace: str | None = None,
    max_age_days: float = 90.0,
) -> Iterator[tuple[Any, ...]]:
    """One tuple per record, fields in :data:`REPORT_FIELDS` order (the fast path: the
    report's speed is the speed of reading rows).
    """
    query = select_report_rows(None if workspace is None else workspace.encode("utf-8"))
    now = now_micros()
    summary.max_age_days = max_age_days
    categories: Counter[str] = Counter()
    names: dict[bytes, str] = {}
    records_seen = expired_count = old_count = shredded_count = 0
    for (
        name,
        record_key,
        category,
        created_at,
        updated_at,
        expires_at,
        dek_version,
        last_version,
        dek_created_at,
        kek_id,
        shredded,
        head,
    ) in stream_rows(database, query):
        raw_name = bytes(name)
        workspace_name = names.get(raw_name)
        if workspace_name is None:
            workspace_name = names[raw_name] = raw_name.decode("utf-8", "replace")
        head = bytes(head or b"")
        expired = expires_at is not None and expires_at <= now
        current = dek_version == last_version
        records_seen += 1
        categories[category] += 1
        expired_count += expired
        old_count += not current
        shredded_count += bool(shredded)
        yield (
            workspace_name,
            bytes(record_key).decode("utf-8", "replace"),
            category,
            format_time(created_at),
            format_time(updated_at),
            format_time(expires_at),
            expired,
            dek_version,
            current,
            format_time(dek_created_at),
            kek_id,
            head[0] if head else None,
            ALGORITHM_NAMES.get(head[1], f"unknown-{head[1]}") if len(head) > 1 else None,
        )
        if records_seen % 1000 == 0:
            _add(summary, records_seen, categories, expired_count, old_count, shredded_count)
            categories.clear()
            records_seen = expired_count = old_count = shredded_count = 0
    _add(summary, records_seen, categories, expired_count, old_count, shredded_count)
    _count_due_keys(database, summary, workspace, now - int(max_age_days * 86_400_000_000))


def _add(
    summary: ReportSummary, seen: int, categories: Counter[str], expired: int, old: int, shredded: int
) -> None:
    """Fold a batch's counts into the summary (every 1,000 rows: the summary stays current
    for a caller that stops early, without the per-row attribute writes).
    """
    summary.records += seen
    summary.by_category.update(categories)
    summary.expired_not_purged += expired
    summary.on_old_data_keys += old
    summary.shredded += shredded


def _count_due_keys(database: Database, summary: ReportSummary, workspace: str | None, cutoff: int) -> None:
    name = None if workspace is None else workspace.encode("utf-8")
    with database.connect() as connection:
        summary.data_keys_due = int(connection.execute(count_data_keys_due(cutoff, name)).scalar_one())
        summary.workspaces_due = int(
            connection.execute(count_data_keys_due(cutoff, name, current_only=True)).scalar_one()
        )
