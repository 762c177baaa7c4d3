"""Shell completion for ``secure-kv``: click's own, turned on as the README shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "secure-kv"  # the console script pip installed


def _run(**env: str) -> str:
    completed = subprocess.run(
        [str(SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return completed.stdout


@pytest.mark.parametrize(
    ("shell", "registers"),
    [
        ("bash", "complete -o nosort -F _secure_kv_completion secure-kv"),
        ("zsh", "compdef _secure_kv_completion secure-kv"),
        ("fish", "complete --no-files --command secure-kv"),
    ],
)
def test_the_completion_script_is_produced(shell: str, registers: str) -> None:
    assert registers in _run(_SECURE_KV_COMPLETE=f"{shell}_source")


def test_completion_offers_commands_and_choices() -> None:
    commands = _run(_SECURE_KV_COMPLETE="bash_complete", COMP_WORDS="secure-kv au", COMP_CWORD="1")
    assert commands.split() == ["plain,audit"]
    formats = _run(
        _SECURE_KV_COMPLETE="bash_complete", COMP_WORDS="secure-kv audit report --format ", COMP_CWORD="4"
    )
    assert "plain,html" in formats.split()
