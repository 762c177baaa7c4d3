"""The ``secure-kv`` admin command: a thin click layer over :mod:`secure_kv.commands`.

Every command has ``--help`` with an example and, on failure, exits non-zero with one line
``error: ...`` on stderr (click's usage errors too), reported once. Data goes to stdout and
only data; progress, summaries, notes and warnings go to stderr, so a redirected or piped
stdout is always complete. Ctrl-C says how far the work got and what to run next, and
exits 130.

Start-up matters (scripts call the command in loops): this module imports click and the
standard library only; SQLAlchemy, Alembic, pydantic and rich are imported inside the
commands that need them.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from secure_kv import __version__
from secure_kv.display import plural, shown, shown_message
from secure_kv.errors import InvalidInputError, SecureKVError

if TYPE_CHECKING:
    from secure_kv.cli.console import BarProgress
    from secure_kv.settings import Settings

__all__ = ["main"]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130

SETTINGS_HELP = """\b
Settings (environment variables, read by the library too):
  SECURE_KV_DATABASE_URL   SQLAlchemy URL of the store (default: store.db
                           in the user data directory); --database-url wins
  SECURE_KV_KEY_PROVIDER   where the master key comes from: keyring, env,
                           file (or a registered provider's name)
  SECURE_KV_MASTER_KEY     env provider: the key, as `secure-kv keygen`
                           prints it
  SECURE_KV_PREVIOUS_MASTER_KEYS
                           older keys still accepted for reading, separated
                           by commas (key1,key2), during a master rotation
  SECURE_KV_MASTER_KEY_FILE
                           file provider: one key per line, current first
  SECURE_KV_CREDENTIAL_POLICY
                           a credential stored as a non-token: warn,
                           promote or reject
  SECURE_KV_DEK_MAX_AGE_DAYS
                           data-key age that `status` calls due (90)

\b
How the master-key provider is chosen:
  SECURE_KV_KEY_PROVIDER when set; otherwise env when SECURE_KV_MASTER_KEY
  is set; otherwise the OS keyring.
"""


# --- errors -------------------------------------------------------------------------------


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {shown_message(_as_typed(message))}", err=True)
    sys.exit(code)


#: Whether this run was given --database-url (errors then name the flag, not the variable).
_URL_FROM_FLAG = False


def _as_typed(message: str) -> str:
    """Name the database URL as the user gave it: the flag when it came from the flag."""
    return message.replace("SECURE_KV_DATABASE_URL", "--database-url") if _URL_FROM_FLAG else message


def _usage_message(error: click.ClickException) -> str:
    """click's usage error as one line, with where to read more."""
    text = " ".join(error.format_message().split()).rstrip(".")
    text = text[:1].lower() + text[1:]
    ctx = getattr(error, "ctx", None)
    if isinstance(error, click.UsageError) and ctx is not None:
        text += f" (see `{ctx.command_path} --help`)"
    return text


class _Group(click.Group):
    """The root group: every failure becomes one ``error:`` line, Ctrl-C exits 130."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        with _cli_logging():
            try:
                result = super().main(*args, **kwargs)
            except click.exceptions.Abort:  # Ctrl-C at a prompt, or outside a long job
                click.echo("error: interrupted: nothing more was done", err=True)
                sys.exit(INTERRUPTED)
            except click.ClickException as error:
                _fail(_usage_message(error), error.exit_code)
            except SecureKVError as error:
                _fail(str(error))
            except BrokenPipeError:  # `secure-kv list ws | head`: the reader left, not an error
                sys.stderr.close()
                sys.exit(0)
        sys.exit(result if isinstance(result, int) else 0)


class _SubGroup(click.Group):
    """A nested group; errors are handled by the root."""


class _CliLogHandler(logging.Handler):
    """secure_kv's warnings as ``warning: ...`` lines on stderr, in the command's terms.

    An authentication failure is not logged here: the command reports it as its error,
    once (the library logs it for services, where nobody else sees it).
    """

    PHRASES = (("category=Category.TOKEN", "--category token"),)

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("authentication failure"):
            return
        message = record.getMessage()
        for library, command in self.PHRASES:
            message = message.replace(library, command)
        level = "warning" if record.levelno < logging.ERROR else "error"
        click.echo(f"{level}: {shown_message(message)}", err=True)


@contextmanager
def _cli_logging() -> Iterator[None]:
    logger = logging.getLogger("secure_kv")
    handler = _CliLogHandler(logging.WARNING)
    logger.addHandler(handler)
    propagate = logger.propagate
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


@contextmanager
def _interruptible(describe: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C: say what was done and what to run next (``describe()``), exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"interrupted: {describe()}", err=True)
        sys.exit(INTERRUPTED)


# --- the root -----------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=SETTINGS_HELP)
@click.version_option(__version__, prog_name="secure-kv")
@click.option(
    "--database-url",
    metavar="URL",
    help="SQLAlchemy URL of the store, without a password (default: SECURE_KV_DATABASE_URL, "
    "else a SQLite file in the user data directory).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Encrypted, secrets-aware key-value storage: admin commands.

    Data goes to stdout; progress, summaries and warnings to stderr.

    Example:

    \b
        export SECURE_KV_MASTER_KEY="$(secure-kv keygen)"
        secure-kv --database-url postgresql+psycopg://app@db/kv init
    """
    global _URL_FROM_FLAG
    if database_url is not None:
        from secure_kv.settings import refuse_password_in_argument

        # Before the flag is noted: this message names the variable to use instead.
        refuse_password_in_argument(database_url)
    _URL_FROM_FLAG = database_url is not None
    ctx.obj = {"database_url": database_url}


def current_settings() -> Settings:
    """Settings from the environment, with the command line's --database-url on top."""
    from secure_kv.settings import load_settings

    ctx = click.get_current_context()
    url = (ctx.find_root().obj or {}).get("database_url")
    return load_settings(database_url=url)


def _commands() -> Any:
    from secure_kv import commands

    return commands


@main.command()
def init() -> None:
    """Create or upgrade the schema; with the keyring provider, create the master key.

    Safe to run again and from several hosts at once: it takes a database lock and does
    nothing when the schema is current.

    Example:

        SECURE_KV_DATABASE_URL=postgresql+psycopg://app@db/kv secure-kv init
    """
    report = _commands().init(current_settings())
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


@main.command()
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
        from secure_kv.keys.base import generate_master_key

        click.echo(generate_master_key())
        return
    report = _commands().create_provider_key(provider, current_settings())
    state = "created" if report.created else "already present"
    click.echo(f"master key {state} in provider {report.provider}: kek_id {report.kek_id}")


@main.command()
def demo() -> None:
    """Run the main job end to end on a throwaway embedded store.

    Stores a token, a preference and a cache entry, reads them back, shows that the
    database row is opaque and that a flipped byte is detected.

    Example:

        secure-kv demo
    """
    from rich.console import Console

    from secure_kv.cli.console import print_table

    commands = _commands()
    console = Console()
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
        _fail("the demo found a problem (see above)")
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


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@contextmanager
def _progress(unit: str) -> Iterator[BarProgress]:
    from secure_kv.cli.console import bar_progress

    with bar_progress(unit) as progress:
        yield progress


# --- status -------------------------------------------------------------------------------


def _shell(name: str) -> str:
    """A name as a shell word to type again (quoted; invisible characters escaped)."""
    import shlex

    return shown_message(shlex.quote(name))


def _rotation_state(report: Any, workspace: Any) -> str:
    name = _shell(workspace.name)
    state = report.rotation_state(workspace)
    if state == "interrupted":
        return f"rotation interrupted: run `secure-kv rotate workspace {name}` to resume"
    if state == "running":
        return "rotation running"
    return f"rotation unfinished: run `secure-kv rotate workspace {name}`"


@main.command()
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

    report = _commands().status(current_settings())
    if output_format == "json":
        _echo_json(report.to_json())
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
            states.append(f"shred unfinished: run `secure-kv shred {_shell(workspace.name)} --yes`")
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


@main.group(cls=_SubGroup)
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
    with _progress("keys") as progress:
        with _interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'data key')} rewrapped; "
                "run the same command to resume"
            )
        ):
            report = _commands().rotate_master(
                settings, generate=generate, retire_previous=retire_previous, progress=progress
            )
    if output_format == "json":
        import dataclasses

        data = dataclasses.asdict(report)
        data["complete"] = report.complete
        data["retired_previous"] = retire_previous and report.complete
        _echo_json(data)
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
        _fail("some data keys or audit signing keys are not wrapped by the current master key (see above)")


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
    with _progress("records") as progress:
        with _interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'record')} re-encrypted; "
                "run the same command to resume"
            )
        ):
            report = _commands().rotate_workspaces(
                settings,
                workspaces=None if all_workspaces else [workspace or ""],
                batch_size=batch_size,
                progress=progress,
            )
    if output_format == "json":
        import dataclasses

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
            _fail(report.failed[0][1])
        for name, reason in report.failed:
            click.echo(f"failed: {shown(name)}: {shown_message(reason)}", err=True)
        _fail(f"{len(report.failed)} workspace(s) could not be rotated (see above)")


# --- purge, shred -------------------------------------------------------------------------


@main.command()
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
    with _progress("entries") as progress:
        with _interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'expired entry', 'expired entries')} "
                "deleted; run the same command to delete the rest"
            )
        ):
            report = _commands().purge(settings, batch_size=batch_size, progress=progress)
    if output_format == "json":
        _echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"deleted {plural(report.deleted, 'expired entry', 'expired entries')} "
            f"from {plural(len(report.workspaces), 'workspace')} in {report.seconds:.1f} s",
            err=True,
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
    with _progress("records") as progress:
        with _interruptible(
            lambda: (
                f"{progress.done:,} of {plural(progress.total, 'record')} deleted (the data keys "
                f"are destroyed already); run `secure-kv shred {_shell(workspace)} --yes` to finish"
            )
        ):
            report = _commands().shred(workspace, settings, batch_size=batch_size, progress=progress)
    if output_format == "json":
        _echo_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"shredded {workspace!r}: destroyed {plural(report.destroyed_keys, 'data key')} "
            f"(versions up to {report.up_to_version}), deleted {plural(report.deleted_records, 'record')} "
            f"in {report.seconds:.1f} s",
            err=True,
        )


# --- operator commands --------------------------------------------------------------------


@main.command("get")
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
    found = _commands().get_value(workspace, key, current_settings(), reveal=reveal)
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


@main.command("set")
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
    _commands().set_value(workspace, key, value, settings, category=category, ttl=ttl)
    expiry = ""
    if ttl is not None:
        expiry = f", expires in {ttl:g} s"
    elif category == "cache":
        expiry = f", expires in {settings.default_cache_ttl:g} s (SECURE_KV_DEFAULT_CACHE_TTL)"
    click.echo(
        f"stored {key!r} in {workspace!r} ({category}, {plural(len(value), 'byte')}{expiry})",
        err=True,
    )


@main.command("delete")
@click.argument("workspace")
@click.argument("key")
def delete_command(workspace: str, key: str) -> None:
    """Delete KEY from WORKSPACE (deleting a missing key is not an error; a missing
    workspace is).

    Example:

        secure-kv delete tenant-42:my-plugin openai
    """
    existed = _commands().delete_value(workspace, key, current_settings())
    click.echo(
        f"deleted {key!r} from {workspace!r}"
        if existed
        else f"no entry {key!r} in {workspace!r}: nothing to delete",
        err=True,
    )


LIST_COLUMNS = ("category", "created (UTC)", "updated (UTC)", "expires (UTC)", "version")
_LIST_WIDTHS = (10, 27, 27, 37, 7)


@main.command("list")
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

    now = now_micros()
    entries = _commands().list_keys(workspace, current_settings(), after=after, limit=limit)
    out = sys.stdout
    count = 0
    last: str | None = None
    if output_format == "json":
        out.write("[")
        for entry in entries:
            out.write(("," if count else "") + "\n  " + json.dumps(entry.to_json(now), ensure_ascii=False))
            count += 1
            last = entry.key
        out.write("\n]\n" if count else "]\n")
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


# --- audit ------------------------------------------------------------------------------


@main.group(cls=_SubGroup)
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
    from secure_kv.cli.console import phase_progress

    settings = current_settings()
    out = sys.stdout
    with phase_progress() as progress:
        with _interruptible(
            lambda: (
                f"{progress.done.get('records', 0):,} of "
                f"{plural(progress.total_of('records'), 'record')} written; the output is incomplete: "
                "run the same command again"
            )
        ):
            summary = _commands().audit_report(
                out,
                settings=settings,
                fmt=fmt,
                workspace=workspace,
                on_total=lambda total: progress.total("records", total),
                on_row=lambda done: progress.tick("records", done),
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
    from secure_kv.cli.console import phase_progress

    commands = _commands()
    settings = current_settings()
    chosen = _last_anchor(anchor)
    with phase_progress() as progress:
        with _interruptible(lambda: "nothing was verified to the end; run the same command again"):
            report = commands.audit_verify(
                settings=settings,
                anchor=chosen,
                chain_only=chain_only,
                progress=progress.tick,
                on_totals=progress.totals,
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
    _fail(f"{plural(report.failure_count, 'check')} failed")


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
    count = _commands().audit_log(out, settings=current_settings(), fmt=fmt, workspace=workspace, since=start)
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
    anchor = _commands().audit_anchor(settings=current_settings())
    click.echo(
        f"anchor {anchor.anchor_id}: {plural(anchor.chains, 'chain')}, {plural(anchor.events, 'event')} "
        f"(position), head digest {anchor.digest.hex()}",
        err=True,
    )
    click.echo(anchor.text)
    for problem in anchor.untrusted:
        click.echo(f"not anchored: {shown_message(str(problem))}", err=True)
    if anchor.untrusted:
        _fail("some signing keys do not authenticate; run `secure-kv audit verify`")


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

    report = _commands().audit_prune(parse_time(before), settings=current_settings())
    click.echo(f"removed {plural(report.removed, 'event')} from {plural(report.chains, 'chain')}", err=True)
    for problem in report.refused:
        click.echo(f"refused: {shown_message(str(problem))}", err=True)
    if report.refused:
        _fail("some chains do not verify; run `secure-kv audit verify`")
