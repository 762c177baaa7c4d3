"""Write docs/cli.md, the CLI reference, from the click commands' own ``--help``.

``python scripts/cli_reference.py`` (``make docs``) rewrites it; ``--check`` exits 1 when
it is out of date (tests/docs/test_cli_reference.py runs the same check in ``make test``), as
sqlite-utils keeps its CLI docs honest with cog. Help is rendered at a fixed width, so the
file does not depend on the terminal that generated it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli.md"
REGENERATE = "make docs"
WIDTH = 88
PROG = "secure-kv"

HEADER = f"""\
# CLI reference

<!-- Generated from `{PROG} ... --help` by scripts/cli_reference.py: do not edit by hand.
     Regenerate with `{REGENERATE}`; `make test` fails when this file is out of date. -->

Every command of `{PROG}`, as its `--help` prints it. Data goes to stdout; progress,
summaries and warnings to stderr; a failure is one `error:` line and a non-zero exit.
How to use them day to day: [operations.md](operations.md).
"""


def _walk(command: click.Command, parent: click.Context | None, name: str) -> Iterator[tuple[str, str]]:
    """(command path, help text) for ``command`` and, depth first, its subcommands."""
    ctx = command.make_context(
        name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH
    )
    yield ctx.command_path, command.get_help(ctx)
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, ctx, sub_name)


def render() -> str:
    """The whole of docs/cli.md."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from secure_kv.cli import main

    parts = [HEADER]
    commands = list(_walk(main, None, PROG))
    parts.append("\n".join(f"- [`{path}`](#{path.replace(' ', '-')})" for path, _ in commands) + "\n")
    for path, text in commands:
        lines = "\n".join(line.rstrip() for line in text.splitlines())
        parts.append(f'<a id="{path.replace(" ", "-")}"></a>\n## `{path}`\n\n```text\n{lines}\n```\n')
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    expected = render()
    if argv[1:] == ["--check"]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != expected:
            message = f"docs/cli.md is out of date with the commands' --help: run `{REGENERATE}`"
            print(message, file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print("usage: python scripts/cli_reference.py [--check]", file=sys.stderr)
        return 2
    TARGET.write_text(expected, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
