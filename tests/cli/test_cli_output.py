"""Issue 11, points 1 and 3: data goes to stdout and only data, complete whatever stderr is;
``list`` pages and streams.

Each command that writes data runs for real in a subprocess with stderr on a
pseudo-terminal (so rich draws its progress bars) and stdout redirected to a file, the way
``secure-kv audit report --format csv > records.csv`` is typed at a terminal.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from secure_kv import Category, SecureStore
from secure_kv.keys import EnvMasterKey
from secure_kv.keys.base import generate_master_key
from tests.terminal import Run, cli_env, run_at_terminal

RECORDS = 2500  # enough for the progress bars to draw (they count in thousands)


def _populate(database_url: str) -> dict[str, str]:
    key = generate_master_key()
    with SecureStore.open(database_url, master_key=EnvMasterKey({"SECURE_KV_MASTER_KEY": key})) as store:
        store.workspace("tenant-a").set_many({f"k{i:05d}": b"value" for i in range(RECORDS - 2)})
        other = store.workspace("tenant-b")
        other.set("openai", b"sk-output-test-0123456789abcdef", category=Category.TOKEN)
        other.set("page", b"<html/>", category=Category.CACHE, ttl=600)
    return cli_env(database_url, key)


@pytest.fixture
def store_env(sqlite_url: str) -> dict[str, str]:
    """A SQLite store of RECORDS records in two workspaces (a token and a cache entry among them)."""
    return _populate(sqlite_url)


@pytest.fixture
def any_store_env(database_url: str) -> dict[str, str]:
    """The same store on each database."""
    return _populate(database_url)


def at_terminal(env: dict[str, str], tmp_path: Path, *args: str, stdin: bytes | None = None) -> Run:
    run = run_at_terminal(list(args), env, tmp_path, stdin=stdin)
    assert run.code == 0, run.terminal_text
    assert b"\x1b" not in run.stdout, "terminal control sequences leaked into stdout"
    return run


def test_audit_report_csv_redirected_at_a_terminal_is_complete(
    any_store_env: dict[str, str], tmp_path: Path
) -> None:
    run = at_terminal(any_store_env, tmp_path, "audit", "report", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(run.stdout.decode("utf-8"))))
    assert len(rows) == RECORDS
    assert {row["workspace"] for row in rows} == {"tenant-a", "tenant-b"}
    assert "records: 2500" in run.terminal_text  # the summary went to the terminal


def test_audit_report_json_redirected_at_a_terminal_is_complete(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    run = at_terminal(store_env, tmp_path, "audit", "report", "--format", "json")
    assert len(json.loads(run.stdout)) == RECORDS


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_list_redirected_at_a_terminal_is_complete(
    store_env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    run = at_terminal(store_env, tmp_path, "list", "tenant-a", "--format", fmt)
    if fmt == "json":
        keys = [entry["key"] for entry in json.loads(run.stdout)]
    else:
        header, *lines = run.stdout.decode("utf-8").splitlines()
        assert header.split()[0] == "category" and header.split()[-1] == "key"
        keys = [line.split()[-1] for line in lines]
        assert all("2026" in line or "20" in line for line in lines)  # whole timestamps, never cut
    assert keys == [f"k{i:05d}" for i in range(RECORDS - 2)]
    assert "2,498 entries" in run.terminal_text


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--format", "json"),
        ("audit", "log"),
        ("audit", "log", "--format", "json"),
        ("audit", "verify"),
        ("audit", "anchor"),
        ("rotate", "workspace", "tenant-a", "--format", "json"),
        ("rotate", "master", "--format", "json"),
        ("purge", "--format", "json"),
        ("keygen",),
    ],
    ids=" ".join,
)
def test_every_data_command_redirected_at_a_terminal_writes_its_data(
    store_env: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    run = at_terminal(store_env, tmp_path, *args)
    text = run.stdout.decode("utf-8")
    assert text.endswith("\n")
    if "json" in args:
        json.loads(text)
    elif args[0] == "status":
        assert "tenant-a" in text and "tenant-b" in text
    elif args == ("audit", "log"):
        assert "operator" in text or "datakey.create" in text
    elif args == ("audit", "verify"):
        assert text == "verified: every check holds\n"
    elif args == ("audit", "anchor"):
        assert text.startswith("skv-anchor:") and text.count("\n") == 1
    if args[0] == "rotate" and args[1] == "workspace":
        assert json.loads(text)["records"] == RECORDS - 2


def test_audit_verify_at_a_terminal_labels_each_phase_with_its_total(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    run = at_terminal(store_env, tmp_path, "audit", "verify")
    bars = run.terminal_text
    assert "records" in bars and "data keys" in bars and "events" in bars
    assert "2,500/2,500" in bars  # the records phase, with its total
    assert "/?" not in bars and "verify " not in bars


def test_get_redirected_at_a_terminal_writes_the_bytes_only(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    run = at_terminal(store_env, tmp_path, "get", "tenant-b", "openai", "--reveal")
    assert run.stdout == b"sk-output-test-0123456789abcdef"


def test_set_and_delete_write_nothing_to_stdout(store_env: dict[str, str], tmp_path: Path) -> None:
    stored = at_terminal(store_env, tmp_path, "set", "tenant-b", "lang", stdin=b"en")
    assert stored.stdout == b""
    assert "stored 'lang'" in stored.terminal_text
    deleted = at_terminal(store_env, tmp_path, "delete", "tenant-b", "lang")
    assert deleted.stdout == b""


# --- list: pages, bounded ---------------------------------------------------------------


def test_list_pages_with_limit_and_after(store_env: dict[str, str], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from secure_kv.cli import main

    runner = CliRunner(env=store_env)
    pages: list[str] = []
    after: list[str] = []
    while True:
        result = runner.invoke(main, ["list", "tenant-a", "--format", "json", "--limit", "1000", *after])
        assert result.exit_code == 0, result.output
        page = [entry["key"] for entry in json.loads(result.stdout)]
        if not page:
            break
        pages += page
        if len(page) == 1000:
            assert "--after 'k" in result.stderr  # says how to get the next page
        after = ["--after", page[-1]]
    assert pages == [f"k{i:05d}" for i in range(RECORDS - 2)]
