"""Issue 11, points 4, 5, 7 and 8: start-up imports, how the provider is chosen, one error
style, and the smaller fixes (expiry shown, plurals, warnings in the command's terms,
anchors appended to one file, shredded workspaces in status).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from secure_kv import SecureStore
from secure_kv.cli import main
from secure_kv.keys import EnvMasterKey
from secure_kv.keys.base import generate_master_key
from tests.terminal import cli_env


def _run(
    args: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secure_kv", *args],
        env=env,
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(sqlite_url: str) -> dict[str, str]:
    key = generate_master_key()
    with SecureStore.open(sqlite_url, master_key=EnvMasterKey({"SECURE_KV_MASTER_KEY": key})) as store:
        store.workspace("w").set("k", b"v")
    return cli_env(sqlite_url, key)


# --- 4: start-up ----------------------------------------------------------------------------

HEAVY = ("alembic", "rich", "sqlalchemy", "pydantic", "pydantic_settings", "dify_plugin", "cryptography")
SHOW_IMPORTS = """
import sys
from secure_kv.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(name.split(".")[0] for name in sys.modules)), file=sys.stderr)
"""


def _imported(args: list[str], env: dict[str, str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", SHOW_IMPORTS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return set(done.stderr.strip().splitlines()[-1].split())


def test_help_imports_no_heavy_module(env: dict[str, str]) -> None:
    imported = _imported(["--help"], env)
    assert "click" in imported
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_a_simple_get_imports_neither_alembic_rich_nor_dify(env: dict[str, str]) -> None:
    imported = _imported(["get", "w", "k"], env)
    assert "sqlalchemy" in imported  # it did read the store
    assert not imported & {"alembic", "rich", "dify_plugin"}


def test_keygen_loads_neither_the_store_nor_alembic_nor_rich(env: dict[str, str]) -> None:
    # Scripts make keys in loops: secure_kv.commands imports each command on first use.
    code = SHOW_IMPORTS.replace('name.split(".")[0] for name in sys.modules', "sys.modules")
    done = subprocess.run(
        [sys.executable, "-c", code, "keygen"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert len(done.stdout.strip()) == 44, done.stderr  # the key, url-safe base64 of 32 bytes
    imported = set(done.stderr.strip().splitlines()[-1].split())
    assert "secure_kv.commands.keys" in imported
    assert not imported & {"secure_kv.store", "secure_kv.commands.store", "alembic", "rich"}


# --- 5: settings and the provider -----------------------------------------------------------


def test_help_lists_the_settings_and_how_the_provider_is_chosen() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    for name in (
        "SECURE_KV_DATABASE_URL",
        "SECURE_KV_KEY_PROVIDER",
        "SECURE_KV_MASTER_KEY",
        "SECURE_KV_MASTER_KEY_FILE",
    ):
        assert name in text
    assert "SECURE_KV_PREVIOUS_MASTER_KEYS" in text and "commas" in text
    assert "otherwise env when SECURE_KV_MASTER_KEY" in " ".join(text.split())


def test_an_exported_master_key_is_used_without_naming_the_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cli_env(f"sqlite:///{tmp_path}/new.db", generate_master_key())  # no SECURE_KV_KEY_PROVIDER
    done = _run(["init"], env)
    assert done.returncode == 0, done.stderr
    assert "keyring" not in done.stderr
    # the library agrees: SecureStore.open without a provider uses the same key, and so does
    # a second open after the env provider took the key out of os.environ
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", env["SECURE_KV_MASTER_KEY"])
    with SecureStore.open(env["SECURE_KV_DATABASE_URL"]) as store:
        store.workspace("w").set("k", b"v")
    assert "SECURE_KV_MASTER_KEY" not in os.environ
    with SecureStore.open(env["SECURE_KV_DATABASE_URL"]) as store:
        assert store.workspace("w").get("k") == b"v"
    assert _run(["get", "w", "k"], env).stdout == "v"


def test_a_named_provider_wins_over_an_exported_key(env: dict[str, str]) -> None:
    done = _run(["get", "w", "k"], {**env, "SECURE_KV_KEY_PROVIDER": "file"})
    assert done.returncode == 1
    assert done.stderr == "error: SECURE_KV_KEY_PROVIDER=file needs SECURE_KV_MASTER_KEY_FILE (a path)\n"


# --- 7: one error style ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--database-url", "notaurl", "status"], "error: --database-url is not a valid SQLAlchemy URL"),
        (["list"], "error: missing argument 'WORKSPACE' (see `secure-kv list --help`)"),
        (
            ["list", "w", "--format", "xml"],
            "error: invalid value for '--format': 'xml' is not one of 'text', 'json'",
        ),
        (["--bogus"], "error: no such option '--bogus' (see `secure-kv --help`)"),
        (["rotat"], "error: no such command 'rotat'"),
        (["set", "w", "k", "--ttl", "-1"], "error: invalid value for '--ttl'"),
        (["list", "nope"], "error: no workspace named 'nope' in this store"),
        (["get", "nope", "k"], "error: no workspace named 'nope' in this store"),
        (["delete", "nope", "k"], "error: no workspace named 'nope' in this store"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_every_error_is_one_line_naming_what_was_typed(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    done = _run(args, env, stdin=b"v")
    assert done.returncode in (1, 2)
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_a_wrong_master_key_is_reported_once(env: dict[str, str]) -> None:
    done = _run(["get", "w", "k"], {**env, "SECURE_KV_MASTER_KEY": generate_master_key()})
    assert done.returncode == 1
    assert done.stderr.startswith("error: wrong master key")
    assert done.stderr.count("\n") == 1


def test_a_masked_token_read_by_a_script_fails_naming_reveal(env: dict[str, str]) -> None:
    assert _run(["set", "w", "openai", "--category", "token"], env, stdin=b"sk-x").returncode == 0
    done = _run(["get", "w", "openai"], env)  # stdout is a pipe, as in TOKEN=$(secure-kv get ...)
    assert (done.returncode, done.stdout) == (1, "")
    assert "--reveal" in done.stderr and done.stderr.startswith("error: ")
    assert _run(["get", "w", "openai", "--reveal"], env).stdout == "sk-x"


# --- 8: the smaller points ------------------------------------------------------------------


def test_a_cache_entry_without_ttl_says_when_it_expires(env: dict[str, str]) -> None:
    done = _run(["set", "w", "page", "--category", "cache"], env, stdin=b"x")
    assert "1 byte, expires in 3600 s (SECURE_KV_DEFAULT_CACHE_TTL)" in done.stderr


def test_the_credential_warning_speaks_the_command_line(env: dict[str, str]) -> None:
    done = _run(["set", "w", "api"], env, stdin=b"sk-abcdefghijklmnopqrstuvwxyz0123456789")
    assert done.returncode == 0
    warning = [line for line in done.stderr.splitlines() if "looks like a credential" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert "--category token" in warning[0] and "Category.TOKEN" not in warning[0]


def test_list_text_shows_whole_timestamps(env: dict[str, str]) -> None:
    done = _run(["list", "w"], env)
    (row,) = done.stdout.splitlines()[1:]
    created = row.split()[1]
    assert len(created) == len("2026-11-30T10:00:00.000000Z") and created.endswith("Z")


def test_plurals_and_one_signing_key(env: dict[str, str]) -> None:
    done = _run(["audit", "verify"], env)
    assert done.returncode == 0, done.stderr
    assert "1 record," in done.stderr and "1 data key," in done.stderr and "1 signing key" in done.stderr
    assert "1 signing keys" not in done.stderr and "1 records" not in done.stderr


def test_two_anchors_appended_to_one_file_verify_with_the_last(env: dict[str, str], tmp_path: Path) -> None:
    first = _run(["audit", "anchor"], env).stdout
    second = _run(["audit", "anchor"], env).stdout
    done = _run(["audit", "verify", "--anchor", first + second], env)  # "$(cat anchors.txt)"
    assert done.returncode == 0, done.stderr
    assert "checking the last (the newest anchor)" in done.stderr


def test_status_says_shredded_after_a_shred(env: dict[str, str]) -> None:
    assert _run(["shred", "w", "--yes"], env).returncode == 0
    status = json.loads(_run(["status", "--format", "json"], env).stdout)
    assert status["workspaces"][0]["shredded"] is True
    text = _run(["status"], env).stdout
    assert "shredded" in text and " ok " not in text
