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

import sqlalchemy as sa

from .audit_admin import format_time
from .audit_verify import _stream
from .database import Database
from .datakeys import now_micros
from .envelope import ALGORITHM_NAMES
from .schema import data_keys, records, workspaces

__all__ = ["REPORT_FIELDS", "ReportSummary", "iter_report"]

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
    r, w, d = records.c, workspaces.c, data_keys.c
    query = (
        sa.select(
            w.name,
            r.record_key,
            r.category,
            r.created_at,
            r.updated_at,
            r.expires_at,
            r.dek_version,
            w.last_dek_version,
            d.created_at.label("dek_created_at"),
            d.kek_id,
            d.wrapped.is_(None).label("shredded"),
            sa.func.substr(r.value, 1, 2).label("head"),
        )
        .select_from(
            records.join(workspaces, w.id == r.workspace_id).outerjoin(
                data_keys, sa.and_(d.workspace_id == r.workspace_id, d.version == r.dek_version)
            )
        )
        .order_by(r.workspace_id, r.record_key)
    )
    if workspace is not None:
        query = query.where(w.name == workspace.encode("utf-8"))
    now = now_micros()
    summary.max_age_days = max_age_days
    for row in _stream(database, query):
        head = bytes(row.head or b"")
        expired = row.expires_at is not None and row.expires_at <= now
        current = row.dek_version == row.last_dek_version
        summary.records += 1
        summary.by_category[row.category] += 1
        summary.expired_not_purged += expired
        summary.on_old_data_keys += not current
        summary.shredded += bool(row.shredded)
        yield {
            "workspace": bytes(row.name).decode("utf-8", "replace"),
            "key": bytes(row.record_key).decode("utf-8", "replace"),
            "category": row.category,
            "created_at": format_time(row.created_at),
            "updated_at": format_time(row.updated_at),
            "expires_at": format_time(row.expires_at),
            "expired": expired,
            "dek_version": row.dek_version,
            "dek_current": current,
            "dek_created_at": format_time(row.dek_created_at),
            "kek_id": row.kek_id,
            "format_version": head[0] if head else None,
            "algorithm": ALGORITHM_NAMES.get(head[1], f"unknown-{head[1]}") if len(head) > 1 else None,
        }
    _count_due_keys(database, summary, workspace, now - int(max_age_days * 86_400_000_000))


def _count_due_keys(database: Database, summary: ReportSummary, workspace: str | None, cutoff: int) -> None:
    w, d = workspaces.c, data_keys.c
    old = sa.and_(d.wrapped.is_not(None), d.created_at < cutoff)
    joined = data_keys.join(workspaces, w.id == d.workspace_id)
    where = [old] if workspace is None else [old, w.name == workspace.encode("utf-8")]
    with database.connect() as connection:
        summary.data_keys_due = int(
            connection.execute(sa.select(sa.func.count()).select_from(joined).where(*where)).scalar_one()
        )
        summary.workspaces_due = int(
            connection.execute(
                sa.select(sa.func.count()).select_from(joined).where(*where, d.version == w.last_dek_version)
            ).scalar_one()
        )
