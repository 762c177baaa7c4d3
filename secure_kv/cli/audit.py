"""``secure-kv audit``: the record report, verification, the log, anchors and pruning.

Each command is a thin layer over :mod:`secure_kv.commands`.
"""

from __future__ import annotations

import sys

import click

from secure_kv import commands
from secure_kv.cli._common import SubGroup, current_settings, fail, interruptible, progress_bars
from secure_kv.display import plural, shown_message

__all__ = ["audit"]


@click.group(cls=SubGroup)
def audit() -> None:
    """Compliance: record reports, the signed audit log, verification, anchors, retention.

    Example:

        secure-kv audit verify --anchor "$(tail -n 1 anchors.txt)"
    """


@audit.command("report")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv", "html"]), default="json", show_default=True
)
@click.option("--workspace", metavar="W", help="Only the records of this workspace.")
def audit_report(fmt: str, workspace: str | None) -> None:
    """One row per record: workspace, key, category, times, key versions, algorithm.

    Never a value. Streamed in constant memory to stdout; progress and a summary (counts
    per category, expired entries not purged, records on old data keys, data keys due for
    rotation) go to stderr. Needs no master key.

    Example:

        secure-kv audit report --format csv > records.csv

        secure-kv audit report --format html > report.html   # one page, no network (extra: report)
    """
    settings = current_settings()
    out = sys.stdout
    with progress_bars(transient=True) as progress:
        with interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'record')} written; the output is "
                "incomplete: run the same command again"
            )
        ):
            summary = commands.audit_report(
                out, settings=settings, fmt=fmt, workspace=workspace, progress=progress
            )
            out.flush()
    for line in summary.lines():
        click.echo(line, err=True)


def _last_anchor(anchor: str | None) -> str | None:
    """An --anchor holding several lines (a file of anchors appended one by one): the last."""
    if anchor is None:
        return None
    lines = [line.strip() for line in anchor.splitlines() if line.strip()]
    if len(lines) > 1:
        click.echo(
            f"note: --anchor holds {len(lines)} lines; checking the last (the newest anchor)", err=True
        )
    return lines[-1] if lines else anchor


@audit.command("verify")
@click.option(
    "--anchor",
    metavar="ANCHOR",
    help="An anchor printed by `secure-kv audit anchor` (several lines: the last is used).",
)
@click.option(
    "--chain-only",
    is_flag=True,
    help="Check only the audit chain, with its public keys: no master key needed (auditors).",
)
def audit_verify(anchor: str | None, chain_only: bool) -> None:
    """Authenticate every record and data key and walk the signed audit chain.

    Exits 0 only if every check holds; otherwise lists each failure (which record or
    event, which check) and exits 1. With --anchor, a cut tail or a removed chain is found
    too; without one, the last events of a chain can be deleted unnoticed.

    Example:

        secure-kv audit verify --anchor "$(tail -n 1 anchors.txt)"
    """
    settings = current_settings()
    chosen = _last_anchor(anchor)
    with progress_bars(transient=True) as progress:
        with interruptible(lambda: "nothing was verified to the end; run the same command again"):
            report = commands.audit_verify(
                settings=settings, anchor=chosen, chain_only=chain_only, progress=progress
            )
    click.echo(
        f"checked {plural(report.records, 'record')}, {plural(report.data_keys, 'data key')}, "
        f"{plural(report.events, 'event')} in {plural(report.chains, 'chain')}, "
        f"{plural(report.signing_keys, 'signing key')}",
        err=True,
    )
    for note in report.notes:
        click.echo(f"note: {shown_message(note)}", err=True)
    if report.ok:
        click.echo("verified: every check holds")
        return
    for failure in report.failures:
        click.echo(f"FAILED {shown_message(str(failure))}")
    hidden = report.failure_count - len(report.failures)
    if hidden:
        click.echo(f"... and {plural(hidden, 'more failure')}")
    fail(f"{plural(report.failure_count, 'check')} failed")


@audit.command("log")
@click.option("--workspace", metavar="W", help="Only events about this workspace.")
@click.option("--since", metavar="T", help="ISO 8601 time, or a span back from now: 90s, 30m, 24h, 7d.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def audit_log(workspace: str | None, since: str | None, fmt: str) -> None:
    """The audit events, oldest first: time, actor, action, workspace, key, outcome.

    JSON is an array of objects. In text, names are shown with control characters and
    invisible marks escaped (\\n, \\u200f). Needs no master key.

    Example:

        secure-kv audit log --since 24h --format json
    """
    from secure_kv._clock import parse_time

    start = parse_time(since) if since is not None else None
    out = sys.stdout
    count = commands.audit_log(out, settings=current_settings(), fmt=fmt, workspace=workspace, since=start)
    out.flush()
    click.echo(plural(count, "event"), err=True)


@audit.command("anchor")
def audit_anchor() -> None:
    """Record every chain's head and print the anchor to keep outside the database.

    Keep the printed line somewhere the database's administrators cannot change (a ticket,
    a write-once bucket, a signed mail); `audit verify --anchor` then finds any event
    deleted before that point, including a cut tail. Only signing keys that authenticate
    under the master key are pinned; any other key and its chains are left out, listed, and
    the command exits 1 (the anchor is still printed).

    Example:

        secure-kv audit anchor >> /secure/anchors.txt
    """
    anchor = commands.audit_anchor(settings=current_settings())
    click.echo(
        f"anchor {anchor.anchor_id}: {plural(anchor.chains, 'chain')}, {plural(anchor.events, 'event')} "
        f"(position), head digest {anchor.digest.hex()}",
        err=True,
    )
    click.echo(anchor.text)
    for problem in anchor.untrusted:
        click.echo(f"not anchored: {shown_message(str(problem))}", err=True)
    if anchor.untrusted:
        fail("some signing keys do not authenticate; run `secure-kv audit verify`")


@audit.command("prune")
@click.option("--before", "before", metavar="T", required=True, help="ISO 8601 time or a span: 365d.")
def audit_prune(before: str) -> None:
    """Remove events older than T, leaving what remains verifiable.

    Each chain is cut from its start; a signed checkpoint records where, so `audit verify`
    still links the remaining events. A chain whose old part does not verify is left
    whole and reported: pruning never erases evidence of tampering.

    Example:

        secure-kv audit prune --before 400d
    """
    from secure_kv._clock import parse_time

    report = commands.audit_prune(parse_time(before), settings=current_settings())
    click.echo(f"removed {plural(report.removed, 'event')} from {plural(report.chains, 'chain')}", err=True)
    for problem in report.refused:
        click.echo(f"refused: {shown_message(str(problem))}", err=True)
    if report.refused:
        fail("some chains do not verify; run `secure-kv audit verify`")
