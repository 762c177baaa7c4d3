"""Timing and memory helpers shared by the benchmarks in ``bench/``.

Nothing here knows about secure_kv: a *task* is any callable ``run(n) -> seconds`` that
performs ``n`` operations and returns how long they took. :func:`interleave` runs several
tasks in shuffled, alternating blocks, so slow drift of a shared machine (other tenants,
thermal or frequency changes) hits every task alike instead of whichever happened to run
last.
"""

from __future__ import annotations

import gc
import random
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

Task = Callable[[int], float]

_clock: Callable[[], float] = time.perf_counter


def use_cpu_clock(enabled: bool) -> None:
    """Time tasks by this thread's CPU time (user + system) instead of the wall clock.

    On a shared machine a thread waiting for a core is not working, yet the wall clock
    counts it; the CPU clock does not, so ratios of in-process work (SQLite) stop depending
    on how busy the neighbours are. It misses time spent blocked (an fsync, a server's
    work), so it only suits in-process databases; suite.py uses it for SQLite with
    ``--clock cpu``.
    """
    global _clock
    _clock = time.thread_time if enabled else time.perf_counter


def clock() -> float:
    """Seconds on the benchmark clock (see :func:`use_cpu_clock`)."""
    return _clock()


__all__ = [
    "Samples",
    "Task",
    "clock",
    "interleave",
    "key_task",
    "key_value_task",
    "peak_python_bytes",
    "quartiles",
    "use_cpu_clock",
]


@dataclass
class Samples:
    """Per-operation seconds, one sample per block (or per repetition)."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quartiles(self) -> tuple[float, float]:
        return quartiles(self.values)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the value itself when there is only one)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def interleave(
    tasks: dict[str, Task], *, rounds: int, block_ops: int, rng: random.Random
) -> tuple[dict[str, Samples], list[list[str]]]:
    """Run every task once per round, in a freshly shuffled order each round.

    Returns per-op seconds for each block of each task, and the order used in each round
    (so callers can pair tasks round by round). A full collection runs before each block so
    one task's garbage is not collected on another task's clock; the collector otherwise
    stays on, as it would in an application.
    """
    samples = {name: Samples() for name in tasks}
    orders: list[list[str]] = []
    for _ in range(rounds):
        order = list(tasks)
        rng.shuffle(order)
        orders.append(order)
        for name in order:
            gc.collect()
            samples[name].values.append(tasks[name](block_ops) / block_ops)
    return samples, orders


def key_value_task(
    operation: Callable[[str, bytes], Any], keys: Sequence[str], values: Sequence[bytes]
) -> Task:
    """A task calling ``operation(key, value)``, walking keys and values round-robin.

    The (key, value) pairs of a block are picked before the clock starts; a cursor carries
    over between blocks so successive blocks write different keys. ``len(values)`` should
    be coprime with ``len(keys)`` so a key gets a different value each time round.
    """
    cursor = 0

    def run(n: int) -> float:
        nonlocal cursor
        batch = [(keys[(cursor + i) % len(keys)], values[(cursor + i) % len(values)]) for i in range(n)]
        cursor += n
        start = clock()
        for key, value in batch:
            operation(key, value)
        return clock() - start

    return run


def key_task(operation: Callable[[str], Any], keys: Sequence[str]) -> Task:
    """A task calling ``operation(key)``, walking the keys round-robin (see above)."""
    cursor = 0

    def run(n: int) -> float:
        nonlocal cursor
        batch = [keys[(cursor + i) % len(keys)] for i in range(n)]
        cursor += n
        start = clock()
        for key in batch:
            operation(key)
        return clock() - start

    return run


def peak_python_bytes(work: Callable[[], Any]) -> int:
    """Peak Python-heap growth (bytes) while ``work()`` runs, result held until the end.

    Only allocations made after tracing starts count, so inputs prepared beforehand are
    free. tracemalloc sees the Python allocators (every bytes/bytearray object, whoever
    creates it) but not memory that C libraries (SQLite, libpq, OpenSSL) allocate on their
    own.
    """
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = work()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - baseline


# --- where benchmarked stores live ------------------------------------------------


class Database:
    """Where systems live: ``url()`` gives a fresh database (SQLite file, PostgreSQL schema)."""

    name: str

    def url(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SQLiteFiles(Database):
    name = "sqlite"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="skv-bench-")

    def url(self) -> str:
        return f"sqlite:///{self._tmp.name}/{uuid.uuid4().hex[:8]}.db"

    def close(self) -> None:
        self._tmp.cleanup()


class PostgresSchemas(Database):
    """A private schema per ``url()`` (search_path), each dropped with everything in it."""

    name = "postgresql"

    def __init__(self, server_url: str) -> None:
        self.admin = sa.create_engine(
            server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )
        with self.admin.connect() as connection:
            self.version = str(connection.exec_driver_sql("SHOW server_version").scalar())
        self._schemas: list[str] = []

    def url(self) -> str:
        schema = f"skv_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        self._schemas.append(schema)
        url = self.admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        with self.admin.connect() as connection:
            for schema in self._schemas:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.admin.dispose()


# secure_kv's memory map of an SQLite file (secure_kv.sql.database.SQLITE_MMAP_BYTES).
SQLITE_MMAP_BYTES = 256 * 1024 * 1024


def sqlite_pragmas(engine: sa.Engine) -> None:
    """secure_kv's SQLite pragmas for a baseline's engine (minus foreign keys: baseline
    tables have none), so both sides of a ratio run with the same settings."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cursor.close()
