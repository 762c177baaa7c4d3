"""The store's commands: init, keygen, status, rotate, purge, shred, the operator's get, set,
delete and list, and the demo. Each is a thin layer over :mod:`secure_kv.commands`.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from typing import Any

import click

from secure_kv import commands
from secure_kv.cli._common import (
    BATCH_OPTION,
    FORMAT_OPTION,
    SubGroup,
    current_settings,
    echo_json,
    fail,
    interruptible,
    progress_bars,
    shell,
)
from secure_kv.display import plural, shown, shown_message
from secure_kv.errors import InvalidInputError

__all__ = ["COMMANDS"]


@click.command()
def init() -> None:
    """Create or upgrade the schema; with the keyring provider, create the master key.

    Safe to run again and from several hosts at once: it takes a database lock and does
    nothing when the schema is current.

    Example:

        SECURE_KV_DATABASE_URL=postgresql+psycopg://app@db/kv secure-kv init
    """
    report = commands.init(current_settings())
    if report.created_master_key:
        click.echo(
            f"created a new master key in the OS keyring (kek_id {report.kek_id}); back it up", err=True
        )
    if report.revision_before is None:
        click.echo(f"created the schema at revision {report.revision_now} in {report.database}", err=True)
    elif report.changed_schema:
        click.echo(
            f"upgraded the schema from {report.revision_before} to {report.revision_now} "
            f"in {report.database}",
            err=True,
        )
    else:
        click.echo(f"schema already current (revision {report.revision_now}) in {report.database}", err=True)
    click.echo(f"master key kek_id: {report.kek_id}")


@click.command()
@click.option(
    "--provider",
    default=None,
    help="Make the key inside this provider instead of printing it (pkcs11: in the token, "
    "non-extractable; keyring: in the OS keyring), configured by its SECURE_KV_* settings.",
)
def keygen(provider: str | None) -> None:
    """Print a new master key (url-safe base64 of 32 random bytes).

    Keep it in a secret manager; nothing recovers data whose master key is lost. With
    --provider, the key is made where it will live and only its kek_id is printed.

    Example:

    \b
        export SECURE_KV_MASTER_KEY="$(secure-kv keygen)"
        SECURE_KV_PKCS11_TOKEN_LABEL=kv SECURE_KV_PKCS11_KEY_LABEL=master-1 \\
        SECURE_KV_PKCS11_PIN_FILE=/run/secrets/pin secure-kv keygen --provider pkcs11
    """
    if provider is None:
        click.echo(commands.keygen())
        return
    report = commands.create_provider_key(provider, current_settings())
    state = "created" if report.created else "already present"
    click.echo(f"master key {state} in provider {report.provider}: kek_id {report.kek_id}")


@click.command()
def demo() -> None:
    """Run the main job end to end on a throwaway embedded store.

    Stores a token, a preference and a cache entry, reads them back, shows that the
    database row is opaque and that a flipped byte is detected.

    Example:

        secure-kv demo
    """
    from secure_kv.cli.console import markup_console, print_table

    console = markup_console()
    report = commands.demo()
    console.print(f"[bold]secure_kv demo[/bold] on a throwaway store ({report.database})")
    console.print(f"master key fingerprint (kek_id): {report.kek_id}", markup=False)
    rows = []
    for key, value in report.read_back.items():
        expected, category, _ = commands.DEMO_VALUES[key]
        shown_value = (
            f"{plural(len(value), 'byte')}, masked" if category.value == "token" else repr(value.decode())
        )
        rows.append(
            (key, category.value, f"{shown_value} ({'matches' if value == expected else 'MISMATCH'})")
        )
    print_table(("key", "category", "read back"), rows, console)
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
        console.print(f"  AuthenticationError: {report.tamper_error}", markup=False)
    ok = (
        report.tamper_detected
        and not report.plaintext_in_file
        and all(report.read_back[key] == commands.DEMO_VALUES[key][0] for key in commands.DEMO_VALUES)
    )
    if not ok:
        fail("the demo found a problem (see above)")
    console.print("[green]demo passed[/green]")


# --- status -------------------------------------------------------------------------------


def _rotation_state(report: Any, workspace: Any) -> str:
    name = shell(workspace.name)
    state = report.rotation_state(workspace)
    if state == "interrupted":
        return f"rotation interrupted: run `secure-kv rotate workspace {name}` to resume"
    if state == "running":
        return "rotation running"
    return f"rotation unfinished: run `secure-kv rotate workspace {name}`"


@click.command()
@FORMAT_OPTION
def status(output_format: str) -> None:
    """Show master keys, workspaces, data-key versions and their record counts.

    Flags workspaces whose current data key is older than SECURE_KV_DEK_MAX_AGE_DAYS
    (rotation due), rotations running or interrupted, shreds under way or done, and data
    keys still wrapped by a previous master key. Reads metadata only; works without the
    master key.

    Example:

        secure-kv status --format json | jq '.workspaces[] | select(.rotation_due) | .name'
    """
    from secure_kv.cli.console import print_table, stdout_console

    report = commands.status(current_settings())
    if output_format == "json":
        echo_json(report.to_json())
        return
    console = stdout_console()
    console.print(f"database: {report.database} (schema {report.schema_revision})")
    if report.kek_id is None:
        console.print(f"master key: unavailable ({shown_message(report.master_key_problem or '')})")
    else:
        previous = ", ".join(report.previous_kek_ids) or "none"
        console.print(f"master key: kek_id {report.kek_id} (previous: {previous})")
    by_kek = ", ".join(f"{kek}: {count}" for kek, count in sorted(report.data_keys_by_kek.items())) or "none"
    console.print(f"data keys by master key: {by_kek}")
    if report.master_rotation_pending:
        console.print(
            f"master rotation pending: {report.master_rotation_pending} data key(s) "
            "not wrapped by the current master key; run `secure-kv rotate master`"
        )
    rows = []
    for workspace in report.workspaces:
        versions = ", ".join(
            f"v{key.version}: {key.records}" + (" (destroyed)" if key.destroyed else "")
            for key in workspace.data_keys
        )
        states = []
        if workspace.shredded:
            states.append("shredded")
        elif workspace.shred_in_progress:
            states.append(f"shred unfinished: run `secure-kv shred {shell(workspace.name)} --yes`")
        if workspace.rotation_in_progress:
            states.append(_rotation_state(report, workspace))
        if report.rotation_due(workspace):
            states.append("rotation due")
        rows.append(
            (
                shown(workspace.name),
                str(workspace.current_version),
                versions or "-",
                str(workspace.records),
                ", ".join(states) or "ok",
            )
        )
    print_table(("workspace", "current", "data keys (version: records)", "records", "state"), rows, console)


# --- rotate -------------------------------------------------------------------------------


@click.group(cls=SubGroup)
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

    Reads data keys with the previous master keys (SECURE_KV_PREVIOUS_MASTER_KEYS,
    comma-separated; the later lines of the key file; or the keyring's key history). Its
    cost grows with workspaces, not records. Safe to interrupt and run again. Once it
    reports every data key rewrapped, the previous keys can be dropped, and the old key
    alone is refused.

    Example:

    \b
        SECURE_KV_KEY_PROVIDER=env SECURE_KV_MASTER_KEY="$NEW" \\
        SECURE_KV_PREVIOUS_MASTER_KEYS="$OLD" secure-kv rotate master
    """
    settings = current_settings()
    with progress_bars("keys") as progress:
        with interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'data key')} rewrapped; "
                "run the same command to resume"
            )
        ):
            report = commands.rotate_master(
                settings, generate=generate, retire_previous=retire_previous, progress=progress
            )
    if output_format == "json":
        import dataclasses

        data = dataclasses.asdict(report)
        data["complete"] = report.complete
        data["retired_previous"] = retire_previous and report.complete
        echo_json(data)
    else:
        click.echo(
            f"rewrapped {plural(report.rewrapped, 'data key')} under master key {report.kek_id} "
            f"({report.already_current} already were) in {report.seconds:.1f} s",
            err=True,
        )
        for failure in report.failed:
            click.echo(
                f"failed: data key {failure.version} of workspace {failure.workspace!r} "
                f"(master key {failure.kek_id}): {shown_message(failure.reason)}",
                err=True,
            )
        for kek_id, count in sorted(report.remaining.items()):
            click.echo(f"still wrapped by master key {kek_id}: {plural(count, 'data key')}", err=True)
        if report.signing_keys_created or report.signing_keys_retired:
            click.echo(
                f"audit signing keys: {report.signing_keys_created} created, "
                f"{report.signing_keys_retired} retired (old public halves kept to verify old events)",
                err=True,
            )
        if report.signing_keys_remaining:
            click.echo(
                "still wrapped by another master key: "
                f"{plural(report.signing_keys_remaining, 'audit signing key')}",
                err=True,
            )
        if report.complete:
            if retire_previous:
                click.echo("deleted the previous master keys from the keyring", err=True)
            else:
                click.echo(
                    "every data key is wrapped by the current master key; previous keys can be retired",
                    err=True,
                )
    if not report.complete:
        fail("some data keys or audit signing keys are not wrapped by the current master key (see above)")


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
    key within SECURE_KV_DEK_CACHE_SECONDS. Resumable: if interrupted (Ctrl-C, or even
    SIGKILL), every record stays readable and running it again finishes the job; `status`
    says "rotation interrupted" meanwhile. The old key is deleted once no record uses it.

    Example:

    \b
        secure-kv rotate workspace tenant-42:my-plugin
        secure-kv rotate workspace --all --format json
    """
    if (workspace is None) == (not all_workspaces):
        raise InvalidInputError("give either a WORKSPACE or --all")
    settings = current_settings()
    with progress_bars("records") as progress:
        with interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'record')} re-encrypted; "
                "run the same command to resume"
            )
        ):
            report = commands.rotate_workspaces(
                settings,
                workspaces=None if all_workspaces else [workspace or ""],
                batch_size=batch_size,
                progress=progress,
            )
    if output_format == "json":
        import dataclasses

        echo_json(
            {
                "rotations": [dataclasses.asdict(rotation) for rotation in report.rotations],
                "failed": [{"workspace": name, "error": reason} for name, reason in report.failed],
                "records": report.records,
                "seconds": report.seconds,
            }
        )
    else:
        if not report.rotations and not report.failed:
            click.echo("no workspace has a data key yet: nothing to rotate", err=True)
        for rotation in report.rotations:
            name = shown(rotation.workspace)
            if rotation.to_version is None:
                click.echo(f"{name}: no data key yet, nothing to rotate", err=True)
                continue
            rate = rotation.records / rotation.seconds if rotation.seconds > 0 else 0.0
            click.echo(
                f"{name}: data key v{rotation.to_version}"
                f"{' (resumed)' if rotation.resumed else ''}, retired "
                f"{', '.join(f'v{v}' for v in rotation.from_versions) or 'nothing'}; "
                f"{plural(rotation.records, 'record')} re-encrypted in {rotation.seconds:.1f} s "
                f"({rate:,.0f}/s)",
                err=True,
            )
    if report.failed:
        if not all_workspaces:  # one workspace: its reason is the one line
            fail(report.failed[0][1])
        for name, reason in report.failed:
            click.echo(f"failed: {shown(name)}: {shown_message(reason)}", err=True)
        fail(f"{len(report.failed)} workspace(s) could not be rotated (see above)")


# --- purge, shred -------------------------------------------------------------------------


@click.command()
@BATCH_OPTION
@FORMAT_OPTION
def purge(batch_size: int, output_format: str) -> None:
    """Delete expired entries and report how many.

    Expired entries already read as missing; purging frees their space. Safe to run
    while the store is in use, from a scheduler, and to interrupt.

    Example:

    \b
        # crontab: every hour
        0 * * * *  secure-kv purge --format json >> /var/log/secure-kv-purge.log
    """
    import dataclasses

    settings = current_settings()
    with progress_bars("entries") as progress:
        with interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'expired entry', 'expired entries')} "
                "deleted; run the same command to delete the rest"
            )
        ):
            report = commands.purge(settings, batch_size=batch_size, progress=progress)
    if output_format == "json":
        echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"deleted {plural(report.deleted, 'expired entry', 'expired entries')} "
            f"from {plural(len(report.workspaces), 'workspace')} in {report.seconds:.1f} s",
            err=True,
        )


@click.command()
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
    import dataclasses

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
    settings = current_settings()
    with progress_bars("records") as progress:
        with interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'record')} deleted (the data keys "
                f"are destroyed already); run `secure-kv shred {shell(workspace)} --yes` to finish"
            )
        ):
            report = commands.shred(workspace, settings, batch_size=batch_size, progress=progress)
    if output_format == "json":
        echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"shredded {workspace!r}: destroyed {plural(report.destroyed_keys, 'data key')} "
            f"(versions up to {report.up_to_version}), deleted {plural(report.deleted_records, 'record')} "
            f"in {report.seconds:.1f} s",
            err=True,
        )


# --- operator commands --------------------------------------------------------------------


@click.command("get")
@click.argument("workspace")
@click.argument("key")
@click.option("--reveal", is_flag=True, help="Print a token's value (otherwise it is masked).")
@click.option("--base64", "as_base64", is_flag=True, help="Print the value as base64 (one line).")
def get_command(workspace: str, key: str, reveal: bool, as_base64: bool) -> None:
    """Write the value of KEY in WORKSPACE to stdout, byte for byte.

    A token's value is masked unless --reveal: at a terminal it shows as ********, and a
    script (stdout not a terminal) gets an error naming --reveal instead of asterisks.
    Every read of a token is audited. Exits with status 1 when the key is missing or
    expired.

    Example:

    \b
        secure-kv get tenant-42:my-plugin user_name
        TOKEN="$(secure-kv get tenant-42:my-plugin openai --reveal)"
    """
    found = commands.get_value(workspace, key, current_settings(), reveal=reveal)
    if found is None:
        raise InvalidInputError(f"no entry {key!r} in workspace {workspace!r} (missing or expired)")
    if found.value is None:
        if not sys.stdout.isatty():
            raise InvalidInputError(
                f"{key!r} is a token ({plural(found.size, 'byte')}): it is masked, and stdout is not a "
                "terminal; add --reveal to write its value"
            )
        click.echo("********")
        click.echo(f"{key!r} is a token ({plural(found.size, 'byte')}): masked; --reveal prints it", err=True)
        return
    if as_base64:
        click.echo(base64.b64encode(found.value).decode("ascii"))
    else:
        stream = sys.stdout.buffer
        stream.write(found.value)
        stream.flush()


@click.command("set")
@click.argument("workspace")
@click.argument("key")
@click.option(
    "--category",
    type=click.Choice(["token", "preference", "cache"]),
    default="preference",
    show_default=True,
    help="What the entry holds.",
)
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True),
    help="Expire after this many seconds (a cache entry without it: SECURE_KV_DEFAULT_CACHE_TTL).",
)
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
    settings = current_settings()
    commands.set_value(workspace, key, value, settings, category=category, ttl=ttl)
    expiry = ""
    if ttl is not None:
        expiry = f", expires in {ttl:g} s"
    elif category == "cache":
        expiry = f", expires in {settings.default_cache_ttl:g} s (SECURE_KV_DEFAULT_CACHE_TTL)"
    click.echo(
        f"stored {key!r} in {workspace!r} ({category}, {plural(len(value), 'byte')}{expiry})",
        err=True,
    )


@click.command("delete")
@click.argument("workspace")
@click.argument("key")
def delete_command(workspace: str, key: str) -> None:
    """Delete KEY from WORKSPACE (deleting a missing key is not an error; a missing
    workspace is).

    Example:

        secure-kv delete tenant-42:my-plugin openai
    """
    existed = commands.delete_value(workspace, key, current_settings())
    click.echo(
        f"deleted {key!r} from {workspace!r}"
        if existed
        else f"no entry {key!r} in {workspace!r}: nothing to delete",
        err=True,
    )


LIST_COLUMNS = ("category", "created (UTC)", "updated (UTC)", "expires (UTC)", "version")
_LIST_WIDTHS = (10, 27, 27, 37, 7)


@click.command("list")
@click.argument("workspace")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries (a page).")
@click.option("--after", metavar="KEY", help="Start after this key (the next page: the last key shown).")
@FORMAT_OPTION
def list_command(workspace: str, limit: int | None, after: str | None, output_format: str) -> None:
    """List the keys of WORKSPACE with category, times, expiry and data-key version.

    Never shows a value. Times are UTC. Expired entries not yet purged are marked. Read
    a page at a time from the database and streamed, so any size lists in constant memory;
    --limit and --after page through it. Text output is one line per key, key last
    (control characters and invisible marks in a key shown as escapes like \\n, \\u200f).

    Example:

    \b
        secure-kv list tenant-42:my-plugin --format json | jq -r '.[].key'
        secure-kv list tenant-42:my-plugin --limit 100 --after user_name
    """
    from secure_kv._clock import format_time, now_micros
    from secure_kv.commands.output import write_json_array

    now = now_micros()
    entries = commands.list_keys(workspace, current_settings(), after=after, limit=limit)
    out = sys.stdout
    count = 0
    last: str | None = None
    if output_format == "json":

        def as_json() -> Iterator[dict[str, Any]]:
            nonlocal last
            for entry in entries:
                last = entry.key
                yield entry.to_json(now)

        count = write_json_array(out, as_json())
    else:
        out.write(
            "  ".join(name.ljust(width) for name, width in zip(LIST_COLUMNS, _LIST_WIDTHS, strict=True))
            + "  key\n"
        )
        for entry in entries:
            expires = format_time(entry.expires_at) or "never"
            if entry.expired(now):
                expires += " (expired)"
            cells = (entry.category, format_time(entry.created_at), format_time(entry.updated_at), expires)
            fixed = "  ".join(
                (cell or "").ljust(width) for cell, width in zip(cells, _LIST_WIDTHS[:4], strict=True)
            )
            out.write(f"{fixed}  {f'v{entry.dek_version}'.ljust(7)}  {shown(entry.key)}\n")
            count += 1
            last = entry.key
    out.flush()
    click.echo(plural(count, "entry", "entries"), err=True)
    if limit is not None and count == limit and last is not None:
        click.echo(f"more may follow: the next page is --after {last!r}", err=True)


#: The commands :data:`secure_kv.cli.main` offers from this module.
COMMANDS: tuple[click.Command, ...] = (
    init,
    keygen,
    demo,
    status,
    rotate,
    purge,
    shred,
    get_command,
    set_command,
    delete_command,
    list_command,
)
