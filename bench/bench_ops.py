"""secure_kv set/get cost against a plain SQLAlchemy Core key-value table, in one run.

What is compared
    secure_kv: ``SecureStore.open(url, master_key=StaticMasterKey(...))``, one workspace,
    ``ws.set(key, value)`` (default category, preference) and ``ws.get(key)``.

    plain Core: what a user would write without secure_kv. A table ``(namespace, key)``
    primary key plus a ``value`` BLOB; set is ``with engine.begin() as c:
    c.execute(insert(...).values(...).on_conflict_do_update(...))`` (the statement built
    per call, as user code does; SQLAlchemy's compiled cache applies); get is ``with
    engine.connect() as c: c.execute(select(...).where(...)).first()``.

    SQLite: one file per system in a temporary directory, both with journal_mode=WAL,
    synchronous=NORMAL and a busy timeout (secure_kv sets these itself; it also turns on
    foreign keys, which is part of its cost). PostgreSQL (``--postgres URL``): a fresh
    schema, created and dropped here, used by both systems through ``search_path``.

Method (shared, noisy 2-core machines)
    * Every number is measured in this run; ratios are never taken across runs.
    * Both systems are warmed up: every one of the 1,000 keys is written and read once.
    * Timing alternates systems in small blocks: each round runs one block of every
      (system, operation) task, in a freshly shuffled order; the per-op time of a task is
      its median over the rounds. The ratio is secure_kv's median over plain Core's; the
      spread of the per-round ratios (25th-75th percentile) is printed as a noise gauge.
    * Sets walk 1,000 distinct keys round-robin (tables stay small and every set after
      warm-up is an overwrite) with 100-byte random values, picked before the clock starts;
      gets read keys that exist.
    * 16 MiB value: set+get time over alternating rounds (median), and the peak growth of
      the Python heap (tracemalloc) across one set+get, the value allocated beforehand and
      the value read back held until the end. tracemalloc does not see memory that SQLite
      or OpenSSL allocate internally, only Python objects (including every bytes object).

Usage (from the repo root)::

    python bench/bench_ops.py                  # full run
    python bench/bench_ops.py --quick          # smoke test, a few seconds
    python bench/bench_ops.py --json out.json  # also write the results as JSON
    python bench/bench_ops.py --postgres postgresql+psycopg://user@host/db
    python bench/bench_ops.py --no-postgres
    python bench/bench_ops.py --profile        # cProfile secure_kv set/get on SQLite instead
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import itertools
import json
import os
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
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
from sqlalchemy import event  # noqa: E402
from sqlalchemy.dialects import postgresql, sqlite  # noqa: E402

import secure_kv  # noqa: E402
from bench._harness import Samples, Task, interleave, key_task, key_value_task, peak_python_bytes, quartiles  # noqa: E402
from secure_kv import SecureStore  # noqa: E402
from secure_kv.keys import StaticMasterKey  # noqa: E402

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KEY_COUNT = 1000
VALUE_POOL = 1009  # coprime with KEY_COUNT: a key gets a different value each time round
VALUE_BYTES = 100
BIG_VALUE_BYTES = 16 * 1024 * 1024
BIG_KEY = "big-value"
NAMESPACE = "bench"
SECURE = "secure_kv"
PLAIN = "plain Core"
SYSTEMS = (SECURE, PLAIN)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    rounds: int
    block_ops: int
    big_rounds: int
    memory_repeats: int

    @classmethod
    def for_mode(cls, quick: bool, rounds: int | None, block_ops: int | None) -> Config:
        base = cls(3, 50, 2, 1) if quick else cls(20, 200, 10, 3)
        return cls(rounds or base.rounds, block_ops or base.block_ops, base.big_rounds, base.memory_repeats)


# --- the two systems ------------------------------------------------------------------


class KeyValue:
    """What the benchmark needs from a system. ``set`` and ``get`` are plain attributes so
    secure_kv's bound methods are called directly, with no wrapper frame of ours."""

    name: str
    set: Callable[[str, bytes], None]
    get: Callable[[str], bytes | None]

    def close(self) -> None:
        raise NotImplementedError


class SecureKV(KeyValue):
    name = SECURE

    def __init__(self, url: str) -> None:
        self.store = SecureStore.open(url, master_key=StaticMasterKey(os.urandom(32)))
        workspace = self.store.workspace(NAMESPACE)
        self.set = workspace.set
        self.get = workspace.get

    def close(self) -> None:
        self.store.close()


class PlainCore(KeyValue):
    """A key-value table written the way a user would write it with SQLAlchemy Core."""

    name = PLAIN

    def __init__(self, url: str, table_name: str) -> None:
        self.engine = sa.create_engine(url)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        self.insert: Callable[[sa.Table], Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[
            self.engine.dialect.name
        ]
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            table_name,
            self.metadata,
            sa.Column("namespace", sa.String(255), primary_key=True),
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("value", sa.LargeBinary, nullable=False),
        )
        self.metadata.create_all(self.engine)
        self.set = self.upsert
        self.get = self.select

    def upsert(self, key: str, value: bytes) -> None:
        t = self.table
        stmt = self.insert(t).values(namespace=NAMESPACE, key=key, value=value)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.namespace, t.c.key], set_={"value": stmt.excluded.value}
        )
        with self.engine.begin() as connection:
            connection.execute(stmt)

    def select(self, key: str) -> bytes | None:
        t = self.table
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(t.c.value).where(t.c.namespace == NAMESPACE, t.c.key == key)
            ).first()
        return None if row is None else row[0]

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(engine: sa.Engine) -> None:
    """The same pragmas secure_kv uses (minus foreign keys, which this table has none of)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


# --- databases ------------------------------------------------------------------------


@contextmanager
def sqlite_systems() -> Iterator[dict[str, KeyValue]]:
    with tempfile.TemporaryDirectory(prefix="skv-bench-") as tmp:
        systems: dict[str, KeyValue] = {
            SECURE: SecureKV(f"sqlite:///{tmp}/secure_kv.db"),
            PLAIN: PlainCore(f"sqlite:///{tmp}/plain.db", "kv"),
        }
        try:
            yield systems
        finally:
            for system in systems.values():
                system.close()


def _postgres_server(url: str) -> tuple[sa.Engine, str]:
    """An autocommit admin engine and the server's version; raises if unreachable."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            version = str(connection.exec_driver_sql("SHOW server_version").scalar())
    except Exception:
        admin.dispose()
        raise
    return admin, version


@contextmanager
def postgres_systems(admin: sa.Engine) -> Iterator[dict[str, KeyValue]]:
    """Both systems in one fresh schema, dropped (with everything in it) at the end."""
    schema = f"skv_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    text = url.render_as_string(hide_password=False)
    systems: dict[str, KeyValue] = {}
    try:
        systems[SECURE] = SecureKV(text)
        systems[PLAIN] = PlainCore(text, f"plain_kv_{uuid.uuid4().hex[:8]}")
        yield systems
    finally:
        for system in systems.values():
            system.close()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- measurements ---------------------------------------------------------------------


def make_data(rng: random.Random) -> tuple[list[str], list[bytes]]:
    keys = [f"key-{i:04d}" for i in range(KEY_COUNT)]
    values = [rng.randbytes(VALUE_BYTES) for _ in range(VALUE_POOL)]
    return keys, values


def warm_up(systems: dict[str, KeyValue], keys: list[str], values: list[bytes]) -> None:
    """Write and read every key once in each system, checking the values come back."""
    for system in systems.values():
        for i, key in enumerate(keys):
            system.set(key, values[i])
        for i, key in enumerate(keys):
            if system.get(key) != values[i]:
                raise AssertionError(f"{system.name}: {key} did not read back")


def small_ops(
    systems: dict[str, KeyValue], keys: list[str], values: list[bytes], config: Config, rng: random.Random
) -> dict[str, Any]:
    """Per-op set and get times of both systems, interleaved in shuffled blocks."""
    tasks: dict[tuple[str, str], Task] = {}
    for name, system in systems.items():
        tasks[("set", name)] = key_value_task(system.set, keys, values)
        tasks[("get", name)] = key_task(system.get, keys)
    labels = {f"{op}/{name}": task for (op, name), task in tasks.items()}
    samples, _ = interleave(labels, rounds=config.rounds, block_ops=config.block_ops, rng=rng)
    # Every get must still find its key (the sets only overwrote).
    for system in systems.values():
        if any(system.get(key) is None for key in keys[:10]):
            raise AssertionError(f"{system.name}: a key went missing")
    return {op: compare(samples[f"{op}/{SECURE}"], samples[f"{op}/{PLAIN}"]) for op in ("set", "get")}


def compare(secure: Samples, plain: Samples) -> dict[str, Any]:
    """Medians, their ratio, and the spread of the ratios of blocks from the same round."""
    per_round = [s / p for s, p in zip(secure.values, plain.values, strict=True)]
    low, high = quartiles(per_round)
    return {
        SECURE: secure.median,
        PLAIN: plain.median,
        "ratio": secure.median / plain.median,
        "round_ratio_p25": low,
        "round_ratio_p75": high,
        "samples": {SECURE: secure.values, PLAIN: plain.values},
    }


def big_value(systems: dict[str, KeyValue], config: Config, rng: random.Random) -> dict[str, Any]:
    """Set+get of a 16 MiB value: time over alternating rounds, then peak Python heap.

    Each set writes a value different from the one stored: SQLite skips rewriting overflow
    pages whose bytes are unchanged, which would flatter plain Core (secure_kv's ciphertext
    always changes) if the same plaintext were written again and again.
    """
    values = [rng.randbytes(BIG_VALUE_BYTES) for _ in range(2)]
    turns = {name: itertools.count() for name in systems}

    def set_get(system: KeyValue) -> bool:
        value = values[next(turns[system.name]) % len(values)]
        system.set(BIG_KEY, value)
        got = system.get(BIG_KEY)
        return got is not None and len(got) == len(value)

    for system in systems.values():  # warm-up, and a check that the value round-trips
        for value in values:
            system.set(BIG_KEY, value)
            if system.get(BIG_KEY) != value:
                raise AssertionError(f"{system.name}: the 16 MiB value did not read back")

    def timed(system: KeyValue) -> Callable[[int], float]:
        def run(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                set_get(system)
            return time.perf_counter() - start

        return run

    times, _ = interleave(
        {name: timed(system) for name, system in systems.items()},
        rounds=config.big_rounds,
        block_ops=1,
        rng=rng,
    )
    memory: dict[str, list[int]] = {name: [] for name in systems}
    for _ in range(config.memory_repeats):
        order = list(systems)
        rng.shuffle(order)
        for name in order:
            memory[name].append(peak_python_bytes(functools.partial(set_get, systems[name])))
    peak = {name: statistics.median(found) for name, found in memory.items()}
    result = compare(times[SECURE], times[PLAIN])
    result["peak_bytes"] = peak
    result["peak_ratio"] = peak[SECURE] / peak[PLAIN]
    result["value_bytes"] = BIG_VALUE_BYTES
    return result


# --- output ---------------------------------------------------------------------------


def show_ops(title: str, results: dict[str, Any]) -> None:
    print(title)
    print(f"  {'op':<4} {SECURE + ' µs/op':>16} {PLAIN + ' µs/op':>17}   ratio")
    for op, r in results.items():
        print(
            f"  {op:<4} {r[SECURE] * 1e6:>16.1f} {r[PLAIN] * 1e6:>17.1f}   {op} {r['ratio']:.2f}x {PLAIN}"
            f"  (per-round ratios p25-p75 {r['round_ratio_p25']:.2f}-{r['round_ratio_p75']:.2f})"
        )


def show_big(title: str, r: dict[str, Any]) -> None:
    peak = r["peak_bytes"]
    print(title)
    print(
        f"  time  {SECURE} {r[SECURE] * 1e3:.1f} ms, {PLAIN} {r[PLAIN] * 1e3:.1f} ms"
        f"   set+get {r['ratio']:.2f}x {PLAIN}"
        f"  (per-round ratios p25-p75 {r['round_ratio_p25']:.2f}-{r['round_ratio_p75']:.2f})"
    )
    print(
        f"  peak  {SECURE} {peak[SECURE] / MIB:.1f} MiB, {PLAIN} {peak[PLAIN] / MIB:.1f} MiB"
        f"   memory {r['peak_ratio']:.2f}x {PLAIN}"
        f"  (Python heap above baseline; value = {r['value_bytes'] / MIB:.0f} MiB)"
    )


def environment(config: Config, seed: int) -> dict[str, Any]:
    return {
        "secure_kv": secure_kv.__version__,
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "cryptography": cryptography.__version__,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "rounds": config.rounds,
        "block_ops": config.block_ops,
        "big_rounds": config.big_rounds,
        "keys": KEY_COUNT,
        "value_bytes": VALUE_BYTES,
        "seed": seed,
    }


# --- profiling ------------------------------------------------------------------------


def profile(ops: int, rng: random.Random) -> None:
    """cProfile secure_kv's set and get on SQLite (after warm-up) and print the top entries."""
    keys, values = make_data(rng)
    with sqlite_systems() as systems:
        system = systems[SECURE]
        warm_up({SECURE: system}, keys, values)
        for op, task in (
            ("set", key_value_task(system.set, keys, values)),
            ("get", key_task(system.get, keys)),
        ):
            profiler = cProfile.Profile()
            profiler.enable()
            task(ops)
            profiler.disable()
            print(f"\n=== secure_kv {op} x {ops} (SQLite), by own time ===")
            pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(18)


# --- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (few blocks)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--postgres", metavar="URL", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--rounds", type=int, help="blocks per (system, op) (default 20; quick 3)")
    parser.add_argument("--block-ops", type=int, help="ops per block (default 200; quick 50)")
    parser.add_argument("--seed", type=int, help="random seed for values and block order")
    parser.add_argument("--profile", action="store_true", help="cProfile secure_kv set/get and exit")
    args = parser.parse_args(argv)

    # Settings from the developer's environment must not change what is measured.
    for name in list(os.environ):
        if name.startswith("SECURE_KV_"):
            del os.environ[name]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    if args.profile:
        profile(2000 if not args.quick else 200, rng)
        return 0

    config = Config.for_mode(args.quick, args.rounds, args.block_ops)
    env = environment(config, seed)
    keys, values = make_data(rng)
    print(
        f"secure_kv {env['secure_kv']} vs plain SQLAlchemy Core: {config.rounds} rounds x "
        f"{config.block_ops} ops per block, {KEY_COUNT} keys, {VALUE_BYTES}-byte values, "
        f"median per-op time{' [QUICK]' if args.quick else ''}"
    )
    print(
        f"Python {env['python']}, SQLAlchemy {env['sqlalchemy']}, cryptography {env['cryptography']}, "
        f"SQLite {env['sqlite']}, {env['cpus']} CPUs, seed {seed}"
    )
    results: dict[str, Any] = {"environment": env}

    print()
    with sqlite_systems() as systems:
        warm_up(systems, keys, values)
        results["sqlite"] = small_ops(systems, keys, values, config, rng)
        show_ops("SQLite (WAL, synchronous=NORMAL), default category", results["sqlite"])
        results["sqlite_16mib"] = big_value(systems, config, rng)
        show_big("SQLite, one 16 MiB value, set+get", results["sqlite_16mib"])

    print()
    if args.no_postgres or not args.postgres:
        print("PostgreSQL: skipped (--no-postgres)")
        results["postgresql"] = None
    else:
        try:
            admin, version = _postgres_server(args.postgres)
        except Exception as error:
            cause = getattr(error, "orig", None) or error  # the driver's own message
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            print(
                f"PostgreSQL: skipped, {sa.make_url(args.postgres).render_as_string()} unreachable ({reason})"
            )
            results["postgresql"] = None
        else:
            try:
                with postgres_systems(admin) as systems:
                    warm_up(systems, keys, values)
                    results["postgresql"] = small_ops(systems, keys, values, config, rng)
                    results["environment"]["postgresql"] = version
                    show_ops(f"PostgreSQL {version}, default category", results["postgresql"])
            finally:
                admin.dispose()

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
