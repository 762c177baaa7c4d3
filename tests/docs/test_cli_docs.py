"""Issue 11, point 8: the shell examples of README.md and docs/*.md run as written.

Every ```sh block that calls ``secure-kv`` runs in bash (``set -euo pipefail``) against a
real SQLite store holding ``tenant-42:my-plugin``, pipes and redirections included. Only
what cannot be the same here is rewritten, each listed in ``REWRITES`` (a server URL to
the test's SQLite file, a path outside the test directory, a minute of sleep, a prompt
that waits for a person); blocks for
the OS keyring (``KEYRING_ONLY``) and for moves between an HSM and KMS (``PROVIDER_MOVES``)
are not collected here: each names the test that runs those commands for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from secure_kv import Category, SecureStore
from secure_kv.keys import EnvMasterKey
from secure_kv.keys.base import generate_master_key

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REWRITES = {
    "postgresql+psycopg://admin@db/kv": "$TEST_URL",
    "/secure/anchors.txt": "anchors.txt",
    "sleep 60": "true",
    # interactive (types the name at a prompt); the --yes line after it runs
    "secure-kv shred tenant-42:my-plugin          # asks you to type the name": "true",
}
KEYRING_ONLY = ("--generate", "--retire-previous")
# Moves between providers need an HSM and a KMS: tests/keys/test_provider_moves.py runs
# each path (file -> HSM -> KMS, keyring -> KMS, raw keys -> HSM) against SoftHSM2 and moto.
PROVIDER_MOVES = ("SECURE_KV_PREVIOUS_KEY_PROVIDER",)


def shell_blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for number, block in enumerate(
            re.findall(r"^ *```(?:sh|bash)\n(.*?)^ *```", text, flags=re.S | re.M)
        ):
            if re.search(r"^\s*[^#\n]*\bsecure-kv ", block, flags=re.M) and "pip install" not in block:
                found.append((f"{path.name}#{number}", block))
    return found


def _run_elsewhere(block: str) -> str | None:
    """The test that runs this block's commands for real, when they cannot run here as written."""
    if any(flag in block for flag in KEYRING_ONLY):
        return "tests/cli/test_cli.py::test_rotate_master_generate_and_retire_with_the_keyring"
    if any(flag in block for flag in PROVIDER_MOVES):
        return (
            "tests/keys/test_provider_moves.py::"
            "test_file_key_to_hsm_to_kms_online_with_records_read_throughout"
        )
    return None


ALL_BLOCKS = shell_blocks()
BLOCKS = [(name, block) for name, block in ALL_BLOCKS if _run_elsewhere(block) is None]


def test_blocks_not_run_here_are_run_by_a_named_test() -> None:
    """A block left out above names a test that exists, so none is silently dropped."""
    for _, block in ALL_BLOCKS:
        target = _run_elsewhere(block)
        if target is None:
            continue
        path, name = target.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), target


def test_the_docs_have_command_examples() -> None:
    assert len(BLOCKS) >= 6
    assert any("> records.csv" in block for _, block in BLOCKS)  # a redirection
    assert any("| jq" in block for _, block in BLOCKS)  # a pipe


@pytest.mark.parametrize(("name", "block"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_a_docs_example_runs(name: str, block: str, tmp_path: Path) -> None:
    if "jq" in block and shutil.which("jq") is None:
        pytest.fail("jq is not installed: it is in .ci/run's Debian packages (apt-get install jq)")
    key = generate_master_key()
    url = f"sqlite:///{tmp_path}/store.db"
    with SecureStore.open(url, master_key=EnvMasterKey({"SECURE_KV_MASTER_KEY": key})) as store:
        ws = store.workspace("tenant-42:my-plugin")
        ws.set("openai", b"sk-docs-0123456789abcdefghij", category=Category.TOKEN)
        ws.set("user_name", b"John")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "secure-kv"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m secure_kv "$@"\n')
    shim.chmod(0o755)
    env = {name: value for name, value in os.environ.items() if not name.startswith("SECURE_KV_")}
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '')}",
        SECURE_KV_DATABASE_URL=url,
        SECURE_KV_MASTER_KEY=key,
        OLD=key,
        OPENAI_KEY="sk-docs-abcdefghij0123456789",
        TEST_URL=f"sqlite:///{tmp_path}/fresh.db",
    )
    script = block
    for doc, here in REWRITES.items():
        script = script.replace(doc, here)
    setup = "secure-kv audit anchor >> anchors.txt 2>/dev/null\n"
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + setup + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{name}:\n{script}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr
