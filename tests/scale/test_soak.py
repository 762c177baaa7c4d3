"""The short soak (``make soak`` runs the long one): worker processes on each database while
workers are SIGKILLed, server connections terminated and PgBouncer restarted. Zero lost
acknowledged writes, zero misrouted reads, zero errors outside secure_kv.errors, and an
audit log that verifies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import make_database_url

from .servers import PgBouncer
from .soak import Faults, mysql_killer, postgres_killer, run_soak

WORKERS = 3
SECONDS = 6.0


@pytest.fixture
def own_postgres_database(postgres_database: sa.URL) -> Iterator[str]:
    """A database of the test's own: terminating its connections touches no other test."""
    name = f"skv_soak_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _check(report_line: str, report: object) -> None:
    print(report_line)  # shown with -s, and in the failure below
    assert report.problems == [], report_line  # type: ignore[attr-defined]
    assert report.lost_writes == [], report_line  # type: ignore[attr-defined]
    assert report.audit_ok, (report_line, report.audit_failures)  # type: ignore[attr-defined]
    assert report.operations > 0 and report.faults.get("sigkill", 0) > 0, report_line  # type: ignore[attr-defined]


def test_soak_sqlite(tmp_path: Path) -> None:
    report = run_soak(
        "sqlite",
        f"sqlite:///{tmp_path / 'soak.db'}",
        workers=WORKERS,
        seconds=SECONDS,
        directory=tmp_path,
        seed=1,
    )
    _check(report.line(), report)


def test_soak_postgresql_direct(
    own_postgres_database: str, postgres_database: sa.URL, tmp_path: Path
) -> None:
    admin = postgres_database.render_as_string(hide_password=False)
    url = postgres_database.set(database=own_postgres_database).render_as_string(hide_password=False)
    faults = Faults(kill_connections=postgres_killer(admin, own_postgres_database))
    report = run_soak(
        "postgresql", url, workers=WORKERS, seconds=SECONDS, faults=faults, directory=tmp_path, seed=2
    )
    _check(report.line(), report)
    assert report.faults.get("connections terminated", 0) > 0


def test_soak_postgresql_through_pgbouncer(
    pgbouncer: PgBouncer, pgbouncer_url: str, postgres_database: sa.URL, tmp_path: Path
) -> None:
    admin = postgres_database.render_as_string(hide_password=False)
    database = pgbouncer_url.rsplit("/", 1)[1]
    faults = Faults(kill_connections=postgres_killer(admin, database), restart_pooler=pgbouncer.restart)
    report = run_soak(
        "postgresql+pgbouncer",
        pgbouncer_url,
        workers=WORKERS,
        seconds=SECONDS,
        faults=faults,
        directory=tmp_path,
        seed=3,
    )
    _check(report.line(), report)


def test_soak_mariadb(request: pytest.FixtureRequest, tmp_path: Path, mysql_admin: sa.Engine) -> None:
    urls = make_database_url("mysql", request, tmp_path)
    url = next(urls)
    try:
        database = sa.make_url(url).database or ""
        faults = Faults(
            kill_connections=mysql_killer(mysql_admin.url.render_as_string(hide_password=False), database)
        )
        report = run_soak(
            "mariadb", url, workers=WORKERS, seconds=SECONDS, faults=faults, directory=tmp_path, seed=4
        )
        _check(report.line(), report)
        assert report.faults.get("connections terminated", 0) > 0
    finally:
        urls.close()
