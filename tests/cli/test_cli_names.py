"""Issue 11, point 2: names are untrusted, and the command shows them exactly, never as markup.

Workspace and key names come from plugins and tenants. Whatever they hold (rich markup,
newlines, escape sequences, right-to-left marks, 256 bytes), ``status``, ``list``,
``audit log``, ``audit report`` and the error messages show them unambiguously: every
non-printable character as its escape, markup as the characters typed, one row per name,
one line per error, and never a crash.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from secure_kv.cli import main
from secure_kv.display import shown
from secure_kv.keys.base import generate_master_key

TRICKY = [
    "[",
    "]",
    "[/]",
    "[bold]",
    "[red]x[/red]",
    "\n",
    "\r",
    "\t",
    "\x1b[31m",
    "\u200f",
    "\u202e",
    "\\",
    "\u2028",
]
names = (
    st.lists(
        st.sampled_from(TRICKY)
        | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8),
        min_size=1,
        max_size=8,
    )
    .map("".join)
    .filter(lambda name: 0 < len(name.encode("utf-8")) <= 200)
)


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    env = {
        "SECURE_KV_DATABASE_URL": f"sqlite:///{tmp_path}/names.db",
        "SECURE_KV_MASTER_KEY": generate_master_key(),
        "SECURE_KV_KEY_PROVIDER": "env",
    }
    cli = CliRunner(env=env)
    assert cli.invoke(main, ["init"]).exit_code == 0
    return cli


def printable_lines(text: str) -> bool:
    """Every character of every line is printable: nothing hides, moves or restyles text."""
    return all(line.isprintable() for line in text.splitlines())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workspace=names, key=names)
@example(workspace="[/]", key="[/]")
@example(workspace="ws[bold]2", key="a\nb")
@example(workspace="w" * 200, key="\u202eevil\u200f")
@example(workspace="[", key="-0")  # a name that looks like an option: passed after "--", as a user would
def test_names_are_shown_exactly_everywhere(runner: CliRunner, workspace: str, key: str) -> None:
    stored = runner.invoke(main, ["set", "--", workspace, key], input=b"v")
    assert stored.exit_code == 0, stored.output

    status = runner.invoke(main, ["status"])
    assert status.exit_code == 0, status.output
    assert shown(workspace) in status.stdout
    assert printable_lines(status.stdout)

    listed = runner.invoke(main, ["list", "--", workspace])
    assert listed.exit_code == 0, listed.output
    rows = listed.stdout.splitlines()[1:]
    assert any(row.endswith("  " + shown(key)) for row in rows)  # one row per key, key exact
    as_json = runner.invoke(main, ["list", "--format", "json", "--", workspace])
    assert len(rows) == len(json.loads(as_json.stdout))
    assert printable_lines(listed.stdout)

    log = runner.invoke(main, ["audit", "log", f"--workspace={workspace}"])
    assert log.exit_code == 0, log.output
    assert shown(workspace) in log.stdout and printable_lines(log.stdout)

    report = runner.invoke(main, ["audit", "report", "--format", "csv", f"--workspace={workspace}"])
    assert report.exit_code == 0, report.output
    parsed = list(csv.DictReader(io.StringIO(report.stdout_bytes.decode("utf-8"), newline="")))
    assert (workspace, key) in {(row["workspace"], row["key"]) for row in parsed}  # the data: exact

    missing = runner.invoke(main, ["get", "--", workspace, key + "\u200f-missing"])
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: no entry ") and missing.stderr.count("\n") == 1
    assert missing.stderr.strip().isprintable()

    no_workspace = runner.invoke(main, ["list", "--", workspace + "\n-missing"])
    assert no_workspace.exit_code == 1
    assert no_workspace.stderr.startswith("error: no workspace named ")
    assert no_workspace.stderr.count("\n") == 1 and no_workspace.stderr.strip().isprintable()


def test_a_markup_name_is_not_interpreted_by_status(runner: CliRunner) -> None:
    for workspace in ("[/]", "ws[bold]2", "[link=http://x]y[/link]"):
        assert runner.invoke(main, ["set", workspace, "k"], input=b"v").exit_code == 0
    status = runner.invoke(main, ["status"])
    assert status.exit_code == 0, status.output
    for workspace in ("[/]", "ws[bold]2", "[link=http://x]y[/link]"):
        assert f" {workspace} " in status.stdout


def test_a_newline_in_a_key_is_one_row_in_list(runner: CliRunner) -> None:
    runner.invoke(main, ["set", "w", "first\nsecond"], input=b"v")
    listed = runner.invoke(main, ["list", "w"])
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].endswith("  first\\nsecond")
