"""One contract, every plugin storage: a SQL workspace on each database, and EncryptedStorage
over the real dify-plugin SDK and the in-process daemon (tests/dify_daemon.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from secure_kv import Category, SecureStore, Workspace
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import generate_master_key
from secure_kv.testing.storage import PluginStorageContract, StorageFactory
from tests.conftest import IN_CI
from tests.dify_daemon import InMemoryDifyDaemon, import_sdk


class TestWorkspace(PluginStorageContract):
    """A SQL workspace, on SQLite, PostgreSQL and MariaDB (``database_url``)."""

    @pytest.fixture
    def make_storage(self, database_url: str, master_key: StaticMasterKey) -> Iterator[StorageFactory]:
        stores: list[SecureStore] = []
        self.url = database_url

        def make(
            *,
            credential_policy: str = "warn",
            max_value_bytes: int | None = None,
            default_cache_ttl: float | None = None,
        ) -> Workspace:
            options: dict[str, Any] = {"credential_policy": credential_policy}
            if max_value_bytes is not None:
                options["max_value_bytes"] = max_value_bytes
            if default_cache_ttl is not None:
                options["default_cache_ttl"] = default_cache_ttl
            store = SecureStore.open(database_url, master_key=master_key, **options)
            stores.append(store)
            return store.workspace("contract")

        yield make
        for store in stores:
            store.close()

    def stored_category(self, storage: Any, key: str) -> Category:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                value = connection.execute(
                    sa.text("SELECT category FROM skv_records WHERE record_key = :k"), {"k": key.encode()}
                ).scalar_one()
        finally:
            engine.dispose()
        return Category(value)


try:
    import_sdk()
    from secure_kv.integrations import dify
    from secure_kv.integrations.dify import DEFAULT_MAX_VALUE_BYTES, EncryptedStorage
except ImportError:  # pragma: no cover - depends on the environment
    if IN_CI:
        raise
else:

    class TestEncryptedStorage(PluginStorageContract):
        """EncryptedStorage over the SDK's own ``session.storage``, bound to its tenant either way
        docs/dify.md allows: a tenant secret, or the tenant's own StaticMasterKey."""

        default_max_value_bytes = DEFAULT_MAX_VALUE_BYTES
        extra_refused_keys = (
            "a/../b",
            "..",
            "a\\b",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/./b",
            "__secure_kv__/v2/dek",
            "__secure_kv__x",
        )

        @pytest.fixture(params=["tenant_secret", "own_master_key"])
        def make_storage(self, request: pytest.FixtureRequest) -> Iterator[StorageFactory]:
            daemon = InMemoryDifyDaemon()
            self.daemon = daemon
            session = daemon.connect()
            own_key = request.param == "own_master_key"
            master_key = StaticMasterKey(os.urandom(32))
            tenant_secret = None if own_key else generate_master_key()

            def make(
                *,
                credential_policy: str = "warn",
                max_value_bytes: int | None = None,
                default_cache_ttl: float | None = None,
            ) -> EncryptedStorage:
                return EncryptedStorage(
                    session.storage,
                    master_key=master_key,
                    tenant_secret=tenant_secret,
                    credential_policy=credential_policy,
                    max_value_bytes=max_value_bytes,
                    default_cache_ttl=default_cache_ttl,
                )

            try:
                yield make
            finally:
                daemon.close()

        def stored_category(self, storage: Any, key: str) -> Category:
            return dify._parse_record(self.daemon.stored(key)).category
