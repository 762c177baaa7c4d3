"""Attacker: another local user on the host (files, environment, process list).

They can read what the file system lets them read, write into directories open to them,
plant symbolic links and files of their own, read the environment of processes that run as
them (children started by the application included) and see every process's command line.
What must hold: the master key is never taken from, nor left in, a place they control or
see; a plaintext keyring never holds it; a database password never goes on a command line.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import pytest
from keyring.backends import chainer, fail, null
from keyrings.alt.file import PlaintextKeyring

from secure_kv import SecureStore
from secure_kv.errors import MasterKeyError
from secure_kv.keys import EnvMasterKey, FileMasterKey, KeyringMasterKey
from secure_kv.keys.base import generate_master_key, parse_master_key
from secure_kv.settings import load_settings
from tests.keyring_backend import MemoryKeyring

ROOT = Path(__file__).parent.parent.parent
NOBODY = 65534
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making a file another user owns needs root"
)
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


# --- A keyring backend that keeps the key in plaintext (finding 8) ------------------------


def _renamed_backends() -> dict[str, type]:
    """Backends a plugin or a careless config could install, made when a test runs.

    keyring registers every subclass and caches the viable ones on first use
    (``get_all_keyring``), so that cache is filled first and these classes are made inside
    the tests, never at import: they must not become another test's default keyring.
    """
    keyring.backend.get_all_keyring()

    class RenamedPlaintextKeyring(PlaintextKeyring):
        """keyrings.alt's plaintext file under another name, claiming a high priority."""

        priority = 10

    class QuietFailKeyring(fail.Keyring):
        priority = 10

    class QuietNullKeyring(null.Keyring):
        priority = 10

    class FallbackKeyring(MemoryKeyring):
        """A backend keyring itself rates "suitable, not recommended" (0 < priority < 1)."""

        priority = 0.5

    class UnusableKeyring(MemoryKeyring):
        @property
        def priority(self) -> float:  # type: ignore[override]
            raise RuntimeError("no D-Bus session")

    class DeeperPlaintext(RenamedPlaintextKeyring):
        pass

    return {
        "plaintext-subclass": RenamedPlaintextKeyring,
        "plaintext": PlaintextKeyring,
        "fail-subclass": QuietFailKeyring,
        "null-subclass": QuietNullKeyring,
        "low-priority": FallbackKeyring,
        "unusable": UnusableKeyring,
        "deeper-subclass": DeeperPlaintext,
    }


@pytest.mark.parametrize(
    "name",
    [
        "plaintext-subclass",
        "plaintext",
        "fail-subclass",
        "null-subclass",
        "low-priority",
        "unusable",
        "deeper-subclass",
    ],
)
def test_a_backend_that_would_keep_the_key_in_plaintext_or_nowhere_is_refused(
    name: str, tmp_path: Path
) -> None:
    backend = _renamed_backends()[name]()
    plaintext_file = tmp_path / "keyring_pass.cfg"
    if isinstance(backend, PlaintextKeyring):
        backend.file_path = str(plaintext_file)
    # An unusable backend is refused as a service to check (it may be a secure one whose
    # daemon is down), the others as not secure enough.
    with pytest.raises(MasterKeyError, match=r"not secure enough for a master key|not usable here"):
        KeyringMasterKey(create=True, backend=backend)
    assert not plaintext_file.exists()  # nothing was written


def test_a_plaintext_subclass_behind_the_chainer_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hidden = _renamed_backends()["plaintext-subclass"]()
    hidden.file_path = str(tmp_path / "keyring_pass.cfg")
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [MemoryKeyring(), hidden])
    with pytest.raises(MasterKeyError, match="RenamedPlaintextKeyring"):
        KeyringMasterKey(create=True, backend=chainer.ChainerBackend())
    assert not (tmp_path / "keyring_pass.cfg").exists()


def test_a_recommended_backend_is_accepted() -> None:
    backend = MemoryKeyring()  # priority 1, the lowest keyring recommends
    provider = KeyringMasterKey(create=True, backend=backend)
    assert provider.created


# --- The key file (finding 9) ------------------------------------------------------------


def _key_file(directory: Path, text: str | None = None, mode: int = 0o600) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / "master.key"
    path.write_text((text or generate_master_key()) + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@posix_only
@needs_root
def test_a_key_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    path = _key_file(tmp_path / "keys")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(MasterKeyError, match="belongs to another user"):
        FileMasterKey(path)


@posix_only
@needs_root
def test_a_key_file_in_a_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    path = _key_file(tmp_path / "theirs")
    os.chown(path.parent, NOBODY, NOBODY)
    with pytest.raises(MasterKeyError, match=r"directory .* belongs to another user"):
        FileMasterKey(path)


@posix_only
def test_a_symbolic_link_to_a_key_file_is_refused(tmp_path: Path) -> None:
    real = _key_file(tmp_path / "keys")
    link = real.parent / "link.key"
    link.symlink_to(real)
    with pytest.raises(MasterKeyError, match="symbolic link"):
        FileMasterKey(link)


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o722])
def test_a_key_file_in_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path / "shared")
    path.parent.chmod(mode)
    with pytest.raises(MasterKeyError, match=r"directory .* writable by group or others"):
        FileMasterKey(path)


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o444])
def test_a_key_file_others_can_read_is_refused_naming_chmod_600(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path / "keys", mode=mode)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        FileMasterKey(path)


@posix_only
def test_a_fifo_planted_under_the_name_is_refused_without_hanging(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    os.mkfifo(directory / "master.key", 0o600)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        FileMasterKey(directory / "master.key")


@posix_only
@pytest.mark.parametrize("swap", ["symlink", "other-owner", "open-mode"])
def test_the_reload_applies_the_same_checks_to_a_replaced_file(
    tmp_path: Path, swap: str, caplog: pytest.LogCaptureFixture
) -> None:
    if swap == "other-owner" and os.geteuid() != 0:
        pytest.skip("making a file another user owns needs root")
    good = generate_master_key()
    path = _key_file(tmp_path / "keys", good)
    provider = FileMasterKey(path)
    planted = generate_master_key()
    path.unlink()
    if swap == "symlink":
        elsewhere = _key_file(tmp_path / "elsewhere", planted)
        path.symlink_to(elsewhere)
    else:
        _key_file(path.parent, planted, mode=0o600 if swap == "other-owner" else 0o644)
        if swap == "other-owner":
            os.chown(path, NOBODY, NOBODY)
    provider._last_reload = float("-inf")  # as 60 seconds later
    with caplog.at_level(logging.WARNING, logger="secure_kv"):
        current = provider.current_key()
    assert current.kek_id == parse_master_key(good, "t").kek_id  # the planted key is not taken
    assert any("could not be read again" in record.getMessage() for record in caplog.records)
    assert all(planted not in record.getMessage() for record in caplog.records)


# --- The environment and pickles (finding 10) -----------------------------------------------


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    key = generate_master_key()
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", key)
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    yield key


def _child_environment() -> str:
    """What a program the application starts finds in its environment."""
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('SECURE_KV_MASTER_KEY', ''))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_a_child_process_does_not_inherit_the_env_master_key(env_key: str) -> None:
    assert _child_environment() == env_key  # before: inherited
    with SecureStore.from_settings() as store:
        store.workspace("w").set("k", b"v")
        assert "SECURE_KV_MASTER_KEY" not in os.environ
        assert _child_environment() == ""
    with SecureStore.from_settings() as again:  # the same process still opens the store
        assert again.workspace("w").get("k") == b"v"


def test_env_master_key_takes_the_key_out_of_the_environment(env_key: str) -> None:
    first = EnvMasterKey()
    assert "SECURE_KV_MASTER_KEY" not in os.environ
    assert EnvMasterKey().current_key().kek_id == first.current_key().kek_id


def test_a_given_mapping_is_left_as_it_is() -> None:
    credentials = {"SECURE_KV_MASTER_KEY": generate_master_key()}
    EnvMasterKey(credentials)
    assert "SECURE_KV_MASTER_KEY" in credentials


def test_settings_holding_the_master_key_refuse_pickling(env_key: str) -> None:
    with SecureStore.from_settings() as store:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(store.settings)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(load_settings(master_key=env_key))


# --- The process list (finding 12c) -------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_KV_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "secure_kv", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:hunter2-pw@127.0.0.1:1/kv",
        "mysql+pymysql://app:hunter2-pw@127.0.0.1:1/kv",
        "postgresql+psycopg://app@127.0.0.1:1/kv?password=hunter2-pw",
    ],
    ids=["postgresql", "mysql", "query"],
)
def test_a_password_on_the_command_line_is_refused_before_connecting(url: str) -> None:
    result = _cli("--database-url", url, "status")
    assert result.returncode == 1
    assert result.stderr.startswith("error: --database-url holds a password")
    assert "SECURE_KV_DATABASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr + result.stdout


def test_the_same_url_from_the_environment_is_used(tmp_path: Path) -> None:
    result = _cli(
        "status", env={"SECURE_KV_DATABASE_URL": "postgresql+psycopg://app:hunter2-pw@127.0.0.1:1/kv"}
    )
    assert "holds a password" not in result.stderr  # it went on, to connect (and fail: port 1)
    assert "hunter2" not in result.stderr + result.stdout


def test_a_url_without_a_password_is_taken_from_the_command_line(tmp_path: Path) -> None:
    result = _cli("--database-url", f"sqlite:///{tmp_path / 'store.db'}", "status")
    assert "holds a password" not in result.stderr
