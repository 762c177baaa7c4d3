"""``secure-kv audit report --format html``: one self-contained page for an auditor.

The page answers what an auditor asks (how many records and tokens, in which workspaces,
are the data keys within ``DEK_MAX_AGE_DAYS``, which master key wraps them, who read tokens
and when, does the audit chain verify) and lists every record's metadata, never a value.

It opens from a USB stick: no network, no CDN. The CSS, the charts (SVG drawn here, on the
server side) and the one script (sorting, filtering and paging the record table) are inline,
and a Content-Security-Policy with ``default-src 'none'`` and the hashes of that style and
script lets the browser load nothing else. The records travel as JSON inside a
``<script type="application/json">`` and the table is built with ``textContent``, so a
name a tenant chose is always text, never markup. Everything else goes through Jinja2 with
autoescaping. Jinja2 is the optional extra ``report``.

The numbers on the page come from the same rows as ``--format json`` (:func:`iter_report`).
The audit chain is verified while the report is made, with its public keys only (what
``audit verify --chain-only`` does); records and data keys are authenticated only by
``secure-kv audit verify`` with the master key, and the page says so.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from secure_kv._clock import format_time, now_micros
from secure_kv.audit.report import REPORT_FIELDS, ReportSummary
from secure_kv.audit.verify import verify
from secure_kv.display import shown, shown_message
from secure_kv.errors import ConfigurationError
from secure_kv.sql.audit_queries import (
    count_token_reads_by_actor_and_day,
    select_recent_anchors,
    select_recent_events,
)
from secure_kv.sql.database import Database
from secure_kv.sql.statements import select_data_key_report

__all__ = ["HTML_FIELDS", "check_available", "write_html_report"]

#: The columns of the record table: :data:`REPORT_FIELDS` in that order, less a data key's
#: creation time (the keys card charts key ages) and the record format version.
HTML_FIELDS = tuple(name for name in REPORT_FIELDS if name not in ("dek_created_at", "format_version"))

DAY_MICROS = 86_400_000_000
ROTATION_ACTIONS = ("admin.rotate_master", "admin.rotate_workspace", "masterkey.generate", "masterkey.retire")
MAX_ACTORS_CHARTED = 12
MAX_WORKSPACES_CHARTED = 15
_SCRIPT_BLOCK = re.compile(r"<script>(.*?)</script>", re.S)
_STYLE_BLOCK = re.compile(r"<style>(.*?)</style>", re.S)


@dataclass
class Bar:
    label: str
    value: int
    css: str = ""


@dataclass
class ReportPage:
    """Everything the template shows, gathered from the database."""

    generated_at: str
    database: str
    workspace_filter: str | None
    max_age_days: float
    summary: ReportSummary
    rows: list[list[Any]] = field(default_factory=list)
    by_workspace: Counter[str] = field(default_factory=Counter)
    tokens_by_workspace: Counter[str] = field(default_factory=Counter)
    expired_by_workspace: Counter[str] = field(default_factory=Counter)
    data_keys: list[dict[str, Any]] = field(default_factory=list)
    kek_ids: Counter[str] = field(default_factory=Counter)
    rotations: list[dict[str, Any]] = field(default_factory=list)
    token_reads: dict[str, dict[int, int]] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    anchors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.summary.by_category.get("token", 0)


def check_available() -> None:
    """Raise :class:`ConfigurationError` naming the extra to install if Jinja2 is missing."""
    _environment()


def _environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise ConfigurationError("the HTML report needs Jinja2: pip install 'secure-kv[report]'") from None
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("secure_kv", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["thousands"] = lambda number: f"{number:,}"
    return environment


def write_html_report(
    out: TextIO,
    database: Database,
    rows: Iterable[dict[str, Any]],
    summary: ReportSummary,
    *,
    database_label: str,
    workspace: str | None,
    max_age_days: float,
) -> int:
    """Render the page for ``rows`` (from :func:`iter_report`) to ``out``; return the row count."""
    environment = _environment()  # before any work: a missing extra fails at once
    page = ReportPage(
        generated_at=format_time(now_micros()) or "",
        database=database_label,
        workspace_filter=None if workspace is None else shown(workspace),
        max_age_days=max_age_days,
        summary=summary,
    )
    for row in rows:
        # Names as `secure-kv list` shows them: a newline or a right-to-left mark in a name
        # is shown as its escape, so no name can forge a row or reorder what follows it.
        name = shown(row["workspace"])
        cells = [row[field] for field in HTML_FIELDS]
        cells[0], cells[1] = name, shown(row["key"])
        page.rows.append(cells)
        page.by_workspace[name] += 1
        if row["category"] == "token":
            page.tokens_by_workspace[name] += 1
        if row["expired"]:
            page.expired_by_workspace[name] += 1
    _gather_keys(database, page, workspace)
    _gather_events(database, page, workspace)
    _verify_chain(database, page)
    html = environment.get_template("report.html.j2").render(
        page=page,
        fields=HTML_FIELDS,
        charts=_charts(page),
        records_json=page.rows,
    )
    out.write(_with_csp(html))
    return len(page.rows)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _with_csp(html: str) -> str:
    """Pin the page's one style and one script by hash: the browser runs and loads nothing else."""
    scripts = " ".join(_csp_hash(body) for body in _SCRIPT_BLOCK.findall(html))
    styles = " ".join(_csp_hash(body) for body in _STYLE_BLOCK.findall(html))
    policy = f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src data:"
    return html.replace("__CONTENT_SECURITY_POLICY__", policy, 1)


def _gather_keys(database: Database, page: ReportPage, workspace: str | None) -> None:
    query = select_data_key_report(None if workspace is None else workspace.encode("utf-8"))
    now = now_micros()
    with database.connect() as connection:
        for row in connection.execute(query):
            age_days = max(0.0, (now - int(row.created_at)) / DAY_MICROS)
            destroyed = bool(row.destroyed)
            if not destroyed:
                page.kek_ids[row.kek_id] += 1
            page.data_keys.append(
                {
                    "workspace": shown(bytes(row.name).decode("utf-8", "replace")),
                    "version": int(row.version),
                    "current": int(row.version) == int(row.last_dek_version),
                    "kek_id": row.kek_id,
                    "created_at": format_time(row.created_at),
                    "age_days": age_days,
                    "due": not destroyed and age_days > page.max_age_days,
                    "destroyed": destroyed,
                }
            )


def _gather_events(database: Database, page: ReportPage, workspace: str | None) -> None:
    reads = count_token_reads_by_actor_and_day(
        DAY_MICROS, None if workspace is None else workspace.encode("utf-8")
    )
    rotations = select_recent_events(ROTATION_ACTIONS, limit=10)
    anchors = select_recent_anchors(limit=5)
    with database.connect() as connection:
        per_actor: dict[str, dict[int, int]] = defaultdict(dict)
        for actor, read_day, count in connection.execute(reads):
            per_actor[shown(actor)][int(read_day)] = int(count)
        page.token_reads = dict(sorted(per_actor.items(), key=lambda item: -sum(item[1].values())))
        for row in connection.execute(rotations):
            page.rotations.append(
                {
                    "time": format_time(row.occurred_at),
                    "actor": shown(row.actor),
                    "action": row.action,
                    "outcome": row.outcome,
                    "detail": shown_message(row.detail) if row.detail else None,
                }
            )
        for anchor_id, created_at in connection.execute(anchors):
            page.anchors.append({"id": int(anchor_id), "time": format_time(created_at)})


def _verify_chain(database: Database, page: ReportPage) -> None:
    """Walk the signed audit chain now, with its public keys only (no secret needed)."""
    report = verify(database, None)
    page.verify = {
        "time": format_time(now_micros()),
        "ok": report.ok,
        "events": report.events,
        "chains": report.chains,
        "signing_keys": report.signing_keys,
        "failure_count": report.failure_count,
        "failures": [shown_message(str(failure)) for failure in report.failures],
        "notes": [shown_message(note) for note in report.notes],
    }


# --- charts: plain SVG, drawn here so the page needs no chart script and prints as drawn ---


def _charts(page: ReportPage) -> dict[str, Any]:
    summary = page.summary
    categories = [
        Bar(name, summary.by_category.get(name, 0), f"c-{name}") for name in ("token", "preference", "cache")
    ]
    top = page.by_workspace.most_common(MAX_WORKSPACES_CHARTED)
    by_workspace = [Bar(name, count) for name, count in top]
    others = sum(page.by_workspace.values()) - sum(count for _, count in top)
    if others:
        by_workspace.append(Bar(f"{len(page.by_workspace) - len(top)} other workspaces", others, "c-other"))
    return {
        "categories": categories,
        "workspaces": by_workspace,
        "key_ages": _key_age_bins(page),
        "reads": _reads_series(page),
    }


def _key_age_bins(page: ReportPage) -> list[Bar]:
    """Live data keys by age, in bins that put ``DEK_MAX_AGE_DAYS`` on a boundary."""
    limit = page.max_age_days
    edges = [limit / 4, limit / 2, 3 * limit / 4, limit, 2 * limit]
    labels = [f"≤ {edge:g} d" for edge in edges] + [f"> {edges[-1]:g} d"]
    counts = [0] * len(labels)
    for key in page.data_keys:
        if key["destroyed"]:
            continue
        index = next((i for i, edge in enumerate(edges) if key["age_days"] <= edge), len(edges))
        counts[index] += 1
    return [
        Bar(label, count, "c-due" if i >= len(edges) - 1 else "c-ok")
        for i, (label, count) in enumerate(zip(labels, counts, strict=True))
    ]


def _reads_series(page: ReportPage) -> dict[str, Any]:
    """Token reads per actor per day over the days that had any, as sparkline points."""
    days = sorted({day for reads in page.token_reads.values() for day in reads})
    if not days:
        return {"days": [], "actors": []}
    first, last = days[0], days[-1]
    span = list(range(first, last + 1))
    peak = max(count for reads in page.token_reads.values() for count in reads.values())
    actors = []
    for actor, reads in list(page.token_reads.items())[:MAX_ACTORS_CHARTED]:
        values = [reads.get(day, 0) for day in span]
        actors.append(
            {
                "actor": actor,
                "total": sum(values),
                "days": sum(1 for value in values if value),
                "points": _points(values, peak),
            }
        )
    return {
        "first": (format_time(first * DAY_MICROS) or "")[:10],
        "last": (format_time(last * DAY_MICROS) or "")[:10],
        "days": span,
        "actors": actors,
        "more": max(0, len(page.token_reads) - MAX_ACTORS_CHARTED),
    }


def _points(values: list[int], peak: int, width: float = 300.0, height: float = 40.0) -> str:
    if len(values) == 1:
        values = values * 2
    step = width / (len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{height - (value / peak) * (height - 2) - 1:.1f}" for i, value in enumerate(values)
    )
