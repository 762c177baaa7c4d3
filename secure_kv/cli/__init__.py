"""The ``secure-kv`` admin command: a thin click layer over :mod:`secure_kv.commands`.

Every command has ``--help`` with an example and, on failure, exits non-zero with one line
``error: ...`` on stderr (click's usage errors too), reported once. Data goes to stdout and
only data; progress, summaries, notes and warnings go to stderr, so a redirected or piped
stdout is always complete. Ctrl-C says how far the work got and what to run next, and
exits 130.

This module holds the root group and its error handling; the commands live in
:mod:`secure_kv.cli.store` and :mod:`secure_kv.cli.audit`, and :mod:`secure_kv.cli.console`
is the one place rich is used. The CLI reaches the library through
:mod:`secure_kv.commands` only.

Start-up matters (scripts call the command in loops): these modules import click and the
standard library only; SQLAlchemy, Alembic, pydantic and rich are imported inside the
commands that need them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from secure_kv import __version__
from secure_kv.cli import audit, store
from secure_kv.cli._common import INTERRUPTED, fail, note_database_url
from secure_kv.display import shown_message
from secure_kv.errors import SecureKVError

__all__ = ["main"]

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
                fail(_usage_message(error), error.exit_code)
            except SecureKVError as error:
                fail(str(error))
            except BrokenPipeError:  # `secure-kv list ws | head`: the reader left, not an error
                sys.stderr.close()
                sys.exit(0)
        sys.exit(result if isinstance(result, int) else 0)


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
    if database_url is not None:
        from secure_kv.settings import refuse_password_in_argument

        # Before the flag is noted: this message names the variable to use instead.
        refuse_password_in_argument(database_url)
    note_database_url(database_url)
    ctx.obj = {"database_url": database_url}


for _command in (*store.COMMANDS, audit.audit):
    main.add_command(_command)
