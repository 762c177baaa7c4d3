"""Fixtures giving real parts: SQLite files, the real PostgreSQL and MariaDB servers, and the
real ``keyring`` package with a backend of the tests' own.

Server URLs come from ``SECURE_KV_TEST_POSTGRES_URL`` and ``SECURE_KV_TEST_MYSQL_URL``
(defaults: the local servers with trust auth). Every test gets its own PostgreSQL schema or
MariaDB database, created and dropped here. When a server is unreachable its tests skip,
except under ``CI=true``, where they fail: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from secure_kv import SecureStore
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.env import forget_environment_keys
from tests.keyring_backend import MemoryKeyring
from tests.scale import partitioned

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("fuzz", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
partitioned.install_sql_log()

POSTGRES_URL = os.environ.get(
    "SECURE_KV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("SECURE_KV_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mysql")

# Settings from the developer's environment must not leak into tests.
for _name in list(os.environ):
    if _name.startswith("SECURE_KV_") and not _name.startswith("SECURE_KV_TEST_"):
        del os.environ[_name]


@pytest.fixture(autouse=True)
def _forget_environment_keys() -> Iterator[None]:
    """A master key one test put in the environment (and the code took out) ends with it."""
    yield
    forget_environment_keys()


def _unreachable(name: str, error: Exception) -> None:
    message = f"{name} server unreachable ({type(error).__name__}: {str(error).splitlines()[0]})"
    if IN_CI:
        pytest.fail(f"{message}; CI must run every database test", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[sa.URL]:
    """A database of this test session's own on the PostgreSQL server."""
    admin_url = sa.make_url(POSTGRES_URL)
    name = f"skv_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as error:
        admin.dispose()
        _unreachable("PostgreSQL", error)
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# docs/databases.md tells MySQL/MariaDB users to allow packets of 256 MiB, so that values up
# to the default SECURE_KV_MAX_VALUE_BYTES (100 MiB) fit; the tests configure the server so.
MYSQL_MAX_ALLOWED_PACKET = 256 * 1024 * 1024


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[sa.Engine]:
    admin = sa.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as connection:
            current = int(connection.exec_driver_sql("SELECT @@global.max_allowed_packet").scalar_one())
            if current < MYSQL_MAX_ALLOWED_PACKET:
                connection.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {MYSQL_MAX_ALLOWED_PACKET}")
    except sa.exc.OperationalError as error:
        admin.dispose()
        _unreachable("MariaDB/MySQL", error)
    yield admin
    admin.dispose()


def _postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    database: sa.URL = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(database, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = database.update_query_dict({"options": f"-csearch_path={schema}"})
    if partitioned.enabled():  # the sharding experiment (tests/scale/test_partitioned.py)
        partitioned.partition_schema(url.render_as_string(hide_password=False))
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


def _mysql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    admin: sa.Engine = request.getfixturevalue("mysql_admin")
    name = f"skv_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE `{name}`")
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def make_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    elif backend == "postgresql":
        yield from _postgres_url(request)
    else:
        yield from _mysql_url(request)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own, on each backend in turn."""
    yield from make_database_url(request.param, request, tmp_path)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A schema of this test's own on the PostgreSQL server, for PostgreSQL-only behaviour."""
    yield from make_database_url("postgresql", request, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def master_key() -> StaticMasterKey:
    return StaticMasterKey(os.urandom(32))


@pytest.fixture
def store(database_url: str, master_key: StaticMasterKey) -> Iterator[SecureStore]:
    with SecureStore.open(database_url, master_key=master_key) as opened:
        yield opened


@pytest.fixture
def sqlite_store(sqlite_url: str, master_key: StaticMasterKey) -> Iterator[SecureStore]:
    with SecureStore.open(sqlite_url, master_key=master_key) as opened:
        yield opened


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    """The real keyring package, with the tests' in-memory backend installed."""
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)
