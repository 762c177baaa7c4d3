"""The secure-kv command: every command's help, the operator commands, rotation, shred,
purge and status from the command line, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from secure_kv import SecureStore
from secure_kv.cli import main
from secure_kv.keys.base import parse_master_key
from secure_kv.keys.env import forget_environment_keys
from tests.dbstate import new_key
from tests.keyring_backend import MemoryKeyring


def test_keygen_prints_a_usable_key() -> None:
    result = CliRunner().invoke(main, ["keygen"])
    assert result.exit_code == 0
    key = parse_master_key(result.output.strip(), "keygen output")
    assert len(key.kek_id) == 16


def test_keygen_prints_a_new_key_each_time() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keygen"]).output != runner.invoke(main, ["keygen"]).output


def test_demo_runs_end_to_end_and_never_prints_the_token() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "demo passed" in result.output
    assert "detected" in result.output
    assert "sk-demo" not in result.output


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    found = [list(prefix)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _all_commands(command, (*prefix, name))
        else:
            found.append([*prefix, name])
    return found


ALL_COMMANDS = _all_commands(main)


def test_the_commands_of_the_design_exist() -> None:
    names = {" ".join(command) for command in ALL_COMMANDS}
    assert {
        "init",
        "keygen",
        "demo",
        "status",
        "rotate master",
        "rotate workspace",
        "purge",
        "shred",
        "get",
        "set",
        "delete",
        "list",
    } <= names


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "secure-kv")
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_module_entry_point_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "secure_kv", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0
    assert "secure-kv" in completed.stdout


def _env_key(monkeypatch: pytest.MonkeyPatch) -> str:
    from secure_kv.keys.base import generate_master_key

    key = generate_master_key()
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", key)
    return key


def test_init_creates_the_schema_then_is_idempotent(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_key(monkeypatch)
    runner = CliRunner()
    first = runner.invoke(main, ["--database-url", database_url, "init"])
    assert first.exit_code == 0, first.output
    assert "created the schema" in first.output
    second = runner.invoke(main, ["--database-url", database_url, "init"])
    assert second.exit_code == 0, second.output
    assert "already current" in second.output


def test_init_with_keyring_creates_the_master_key(
    memory_keyring: object, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring

    result = CliRunner().invoke(main, ["--database-url", sqlite_url, "init"])
    assert result.exit_code == 0, result.output
    assert "created a new master key" in result.output
    assert keyring.get_password("secure-kv", "master-key") is not None
    again = CliRunner().invoke(main, ["--database-url", sqlite_url, "init"])
    assert "created a new master key" not in again.output


def test_init_with_a_malformed_master_key_fails_in_one_line(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", "not-a-key")
    result = CliRunner().invoke(main, ["--database-url", sqlite_url, "init"])
    assert result.exit_code == 1
    assert result.output.startswith("error: SECURE_KV_MASTER_KEY is not a valid master key")
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


# --- operator commands, rotation, shred, purge, status ------------------------------------


class Cli:
    """Runs secure-kv against one database with one master key (the env provider)."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.url = url
        self.key, self.provider = new_key()
        monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
        monkeypatch.setenv("SECURE_KV_MASTER_KEY", self.key)
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, input: bytes | None = None, ok: bool = True) -> click.testing.Result:
        result = CliRunner().invoke(main, ["--database-url", self.url, *args], input=input)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--format", "json").stdout)


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    runner = Cli(database_url, monkeypatch)
    runner("init")
    return runner


@pytest.fixture
def sqlite_cli(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    runner = Cli(sqlite_url, monkeypatch)
    runner("init")
    return runner


def test_the_admin_job_end_to_end_from_the_command_line(cli: Cli) -> None:
    cli("set", "tenant", "openai", "--category", "token", input=b"sk-secret")
    cli("set", "tenant", "user", input=b"John\n")
    cli("set", "tenant", "search", "--category", "cache", "--ttl", "600", input=b"{}")

    assert cli("get", "tenant", "user").stdout_bytes == b"John\n"  # byte for byte
    masked = cli("get", "tenant", "openai", ok=False)  # a script reading a token without --reveal
    assert "sk-secret" not in masked.output
    assert (masked.exit_code, masked.stdout) == (1, "")
    assert masked.stderr.startswith("error: 'openai' is a token") and "--reveal" in masked.stderr
    assert cli("get", "tenant", "openai", "--reveal").stdout_bytes == b"sk-secret"
    assert cli("get", "tenant", "openai", "--reveal", "--base64").stdout == "c2stc2VjcmV0\n"

    listed = cli.json("list", "tenant")
    assert [(entry["key"], entry["category"]) for entry in listed] == [
        ("openai", "token"),
        ("search", "cache"),
        ("user", "preference"),
    ]
    assert listed[1]["expires_at"] is not None and listed[0]["expires_at"] is None
    assert "sk-secret" not in json.dumps(listed) and "John" not in json.dumps(listed)

    rotated = cli.json("rotate", "workspace", "tenant")
    assert rotated["rotations"][0]["to_version"] == 2
    assert rotated["rotations"][0]["records"] == 3

    new_text, _ = new_key()
    cli.monkeypatch.setenv("SECURE_KV_PREVIOUS_MASTER_KEYS", cli.key)
    cli.monkeypatch.setenv("SECURE_KV_MASTER_KEY", new_text)
    master = cli.json("rotate", "master")
    assert (master["rewrapped"], master["complete"]) == (1, True)
    # The CLI took both variables out of its environment; set the new key alone, as a new
    # process would see it.
    cli.monkeypatch.delenv("SECURE_KV_PREVIOUS_MASTER_KEYS", raising=False)
    cli.monkeypatch.setenv("SECURE_KV_MASTER_KEY", new_text)
    assert cli("get", "tenant", "user").stdout_bytes == b"John\n"  # the new key alone reads

    status = cli.json("status")
    assert status["data_keys_by_kek_id"] == {status["kek_id"]: 1}
    (workspace,) = status["workspaces"]
    assert (workspace["name"], workspace["current_version"], workspace["records"]) == ("tenant", 2, 3)

    assert cli.json("purge")["deleted"] == 0
    assert "deleted 'user'" in cli("delete", "tenant", "user").output
    shredded = cli.json("shred", "tenant", "--yes")
    assert (shredded["destroyed_keys"], shredded["deleted_records"]) == (1, 2)
    gone = cli("get", "tenant", "openai", "--reveal", ok=False)
    assert gone.exit_code == 1
    assert gone.output == "error: no entry 'openai' in workspace 'tenant' (missing or expired)\n"


def test_after_a_master_rotation_the_old_key_alone_is_refused_in_one_line(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli("set", "t", "k", input=b"v")
    old = cli.key
    new_text, _ = new_key()
    cli.monkeypatch.setenv("SECURE_KV_MASTER_KEY", new_text)
    cli.monkeypatch.setenv("SECURE_KV_PREVIOUS_MASTER_KEYS", old)
    assert "previous keys can be retired" in cli("rotate", "master").output
    cli.monkeypatch.setenv("SECURE_KV_MASTER_KEY", old)
    cli.monkeypatch.delenv("SECURE_KV_PREVIOUS_MASTER_KEYS", raising=False)  # the CLI took it
    refused = cli("get", "t", "k", ok=False)
    assert refused.exit_code == 1
    assert refused.output.startswith("error: wrong master key")
    assert len(refused.output.strip().splitlines()) == 1


def test_rotate_master_generate_and_retire_with_the_keyring(
    memory_keyring: MemoryKeyring, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*args: str, input: bytes | None = None) -> click.testing.Result:
        result = CliRunner().invoke(main, ["--database-url", sqlite_url, *args], input=input)
        assert result.exit_code == 0, result.output
        return result

    run("init")
    old = memory_keyring.entries[("secure-kv", "master-key")]
    run("set", "t", "k", "--category", "token", input=b"sk-1")
    run("rotate", "master", "--generate")
    new = memory_keyring.entries[("secure-kv", "master-key")]
    assert new != old
    assert memory_keyring.entries[("secure-kv", "master-key.previous")]  # old key kept
    assert run("get", "t", "k", "--reveal").stdout_bytes == b"sk-1"

    run("rotate", "master", "--retire-previous")
    assert memory_keyring.entries[("secure-kv", "master-key.previous")] == ""
    assert len([user for service, user in memory_keyring.entries if service == "secure-kv"]) == 2
    # The old key alone no longer opens the store.
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", old)
    refused = CliRunner().invoke(main, ["--database-url", sqlite_url, "get", "t", "k"])
    assert refused.exit_code == 1
    assert refused.output.startswith("error: wrong master key")


def test_generate_is_refused_for_the_env_provider(sqlite_cli: Cli) -> None:
    result = sqlite_cli("rotate", "master", "--generate", ok=False)
    assert result.exit_code == 1
    assert result.output.startswith("error: --generate and --retire-previous manage keys in the OS keyring")


def test_set_reads_the_value_from_stdin_never_from_an_argument(sqlite_cli: Cli) -> None:
    result = sqlite_cli("set", "t", "k", "sk-on-the-command-line", input=b"x", ok=False)
    assert result.exit_code == 2  # usage error: there is no VALUE argument
    assert sqlite_cli("get", "t", "k", ok=False).exit_code == 1


def test_shred_without_a_terminal_needs_yes(sqlite_cli: Cli) -> None:
    sqlite_cli("set", "t", "k", input=b"v")
    result = sqlite_cli("shred", "t", ok=False)
    assert result.exit_code == 1
    assert result.output == "error: shred needs --yes when it cannot ask (no terminal)\n"
    assert sqlite_cli("get", "t", "k").stdout_bytes == b"v"


def test_rotate_workspace_needs_a_workspace_or_all(sqlite_cli: Cli) -> None:
    for args in ([], ["t", "--all"]):
        result = sqlite_cli("rotate", "workspace", *args, ok=False)
        assert result.exit_code == 1
        assert result.output == "error: give either a WORKSPACE or --all\n"


def test_rotating_an_unknown_workspace_fails_in_one_line(sqlite_cli: Cli) -> None:
    result = sqlite_cli("rotate", "workspace", "nope", ok=False)
    assert result.exit_code == 1
    assert result.output == "error: no workspace named 'nope' in this store\n"


def test_rotate_all_and_purge_report_in_text(sqlite_cli: Cli) -> None:
    assert (
        sqlite_cli("rotate", "workspace", "--all").output
        == "no workspace has a data key yet: nothing to rotate\n"
    )
    sqlite_cli("set", "a", "k", input=b"1")
    sqlite_cli("set", "b", "k", input=b"2")
    output = sqlite_cli("rotate", "workspace", "--all").output
    assert "a: data key v2" in output and "b: data key v2" in output
    assert "deleted 0 expired entries" in sqlite_cli("purge").output


def test_status_works_without_the_master_key(sqlite_cli: Cli) -> None:
    sqlite_cli("set", "a", "k", input=b"1")
    sqlite_cli.monkeypatch.delenv("SECURE_KV_MASTER_KEY", raising=False)
    forget_environment_keys()  # the CLI took the key out of os.environ and kept it
    status = sqlite_cli.json("status")
    assert status["kek_id"] is None
    assert "SECURE_KV_MASTER_KEY" in status["master_key_problem"]
    assert status["workspaces"][0]["records"] == 1
    assert "master key: unavailable" in sqlite_cli("status").output


def test_status_shows_an_unfinished_rotation(sqlite_cli: Cli) -> None:
    sqlite_cli("set", "a", "k", input=b"1")
    # A rotation that created version 2 and was then interrupted.
    with SecureStore.open(sqlite_cli.url, master_key=sqlite_cli.provider) as store:
        store._keys.create_version(1, b"a", 2)
    status = sqlite_cli.json("status")
    assert status["workspaces"][0]["rotation_in_progress"] is True
    assert "rotation unfinished: run `secure-kv rotate workspace a`" in sqlite_cli("status").output
    assert "(resumed)" in sqlite_cli("rotate", "workspace", "a").output
    assert sqlite_cli.json("status")["workspaces"][0]["rotation_in_progress"] is False


def test_status_flags_keys_older_than_the_maximum_age(sqlite_cli: Cli) -> None:
    sqlite_cli("set", "a", "k", input=b"1")
    with sa.create_engine(sqlite_cli.url).begin() as connection:
        connection.exec_driver_sql("UPDATE skv_data_keys SET created_at = created_at - 100 * 86400000000")
    assert sqlite_cli.json("status")["workspaces"][0]["rotation_due"] is True


def test_status_of_a_database_without_the_schema_says_to_run_init(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_key(monkeypatch)
    sa.create_engine(sqlite_url).connect().close()  # an empty SQLite file: a database, no schema
    result = CliRunner().invoke(main, ["--database-url", sqlite_url, "status"])
    assert result.exit_code == 1
    assert result.output == "error: the database has no secure_kv schema: run `secure-kv init`\n"


def test_status_of_a_missing_sqlite_file_names_it_and_creates_nothing(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_key(monkeypatch)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    result = CliRunner().invoke(main, ["--database-url", sqlite_url, "status"])
    assert result.exit_code == 1
    assert result.output == (
        f"error: there is no SQLite database at {path}: "
        "check the URL, or run `secure-kv init` to create one\n"
    )
    assert not path.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["rotate", "master"],
        ["rotate", "workspace", "--all"],
        ["purge"],
        ["shred", "t", "--yes"],
        ["get", "t", "k"],
        ["set", "t", "k"],
        ["delete", "t", "k"],
        ["list", "t"],
        ["list", "t", "--format", "json"],
    ],
)
def test_a_malformed_master_key_fails_in_one_line(
    command: list[str], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", "not-a-key")
    result = CliRunner().invoke(main, ["--database-url", sqlite_url, *command])
    assert result.exit_code == 1
    assert result.output.startswith("error: SECURE_KV_MASTER_KEY is not a valid master key")
    assert len(result.output.strip().splitlines()) == 1


def test_the_cli_reaches_the_library_only_through_commands() -> None:
    """cli/ is click over secure_kv.commands: it imports no store, admin, audit, sql, keys,
    envelope or integration module, only commands and the foundation (issue 12)."""
    import ast

    import secure_kv.cli

    allowed = ("secure_kv.cli", "secure_kv.commands", "secure_kv._clock", "secure_kv.categories")
    allowed += ("secure_kv.display", "secure_kv.errors", "secure_kv.progress", "secure_kv.settings")
    allowed += ("secure_kv.validation",)
    found = []
    for path in sorted(Path(secure_kv.cli.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "secure_kv":
                names = [f"secure_kv.{alias.name}" for alias in node.names if alias.name != "__version__"]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.name}: {name}"
                for name in names
                if name.startswith("secure_kv") and not name.startswith(allowed)
            ]
    assert found == []


def test_every_name_secure_kv_commands_exports_resolves() -> None:
    # Imported on first use (start-up): each public name still answers, and star-imports.
    import secure_kv.commands as commands

    for name in commands.__all__:
        assert getattr(commands, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from secure_kv.commands import *", namespace)
    assert set(commands.__all__) <= set(namespace)
    with pytest.raises(AttributeError):
        commands.no_such_command  # noqa: B018
