"""Attacker: write access to Dify's plugin storage (its disk, bucket, backups or Redis).

They can copy, replace and delete the bytes of any tenant's entries, but hold neither the
master key (in the plugin's environment) nor any tenant's secret (a Dify credential). One
master key serves every tenant, as docs/dify.md's env set-up does; or each tenant brings its
own key (a StaticMasterKey from its credential). What must hold: nothing they move between
tenants, or between Dify storage and a SQL store sharing the master key, opens; a shared key
without a tenant binding is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.errors import AuthenticationError, ConfigurationError, MasterKeyError
from secure_kv.integrations.dify import EncryptedStorage
from secure_kv.keys import EnvMasterKey, MasterKeyProvider, StaticMasterKey
from secure_kv.keys.base import generate_master_key
from tests.dify_daemon import InMemoryDifyDaemon, import_sdk

try:
    import_sdk()
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("dify-plugin is not installed: pip install 'secure-kv[dify]'", allow_module_level=True)

SECRET_A = generate_master_key()
SECRET_B = generate_master_key()
RECORD_HEADER_BYTES = 14  # docs/dify.md: magic, format, category, expires_at


@pytest.fixture
def shared_key() -> EnvMasterKey:
    """The one master key in the plugin's environment, for every tenant."""
    return EnvMasterKey({"SECURE_KV_MASTER_KEY": generate_master_key()})


@pytest.fixture
def tenants() -> Iterator[tuple[InMemoryDifyDaemon, InMemoryDifyDaemon]]:
    """The same plugin's storage for two Dify workspaces."""
    a, b = InMemoryDifyDaemon(tenant_id="tenant-a"), InMemoryDifyDaemon(tenant_id="tenant-b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _copy(source: InMemoryDifyDaemon, target: InMemoryDifyDaemon, names: list[str]) -> None:
    """What the attacker does: copy the stored bytes of ``names`` into the other tenant."""
    for name in names:
        target.replace(name, source.stored(name))


def _storage(daemon: InMemoryDifyDaemon, key: MasterKeyProvider, secret: str) -> EncryptedStorage:
    return EncryptedStorage(daemon.connect().storage, master_key=key, tenant_secret=secret)


def test_a_token_copied_with_its_data_key_into_another_tenant_does_not_open(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon], shared_key: EnvMasterKey
) -> None:
    a, b = tenants
    _storage(a, shared_key, SECRET_A).set("token", b"sk-tenant-a", category=Category.TOKEN)
    _copy(a, b, a.keys())  # every data key, the pointer and the record
    victim = _storage(b, shared_key, SECRET_B)
    with pytest.raises(AuthenticationError, match="another tenant"):
        victim.get("token")
    # Nor does B seal anything under A's planted data key: it cannot open it.
    with pytest.raises(AuthenticationError, match="another tenant"):
        victim.set("mine", b"v")


def test_a_token_copied_next_to_the_other_tenants_own_data_key_does_not_open(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon], shared_key: EnvMasterKey
) -> None:
    a, b = tenants
    _storage(a, shared_key, SECRET_A).set("token", b"sk-tenant-a", category=Category.TOKEN)
    _storage(b, shared_key, SECRET_B).set("token", b"sk-tenant-b", category=Category.TOKEN)
    a_key_names = [name for name in a.keys() if name.startswith("__secure_kv__/v2/dek-")]
    _copy(a, b, [*a_key_names, "token"])  # B keeps its own pointer
    with pytest.raises(AuthenticationError):
        _storage(b, shared_key, SECRET_B).get("token")


def test_the_tenant_whose_entries_they_are_still_reads_them(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon], shared_key: EnvMasterKey
) -> None:
    # The binding is the secret, not the storage path: a tenant's storage restored
    # elsewhere (a move between Dify deployments) stays readable by that tenant.
    a, b = tenants
    _storage(a, shared_key, SECRET_A).set("token", b"sk-tenant-a")
    _copy(a, b, a.keys())
    assert _storage(b, shared_key, SECRET_A).get("token") == b"sk-tenant-a"


def test_a_shared_master_key_without_a_tenant_secret_is_refused(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon], shared_key: EnvMasterKey
) -> None:
    a, _ = tenants
    with pytest.raises(ConfigurationError, match="tenant_secret"):
        EncryptedStorage(a.connect().storage, master_key=shared_key)
    with pytest.raises(ConfigurationError, match="secure-kv keygen"):
        EncryptedStorage(a.connect().storage, master_key=shared_key, tenant_secret="tenant-a")
    assert a.requests == []  # refused before anything reached Dify


def test_the_master_key_alone_opens_no_value(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon], shared_key: EnvMasterKey
) -> None:
    # Whoever holds the plugin's master key and a copy of the storage, but not the tenant's
    # credential, reads nothing with any other secret.
    a, _ = tenants
    _storage(a, shared_key, SECRET_A).set("token", b"sk-tenant-a")
    with pytest.raises(AuthenticationError):
        _storage(a, shared_key, generate_master_key()).get("token")


# --- Between Dify storage and a SQL store sharing the master key --------------------------


def _sql_rows(url: str) -> tuple[bytes, bytes]:
    """The SQL store's one wrapped data key and one sealed value."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            wrapped = connection.execute(sa.text("SELECT wrapped FROM skv_data_keys")).scalar_one()
            value = connection.execute(sa.text("SELECT value FROM skv_records")).scalar_one()
    finally:
        engine.dispose()
    return bytes(wrapped), bytes(value)


def test_a_sql_data_key_and_record_planted_in_dify_storage_do_not_open(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon],
    shared_key: EnvMasterKey,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = tenants
    with SecureStore.open(sqlite_url, master_key=shared_key) as store:
        store.workspace("dify-plugin-storage").set("token", b"sk-from-sql", category=Category.TOKEN)
    sql_wrapped, sql_value = _sql_rows(sqlite_url)
    # The Dify data key gets id 1, the SQL workspace's first version, so only labels differ.
    monkeypatch.setattr(EncryptedStorage, "_new_key_id", lambda self: 1)
    _storage(a, shared_key, SECRET_A).set("token", b"sk-dify", category=Category.TOKEN)
    for name in ("__secure_kv__/v2/dek-00000001", "__secure_kv__/v2/dek"):
        stored = a.stored(name)
        a.replace(name, stored[: len(stored) - len(sql_wrapped)] + sql_wrapped)
    a.replace("token", a.stored("token")[:RECORD_HEADER_BYTES] + sql_value)
    with pytest.raises(AuthenticationError):
        _storage(a, shared_key, SECRET_A).get("token")


def test_a_dify_data_key_and_record_planted_in_a_sql_store_do_not_open(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon],
    shared_key: EnvMasterKey,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = tenants
    monkeypatch.setattr(EncryptedStorage, "_new_key_id", lambda self: 1)
    _storage(a, shared_key, SECRET_A).set("token", b"sk-dify", category=Category.TOKEN)
    dify_key, dify_record = a.stored("__secure_kv__/v2/dek"), a.stored("token")
    with SecureStore.open(database_url, master_key=shared_key) as store:
        store.workspace("dify-plugin-storage").set("token", b"sk-sql", category=Category.TOKEN)
    sql_wrapped, _ = _sql_rows(database_url)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE skv_data_keys SET wrapped = :w"), {"w": dify_key[-len(sql_wrapped) :]}
            )
            connection.execute(
                sa.text("UPDATE skv_records SET value = :v"), {"v": dify_record[RECORD_HEADER_BYTES:]}
            )
    finally:
        engine.dispose()
    with SecureStore.open(database_url, master_key=shared_key) as store:
        with pytest.raises(AuthenticationError):
            store.workspace("dify-plugin-storage").get("token")


def test_tenants_with_their_own_master_keys_need_no_tenant_secret_and_copies_do_not_open(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon],
) -> None:
    """DESIGN.md's form, EncryptedStorage(storage, master_key=provider), with each tenant's own
    key taken from its credential: the key itself binds the tenant."""
    a, b = tenants
    key_a, key_b = StaticMasterKey(os.urandom(32)), StaticMasterKey(os.urandom(32))
    storage_a = EncryptedStorage(a.connect().storage, master_key=key_a)
    storage_a.set("token", b"sk-tenant-a", category=Category.TOKEN)
    assert EncryptedStorage(a.connect().storage, master_key=key_a).get("token") == b"sk-tenant-a"
    storage_b = EncryptedStorage(b.connect().storage, master_key=key_b)
    storage_b.set("own", b"b's value")  # B has a data key of its own
    _copy(a, b, ["token"])  # the record alone, next to B's data key
    with pytest.raises(AuthenticationError):
        storage_b.get("token")
    _copy(a, b, a.keys())  # and with A's data key: wrapped by a key B does not hold
    with pytest.raises((AuthenticationError, MasterKeyError)):
        EncryptedStorage(b.connect().storage, master_key=key_b).get("token")


def test_an_own_key_entry_does_not_open_under_a_tenant_secret_with_the_same_key(
    tenants: tuple[InMemoryDifyDaemon, InMemoryDifyDaemon],
) -> None:
    a, b = tenants
    raw = os.urandom(32)
    EncryptedStorage(a.connect().storage, master_key=StaticMasterKey(raw)).set("token", b"sk-a")
    _copy(a, b, a.keys())
    with pytest.raises(AuthenticationError):
        EncryptedStorage(b.connect().storage, master_key=StaticMasterKey(raw), tenant_secret=SECRET_B).get(
            "token"
        )
