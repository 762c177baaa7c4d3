"""Admin operations as plain typed functions; ``secure_kv.cli`` is a thin layer over them.

Everything the CLI does is scriptable from Python and testable without a subprocess. Each
function takes the settings (``None``: read ``SECURE_KV_*``) and optionally a master-key
provider (``None``: the one the settings name), opens the store, does one job, reports it
to the audit hook, and closes the store. The work itself lives in ``admin/``
(``rotation.py``, ``erasure.py``, ``inventory.py``).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from secure_kv.admin import erasure, inventory, rotation
from secure_kv.categories import Category, parse_category
from secure_kv.errors import AuthenticationError, ConfigurationError, InvalidInputError, SecureKVError
from secure_kv.keys import (
    KeyringMasterKey,
    MasterKeyProvider,
    StaticMasterKey,
    WithPreviousKeys,
    provider_from_settings,
)
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.settings import Settings, load_settings
from secure_kv.sql.database import Database, safe_url
from secure_kv.sql.migrate import ensure_schema, head_revision, upgrade_schema
from secure_kv.store import SecureStore
from secure_kv.store.datakeys import check_master_key
from secure_kv.store.internals import open_store, read_with_category, record_event, store_parts
from secure_kv.validation import check_workspace_name

__all__ = [
    "DemoReport",
    "InitReport",
    "StoredValue",
    "delete_value",
    "demo",
    "get_value",
    "init",
    "list_keys",
    "purge",
    "rotate_master",
    "rotate_workspaces",
    "set_value",
    "shred",
    "status",
]


@dataclass(frozen=True)
class InitReport:
    """What :func:`init` found and did."""

    database: str
    revision_before: str | None
    revision_now: str
    kek_id: str
    created_master_key: bool

    @property
    def changed_schema(self) -> bool:
        return self.revision_before != self.revision_now


def init(settings: Settings | None = None, master_key: MasterKeyProvider | None = None) -> InitReport:
    """Create or upgrade the schema (idempotent); with the keyring provider, make the
    master key if there is none yet. Checks the master key against the store's data keys.
    """
    settings = settings if settings is not None else load_settings()
    # Only the keyring's key is made here; an HSM or KMS key is made on purpose
    # (`secure-kv keygen --provider pkcs11`, `aws kms create-key`), never by a typo'd label.
    create = settings.key_provider == "keyring"
    provider = master_key if master_key is not None else provider_from_settings(settings, create=create)
    database = Database(settings.database_url, settings)
    try:
        before = upgrade_schema(database)
        check_master_key(database, provider)
    finally:
        database.close()
    return InitReport(
        database=safe_url(database.url),
        revision_before=before,
        revision_now=head_revision(),
        kek_id=provider.current_key().kek_id,
        created_master_key=bool(getattr(_managed(provider), "created", False)),
    )


@dataclass
class DemoReport:
    """What :func:`demo` showed, step by step."""

    database: str
    kek_id: str
    read_back: dict[str, bytes] = field(default_factory=dict)
    stored_row_prefix: str = ""
    plaintext_in_file: bool = True
    tamper_detected: bool = False
    tamper_error: str = ""


DEMO_VALUES = {
    "openai": (b"sk-demo-0123456789abcdefghijklmnop", Category.TOKEN, None),
    "user_name": (b"John", Category.PREFERENCE, None),
    "search:weather": (b'{"answer": "sunny"}', Category.CACHE, 300),
}


def demo(directory: str | os.PathLike[str] | None = None) -> DemoReport:
    """Run the main job end to end on a throwaway SQLite store under ``directory``.

    Stores a token, a preference and a cache entry, reads them back, checks that the
    database file holds no plaintext, then flips one byte of a stored record and shows
    that reading it fails authentication.
    """
    with tempfile.TemporaryDirectory(dir=directory, prefix="secure-kv-demo-") as tmp:
        path = Path(tmp) / "demo.db"
        url = f"sqlite:///{path}"
        provider = StaticMasterKey(os.urandom(32))
        with SecureStore.open(url, master_key=provider) as store:
            report = DemoReport(database=url, kek_id=store.kek_id)
            ws = store.workspace("tenant-42:demo-plugin")
            for key, (value, category, ttl) in DEMO_VALUES.items():
                ws.set(key, value, category=category, ttl=ttl)
            for key in DEMO_VALUES:
                found = ws.get(key)
                assert found is not None
                report.read_back[key] = found

            with sqlite3.connect(path) as raw:
                (blob,) = raw.execute(
                    "SELECT value FROM skv_records WHERE record_key = ?", (b"openai",)
                ).fetchone()
                report.stored_row_prefix = bytes(blob[:24]).hex()
                raw.execute("PRAGMA wal_checkpoint(FULL)")
            contents = b"".join(p.read_bytes() for p in Path(tmp).iterdir() if p.name.startswith("demo.db"))
            report.plaintext_in_file = any(value in contents for value, _, _ in DEMO_VALUES.values())

            tampered = bytearray(blob)
            tampered[-1] ^= 0x01
            with sqlite3.connect(path) as raw:
                raw.execute(
                    "UPDATE skv_records SET value = ? WHERE record_key = ?", (bytes(tampered), b"openai")
                )
            try:
                ws.get("openai")
            except AuthenticationError as error:
                report.tamper_detected = True
                report.tamper_error = str(error)
        return report


def _open(settings: Settings | None, master_key: MasterKeyProvider | None) -> SecureStore:
    """The store for an admin command: an existing schema only (``init`` creates one)."""
    settings = settings if settings is not None else load_settings()
    return open_store(settings, master_key, create_schema=False)


def status(
    settings: Settings | None = None, master_key: MasterKeyProvider | None = None
) -> inventory.StoreStatus:
    """Master keys, workspaces, data-key versions with their record counts, rotations due
    or under way. Works without the master key (it then says why the key is unavailable).
    """
    settings = settings if settings is not None else load_settings()
    kek_id: str | None = None
    previous: tuple[str, ...] = ()
    problem: str | None = None
    try:
        provider = master_key if master_key is not None else provider_from_settings(settings)
        kek_id = provider.current_key().kek_id
        previous = tuple(key.kek_id for key in provider.previous_keys())
    except SecureKVError as error:
        problem = str(error)
    database = Database(settings.database_url, settings, create=False)
    try:
        ensure_schema(database, create=False)
        return inventory.store_status(
            database,
            kek_id=kek_id,
            previous_kek_ids=previous,
            master_key_problem=problem,
            dek_max_age_days=settings.dek_max_age_days,
            rotation_events=ROTATION_EVENT,
        )
    finally:
        database.close()


def rotate_master(
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    generate: bool = False,
    retire_previous: bool = False,
    batch_size: int = rotation.DEFAULT_BATCH_KEYS,
    progress: Progress = NO_PROGRESS,
) -> rotation.MasterRotation:
    """Rewrap every data key under the current master key.

    ``generate`` first makes a new current key in the keyring (the old one stays as a
    previous key); ``retire_previous`` deletes the keyring's previous keys once every data
    key is wrapped by the current one. Both need the keyring provider: with ``env`` or
    ``file``, edit the variables or the file instead.
    """
    settings = settings if settings is not None else load_settings()
    provider = master_key if master_key is not None else provider_from_settings(settings)
    keyring_provider = _managed(provider)
    if (generate or retire_previous) and not isinstance(keyring_provider, KeyringMasterKey):
        raise ConfigurationError(
            "--generate and --retire-previous manage keys in the OS keyring (SECURE_KV_KEY_PROVIDER="
            "keyring); with env or file, make a key with `secure-kv keygen`, make it current and list "
            "the old one as previous (SECURE_KV_PREVIOUS_MASTER_KEYS, or a later line of the key file); "
            "with pkcs11 or aws-kms, make the new key and list it first in SECURE_KV_PKCS11_KEY_LABEL "
            "or SECURE_KV_AWS_KMS_KEY_ID"
        )
    with _open(settings, provider) as store:
        if generate:
            assert isinstance(keyring_provider, KeyringMasterKey)
            old = keyring_provider.current_key().kek_id
            new = keyring_provider.generate_new_key().kek_id
            record_event(store, "masterkey.generate", detail=f"new master key {new}; {old} kept as previous")
        report = rotation.rotate_master(store, batch_size=batch_size, progress=progress)
        if retire_previous and report.complete:
            assert isinstance(keyring_provider, KeyringMasterKey)
            retired = [key.kek_id for key in keyring_provider.previous_keys()]
            keyring_provider.forget_previous_keys()
            record_event(store, "masterkey.retire", detail=f"deleted previous master keys {retired}")
        return report


def _managed(provider: MasterKeyProvider) -> MasterKeyProvider:
    """The provider whose keys a command manages (not the previous keys added for reading)."""
    return provider.primary if isinstance(provider, WithPreviousKeys) else provider


def rotate_workspaces(
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    workspaces: list[str] | None = None,
    batch_size: int = rotation.DEFAULT_BATCH_RECORDS,
    progress: Progress = NO_PROGRESS,
) -> rotation.WorkspaceRotations:
    """New data key and re-encryption for each of ``workspaces`` (``None``: all of them)."""
    if batch_size < 1:
        raise InvalidInputError("the batch size must be at least 1")
    with _open(settings, master_key) as store:
        one = workspaces[0] if workspaces is not None and len(workspaces) == 1 else None
        if one is not None:
            inventory.check_workspace_exists(store_parts(store).database, check_workspace_name(one), one)
        # "started" and "interrupted" events let `status` tell a running rotation from an
        # interrupted one (see inventory.rotation_state).
        record_event(store, ROTATION_EVENT, workspace=one, outcome="started")
        try:
            report = rotation.rotate_workspaces(store, workspaces, batch_size=batch_size, progress=progress)
        except KeyboardInterrupt:
            _record_interrupted(store, workspaces)
            raise
        record_event(
            store,
            ROTATION_EVENT,
            outcome="ok" if not report.failed else "incomplete",
            detail=f"{len(report.rotations)} rotated ({report.records} records), {len(report.failed)} failed",
        )
        return report


ROTATION_EVENT = "admin.rotate_workspace"


def _record_interrupted(store: SecureStore, names: list[str] | None) -> None:
    """Record, for each workspace left with two live data keys, that its rotation was
    interrupted (best effort: the interrupt is what the user must hear about).
    """
    try:
        wanted = None if names is None else {check_workspace_name(name) for name in names}
        for name in inventory.workspaces_mid_rotation(store_parts(store).database):
            if wanted is None or name.encode("utf-8") in wanted:
                record_event(store, ROTATION_EVENT, workspace=name, outcome="interrupted")
    except Exception:  # never hide the interrupt behind a follow-up failure
        return


def shred(
    workspace: str,
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    batch_size: int = erasure.DEFAULT_BATCH_RECORDS,
    progress: Progress = NO_PROGRESS,
) -> erasure.ShredReport:
    """Crypto-shred ``workspace`` (see ``admin/erasure.py``): irreversible."""
    if batch_size < 1:
        raise InvalidInputError("the batch size must be at least 1")
    with _open(settings, master_key) as store:
        return erasure.shred(store, workspace, batch_size=batch_size, progress=progress)


def purge(
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    batch_size: int = erasure.DEFAULT_BATCH_RECORDS,
    progress: Progress = NO_PROGRESS,
) -> erasure.PurgeReport:
    """Delete expired entries; the report says how many, per workspace."""
    if batch_size < 1:
        raise InvalidInputError("the batch size must be at least 1")
    with _open(settings, master_key) as store:
        report = erasure.purge(store, batch_size=batch_size, progress=progress)
        record_event(store, "admin.purge_complete", detail=f"deleted {report.deleted} expired entries")
        return report


@dataclass(frozen=True)
class StoredValue:
    """What :func:`get_value` found. ``value`` is ``None`` for a token read without ``reveal``."""

    category: Category
    size: int
    value: bytes | None

    @property
    def masked(self) -> bool:
        return self.value is None


def get_value(
    workspace: str,
    key: str,
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    reveal: bool = False,
) -> StoredValue | None:
    """Read one entry (``None``: missing or expired). A token's bytes are returned only
    with ``reveal``; the read is audited either way.
    """
    with _open(settings, master_key) as store:
        inventory.check_workspace_exists(
            store_parts(store).database, check_workspace_name(workspace), workspace
        )
        found = read_with_category(store.workspace(workspace), key)
        if found is None:
            record_event(store, "operator.get", workspace=workspace, key=key, outcome="missing")
            return None
        value, category = found
        masked = category is Category.TOKEN and not reveal
        record_event(
            store,
            "operator.get",
            workspace=workspace,
            key=key,
            category=category,
            outcome="masked" if masked else ("revealed" if category is Category.TOKEN else "ok"),
            detail="operator command",
        )
        return StoredValue(category, len(value), None if masked else value)


def set_value(
    workspace: str,
    key: str,
    value: bytes,
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    category: Category | str = Category.PREFERENCE,
    ttl: float | timedelta | None = None,
) -> None:
    """Store ``value`` (from stdin in the CLI, never from its arguments)."""
    chosen = parse_category(category)
    with _open(settings, master_key) as store:
        store.workspace(workspace).set(key, value, category=chosen, ttl=ttl)
        record_event(
            store, "operator.set", workspace=workspace, key=key, category=chosen, detail="operator command"
        )


def delete_value(
    workspace: str, key: str, settings: Settings | None = None, master_key: MasterKeyProvider | None = None
) -> bool:
    """Delete one entry; returns whether it existed (unexpired) before."""
    with _open(settings, master_key) as store:
        inventory.check_workspace_exists(
            store_parts(store).database, check_workspace_name(workspace), workspace
        )
        handle = store.workspace(workspace)
        existed = handle.exist(key)
        handle.delete(key)
        record_event(
            store,
            "operator.delete",
            workspace=workspace,
            key=key,
            outcome="ok" if existed else "missing",
            detail="operator command",
        )
        return existed


def list_keys(
    workspace: str,
    settings: Settings | None = None,
    master_key: MasterKeyProvider | None = None,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> Iterator[inventory.KeyInfo]:
    """The workspace's keys with their metadata, in bytewise key order; never a value.

    ``after`` starts after that key and ``limit`` stops after that many (a page). Fetched
    from the database a batch at a time, so memory stays bounded whatever the size. The
    store is opened (and any error, such as a missing workspace, raised) before this
    returns; it is closed when the iterator is exhausted or closed.
    """
    name = check_workspace_name(workspace)
    if limit is not None and limit < 1:
        raise InvalidInputError("--limit must be at least 1")
    store = _open(settings, master_key)
    try:
        inventory.check_workspace_exists(store_parts(store).database, name, workspace)
        record_event(store, "operator.list", workspace=workspace, detail="operator command")
    except BaseException:
        store.close()
        raise
    start = b"" if after is None else after.encode("utf-8")
    return _closing(store, inventory.iter_keys(store_parts(store).database, name, after=start, limit=limit))


def _closing(store: SecureStore, items: Iterator[inventory.KeyInfo]) -> Iterator[inventory.KeyInfo]:
    with store:
        yield from items
