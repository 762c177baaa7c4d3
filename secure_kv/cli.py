"""The ``secure-kv`` admin command: a thin click layer over :mod:`secure_kv.commands`.

Every command has ``--help`` with an example and, on failure, exits non-zero with a
one-line reason instead of a traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from . import __version__, commands
from .audit_admin import parse_time
from .categories import Category
from .datakeys import now_micros
from .errors import InvalidInputError, SecureKVError
from .inventory import iso_time
from .progress import Progress
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


# --- shared pieces ------------------------------------------------------------------------

FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: machine-readable output on stdout.",
)
BATCH_OPTION = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Records per transaction (smaller: writers wait less; larger: faster).",
)


def _table_console() -> Console:
    """stdout for tables: a terminal wraps them to its width; a pipe or file gets whole
    lines (rich would otherwise cut them at 80 columns).
    """
    console = Console()
    return console if console.is_terminal else Console(width=100_000)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


class _RateColumn(ProgressColumn):
    """Units per second, from rich's moving estimate."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


class _RichProgress:
    """secure_kv's :class:`Progress` drawn as a rich bar on stderr; silent when stderr is
    not a terminal (scripts, logs, CI).
    """

    def __init__(self, bar: RichProgress) -> None:
        self._bar = bar
        self._task: TaskID | None = None

    def start(self, total: int, description: str) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def describe(self, description: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=description)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, count)


@contextmanager
def _progress(unit: str) -> Iterator[Progress]:
    console = Console(stderr=True)
    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        _RateColumn(unit),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with bar:
        yield _RichProgress(bar)


# --- status -------------------------------------------------------------------------------


@main.command()
@FORMAT_OPTION
def status(output_format: str) -> None:
    """Show master keys, workspaces, data-key versions and their record counts.

    Flags workspaces whose current data key is older than SECURE_KV_DEK_MAX_AGE_DAYS
    (rotation due), rotations left unfinished, shreds under way, and data keys still
    wrapped by a previous master key. Reads metadata only; works without the master key.

    Example:

        secure-kv status --format json | jq '.workspaces[] | select(.rotation_due) | .name'
    """
    report = commands.status(current_settings())
    if output_format == "json":
        _echo_json(report.to_json())
        return
    console = _table_console()
    console.print(f"database: {report.database} (schema {report.schema_revision})")
    if report.kek_id is None:
        console.print(f"master key: unavailable ({report.master_key_problem})")
    else:
        previous = ", ".join(report.previous_kek_ids) or "none"
        console.print(f"master key: kek_id {report.kek_id} (previous: {previous})")
    by_kek = ", ".join(f"{kek}: {count}" for kek, count in sorted(report.data_keys_by_kek.items())) or "none"
    console.print(f"data keys by master key: {by_kek}")
    if report.master_rotation_pending:
        console.print(
            f"[yellow]master rotation pending:[/yellow] {report.master_rotation_pending} data key(s) "
            "not wrapped by the current master key; run `secure-kv rotate master`"
        )
    table = Table("workspace", "current", "data keys (version: records)", "records", "state")
    for workspace in report.workspaces:
        versions = ", ".join(
            f"v{key.version}: {key.records}" + (" (destroyed)" if key.destroyed else "")
            for key in workspace.data_keys
        )
        states = []
        if workspace.shred_in_progress:
            states.append("shred in progress")
        if workspace.rotation_in_progress:
            states.append("rotation in progress")
        if report.rotation_due(workspace):
            states.append("rotation due")
        table.add_row(
            workspace.name,
            str(workspace.current_version),
            versions or "-",
            str(workspace.records),
            ", ".join(states) or "ok",
        )
    console.print(table)


# --- rotate -------------------------------------------------------------------------------


@main.group(cls=_Group)
def rotate() -> None:
    """Rotate the master key or workspace data keys, online and resumably.

    Example:

        secure-kv rotate master && secure-kv rotate workspace --all
    """


@rotate.command("master")
@click.option(
    "--generate",
    is_flag=True,
    help="Keyring provider: first make a new master key current, keeping the old one as a previous key.",
)
@click.option(
    "--retire-previous",
    is_flag=True,
    help="Keyring provider: once every data key is rewrapped, delete the previous keys from the keyring.",
)
@FORMAT_OPTION
def rotate_master(generate: bool, retire_previous: bool, output_format: str) -> None:
    """Rewrap every data key under the current master key; replace the audit signing key.

    Reads data keys with the previous master keys (SECURE_KV_PREVIOUS_MASTER_KEYS, the
    later lines of the key file, or the keyring's key history). Its cost grows with
    workspaces, not records. Safe to interrupt and run again. Once it reports every data
    key rewrapped, the previous keys can be dropped, and the old key alone is refused.

    Example:

    \b
        SECURE_KV_KEY_PROVIDER=env SECURE_KV_MASTER_KEY="$NEW" \\
        SECURE_KV_PREVIOUS_MASTER_KEYS="$OLD" secure-kv rotate master
    """
    with _progress("keys") as progress:
        report = commands.rotate_master(
            current_settings(), generate=generate, retire_previous=retire_previous, progress=progress
        )
    if output_format == "json":
        data = dataclasses.asdict(report)
        data["complete"] = report.complete
        data["retired_previous"] = retire_previous and report.complete
        _echo_json(data)
    else:
        click.echo(
            f"rewrapped {report.rewrapped} data key(s) under master key {report.kek_id} "
            f"({report.already_current} already were) in {report.seconds:.1f} s"
        )
        for failure in report.failed:
            click.echo(
                f"failed: data key {failure.version} of workspace {failure.workspace!r} "
                f"(master key {failure.kek_id}): {failure.reason}",
                err=True,
            )
        for kek_id, count in sorted(report.remaining.items()):
            click.echo(f"still wrapped by master key {kek_id}: {count} data key(s)", err=True)
        if report.signing_keys_created or report.signing_keys_retired:
            click.echo(
                f"audit signing keys: {report.signing_keys_created} created, "
                f"{report.signing_keys_retired} retired (old public halves kept to verify old events)"
            )
        if report.signing_keys_remaining:
            click.echo(
                f"still wrapped by another master key: {report.signing_keys_remaining} audit signing key(s)",
                err=True,
            )
        if report.complete:
            if retire_previous:
                click.echo("deleted the previous master keys from the keyring")
            else:
                click.echo(
                    "every data key is wrapped by the current master key; previous keys can be retired"
                )
    if not report.complete:
        click.echo(
            "error: some data keys or audit signing keys are not wrapped by the current master key "
            "(see above)",
            err=True,
        )
        sys.exit(1)


@rotate.command("workspace")
@click.argument("workspace", required=False)
@click.option("--all", "all_workspaces", is_flag=True, help="Rotate every workspace that has a data key.")
@BATCH_OPTION
@FORMAT_OPTION
def rotate_workspace(
    workspace: str | None, all_workspaces: bool, batch_size: int, output_format: str
) -> None:
    """Give WORKSPACE a new data key and re-encrypt its records under it.

    Online: readers and writers keep working; every process moves its writes to the new
    key within SECURE_KV_DEK_CACHE_SECONDS. Resumable: if interrupted (even by SIGKILL),
    every record stays readable and running it again finishes the job. The old key is
    deleted once no record uses it.

    Example:

    \b
        secure-kv rotate workspace tenant-42:my-plugin
        secure-kv rotate workspace --all --format json
    """
    if (workspace is None) == (not all_workspaces):
        raise InvalidInputError("give either a WORKSPACE or --all")
    with _progress("records") as progress:
        report = commands.rotate_workspaces(
            current_settings(),
            workspaces=None if all_workspaces else [workspace or ""],
            batch_size=batch_size,
            progress=progress,
        )
    if output_format == "json":
        _echo_json(
            {
                "rotations": [dataclasses.asdict(rotation) for rotation in report.rotations],
                "failed": [{"workspace": name, "error": reason} for name, reason in report.failed],
                "records": report.records,
                "seconds": report.seconds,
            }
        )
    else:
        if not report.rotations and not report.failed:
            click.echo("no workspace has a data key yet: nothing to rotate")
        for rotation in report.rotations:
            if rotation.to_version is None:
                click.echo(f"{rotation.workspace}: no data key yet, nothing to rotate")
                continue
            rate = rotation.records / rotation.seconds if rotation.seconds > 0 else 0.0
            click.echo(
                f"{rotation.workspace}: data key v{rotation.to_version}"
                f"{' (resumed)' if rotation.resumed else ''}, retired "
                f"{', '.join(f'v{v}' for v in rotation.from_versions) or 'nothing'}; "
                f"{rotation.records} record(s) re-encrypted in {rotation.seconds:.1f} s ({rate:,.0f}/s)"
            )
    if report.failed:
        if not all_workspaces:  # one workspace: its reason is the one line
            click.echo(f"error: {report.failed[0][1]}", err=True)
        else:
            for name, reason in report.failed:
                click.echo(f"failed: {name}: {reason}", err=True)
            click.echo(f"error: {len(report.failed)} workspace(s) could not be rotated (see above)", err=True)
        sys.exit(1)


# --- purge, shred -------------------------------------------------------------------------


@main.command()
@BATCH_OPTION
@FORMAT_OPTION
def purge(batch_size: int, output_format: str) -> None:
    """Delete expired entries and report how many.

    Expired entries already read as missing; purging frees their space. Safe to run
    while the store is in use, and from a scheduler.

    Example:

    \b
        # crontab: every hour
        0 * * * *  secure-kv purge --format json >> /var/log/secure-kv-purge.log
    """
    with _progress("entries") as progress:
        report = commands.purge(current_settings(), batch_size=batch_size, progress=progress)
    if output_format == "json":
        _echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"deleted {report.deleted} expired entr{'y' if report.deleted == 1 else 'ies'} "
            f"from {len(report.workspaces)} workspace(s) in {report.seconds:.1f} s"
        )


@main.command()
@click.argument("workspace")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
@BATCH_OPTION
@FORMAT_OPTION
def shred(workspace: str, yes: bool, batch_size: int, output_format: str) -> None:
    """Crypto-shred WORKSPACE: destroy its data keys, then delete its records.

    Its data is unreadable from the moment the keys are destroyed, in the live database,
    its replicas, WAL and logs. Backups taken earlier hold the wrapped keys and stay
    readable until the master key that wrapped them is retired (rotate master, then drop
    the previous key). Irreversible. Asks for the workspace name unless --yes.

    Example:

        secure-kv shred tenant-42:my-plugin --yes
    """
    if not yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise InvalidInputError("shred needs --yes when it cannot ask (no terminal)")
        typed = click.prompt(
            f"This destroys every value of workspace {workspace!r} for good.\n"
            "Type the workspace name to confirm",
            err=True,
        )
        if typed != workspace:
            raise InvalidInputError("the name typed does not match: nothing was shredded")
    with _progress("records") as progress:
        report = commands.shred(workspace, current_settings(), batch_size=batch_size, progress=progress)
    if output_format == "json":
        _echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"shredded {workspace!r}: destroyed {report.destroyed_keys} data key(s) (versions up to "
            f"{report.up_to_version}), deleted {report.deleted_records} record(s) in {report.seconds:.1f} s"
        )


# --- operator commands --------------------------------------------------------------------


@main.command("get")
@click.argument("workspace")
@click.argument("key")
@click.option("--reveal", is_flag=True, help="Print a token's value (otherwise it is masked).")
@click.option("--base64", "as_base64", is_flag=True, help="Print the value as base64 (one line).")
def get_command(workspace: str, key: str, reveal: bool, as_base64: bool) -> None:
    """Write the value of KEY in WORKSPACE to stdout, byte for byte.

    A token's value is masked unless --reveal; every read of a token is audited. Exits
    with status 1 when the key is missing or expired.

    Example:

    \b
        secure-kv get tenant-42:my-plugin user_name
        secure-kv get tenant-42:my-plugin openai --reveal --base64
    """
    found = commands.get_value(workspace, key, current_settings(), reveal=reveal)
    if found is None:
        raise InvalidInputError(f"no entry {key!r} in workspace {workspace!r} (missing or expired)")
    if found.value is None:
        click.echo("********")
        click.echo(f"{key!r} is a token ({found.size} bytes): masked; --reveal prints it", err=True)
        return
    if as_base64:
        click.echo(base64.b64encode(found.value).decode("ascii"))
    else:
        stream = sys.stdout.buffer
        stream.write(found.value)
        stream.flush()


@main.command("set")
@click.argument("workspace")
@click.argument("key")
@click.option(
    "--category",
    type=click.Choice([category.value for category in Category]),
    default=Category.PREFERENCE.value,
    show_default=True,
    help="What the entry holds.",
)
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), help="Expire after this many seconds.")
def set_command(workspace: str, key: str, category: str, ttl: float | None) -> None:
    """Store the value read from stdin under KEY in WORKSPACE.

    The value never comes from the command line, where shell history and the process
    list would keep it. Piped input is stored byte for byte (a trailing newline too: use
    printf '%s'); at a terminal it is asked for without echo.

    Example:

        printf '%s' "$OPENAI_KEY" | secure-kv set tenant-42:my-plugin openai --category token
    """
    if sys.stdin.isatty():
        value = click.prompt("value (not echoed)", hide_input=True, err=True).encode("utf-8")
    else:
        value = sys.stdin.buffer.read()
    commands.set_value(workspace, key, value, current_settings(), category=category, ttl=ttl)
    expiry = f", expires in {ttl:g} s" if ttl is not None else ""
    click.echo(f"stored {key!r} in {workspace!r} ({category}, {len(value)} bytes{expiry})")


@main.command("delete")
@click.argument("workspace")
@click.argument("key")
def delete_command(workspace: str, key: str) -> None:
    """Delete KEY from WORKSPACE (deleting a missing key is not an error).

    Example:

        secure-kv delete tenant-42:my-plugin openai
    """
    existed = commands.delete_value(workspace, key, current_settings())
    click.echo(f"deleted {key!r} from {workspace!r}" if existed else f"no entry {key!r} in {workspace!r}")


@main.command("list")
@click.argument("workspace")
@FORMAT_OPTION
def list_command(workspace: str, output_format: str) -> None:
    """List the keys of WORKSPACE with category, times, expiry and data-key version.

    Never shows a value. Times are UTC. Expired entries not yet purged are marked.

    Example:

        secure-kv list tenant-42:my-plugin --format json
    """
    now = now_micros()
    entries = commands.list_keys(workspace, current_settings())
    if output_format == "json":
        # Streamed, so a large workspace never sits in memory.
        click.echo("[", nl=False)
        for position, entry in enumerate(entries):
            click.echo(
                ("," if position else "") + "\n  " + json.dumps(entry.to_json(now), ensure_ascii=False),
                nl=False,
            )
        click.echo("\n]")
        return
    table = Table("key", "category", "created (UTC)", "updated (UTC)", "expires (UTC)", "key version")
    count = 0
    for entry in entries:
        count += 1
        expires = iso_time(entry.expires_at) or "never"
        if entry.expired(now):
            expires += " (expired)"
        table.add_row(
            entry.key,
            entry.category,
            iso_time(entry.created_at),
            iso_time(entry.updated_at),
            expires,
            f"v{entry.dek_version}",
        )
    _table_console().print(table)
    click.echo(f"{count} entr{'y' if count == 1 else 'ies'}", err=True)


# --- audit ------------------------------------------------------------------------------


@main.group(cls=_Group)
def audit() -> None:
    """Compliance: record reports, the signed audit log, verification, anchors, retention.

    Example:

        secure-kv audit verify --anchor "$(cat anchor.txt)"
    """


def _audit_progress(label: str) -> RichProgress:
    return RichProgress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # no bar, nor stray blank lines, in pipes and logs
    )


@audit.command("report")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv", "html"]), default="json", show_default=True
)
@click.option("--workspace", metavar="W", help="Only the records of this workspace.")
def audit_report(fmt: str, workspace: str | None) -> None:
    """One row per record: workspace, key, category, times, key versions, algorithm.

    Never a value. Streamed in constant memory; progress and a summary (counts per
    category, expired entries not purged, records on old data keys, data keys due for
    rotation) go to stderr. Needs no master key.

    Example:

        secure-kv audit report --format csv > records.csv

        secure-kv audit report --format html > report.html   # one page, no network (extra: report)
    """
    with _audit_progress("report") as progress:
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
    with _audit_progress("verify") as progress:
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
    deleted before that point, including a cut tail. Only signing keys that authenticate
    under the master key are pinned; any other key and its chains are left out, listed, and
    the command exits 1 (the anchor is still printed).

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
    for problem in anchor.untrusted:
        click.echo(f"not anchored: {problem}", err=True)
    if anchor.untrusted:
        click.echo("error: some signing keys do not authenticate; run `secure-kv audit verify`", err=True)
        sys.exit(1)


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
