"""The ``secure-kv`` admin command: a thin click layer over :mod:`secure_kv.commands`.

Every command has ``--help`` with an example and, on failure, exits non-zero with a
one-line reason instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__, commands
from .audit_admin import parse_time
from .errors import SecureKVError
from .settings import Settings, load_settings

__all__ = ["main"]

err_console = Console(stderr=True)


class _Group(click.Group):
    """Turns secure_kv's errors into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SecureKVError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="secure-kv")
@click.option(
    "--database-url",
    metavar="URL",
    help="SQLAlchemy URL of the store (default: SECURE_KV_DATABASE_URL, else a SQLite file "
    "in the user data directory).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Encrypted, secrets-aware key-value storage: admin commands.

    Reads the same SECURE_KV_* settings as the library.

    Example:

        secure-kv --database-url postgresql+psycopg://app@db/kv init
    """
    ctx.obj = {"database_url": database_url}


def current_settings() -> Settings:
    """Settings from the environment, with the command line's --database-url on top."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    url = (root.obj or {}).get("database_url")
    return load_settings(database_url=url)


@main.command()
def init() -> None:
    """Create or upgrade the schema; with the keyring provider, create the master key.

    Safe to run again and from several hosts at once: it takes a database lock and does
    nothing when the schema is current.

    Example:

        SECURE_KV_DATABASE_URL=postgresql+psycopg://app@db/kv secure-kv init
    """
    report = commands.init(current_settings())
    if report.created_master_key:
        click.echo(f"created a new master key in the OS keyring (kek_id {report.kek_id}); back it up")
    if report.revision_before is None:
        click.echo(f"created the schema at revision {report.revision_now} in {report.database}")
    elif report.changed_schema:
        click.echo(
            f"upgraded the schema from {report.revision_before} to {report.revision_now} in {report.database}"
        )
    else:
        click.echo(f"schema already current (revision {report.revision_now}) in {report.database}")
    click.echo(f"master key kek_id: {report.kek_id}")


@main.command()
def keygen() -> None:
    """Print a new master key (url-safe base64 of 32 random bytes).

    Keep it in a secret manager; nothing recovers data whose master key is lost.

    Example:

        export SECURE_KV_MASTER_KEY="$(secure-kv keygen)"
    """
    click.echo(commands.keygen())


@main.command()
def demo() -> None:
    """Run the main job end to end on a throwaway embedded store.

    Stores a token, a preference and a cache entry, reads them back, shows that the
    database row is opaque and that a flipped byte is detected.

    Example:

        secure-kv demo
    """
    console = Console()
    report = commands.demo()
    console.print(f"[bold]secure_kv demo[/bold] on a throwaway store ({report.database})")
    console.print(f"master key fingerprint (kek_id): {report.kek_id}")
    table = Table("key", "category", "read back")
    for key, value in report.read_back.items():
        category = commands.DEMO_VALUES[key][1]
        expected = commands.DEMO_VALUES[key][0]
        shown = f"{len(value)} bytes, masked" if category.value == "token" else repr(value.decode())
        table.add_row(key, category.value, f"{shown} ({'matches' if value == expected else 'MISMATCH'})")
    console.print(table)
    console.print(f"stored row starts with: {report.stored_row_prefix}... (opaque ciphertext)")
    console.print(
        "plaintext anywhere in the database files: "
        + ("[red]YES[/red]" if report.plaintext_in_file else "[green]no[/green]")
    )
    console.print(
        "flipped one byte of the stored token: "
        + ("[green]detected[/green]" if report.tamper_detected else "[red]NOT detected[/red]")
    )
    if report.tamper_detected:
        console.print(f"  AuthenticationError: {report.tamper_error}")
    ok = (
        report.tamper_detected
        and not report.plaintext_in_file
        and all(report.read_back[key] == commands.DEMO_VALUES[key][0] for key in commands.DEMO_VALUES)
    )
    if not ok:
        click.echo("error: the demo found a problem (see above)", err=True)
        sys.exit(1)
    console.print("[green]demo passed[/green]")


# --- audit ------------------------------------------------------------------------------


@main.group(cls=_Group)
def audit() -> None:
    """Compliance: record reports, the signed audit log, verification, anchors, retention.

    Example:

        secure-kv audit verify --anchor "$(cat anchor.txt)"
    """


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # no bar, nor stray blank lines, in pipes and logs
    )


@audit.command("report")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("--workspace", metavar="W", help="Only the records of this workspace.")
def audit_report(fmt: str, workspace: str | None) -> None:
    """One row per record: workspace, key, category, times, key versions, algorithm.

    Never a value. Streamed in constant memory; progress and a summary (counts per
    category, expired entries not purged, records on old data keys, data keys due for
    rotation) go to stderr. Needs no master key.

    Example:

        secure-kv audit report --format csv > records.csv
    """
    with _progress("report") as progress:
        task = progress.add_task("records", total=None)
        summary = commands.audit_report(
            sys.stdout,
            settings=current_settings(),
            fmt=fmt,
            workspace=workspace,
            on_total=lambda total: progress.update(task, total=total),
            on_row=lambda done: progress.update(task, completed=done),
        )
    for line in summary.lines():
        click.echo(line, err=True)


@audit.command("verify")
@click.option("--anchor", metavar="ANCHOR", help="An anchor printed by `secure-kv audit anchor`.")
@click.option(
    "--chain-only",
    is_flag=True,
    help="Check only the audit chain, with its public keys: no master key needed (auditors).",
)
@click.pass_context
def audit_verify(ctx: click.Context, anchor: str | None, chain_only: bool) -> None:
    """Authenticate every record and data key and walk the signed audit chain.

    Exits 0 only if every check holds; otherwise lists each failure (which record or
    event, which check) and exits 1. With --anchor, a cut tail or a removed chain is found
    too; without one, the last events of a chain can be deleted unnoticed.

    Example:

        secure-kv audit verify --anchor skv-anchor:v1:12:9f2c...
    """
    counts: dict[str, int] = {}
    with _progress("verify") as progress:
        tasks: dict[str, Any] = {}

        def tick(phase: str, done: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=None)
            counts[phase] = done
            progress.update(tasks[phase], completed=done)

        report = commands.audit_verify(
            settings=current_settings(), anchor=anchor, chain_only=chain_only, progress=tick
        )
    click.echo(
        f"checked {report.records} records, {report.data_keys} data keys, {report.events} events "
        f"in {report.chains} chains, {report.signing_keys} signing keys",
        err=True,
    )
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if report.ok:
        click.echo("verified: every check holds")
        return
    for failure in report.failures:
        click.echo(f"FAILED {failure}")
    hidden = report.failure_count - len(report.failures)
    if hidden:
        click.echo(f"... and {hidden} more failures")
    click.echo(f"error: {report.failure_count} checks failed", err=True)
    ctx.exit(1)


@audit.command("log")
@click.option("--workspace", metavar="W", help="Only events about this workspace.")
@click.option("--since", metavar="T", help="ISO 8601 time, or a span back from now: 90s, 30m, 24h, 7d.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def audit_log(workspace: str | None, since: str | None, fmt: str) -> None:
    """The audit events, oldest first: time, actor, action, workspace, key, outcome.

    JSON is an array of objects. Needs no master key.

    Example:

        secure-kv audit log --since 24h --format json
    """
    start = parse_time(since) if since is not None else None
    count = commands.audit_log(
        sys.stdout,
        settings=current_settings(),
        fmt=fmt,
        workspace=workspace,
        since=start,
    )
    click.echo(f"{count} events", err=True)


@audit.command("anchor")
def audit_anchor() -> None:
    """Record every chain's head and print the anchor to keep outside the database.

    Keep the printed line somewhere the database's administrators cannot change (a ticket,
    a write-once bucket, a signed mail); `audit verify --anchor` then finds any event
    deleted before that point, including a cut tail.

    Example:

        secure-kv audit anchor >> /secure/anchors.txt
    """
    anchor = commands.audit_anchor(settings=current_settings())
    click.echo(
        f"anchor {anchor.anchor_id}: {anchor.chains} chains, {anchor.events} events (position), "
        f"head digest {anchor.digest.hex()}",
        err=True,
    )
    click.echo(anchor.text)


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
    report = commands.audit_prune(parse_time(before), settings=current_settings())
    click.echo(f"removed {report.removed} events from {report.chains} chains")
    for problem in report.refused:
        click.echo(f"refused: {problem}", err=True)
    if report.refused:
        click.echo("error: some chains do not verify; run `secure-kv audit verify`", err=True)
        sys.exit(1)
