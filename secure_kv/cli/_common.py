"""What every ``secure-kv`` command shares: the settings, the one-line failure, Ctrl-C, the
``--format`` and ``--batch-size`` options, and progress bars.

Imports click, the standard library and the light foundation modules only (start-up).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from secure_kv.display import shown_message

if TYPE_CHECKING:
    from secure_kv.cli.console import BarProgress
    from secure_kv.settings import Settings

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130

#: Whether this run was given --database-url (errors then name the flag, not the variable).
_url_from_flag = False


def note_database_url(database_url: str | None) -> None:
    """Remember whether the URL came from --database-url, for :func:`as_typed`."""
    global _url_from_flag
    _url_from_flag = database_url is not None


def as_typed(message: str) -> str:
    """Name the database URL as the user gave it: the flag when it came from the flag."""
    return message.replace("SECURE_KV_DATABASE_URL", "--database-url") if _url_from_flag else message


def fail(message: str, code: int = 1) -> NoReturn:
    """One ``error: ...`` line on stderr, then exit ``code``."""
    click.echo(f"error: {shown_message(as_typed(message))}", err=True)
    sys.exit(code)


class SubGroup(click.Group):
    """A nested group; errors are handled by the root."""


@contextmanager
def interruptible(describe: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C: say what was done and what to run next (``describe()``), exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"interrupted: {describe()}", err=True)
        sys.exit(INTERRUPTED)


def current_settings() -> Settings:
    """Settings from the environment, with the command line's --database-url on top."""
    from secure_kv.settings import load_settings

    ctx = click.get_current_context()
    url = (ctx.find_root().obj or {}).get("database_url")
    return load_settings(database_url=url)


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


def echo_json(data: Any) -> None:
    """A command's report as one JSON document on stdout."""
    from secure_kv.commands.output import write_json

    write_json(sys.stdout, data)
    sys.stdout.flush()


@contextmanager
def progress_bars(unit: str = "", *, transient: bool = False) -> Iterator[BarProgress]:
    """:func:`secure_kv.cli.console.progress_bars`, imported when a command needs it (rich is slow
    to import)."""
    from secure_kv.cli import console

    with console.progress_bars(unit, transient=transient) as progress:
        yield progress


def shell(name: str) -> str:
    """A name as a shell word to type again (quoted; invisible characters escaped)."""
    import shlex

    return shown_message(shlex.quote(name))
