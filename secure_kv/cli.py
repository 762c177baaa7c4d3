"""The ``secure-kv`` admin command: a thin click layer over :mod:`secure_kv.commands`.

Every command has ``--help`` with an example and, on failure, exits non-zero with a
one-line reason instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import __version__, commands
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
