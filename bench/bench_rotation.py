"""Key rotation cost: master rotation against workspace count, workspace re-encryption
against a plain SQLAlchemy Core read-and-rewrite, and memory as records grow; one run.

What is measured
    Master rotation: ``rotation.rotate_master`` on a store of 1,000 workspaces with 30
    records each, and on one of 1,000 workspaces with 1 record each. Each timed run
    rewraps all 1,000 data keys (the two master keys take turns as current). Rewrapping
    touches data keys only, so the ratio should stay near 1 (target: at most 1.5x).

    Workspace re-encryption: ``rotation.rotate_workspace`` on one workspace of N records
    (100-byte values), each run a full rotation: new data key, every record opened and
    sealed again in batches of 1,000, old key deleted. Baseline: the same number of rows
    read and rewritten the way a user would with SQLAlchemy Core, in a table
    ``(namespace, key) -> value`` holding values of the same stored size (150 bytes):
    batches of 1,000 by key (``select ... where key > last order by key limit 1000``),
    each rewritten with one executemany ``update ... set value = :v where namespace and
    key`` in one transaction (``engine.connect()`` + ``connection.begin()``). Targets: at
    most 1.6x the baseline's time, at least 50,000 records/s on SQLite.

    Memory: peak growth of the Python heap (tracemalloc) during one workspace rotation of
    N and of 4N records. Batches are bounded, so the ratio should stay near 1.

Method (shared, noisy 2-core machines)
    * Every number is from this run; ratios are never taken across runs.
    * Systems alternate in shuffled order each round; a system's time is its median over
      the rounds; the spread of per-round ratios (25th-75th percentile) is printed as a
      noise gauge.
    * SQLite: WAL, synchronous=NORMAL for both systems (secure_kv also has foreign keys on,
      part of its cost). PostgreSQL (``--postgres URL``): a fresh schema per store, dropped
      at the end. Records are created with ``tests/bulk.py``'s ``fill_workspace``
      (sealed exactly as ``set`` would), which is not timed.

Usage (from the repo root)::

    python bench/bench_rotation.py               # full run
    python bench/bench_rotation.py --quick       # smoke test
    python bench/bench_rotation.py --no-postgres --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import secure_kv  # noqa: E402
from bench._harness import Database as Backend  # noqa: E402
from bench._harness import PostgresSchemas as PostgresBackend  # noqa: E402
from bench._harness import (  # noqa: E402
    Samples,
    peak_python_bytes,
    quartiles,
    sqlite_pragmas,
)
from bench._harness import SQLiteFiles as SqliteBackend  # noqa: E402
from secure_kv import SecureStore  # noqa: E402
from secure_kv.admin.rotation import rotate_master, rotate_workspace  # noqa: E402
from secure_kv.keys import StaticMasterKey  # noqa: E402
from tests.bulk import fill_workspace  # noqa: E402

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WORKSPACES = 1000
VALUE_BYTES = 100
SEALED_BYTES = VALUE_BYTES + 50
BATCH = 1000
MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    workspaces: int
    rounds: int
    records: int
    memory_records: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        return cls(200, 2, 20_000, 5_000) if quick else cls(WORKSPACES, 7, 100_000, 20_000)


def value_of(rng: random.Random) -> Callable[[int], bytes]:
    pool = [rng.randbytes(VALUE_BYTES) for _ in range(1009)]
    return lambda index: pool[index % len(pool)]


# --- databases ------------------------------------------------------------------------


# --- master rotation ------------------------------------------------------------------


class MasterStore:
    """A store of ``workspaces`` workspaces with ``per_workspace`` records each; every
    :meth:`rotate` call rewraps all its data keys, the two master keys taking turns."""

    def __init__(self, url: str, workspaces: int, per_workspace: int, value: Callable[[int], bytes]) -> None:
        self.url = url
        self.keys = [os.urandom(32), os.urandom(32)]
        with SecureStore.open(url, master_key=StaticMasterKey(self.keys[0])) as store:
            for number in range(workspaces):
                fill_workspace(store, f"tenant-{number:05d}", per_workspace, value=value)
        self.turn = 0

    def rotate(self) -> float:
        self.turn += 1
        new, old = self.keys[self.turn % 2], self.keys[(self.turn + 1) % 2]
        with SecureStore.open(self.url, master_key=StaticMasterKey(new, previous=[old])) as store:
            start = time.perf_counter()
            report = rotate_master(store)
            elapsed = time.perf_counter() - start
        if report.rewrapped == 0 or not report.complete:
            raise AssertionError(f"master rotation rewrapped {report.rewrapped} keys")
        return elapsed


def master_rotation(backend: Backend, config: Config, rng: random.Random) -> dict[str, Any]:
    value = value_of(rng)
    systems = {
        "30 records": MasterStore(backend.url(), config.workspaces, 30, value),
        "1 record": MasterStore(backend.url(), config.workspaces, 1, value),
    }
    for system in systems.values():
        system.rotate()  # warm-up
    samples = alternate({name: system.rotate for name, system in systems.items()}, config.rounds, rng)
    return compare(samples["30 records"], samples["1 record"], ("30 records", "1 record"))


# --- workspace rotation ---------------------------------------------------------------


class SecureRotation:
    def __init__(self, url: str, records: int, value: Callable[[int], bytes]) -> None:
        self.records = records
        self.store = SecureStore.open(url, master_key=StaticMasterKey(os.urandom(32)))
        fill_workspace(self.store, "bench", records, value=value)

    def run(self) -> float:
        start = time.perf_counter()
        report = rotate_workspace(self.store, "bench", batch_size=BATCH)
        elapsed = time.perf_counter() - start
        if report.records != self.records:
            raise AssertionError(f"re-encrypted {report.records} of {self.records} records")
        return elapsed

    def close(self) -> None:
        self.store.close()


class PlainRewrite:
    """Read every row and write it back changed, as user code would with SQLAlchemy Core."""

    def __init__(self, url: str, records: int, rng: random.Random) -> None:
        self.records = records
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            sqlite_pragmas(self.engine)
        metadata = sa.MetaData()
        self.table = sa.Table(
            f"plain_kv_{uuid.uuid4().hex[:8]}",
            metadata,
            sa.Column("namespace", sa.String(255), primary_key=True),
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("value", sa.LargeBinary, nullable=False),
        )
        metadata.create_all(self.engine)
        pool = [rng.randbytes(SEALED_BYTES) for _ in range(1009)]
        with self.engine.begin() as connection:
            for first in range(0, records, 10_000):
                connection.execute(
                    sa.insert(self.table),
                    [
                        {"namespace": "bench", "key": f"record-{i:08d}", "value": pool[i % len(pool)]}
                        for i in range(first, min(first + 10_000, records))
                    ],
                )
        t = self.table.c
        self.update = (
            sa.update(self.table)
            .where(t.namespace == sa.bindparam("b_namespace"), t.key == sa.bindparam("b_key"))
            .values(value=sa.bindparam("b_value"))
        )

    def run(self) -> float:
        t = self.table.c
        done = 0
        after = ""
        start = time.perf_counter()
        with self.engine.connect() as connection:
            while True:
                with connection.begin():
                    rows = connection.execute(
                        sa.select(t.key, t.value)
                        .where(t.namespace == "bench", t.key > after)
                        .order_by(t.key)
                        .limit(BATCH)
                    ).all()
                    if not rows:
                        break
                    connection.execute(
                        self.update,
                        [
                            {"b_namespace": "bench", "b_key": key, "b_value": value[::-1]}
                            for key, value in rows
                        ],
                    )
                done += len(rows)
                after = rows[-1][0]
        elapsed = time.perf_counter() - start
        if done != self.records:
            raise AssertionError(f"rewrote {done} of {self.records} rows")
        return elapsed

    def close(self) -> None:
        self.engine.dispose()


def workspace_rotation(backend: Backend, config: Config, rng: random.Random) -> dict[str, Any]:
    secure = SecureRotation(backend.url(), config.records, value_of(rng))
    plain = PlainRewrite(backend.url(), config.records, rng)
    try:
        secure.run()  # warm-up
        plain.run()
        samples = alternate({"secure_kv": secure.run, "plain Core": plain.run}, config.rounds, rng)
    finally:
        secure.close()
        plain.close()
    result = compare(samples["secure_kv"], samples["plain Core"], ("secure_kv", "plain Core"))
    result["records"] = config.records
    result["records_per_second"] = config.records / result["secure_kv"]
    result["plain_records_per_second"] = config.records / result["plain Core"]
    return result


def memory(backend: Backend, config: Config, rng: random.Random) -> dict[str, Any]:
    """Peak Python heap growth of one rotation of N and of 4N records."""
    peaks: dict[int, int] = {}
    value = value_of(rng)
    for records in (config.memory_records, 4 * config.memory_records):
        with SecureStore.open(backend.url(), master_key=StaticMasterKey(os.urandom(32))) as store:
            fill_workspace(store, "bench", records, value=value)
            rotate_workspace(store, "bench")  # warm caches and compiled statements
            peaks[records] = peak_python_bytes(functools.partial(rotate_workspace, store, "bench"))
    small, large = sorted(peaks)
    return {"peak_bytes": peaks, "ratio": peaks[large] / peaks[small], "records": [small, large]}


# --- shared ---------------------------------------------------------------------------


def alternate(tasks: dict[str, Callable[[], float]], rounds: int, rng: random.Random) -> dict[str, Samples]:
    samples = {name: Samples() for name in tasks}
    for _ in range(rounds):
        order = list(tasks)
        rng.shuffle(order)
        for name in order:
            samples[name].values.append(tasks[name]())
    return samples


def compare(numerator: Samples, denominator: Samples, names: tuple[str, str]) -> dict[str, Any]:
    per_round = [n / d for n, d in zip(numerator.values, denominator.values, strict=True)]
    low, high = quartiles(per_round)
    return {
        names[0]: numerator.median,
        names[1]: denominator.median,
        "ratio": numerator.median / denominator.median,
        "round_ratio_p25": low,
        "round_ratio_p75": high,
        "samples": {names[0]: numerator.values, names[1]: denominator.values},
    }


@contextmanager
def backends(args: argparse.Namespace) -> Iterator[list[Backend]]:
    found: list[Backend] = [SqliteBackend()]
    if not args.no_postgres and args.postgres:
        try:
            found.append(PostgresBackend(args.postgres))
        except Exception as error:
            cause = getattr(error, "orig", None) or error
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            print(
                f"PostgreSQL: skipped, {sa.make_url(args.postgres).render_as_string()} unreachable ({reason})"
            )
    try:
        yield found
    finally:
        for backend in found:
            backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--postgres", metavar="URL", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--seed", type=int, help="random seed for values and order")
    args = parser.parse_args(argv)

    for name in list(os.environ):
        if name.startswith("SECURE_KV_"):
            del os.environ[name]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    config = Config.for_mode(args.quick)
    results: dict[str, Any] = {
        "environment": {
            "secure_kv": secure_kv.__version__,
            "python": platform.python_version(),
            "sqlalchemy": sa.__version__,
            "cryptography": cryptography.__version__,
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "seed": seed,
            "config": config.__dict__,
        }
    }
    env = results["environment"]
    print(
        f"secure_kv {env['secure_kv']} key rotation, median of {config.rounds} alternating rounds"
        f"{' [QUICK]' if args.quick else ''}"
    )
    print(
        f"Python {env['python']}, SQLAlchemy {env['sqlalchemy']}, cryptography {env['cryptography']}, "
        f"SQLite {env['sqlite']}, {env['cpus']} CPUs, seed {seed}"
    )
    with backends(args) as found:
        for backend in found:
            label = backend.name + (f" {backend.version}" if isinstance(backend, PostgresBackend) else "")
            section: dict[str, Any] = {}
            print(f"\n{label}")
            r = master_rotation(backend, config, rng)
            section["master"] = r
            print(
                f"  rotate master, {config.workspaces} workspaces: "
                f"30 records each {r['30 records'] * 1e3:.0f} ms, "
                f"1 record each {r['1 record'] * 1e3:.0f} ms   ratio {r['ratio']:.2f}x (target <= 1.5x)"
                f"  (per-round p25-p75 {r['round_ratio_p25']:.2f}-{r['round_ratio_p75']:.2f})"
            )
            r = workspace_rotation(backend, config, rng)
            section["workspace"] = r
            print(
                f"  rotate workspace, {r['records']:,} records: secure_kv {r['secure_kv']:.2f} s "
                f"({r['records_per_second']:,.0f} records/s), "
                f"plain Core read+rewrite {r['plain Core']:.2f} s "
                f"({r['plain_records_per_second']:,.0f} rows/s)   ratio {r['ratio']:.2f}x (target <= 1.6x)"
                f"  (per-round p25-p75 {r['round_ratio_p25']:.2f}-{r['round_ratio_p75']:.2f})"
            )
            if isinstance(backend, SqliteBackend):
                m = memory(backend, config, rng)
                section["memory"] = m
                small, large = m["records"]
                print(
                    f"  memory, peak Python heap of one rotation: {small:,} records "
                    f"{m['peak_bytes'][small] / MIB:.1f} MiB, "
                    f"{large:,} records {m['peak_bytes'][large] / MIB:.1f} MiB"
                    f"   ratio {m['ratio']:.2f}x for 4x the records"
                )
            results[backend.name.lower()] = section
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
