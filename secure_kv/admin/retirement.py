"""Deleting data-key rows that records may still name: the database decides when it is safe.

Each record names its data key through a foreign key (``skv_records`` (workspace_id,
dek_version) to ``skv_data_keys``). A workspace rotation retires the old versions and a
shred the destroyed ones, but a process that cached a key before either began may still
write a record under it for up to its cache age. So the caller never trusts caches: it
sweeps such records ("stragglers") away, then tries to delete the key rows in one
transaction that first locks them. The foreign key refuses the delete while any record
still names them; the caller sweeps again and retries until the rows are gone.

Locking the key rows first (``SELECT ... FOR UPDATE``; on SQLite ``BEGIN IMMEDIATE`` holds
the whole database) makes a writer that is about to add a straggler wait for the deleting
transaction instead of slipping one in between the last sweep and the delete. When the
transaction commits, that writer's foreign-key check fails, and ``Workspace.set`` reloads
the current key and writes again: nothing is lost and nothing unreadable is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from secure_kv.errors import SecureKVError
from secure_kv.sql import statements
from secure_kv.sql.database import Database

__all__ = ["lock_data_keys", "retire_when_unreferenced", "try_transaction"]

_FIRST_PAUSE_SECONDS = 0.05
_LONGEST_PAUSE_SECONDS = 1.0


def lock_data_keys(connection: sa.Connection, workspace_id: int, through: int) -> None:
    """Lock the workspace's data-key rows up to version ``through`` until the transaction
    ends.

    A no-op on SQLite, whose ``BEGIN IMMEDIATE`` already keeps every other writer out.
    """
    connection.execute(statements.lock_data_keys(workspace_id, through)).all()


def try_transaction(
    database: Database, connection: sa.Connection, work: Callable[[sa.Connection], bool]
) -> bool | None:
    """Run ``work`` in one transaction on ``connection``.

    Returns what ``work`` returns, or ``None`` when the transaction was rolled back because
    the foreign key refused a delete or the server chose it as a deadlock victim: worth
    another try after a sweep.
    """
    try:
        with connection.begin():
            return work(connection)
    except sa.exc.IntegrityError:
        return None
    except sa.exc.DBAPIError as error:
        if database.is_transient(error):
            return None
        raise


def retire_when_unreferenced(
    sweep: Callable[[], object],
    finish: Callable[[], bool | None],
    *,
    patience: float,
    stuck: Callable[[], SecureKVError],
) -> None:
    """Alternate ``sweep()`` and ``finish()`` until ``finish`` returns true.

    ``finish`` returns ``False`` when too many stragglers remain for one transaction (sweep
    again at once) and ``None`` when the delete was refused (sweep again after a pause). A
    writer moves off a retired key within its cache age, so if ``finish`` still fails
    ``patience`` seconds after the first sweep, ``stuck()`` is raised; running the
    operation again resumes it.
    """
    sweep()
    deadline = time.monotonic() + patience
    pause = _FIRST_PAUSE_SECONDS
    while True:
        outcome = finish()
        if outcome:
            return
        if time.monotonic() > deadline:
            raise stuck()
        if outcome is None:
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE_SECONDS)
        sweep()
