"""Capability: a caller passing any sequence of calls through the API.

A hypothesis state machine drives one store through set, get, exist, delete, the batch
calls, TTL expiry under a controlled clock, reopening, master-key and workspace-key
rotation, crypto-shredding and purging, and compares every read with a plain dict model
(value, category, expiry). It is the suite's correctness oracle: whatever order a caller
picks, the store answers as the dict does. Each example gets a database of its own; SQLite
runs the most examples, PostgreSQL and MariaDB fewer (``make fuzz`` runs many more).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from secure_kv import Category, SecureStore
from secure_kv.admin import erasure, rotation
from secure_kv.errors import InvalidInputError
from secure_kv.keys import StaticMasterKey
from secure_kv.store import datakeys as datakeys_module

WORKSPACES = ("tenant-a:plugin", "tenant-b:plugin")
KEYS = ("openai", "pref", "cache-1", "ké y/ü", "x" * 40)
TTLS = (None, 1, 5, 30)
DEFAULT_CACHE_TTL = 20  # seconds; small, so the clock rules reach it
START = 1_800_000_000_000_000  # microseconds: a fixed "now" for every example

# Examples and steps per backend: SQLite in every run, the servers fewer (each example
# creates its schema). HYPOTHESIS_PROFILE=fuzz (make fuzz) multiplies them.
_FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
BUDGET = {
    "sqlite": (300, 40) if _FUZZ else (20, 25),
    "postgresql": (60, 30) if _FUZZ else (6, 15),
    "mysql": (40, 30) if _FUZZ else (4, 15),
}


class Clock:
    """The store's clock: every module's ``now_micros`` reads ``Clock.now``."""

    now = START

    @classmethod
    def read(cls) -> int:
        return cls.now


@pytest.fixture
def controlled_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Clock]]:
    """Replace ``now_micros`` wherever the store imported it (datakeys defines it; store,
    batches, erasure, audit, inventory ... import it by name)."""
    original = datakeys_module.now_micros
    for name, module in list(sys.modules.items()):
        if name.startswith("secure_kv") and getattr(module, "now_micros", None) is original:
            monkeypatch.setattr(module, "now_micros", Clock.read)
    Clock.now = START
    yield Clock


@dataclass
class Entry:
    value: bytes
    category: Category
    expires_at: int | None  # microseconds

    def live(self, now: int) -> bool:
        return self.expires_at is None or self.expires_at > now


def expiry(category: Category, ttl: int | None) -> int | None:
    seconds = DEFAULT_CACHE_TTL if ttl is None and category is Category.CACHE else ttl
    return None if seconds is None else Clock.now + max(1, math.ceil(seconds * 1_000_000))


keys = st.sampled_from(KEYS)
workspaces = st.sampled_from(WORKSPACES)
values = st.binary(max_size=48)
categories = st.sampled_from(list(Category))
ttls = st.sampled_from(TTLS)


def make_machine(new_url: Callable[[], tuple[str, Callable[[], None]]]) -> type[RuleBasedStateMachine]:
    """The state machine over databases from ``new_url`` (a URL and its clean-up)."""

    class StoreModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model: dict[tuple[str, str], Entry] = {}
            self.master = os.urandom(32)
            self.url, self.cleanup = new_url()
            Clock.now = START
            self.store = self._open(StaticMasterKey(self.master))

        def _open(self, provider: StaticMasterKey) -> SecureStore:
            return SecureStore.open(self.url, master_key=provider, default_cache_ttl=DEFAULT_CACHE_TTL)

        def teardown(self) -> None:
            self.store.close()
            self.cleanup()

        def live(self, workspace: str, key: str) -> Entry | None:
            entry = self.model.get((workspace, key))
            return entry if entry is not None and entry.live(Clock.now) else None

        # --- single calls ------------------------------------------------------------

        @initialize(workspace=workspaces, key=keys, value=values)
        def first_write(self, workspace: str, key: str, value: bytes) -> None:
            self.set(workspace, key, value, Category.PREFERENCE, None)

        @rule(workspace=workspaces, key=keys, value=values, category=categories, ttl=ttls)
        def set(self, workspace: str, key: str, value: bytes, category: Category, ttl: int | None) -> None:
            self.store.workspace(workspace).set(key, value, category=category, ttl=ttl)
            self.model[(workspace, key)] = Entry(value, category, expiry(category, ttl))

        @rule(workspace=workspaces, key=keys)
        def get(self, workspace: str, key: str) -> None:
            entry = self.live(workspace, key)
            assert self.store.workspace(workspace).get(key) == (None if entry is None else entry.value)

        @rule(workspace=workspaces, key=keys)
        def exist(self, workspace: str, key: str) -> None:
            assert self.store.workspace(workspace).exist(key) == (self.live(workspace, key) is not None)

        @rule(workspace=workspaces, key=keys)
        def delete(self, workspace: str, key: str) -> None:
            self.store.workspace(workspace).delete(key)
            self.model.pop((workspace, key), None)

        # --- batches -----------------------------------------------------------------

        @rule(
            workspace=workspaces,
            items=st.dictionaries(keys, values, min_size=1, max_size=4),
            category=categories,
            ttl=ttls,
        )
        def set_many(
            self, workspace: str, items: dict[str, bytes], category: Category, ttl: int | None
        ) -> None:
            self.store.workspace(workspace).set_many(items, category=category, ttl=ttl)
            for key, value in items.items():
                self.model[(workspace, key)] = Entry(value, category, expiry(category, ttl))

        @rule(workspace=workspaces, asked=st.lists(keys, max_size=6))
        def get_many(self, workspace: str, asked: list[str]) -> None:
            expected = {}
            for key in asked:
                entry = self.live(workspace, key)
                if entry is not None:
                    expected[key] = entry.value
            assert self.store.workspace(workspace).get_many(asked) == expected

        @rule(workspace=workspaces, asked=st.lists(keys, max_size=6))
        def delete_many(self, workspace: str, asked: list[str]) -> None:
            self.store.workspace(workspace).delete_many(asked)
            for key in asked:
                self.model.pop((workspace, key), None)

        # --- time, reopening, keys ---------------------------------------------------

        @rule(seconds=st.sampled_from((0.5, 1, 4, 10, 25)))
        def advance_clock(self, seconds: float) -> None:
            Clock.now += int(seconds * 1_000_000)

        @rule(pick=st.integers(0, 20), offset=st.sampled_from((-1, 0, 1)))
        def advance_to_an_expiry(self, pick: int, offset: int) -> None:
            """To one microsecond before, at or after a stored expiry: the boundary."""
            pending = sorted(
                {e.expires_at for e in self.model.values() if e.expires_at and e.expires_at > Clock.now}
            )
            if pending:
                Clock.now = max(Clock.now, pending[pick % len(pending)] + offset)

        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = self._open(StaticMasterKey(self.master))

        @rule()
        def rotate_master(self) -> None:
            """A new master key, the old one kept as previous for the rotation only, then
            retired: every record must still read under the new key alone."""
            new = os.urandom(32)
            self.store.close()
            with self._open(StaticMasterKey(new, previous=[self.master])) as rotating:
                report = rotation.rotate_master(rotating)
                assert report.complete, report
            self.master = new
            self.store = self._open(StaticMasterKey(self.master))

        @rule(workspace=workspaces)
        def rotate_workspace(self, workspace: str) -> None:
            try:
                report = rotation.rotate_workspace(self.store, workspace)
            except InvalidInputError:
                return  # never written: rotation refuses a workspace that does not exist
            assert report.to_version is None or report.to_version not in report.from_versions

        @rule(workspace=workspaces)
        def shred(self, workspace: str) -> None:
            try:
                erasure.shred(self.store, workspace)
            except InvalidInputError:
                return  # never written: nothing to shred
            for ws, key in list(self.model):
                if ws == workspace:
                    del self.model[(ws, key)]

        @rule()
        def purge(self) -> None:
            expired = [item for item, entry in self.model.items() if not entry.live(Clock.now)]
            report = erasure.purge(self.store)
            assert report.deleted == len(expired)
            for item in expired:
                del self.model[item]

        # --- the whole model, after every step ---------------------------------------

        @invariant()
        def every_workspace_reads_as_the_model(self) -> None:
            for workspace in WORKSPACES:
                expected = {
                    key: entry.value
                    for (ws, key), entry in self.model.items()
                    if ws == workspace and entry.live(Clock.now)
                }
                ws = self.store.workspace(workspace)
                assert ws.get_many(KEYS) == expected
                assert {key for key in KEYS if ws.exist(key)} == set(expected)

    return StoreModel


def _run(backend: str, new_url: Callable[[], tuple[str, Callable[[], None]]]) -> None:
    examples, steps = BUDGET[backend]
    run_state_machine_as_test(
        make_machine(new_url),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


def test_the_store_behaves_as_a_dict_on_sqlite(controlled_clock: type[Clock], tmp_path: Path) -> None:
    def new_url() -> tuple[str, Callable[[], None]]:
        directory = Path(tempfile.mkdtemp(dir=tmp_path))
        return f"sqlite:///{directory / 'store.db'}", lambda: None

    _run("sqlite", new_url)


def test_the_store_behaves_as_a_dict_on_postgresql(
    controlled_clock: type[Clock], postgres_database: sa.URL
) -> None:
    engine = sa.create_engine(postgres_database, isolation_level="AUTOCOMMIT")

    def new_url() -> tuple[str, Callable[[], None]]:
        schema = f"m_{uuid.uuid4().hex[:12]}"
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

        def drop() -> None:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        url = postgres_database.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False), drop

    try:
        _run("postgresql", new_url)
    finally:
        engine.dispose()


def test_the_store_behaves_as_a_dict_on_mariadb(
    controlled_clock: type[Clock], mysql_admin: sa.Engine
) -> None:
    def new_url() -> tuple[str, Callable[[], None]]:
        name = f"skv_m_{uuid.uuid4().hex[:12]}"
        with mysql_admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE `{name}`")

        def drop() -> None:
            with mysql_admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")

        return mysql_admin.url.set(database=name).render_as_string(hide_password=False), drop

    _run("mysql", new_url)


def test_the_clock_reaches_every_module_that_reads_it(controlled_clock: type[Clock]) -> None:
    """A guard on the model itself: a module that imports the clock by name after this test
    was written is still driven by it (else expiry rules would test nothing there)."""
    for name, module in sys.modules.items():
        if name.startswith("secure_kv") and hasattr(module, "now_micros"):
            assert module.now_micros == Clock.read, name
