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


@pytest.mark.parametrize("command", [[], ["keygen"], ["demo"]])
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
