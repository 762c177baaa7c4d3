"""Capabilities: database read access (backups, replicas, copies of the SQLite files) and a
local user (files, logs, the output of commands).

Nothing is left behind: after writes, overwrites, deletes, workspace and master rotations
and a shred, no plaintext and no key of the shredded workspace (raw or wrapped, any version,
under any master key) remains in the SQLite file, its WAL or SHM, or any other file in its
directory; the files are private (0600) whatever the umask; logs, reprs, pickles and the
CLI's output hold no secret.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secure_kv import Category, SecureStore
from secure_kv.admin import erasure, rotation
from secure_kv.envelope import unwrap_data_key
from secure_kv.keys import StaticMasterKey

VICTIM = "victim:plugin"
OTHER = "other:plugin"
MARKER = b"PLAINTEXT-MARKER-7f3a9c"  # never stored in clear


def files_in(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def data_key_rows(path: Path, workspace: str) -> list[tuple[int, bytes]]:
    """(version, wrapped) of the workspace's live data keys, read as a backup would."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT d.version, d.wrapped FROM skv_data_keys d JOIN skv_workspaces w ON w.id = d.workspace_id "
            "WHERE w.name = ? AND d.wrapped IS NOT NULL",
            (workspace.encode(),),
        ).fetchall()
    return [(int(version), bytes(wrapped)) for version, wrapped in rows]


class Secrets:
    """Every secret byte string the victim workspace ever had: wrapped forms and raw keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: set[bytes] = set()

    def collect(self, provider: StaticMasterKey) -> None:
        for version, wrapped in data_key_rows(self.path, VICTIM):
            self.found.add(wrapped)
            master = provider.find(wrapped_kek(self.path, VICTIM, version))
            assert master is not None
            self.found.add(unwrap_data_key(master, wrapped, VICTIM.encode(), version)._dek)

    def leaks(self, blobs: dict[str, bytes]) -> list[str]:
        return [
            f"{name}: a {len(secret)}-byte key of the shredded workspace"
            for name, blob in blobs.items()
            for secret in self.found
            if secret in blob
        ]


def wrapped_kek(path: Path, workspace: str, version: int) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        row = connection.execute(
            "SELECT d.kek_id FROM skv_data_keys d JOIN skv_workspaces w ON w.id = d.workspace_id "
            "WHERE w.name = ? AND d.version = ?",
            (workspace.encode(), version),
        ).fetchone()
    return str(row[0])


@pytest.fixture
def history(tmp_path: Path) -> Iterator[tuple[Path, Secrets, SecureStore]]:
    """A store that lived through writes, overwrites, deletes, two workspace rotations and a
    master rotation, then shredded VICTIM. Yields it still open (WAL and SHM present)."""
    path = tmp_path / "db" / "store.db"
    first, second = os.urandom(32), os.urandom(32)
    secrets = Secrets(path)
    url = f"sqlite:///{path}"
    with SecureStore.open(url, master_key=StaticMasterKey(first)) as store:
        for workspace in (VICTIM, OTHER):
            ws = store.workspace(workspace)
            for i in range(40):
                ws.set(
                    f"k{i}", MARKER + b"-v1-%d" % i, category=Category.TOKEN if i % 3 == 0 else "preference"
                )
            ws.set_many({f"b{i}": MARKER + b"-batch" for i in range(10)})
            for i in range(0, 40, 2):
                ws.set(f"k{i}", MARKER + b"-v2-%d" % i)  # overwrites
            for i in range(0, 40, 5):
                ws.delete(f"k{i}")
            ws.delete_many([f"b{i}" for i in range(5)])
        secrets.collect(StaticMasterKey(first))
        rotation.rotate_workspace(store, VICTIM)
        secrets.collect(StaticMasterKey(first))
        store.workspace(VICTIM).set("after-rotation", MARKER + b"-v3")
        rotation.rotate_workspace(store, VICTIM)
        secrets.collect(StaticMasterKey(first))
    with SecureStore.open(url, master_key=StaticMasterKey(second, previous=[first])) as store:
        assert rotation.rotate_master(store).complete
        secrets.collect(StaticMasterKey(second))
    store = SecureStore.open(url, master_key=StaticMasterKey(second))
    store.workspace(VICTIM).set("late", MARKER + b"-late")
    secrets.collect(StaticMasterKey(second))
    # Versions 1-3 under the first master key (raw and wrapped), 3 rewrapped under the second,
    # and 4: a rewrapped key is read but never written with, so the late write made a new one.
    assert len(secrets.found) == 9
    erasure.shred(store, VICTIM)
    try:
        yield path, secrets, store
    finally:
        store.close()


def test_no_plaintext_and_no_shredded_key_remains_in_any_file_while_open(
    history: tuple[Path, Secrets, SecureStore],
) -> None:
    path, secrets, store = history
    blobs = files_in(path.parent)
    assert {"store.db", "store.db-wal", "store.db-shm"} <= set(blobs), sorted(blobs)
    assert not [name for name, blob in blobs.items() if MARKER in blob]
    assert secrets.leaks(blobs) == []
    assert store.workspace(OTHER).get("k1") == MARKER + b"-v1-1"  # the other tenant is intact


def test_no_plaintext_and_no_shredded_key_remains_after_close(
    history: tuple[Path, Secrets, SecureStore],
) -> None:
    path, secrets, store = history
    store.close()
    blobs = files_in(path.parent)
    assert not [name for name, blob in blobs.items() if MARKER in blob]
    assert secrets.leaks(blobs) == []


def test_a_backup_taken_after_the_shred_holds_no_key_of_it(
    history: tuple[Path, Secrets, SecureStore], tmp_path: Path
) -> None:
    path, secrets, _ = history
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as source, sqlite3.connect(backup) as target:
        source.backup(target)
    assert secrets.leaks({"backup.db": backup.read_bytes()}) == []


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_database_wal_and_shm_are_created_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        path = tmp_path / "new" / "store.db"
        with SecureStore.open(f"sqlite:///{path}", master_key=StaticMasterKey(os.urandom(32))) as store:
            store.workspace("w").set("k", b"v", category=Category.TOKEN)
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    finally:
        os.umask(previous)
    assert {"store.db", "store.db-wal", "store.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    assert path.parent.stat().st_mode & 0o777 == 0o700


# --- logs, reprs, pickles, CLI output ------------------------------------------------------


def test_logs_at_debug_hold_no_value_and_no_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    master = os.urandom(32)
    caplog.set_level(logging.DEBUG)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    token = b"sk-live-" + MARKER
    with SecureStore.open(url, master_key=StaticMasterKey(master)) as store:
        ws = store.workspace("w")
        ws.set("api", token, category=Category.TOKEN)
        ws.set("pref", b"sk-proj-" + MARKER + b"x" * 40)  # a credential under another category: warned
        ws.get("api")
        ws.get_many(["api", "pref"])
        rotation.rotate_workspace(store, "w")
        dek = store._keys.current(b"w")[1]._dek
        erasure.shred(store, "w")
    text = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert "credential" in text.lower()  # the warning was logged: this test saw the logs
    for secret in _forms(MARKER) + _forms(master) + _forms(dek):
        assert secret not in text


def _forms(secret: bytes) -> list[str]:
    """How a secret could be spelled in text: raw, hex, base64, repr."""
    return [
        secret.decode("latin-1"),
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]


def test_reprs_hold_no_secret_and_secret_holders_refuse_pickling(tmp_path: Path) -> None:
    master = os.urandom(32)
    provider = StaticMasterKey(master)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with SecureStore.open(url, master_key=provider) as store:
        ws = store.workspace("w")
        ws.set("api", MARKER, category=Category.TOKEN)
        data_key = store._keys.current(b"w")[1]
        holders: list[Any] = [provider, provider.current_key(), store, ws, data_key]
        for holder in holders:
            for secret in _forms(master) + _forms(data_key._dek) + _forms(MARKER):
                assert secret not in repr(holder) and secret not in str(holder)
            with pytest.raises(TypeError):
                pickle.dumps(holder)
        settings_pickle = _pickle_or_none(store.settings)
        assert settings_pickle is None or master not in settings_pickle


def _pickle_or_none(thing: object) -> bytes | None:
    try:
        return pickle.dumps(thing)
    except TypeError:
        return None


def test_settings_with_an_env_master_key_hold_it_in_no_pickle_or_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secure_kv.keys import EnvMasterKey

    master = os.urandom(32)
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", base64.b64encode(master).decode())
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    with SecureStore.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        spelled = [*_forms(master), base64.b64encode(master).decode()]
        for thing in (store.settings, store, EnvMasterKey):
            for secret in spelled:
                assert secret not in repr(thing)
        pickled = _pickle_or_none(store.settings)
        assert pickled is None or not any(secret.encode() in pickled for secret in spelled)


def _cli(*args: str, env: dict[str, str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "secure_kv", *args], env=env, input=stdin, capture_output=True, timeout=120
    )


def test_cli_output_holds_no_secret(tmp_path: Path) -> None:
    master = os.urandom(32)
    token = b"sk-live-" + MARKER
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SECURE_KV_")},
        "SECURE_KV_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "SECURE_KV_KEY_PROVIDER": "env",
        "SECURE_KV_MASTER_KEY": base64.b64encode(master).decode(),
    }
    runs = [
        (0, _cli("init", env=env)),
        (0, _cli("set", "w", "api", "--category", "token", env=env, stdin=token)),
        # A token without --reveal to a pipe: refused, naming --reveal, never the value.
        (1, _cli("get", "w", "api", env=env)),
        (0, _cli("list", "w", env=env)),
        (0, _cli("status", env=env)),
        (0, _cli("audit", "report", env=env)),
    ]
    for code, run in runs:
        assert run.returncode == code, (run.args, run.stderr.decode(errors="replace"))
    spelled = [s.encode() for s in _forms(MARKER) + _forms(master)] + [base64.b64encode(master)]
    for _, run in runs:
        for stream in (run.stdout, run.stderr):
            assert not any(secret in stream for secret in spelled), run.args


def test_a_reader_that_keeps_the_wal_busy_is_reported_and_a_second_shred_empties_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    provider = StaticMasterKey(os.urandom(32))
    secrets = Secrets(path)
    with SecureStore.open(f"sqlite:///{path}", master_key=provider) as store:
        store.workspace(VICTIM).set("k", MARKER)
        secrets.collect(provider)
        reader = sqlite3.connect(path)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM skv_records").fetchone()  # holds a snapshot
            with caplog.at_level(logging.WARNING, logger="secure_kv"):
                erasure.shred(store, VICTIM)
            assert "kept the SQLite WAL busy" in caplog.text
        finally:
            reader.close()
        erasure.shred(store, VICTIM)  # the operator's rerun, as the warning says
        assert secrets.leaks(files_in(path.parent)) == []
