"""The secure-kv command: keygen and demo (more commands arrive with their issues)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from secure_kv.cli import main
from secure_kv.keys.base import parse_master_key


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


@pytest.mark.parametrize("command", [[], ["keygen"], ["demo"], ["init"]])
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
