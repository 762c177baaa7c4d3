"""Moving a store between providers online, and what happens when a key service is down.

Real parts: SoftHSM2, gnome-keyring in the tests' own D-Bus session, and moto's server mode
as the stand-in for AWS KMS (boto3 over HTTP).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from secure_kv import SecureStore, commands
from secure_kv.errors import MasterKeyError
from secure_kv.keys import (
    AwsKmsMasterKey,
    FileMasterKey,
    KeyringMasterKey,
    MasterKeyProvider,
    StaticMasterKey,
    provider_from_settings,
)
from secure_kv.keys.base import generate_master_key, parse_master_key
from secure_kv.settings import load_settings

from .services import Kms, MotoServer, SecretService, SoftHsm, use_moto

WORKSPACES = 24
CACHE_SECONDS = 1.0
BATCH = 5
EXPECTED = {
    (f"tenant-{n}:plugin", f"key-{k}"): f"value {n}/{k}".encode() for n in range(WORKSPACES) for k in range(2)
}


class Reader(threading.Thread):
    """Reads every record again and again, each pass through a fresh store (a cold data-key
    cache, as a process starting mid-rotation has), until stopped."""

    def __init__(self, url: str, provider: MasterKeyProvider) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.provider = provider
        self.passes = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with SecureStore.open(self.url, master_key=self.provider) as store:
                    for (workspace, key), value in EXPECTED.items():
                        if store.workspace(workspace).get(key) != value:
                            self.errors.append(f"{workspace}/{key} read back wrong")
            except Exception as error:
                self.errors.append(f"{type(error).__name__}: {error}")
            with self.changed:
                self.passes += 1
                self.changed.notify_all()

    def wait_for_another_pass(self) -> None:
        with self.changed:
            seen = self.passes
            if not self.changed.wait_for(lambda: self.passes > seen or not self.is_alive(), timeout=120):
                raise AssertionError("the reader made no progress")

    def finish(self) -> None:
        self.wait_for_another_pass()  # at least one full pass after the rotation
        self.stopping.set()
        self.join()


class ReadEachBatch:
    """A progress sink that lets the reader finish a whole pass after every batch."""

    def __init__(self, reader: Reader, interrupt_after: int | None = None) -> None:
        self.reader = reader
        self.batches = 0
        self.interrupt_after = interrupt_after

    def start(self, total: int, description: str) -> None:
        self.reader.wait_for_another_pass()

    def describe(self, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        self.batches += 1
        self.reader.wait_for_another_pass()
        if self.interrupt_after is not None and self.batches >= self.interrupt_after:
            raise KeyboardInterrupt


def _settings(monkeypatch: pytest.MonkeyPatch, url: str, **environ: str) -> Any:
    for name in (
        "SECURE_KV_KEY_PROVIDER",
        "SECURE_KV_PREVIOUS_KEY_PROVIDER",
        "SECURE_KV_PREVIOUS_MASTER_KEYS",
        "SECURE_KV_MASTER_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", url)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _fill(url: str, provider: MasterKeyProvider) -> None:
    with SecureStore.open(url, master_key=provider) as store:
        for (workspace, key), value in EXPECTED.items():
            store.workspace(workspace).set(key, value)


def _rotate_online(settings: Any, url: str) -> Any:
    reader = Reader(url, provider_from_settings(settings))
    reader.start()
    progress = ReadEachBatch(reader)
    report = commands.rotate_master(settings, batch_size=BATCH, progress=progress)
    reader.finish()
    assert reader.errors == []
    assert progress.batches >= WORKSPACES // BATCH  # records were read between every batch
    return report


def test_file_key_to_hsm_to_kms_online_with_records_read_throughout(
    database_url: str, softhsm: SoftHsm, kms: Kms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "master.keys"
    key_file.write_text(generate_master_key() + "\n")
    key_file.chmod(0o600)
    file_settings = _settings(
        monkeypatch, database_url, SECURE_KV_KEY_PROVIDER="file", SECURE_KV_MASTER_KEY_FILE=str(key_file)
    )
    _fill(database_url, provider_from_settings(file_settings))

    # file -> HSM: the token's key writes, the key file's stays readable until the rewrap ends.
    softhsm.provider("hsm-master")
    to_hsm = _settings(
        monkeypatch,
        database_url,
        SECURE_KV_KEY_PROVIDER="pkcs11",
        SECURE_KV_PREVIOUS_KEY_PROVIDER="file",
        SECURE_KV_MASTER_KEY_FILE=str(key_file),
        **softhsm.environ("hsm-master"),
    )
    report = _rotate_online(to_hsm, database_url)
    assert report.complete and report.kek_id.startswith("p11-") and report.rewrapped == WORKSPACES

    # HSM -> KMS, the same way.
    alias = f"alias/secure-kv-move-{uuid.uuid4().hex[:8]}"
    kms.create_key(alias=alias)
    to_kms = _settings(
        monkeypatch,
        database_url,
        SECURE_KV_KEY_PROVIDER="aws-kms",
        SECURE_KV_AWS_KMS_KEY_ID=alias,
        SECURE_KV_PREVIOUS_KEY_PROVIDER="pkcs11",
        **softhsm.environ("hsm-master"),
    )
    report = _rotate_online(to_kms, database_url)
    assert report.complete and report.kek_id.startswith("kms-") and report.rewrapped == WORKSPACES

    # KMS alone now opens everything; the old key file alone opens nothing.
    with SecureStore.open(database_url, master_key=AwsKmsMasterKey(alias)) as store:
        assert all(store.workspace(w).get(k) == v for (w, k), v in EXPECTED.items())
    with pytest.raises(MasterKeyError):
        SecureStore.open(database_url, master_key=FileMasterKey(key_file))


def test_keyring_to_kms_with_the_keyring_as_previous_provider(
    secret_service: Any, kms: Kms, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(sqlite_url, KeyringMasterKey(create=True))
    alias = f"alias/secure-kv-from-keyring-{uuid.uuid4().hex[:8]}"
    kms.create_key(alias=alias)
    settings = _settings(
        monkeypatch,
        sqlite_url,
        SECURE_KV_KEY_PROVIDER="aws-kms",
        SECURE_KV_AWS_KMS_KEY_ID=alias,
        SECURE_KV_PREVIOUS_KEY_PROVIDER="keyring",
    )
    report = _rotate_online(settings, sqlite_url)
    assert report.complete and report.rewrapped == WORKSPACES
    with SecureStore.open(sqlite_url, master_key=AwsKmsMasterKey(alias)) as store:
        assert all(store.workspace(w).get(k) == v for (w, k), v in EXPECTED.items())


def test_an_interrupted_move_from_raw_keys_to_the_hsm_resumes(
    sqlite_url: str, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = generate_master_key()
    _fill(sqlite_url, StaticMasterKey(bytes(_raw(old))))
    softhsm.provider("hsm-master")
    settings = _settings(
        monkeypatch,
        sqlite_url,
        SECURE_KV_KEY_PROVIDER="pkcs11",
        SECURE_KV_PREVIOUS_MASTER_KEYS=old,
        **softhsm.environ("hsm-master"),
    )
    reader = Reader(sqlite_url, provider_from_settings(settings))
    reader.start()
    with pytest.raises(KeyboardInterrupt):
        commands.rotate_master(settings, batch_size=BATCH, progress=ReadEachBatch(reader, interrupt_after=2))
    assert set(_kek_ids(sqlite_url)) == {"p11", "raw"}  # part-way, and every record still read
    report = commands.rotate_master(settings, batch_size=BATCH, progress=ReadEachBatch(reader))
    reader.finish()
    assert reader.errors == []
    assert report.complete and report.rewrapped == WORKSPACES - 2 * BATCH
    assert set(_kek_ids(sqlite_url)) == {"p11"}


def _raw(text: str) -> bytes:
    import base64

    parse_master_key(text, "test")  # valid
    return base64.urlsafe_b64decode(text)


def _kek_ids(sqlite_url: str) -> list[str]:
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as raw:
        rows = raw.execute("SELECT kek_id FROM skv_data_keys WHERE wrapped IS NOT NULL").fetchall()
    return ["p11" if kek_id.startswith("p11-") else "raw" for (kek_id,) in rows]


def _records(sqlite_url: str, workspace: str) -> int:
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as raw:
        (count,) = raw.execute(
            "SELECT count(*) FROM skv_records r JOIN skv_workspaces w ON w.id = r.workspace_id "
            "WHERE w.name = ?",
            (workspace.encode(),),
        ).fetchone()
    return int(count)


def test_kms_down_warm_workspaces_go_on_and_everything_else_fails_clearly(
    sqlite_url: str, own_moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = use_moto(monkeypatch, own_moto_server)
    old = generate_master_key()
    _fill(sqlite_url, StaticMasterKey(_raw(old)))
    kms.create_key(alias="alias/secure-kv-down")
    settings = _settings(
        monkeypatch,
        sqlite_url,
        SECURE_KV_KEY_PROVIDER="aws-kms",
        SECURE_KV_AWS_KMS_KEY_ID="alias/secure-kv-down",
        SECURE_KV_PREVIOUS_MASTER_KEYS=old,
    )
    provider = provider_from_settings(settings)
    store = SecureStore.open(sqlite_url, master_key=provider)
    warm = store.workspace("warm")
    warm.set("k", b"v")
    assert store.workspace("tenant-0:plugin").get("key-0") == EXPECTED[("tenant-0:plugin", "key-0")]
    short = SecureStore.open(sqlite_url, master_key=provider, dek_cache_seconds=CACHE_SECONDS)
    assert short.workspace("warm").get("k") == b"v"  # cached for CACHE_SECONDS from now

    own_moto_server.stop()

    # Data keys already unwrapped in this process keep working, for reads and writes.
    warm.set("k2", b"v2")
    assert warm.get("k") == b"v" and warm.get("k2") == b"v2"
    assert store.workspace("tenant-0:plugin").get("key-1") == EXPECTED[("tenant-0:plugin", "key-1")]
    # Anything that needs KMS fails with the provider named and what to check.
    with pytest.raises(
        MasterKeyError, match=r"AWS KMS at http://127\.0\.0\.1:\d+ is unreachable.*AWS_ENDPOINT"
    ):
        store.workspace("brand-new").set("k", b"v")
    assert _records(sqlite_url, "brand-new") == 0
    with (
        SecureStore.open(sqlite_url, master_key=provider) as cold,
        pytest.raises(MasterKeyError, match="AWS KMS"),
    ):
        cold.workspace("warm").get("k")
    with pytest.raises(MasterKeyError, match="AWS KMS"):
        commands.rotate_master(settings, master_key=provider)
    store.close()
    # The cache's age is bounded: once it has passed, even a warm workspace needs KMS.
    time.sleep(CACHE_SECONDS + 0.1)
    with pytest.raises(MasterKeyError, match="AWS KMS"):
        short.workspace("warm").get("k")
    short.close()
    # The rotation wrote nothing: the old key alone still opens every workspace it wrapped.
    with SecureStore.open(sqlite_url, master_key=StaticMasterKey(_raw(old))) as before:
        assert all(before.workspace(w).get(k) == v for (w, k), v in EXPECTED.items())


def test_keyring_daemon_down_warm_store_goes_on_and_key_changes_fail_clearly(
    secret_service: Any, secret_service_session: SecretService, sqlite_url: str
) -> None:
    provider = KeyringMasterKey(create=True)
    with SecureStore.open(sqlite_url, master_key=provider) as store:
        store.workspace("w").set("k", b"v")
        secret_service_session.stop_keyring()
        assert store.workspace("w").get("k") == b"v"
        store.workspace("new").set("k", b"v")  # the master key is in memory already
        with pytest.raises(MasterKeyError, match=r"OS keyring .*running and unlocked"):
            KeyringMasterKey()
        with pytest.raises(MasterKeyError, match="OS keyring"):
            commands.rotate_master(load_settings(database_url=sqlite_url), master_key=provider, generate=True)
    secret_service_session.start_keyring()
    assert KeyringMasterKey().current_key().kek_id == provider.current_key().kek_id  # nothing half-changed
