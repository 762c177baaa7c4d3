"""Fixtures for the scale-out tests: a real PgBouncer in transaction pooling mode in front of
the shared PostgreSQL server (started and stopped here, on a port of its own), and a
database of each test's own reached through it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import IN_CI

from .servers import PGBOUNCER, PgBouncer

# Fewer server connections than the clients that share them, so every transaction may land
# on another server connection than the one before (what breaks session state).
PGBOUNCER_POOL_SIZE = 2


@pytest.fixture(scope="session")
def pgbouncer(postgres_database: sa.URL) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling, pool of 2) in front of the test PostgreSQL server."""
    if shutil.which(PGBOUNCER) is None:
        message = f"PgBouncer not installed at {PGBOUNCER} (Debian package pgbouncer)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    bouncer = PgBouncer(
        postgres_database.host or "127.0.0.1", postgres_database.port or 5432, pool_size=PGBOUNCER_POOL_SIZE
    )
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.cleanup()


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer, postgres_database: sa.URL) -> Iterator[str]:
    """A database of this test's own on the shared server, reached through PgBouncer.

    A database rather than a schema: PgBouncer 1.18 refuses the ``options`` startup
    parameter that selects a schema (see docs/scaling.md).
    """
    name = f"skv_pgb_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield pgbouncer.url(name)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
