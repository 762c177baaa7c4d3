"""The ``secure-kv audit`` operations as plain functions (``secure_kv.cli`` is a thin layer over them).

Reports, logs and anchors need no master key; what they do is recorded in the audit log
when a master key is at hand to sign with, and logged otherwise.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

import sqlalchemy as sa

from secure_kv.audit.maintenance import Anchor, PruneReport, iter_events, prune, take_anchor
from secure_kv.audit.report import REPORT_FIELDS, ReportSummary, iter_report_rows
from secure_kv.audit.report_html import check_available, write_html_report
from secure_kv.audit.verify import VerifyReport, verify
from secure_kv.commands.output import write_csv, write_json_array
from secure_kv.display import shown, shown_message
from secure_kv.errors import InvalidInputError, MasterKeyError
from secure_kv.keys import MasterKeyProvider, provider_from_settings
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.settings import Settings, load_settings
from secure_kv.sql.database import Database
from secure_kv.sql.migrate import ensure_schema
from secure_kv.sql.schema import audit_events, data_keys
from secure_kv.sql.statements import count_records, count_records_in_workspace, count_rows
from secure_kv.store.internals import open_store, record_event

__all__ = ["audit_anchor", "audit_log", "audit_prune", "audit_report", "audit_verify", "format_event"]

log = logging.getLogger("secure_kv.commands")
# --- audit ------------------------------------------------------------------------------


def _provider_or_none(settings: Settings, given: MasterKeyProvider | None) -> MasterKeyProvider | None:
    if given is not None:
        return given
    try:
        return provider_from_settings(settings)
    except MasterKeyError:
        return None


@contextmanager
def _read_only(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url, settings, create=False)
    try:
        ensure_schema(database, create=False)
        yield database
    finally:
        database.close()


def _record_admin(settings: Settings, provider: MasterKeyProvider | None, action: str, detail: str) -> None:
    """Record an admin command that needs no master key; without one, log that it was not."""
    if provider is None:
        log.warning("%s (%s) not recorded in the audit log: no master key to sign with", action, detail)
        return
    with open_store(settings, provider, create_schema=False) as store:
        record_event(store, action, detail=detail)


def _count_records(database: Database, workspace: str | None) -> int:
    query = count_records() if workspace is None else count_records_in_workspace(workspace.encode("utf-8"))
    with database.connect() as connection:
        return int(connection.execute(query).scalar_one())


class _Callbacks:
    """The callbacks ``audit_report`` and ``audit_verify`` took before the one
    :class:`~secure_kv.progress.Progress` contract, adapted to it so old callers keep
    working: ``on_total(total)``, ``on_row(done)`` and ``tick(phase, done)``, counts cumulative.
    """

    def __init__(
        self,
        on_total: Callable[[int], None] | None = None,
        on_row: Callable[[int], None] | None = None,
        tick: Callable[[str, int], None] | None = None,
    ) -> None:
        self._on_total, self._on_row, self._tick = on_total, on_row, tick
        self._phase, self._done = "", 0

    def start(self, total: int, description: str) -> None:
        self._phase, self._done = description, 0
        if self._on_total is not None:
            self._on_total(total)

    def describe(self, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        self._done += count
        if self._on_row is not None:
            self._on_row(self._done)
        if self._tick is not None:
            self._tick(self._phase, self._done)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: pass {new}", DeprecationWarning, stacklevel=3)


def audit_report(
    out: TextIO,
    *,
    settings: Settings | None = None,
    fmt: str = "json",
    workspace: str | None = None,
    master_key: MasterKeyProvider | None = None,
    progress: Progress = NO_PROGRESS,
    on_total: Callable[[int], None] | None = None,
    on_row: Callable[[int], None] | None = None,
) -> ReportSummary:
    """Write one row per record (JSON array, CSV, or an HTML page) to ``out``; never a value.

    JSON and CSV are streamed; ``html`` is one self-contained page (report_html.py).
    ``progress`` is started with the number of records (phase ``records``) and advanced
    as they are written. An unknown ``fmt`` raises :class:`~secure_kv.errors.InvalidInputError`.

    Needs no master key; with one, the report is recorded in the audit log first.
    """
    if on_total is not None or on_row is not None:
        _deprecated("audit_report(on_total=, on_row=)", "progress=, a secure_kv.progress.Progress")
        progress = _Callbacks(on_total=on_total, on_row=on_row)
    settings = settings if settings is not None else load_settings()
    if fmt not in ("json", "csv", "html"):
        raise InvalidInputError(f"unknown report format {fmt!r}: use json, csv or html")
    if fmt == "html":
        check_available()  # before anything is recorded or read
    provider = _provider_or_none(settings, master_key)
    _record_admin(settings, provider, "audit.report", f"format {fmt}, workspace {workspace or 'all'}")
    summary = ReportSummary()
    with _read_only(settings) as database:
        total = 0
        if progress is not NO_PROGRESS:  # counting is a scan: only when someone watches
            total = _count_records(database, workspace)
        progress.start(total, "records")
        rows = _counting(
            iter_report_rows(database, summary, workspace=workspace, max_age_days=settings.dek_max_age_days),
            progress,
        )
        if fmt == "csv":
            write_csv(out, REPORT_FIELDS, rows)
        elif fmt == "html":
            write_html_report(
                out,
                database,
                (dict(zip(REPORT_FIELDS, row, strict=True)) for row in rows),
                summary,
                database_label=sa.make_url(settings.database_url).render_as_string(hide_password=True),
                workspace=workspace,
                max_age_days=settings.dek_max_age_days,
            )
        else:
            write_json_array(out, (dict(zip(REPORT_FIELDS, row, strict=True)) for row in rows))
    return summary


def _counting(rows: Iterator[tuple[Any, ...]], progress: Progress) -> Iterator[tuple[Any, ...]]:
    """``rows`` unchanged, advancing ``progress`` every 1,000 rows and at the end."""
    number = 0
    for number, row in enumerate(rows, 1):
        yield row
        if number % 1000 == 0:
            progress.advance(1000)
    progress.advance(number % 1000)


def audit_verify(
    *,
    settings: Settings | None = None,
    anchor: str | None = None,
    chain_only: bool = False,
    master_key: MasterKeyProvider | None = None,
    progress: Progress | Callable[[str, int], None] = NO_PROGRESS,
    on_totals: Callable[[dict[str, int]], None] | None = None,
) -> VerifyReport:
    """Authenticate every record and data key and walk the audit chain.

    ``chain_only`` checks the chain alone, with the public keys and no secret (an auditor).
    Otherwise the master key is required. ``progress`` is started once per phase
    (``events``, ``data keys``, ``records``) with its size.
    """
    settings = settings if settings is not None else load_settings()
    provider: MasterKeyProvider | None = None
    if not chain_only:
        provider = master_key if master_key is not None else provider_from_settings(settings)
        _record_admin(settings, provider, "audit.verify", f"anchor {'given' if anchor else 'none'}")
    tracker: Progress
    if hasattr(progress, "start"):
        tracker = cast(Progress, progress)
    else:  # a tick(phase, done) callable, as before the Progress contract
        _deprecated("audit_verify(progress=tick)", "a secure_kv.progress.Progress")
        tracker = _Callbacks(tick=progress)
    with _read_only(settings) as database:
        if on_totals is not None:
            _deprecated("audit_verify(on_totals=)", "progress=, started with each phase's size")
            with database.connect() as connection:
                on_totals(
                    {
                        "events": int(connection.execute(count_rows(audit_events)).scalar_one()),
                        "data keys": int(connection.execute(count_rows(data_keys)).scalar_one()),
                        "records": int(connection.execute(count_records()).scalar_one()),
                    }
                )
        return verify(database, provider, anchor=anchor, progress=tracker)


def audit_log(
    out: TextIO,
    *,
    settings: Settings | None = None,
    fmt: str = "text",
    workspace: str | None = None,
    since: int | None = None,
    master_key: MasterKeyProvider | None = None,
) -> int:
    """Write the audit events (oldest first) as text lines or a JSON array; return how many.

    An unknown ``fmt`` raises :class:`~secure_kv.errors.InvalidInputError`.
    """
    settings = settings if settings is not None else load_settings()
    if fmt not in ("json", "text"):
        raise InvalidInputError(f"unknown log format {fmt!r}: use text or json")
    provider = _provider_or_none(settings, master_key)
    _record_admin(settings, provider, "audit.log", f"workspace {workspace or 'all'}")
    with _read_only(settings) as database:
        events = iter_events(database, workspace=workspace, since=since)
        if fmt == "json":
            return write_json_array(out, events)
        count = 0
        for event in events:
            out.write(format_event(event) + "\n")
            count += 1
        return count


def format_event(event: dict[str, Any]) -> str:
    """One event as a line of text. Names are shown with non-printable characters escaped
    (:func:`~secure_kv.display.shown`): a name cannot add a line, or hide or restyle text.
    """
    where = ""
    if event["workspace"] is not None:
        where = shown(event["workspace"]) + ("/" + shown(event["key"]) if event["key"] is not None else "")
    extra = []
    if event["category"]:
        extra.append(event["category"])
    if event["dek_version"] is not None:
        extra.append(f"dek v{event['dek_version']}")
    parts = [
        event["time"],
        shown(event["actor"]),
        event["action"],
        where,
        f"[{', '.join(extra)}]" if extra else "",
    ]
    parts.append(event["outcome"])
    if event["detail"]:
        parts.append(f"({shown_message(event['detail'])})")
    return " ".join(part for part in parts if part)


def audit_anchor(*, settings: Settings | None = None, master_key: MasterKeyProvider | None = None) -> Anchor:
    """Record the heads of every chain and return the anchor to keep outside the database."""
    settings = settings if settings is not None else load_settings()
    with open_store(settings, master_key, create_schema=False) as store:
        return take_anchor(store)


def audit_prune(
    before: int, *, settings: Settings | None = None, master_key: MasterKeyProvider | None = None
) -> PruneReport:
    """Remove events older than ``before`` (µs since the epoch), leaving the rest verifiable."""
    settings = settings if settings is not None else load_settings()
    with open_store(settings, master_key, create_schema=False) as store:
        return prune(store, before)
