"""KeyringMasterKey against the real Secret Service: gnome-keyring-daemon in a D-Bus session
of the tests' own, unlocked with a test password, through keyring's SecretService backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from keyrings.alt.file import PlaintextKeyring

from secure_kv.cli import main
from secure_kv.errors import MasterKeyError
from secure_kv.keys import KeyringMasterKey

from .services import SecretService


def _subprocess_cli(service: SecretService, url: str, *arguments: str) -> str:
    """The CLI in a process of its own, finding gnome-keyring through the D-Bus session."""
    env = {
        **service.environ(),
        "SECURE_KV_DATABASE_URL": url,
        "SECURE_KV_KEY_PROVIDER": "keyring",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring",
    }
    done = subprocess.run(
        [sys.executable, "-m", "secure_kv", *arguments], env=env, capture_output=True, check=True
    )
    return done.stdout.decode()


def _cli(url: str, *arguments: str, stdin: bytes | None = None) -> str:
    """The CLI in this process, whose keyring backend is the Secret Service one."""
    result = CliRunner().invoke(main, ["--database-url", url, *arguments], input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_init_and_rotate_master_generate_keep_the_key_history_in_gnome_keyring(
    secret_service: Any,
    secret_service_session: SecretService,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "keyring")
    assert "master key kek_id" in _subprocess_cli(secret_service_session, sqlite_url, "init")
    first = secret_service.get_password("secure-kv", "master-key")
    assert first is not None
    _cli(sqlite_url, "set", "tenant:plugin", "k", stdin=b"kept across rotations")
    old_id = KeyringMasterKey().current_key().kek_id

    _cli(sqlite_url, "rotate", "master", "--generate")
    # The old key is kept in the keyring under its kek_id, listed as previous.
    assert secret_service.get_password("secure-kv", f"master-key.{old_id}") == first
    assert secret_service.get_password("secure-kv", "master-key.previous") == old_id
    assert secret_service.get_password("secure-kv", "master-key") != first
    provider = KeyringMasterKey()
    assert [key.kek_id for key in provider.previous_keys()] == [old_id]
    assert (
        _subprocess_cli(secret_service_session, sqlite_url, "get", "tenant:plugin", "k")
        == "kept across rotations"
    )

    _cli(sqlite_url, "rotate", "master", "--retire-previous")
    assert secret_service.get_password("secure-kv", f"master-key.{old_id}") is None
    assert KeyringMasterKey().previous_keys() == ()
    assert _cli(sqlite_url, "get", "tenant:plugin", "k") == "kept across rotations"


def test_the_master_key_is_stored_in_the_unlocked_login_collection(secret_service: Any) -> None:
    import secretstorage

    created = KeyringMasterKey(create=True)
    assert created.created
    connection = secretstorage.dbus_init()
    items = list(secretstorage.get_default_collection(connection).search_items({"service": "secure-kv"}))
    assert len(items) == 1 and items[0].get_label() != ""


class _CustomPlaintext(PlaintextKeyring):
    """A subclass of a plaintext backend, as an application might register."""


@pytest.mark.parametrize("backend_class", [PlaintextKeyring, _CustomPlaintext], ids=["plaintext", "subclass"])
def test_real_plaintext_keyrings_alt_backends_are_refused_before_they_write(
    backend_class: type, tmp_path: Path
) -> None:
    backend = backend_class()
    backend.file_path = str(tmp_path / "keyring.cfg")
    with pytest.raises(MasterKeyError, match="not secure enough"):
        KeyringMasterKey(backend=backend, create=True)
    assert not (tmp_path / "keyring.cfg").exists()
