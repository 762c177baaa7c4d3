"""secure_kv against its peers, every comparison a ratio measured in this one run.

What is compared: see ``bench/systems.py`` (secure_kv, plain SQLAlchemy Core, Core in
autocommit mode, sqlalchemy-utils ``StringEncryptedType`` through the ORM, and raw DBAPI
plus AES-GCM), on SQLite (WAL, synchronous=NORMAL, a temporary directory) and PostgreSQL
(a private schema, dropped at the end).

Sections
    ops      100-byte values, default category: per-op set and get of every system.
    sizes    set and get latency from 100 B to 16 MiB (the plot).
    big      one 16 MiB value, set+get: time, and peak Python heap (tracemalloc).
    batch    1,000 keys through set_many/get_many against 1,000 single calls, and against
             the floor of a batch (raw driver: one executemany upsert in one transaction,
             one select of every key; AES-GCM over each value in a Python loop).
    peers    the encryption libraries a user would pick instead (AWS Encryption SDK, with
             and without its caching materials manager; Tink; MultiFernet), each through
             plain Core's table: per-op set and get of 100-byte values, and one 16 MiB
             value's set+get time and peak Python heap, as ratios secure_kv / peer.
    records  per-op set and get as the table grows from 1,000 to ``--records`` records,
             loaded in bulk (set_many of sealed rows; executemany for plain Core and the
             raw floor).

Method (shared, noisy 2-core machines)
    * Ratios only within this run, never across runs; absolute times are shown for scale.
    * Systems are warmed up (every key written and read once) before timing.
    * Timing alternates systems in small blocks: each round runs one block of every
      (system, operation) task in a freshly shuffled order; a task's per-op time is its
      median over the rounds. The spread of the per-round ratios (25th-75th percentile)
      is recorded as a noise gauge.
    * Values are random, picked before the clock starts, and differ each time a key is
      written again (SQLite skips rewriting unchanged overflow pages).

Usage (from the repo root; ``make bench`` runs the full suite and writes the report)::

    python bench/suite.py                  # full run, 6-10 minutes on the bench machine
    python bench/suite.py --quick          # smoke run, about a minute, 10,000 records
    python bench/suite.py --records 100000 # a shorter record-count section
    python bench/suite.py --no-postgres    # SQLite only
    python bench/suite.py --profile        # cProfile secure_kv set/get/get_many instead
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import itertools
import json
import os
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import secure_kv  # noqa: E402
from bench._harness import (  # noqa: E402
    Database,
    PostgresSchemas,
    Samples,
    SQLiteFiles,
    clock,
    interleave,
    key_task,
    key_value_task,
    peak_python_bytes,
    quartiles,
    use_cpu_clock,
)
from bench.systems import (  # noqa: E402
    AWS_CACHING,
    AWS_SDK,
    CORE,
    CORE_AUTOCOMMIT,
    FACTORIES,
    PEERS,
    RAW,
    SECURE,
    UTILS,
    KeyValue,
    RawBatchFloor,
    SecureKV,
)

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = ROOT / "bench" / "results.json"
KEY_COUNT = 1000
VALUE_POOL = 1009  # coprime with KEY_COUNT: a key gets a different value each time round
VALUE_BYTES = 100
MIB = 1024 * 1024
SIZES = [100, 1024, 16 * 1024, 256 * 1024, MIB, 4 * MIB, 16 * MIB]
BIG = 16 * MIB
BATCH = 1000
RECORD_LEVELS = [1_000, 10_000, 100_000, 1_000_000]
LOAD_CHUNK = 10_000

OPS_SYSTEMS = (SECURE, CORE, CORE_AUTOCOMMIT, UTILS, RAW)
SIZE_SYSTEMS = (SECURE, CORE, UTILS, RAW)
PEER_SYSTEMS = (SECURE, *PEERS, CORE, RAW)
# The AWS Encryption SDK takes milliseconds per call (an ECDSA P-384 signature per
# message): it runs 1/20 of each block, its time scaled back to per-op.
SLOW_PEERS = {AWS_SDK: 20, AWS_CACHING: 20}


@dataclass(frozen=True)
class Config:
    rounds: int  # ops section
    block_ops: int
    size_rounds: int
    big_rounds: int
    memory_repeats: int
    batch_rounds: int
    record_rounds: int
    records: int

    @classmethod
    def for_mode(cls, quick: bool, records: int | None) -> Config:
        if quick:
            return cls(3, 50, 2, 2, 1, 3, 3, records or 10_000)
        return cls(15, 200, 5, 7, 3, 15, 7, records or 1_000_000)


# --- databases ----------------------------------------------------------------------


@contextmanager
def systems_in(
    database: Database, names: tuple[str, ...], *, share_sqlite: bool = False
) -> Iterator[dict[str, KeyValue]]:
    """One fresh instance of each named system; secure_kv gets a database of its own. The
    others share one PostgreSQL schema (a table each), and with ``share_sqlite`` one SQLite
    file too (otherwise a file each)."""
    made: dict[str, KeyValue] = {}
    shared = database.url()
    try:
        for name in names:
            own = name == SECURE or (database.name == "sqlite" and not share_sqlite)
            url = database.url() if own else shared
            made[name] = FACTORIES[name](url, f"kv_{uuid.uuid4().hex[:8]}")
        yield made
    finally:
        for system in made.values():
            system.close()


# --- measurement helpers ---------------------------------------------------------------


def summary(samples: Samples) -> dict[str, Any]:
    low, high = samples.quartiles()
    return {"median": samples.median, "p25": low, "p75": high, "samples": samples.values}


def ratio(numerator: Samples, denominator: Samples) -> dict[str, float]:
    """Median over median, and the quartiles of the same-round ratios (a noise gauge)."""
    per_round = [a / b for a, b in zip(numerator.values, denominator.values, strict=True)]
    low, high = quartiles(per_round)
    return {"ratio": numerator.median / denominator.median, "round_p25": low, "round_p75": high}


def warm_up(systems: dict[str, KeyValue], keys: list[str], values: dict[str, list[Any]]) -> None:
    """Write and read every key once in each system, checking the values come back.

    Key ``i`` is left holding value ``i + 1``, while the timed tasks (``key_value_task``)
    write value ``i`` to it first and a different one each time round after that: SQLite
    does not rewrite a page whose bytes an UPDATE leaves unchanged, which would make a
    plaintext system's first pass over the keys nearly free (secure_kv's ciphertext always
    changes).
    """
    for name, system in systems.items():
        pool = values[name]
        for i, key in enumerate(keys):
            system.set(key, pool[(i + 1) % len(pool)])
        for i, key in enumerate(keys):
            if system.get(key) != pool[(i + 1) % len(pool)]:
                raise AssertionError(f"{name}: {key} did not read back")


def timed(operation: Callable[[], Any]) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = clock()
        for _ in range(n):
            operation()
        return clock() - start

    return run


# --- sections ----------------------------------------------------------------------------


def ops_section(database: Database, config: Config, rng: random.Random) -> dict[str, Any]:
    """100-byte values: per-op set and get of every system, interleaved."""
    keys = [f"key-{i:04d}" for i in range(KEY_COUNT)]
    raw_values = [rng.randbytes(VALUE_BYTES) for _ in range(VALUE_POOL)]
    with systems_in(database, OPS_SYSTEMS) as systems:
        values = {name: [s.prepare(v) for v in raw_values] for name, s in systems.items()}
        warm_up(systems, keys, values)
        tasks = {}
        for name, system in systems.items():
            tasks[f"set/{name}"] = key_value_task(system.set, keys, values[name])
            tasks[f"get/{name}"] = key_task(system.get, keys)
        samples, _ = interleave(tasks, rounds=config.rounds, block_ops=config.block_ops, rng=rng)
    result: dict[str, Any] = {}
    for op in ("set", "get"):
        result[op] = {name: summary(samples[f"{op}/{name}"]) for name in OPS_SYSTEMS}
        result[f"{op}_vs_core"] = {
            name: ratio(samples[f"{op}/{name}"], samples[f"{op}/{CORE}"]) for name in OPS_SYSTEMS
        }
        result[f"{op}_utils_over_secure"] = ratio(samples[f"{op}/{UTILS}"], samples[f"{op}/{SECURE}"])
        result[f"{op}_vs_raw"] = ratio(samples[f"{op}/{SECURE}"], samples[f"{op}/{RAW}"])
    return result


def sizes_section(database: Database, config: Config, rng: random.Random) -> dict[str, Any]:
    """Set and get latency per value size, systems interleaved size by size."""
    result: dict[str, Any] = {"sizes": SIZES, "set": {}, "get": {}, "set_vs_core": {}, "get_vs_core": {}}
    for name in SIZE_SYSTEMS:
        for key in ("set", "get"):
            result[key][name] = []
        result["set_vs_core"][name] = []
        result["get_vs_core"][name] = []
    with systems_in(database, SIZE_SYSTEMS) as systems:
        for size in SIZES:
            raw_values = [rng.randbytes(size) for _ in range(3)]
            keys = [f"size-{size}-{i}" for i in range(4)]
            values = {name: [s.prepare(v) for v in raw_values] for name, s in systems.items()}
            del raw_values
            warm_up(systems, keys, values)
            block = max(1, min(50, MIB // size))
            rounds = config.size_rounds if size > MIB else config.size_rounds + 2
            tasks = {}
            for name, system in systems.items():
                tasks[f"set/{name}"] = key_value_task(system.set, keys, values[name])
                tasks[f"get/{name}"] = key_task(system.get, keys)
            samples, _ = interleave(tasks, rounds=rounds, block_ops=block, rng=rng)
            for name in SIZE_SYSTEMS:
                for op in ("set", "get"):
                    result[op][name].append(samples[f"{op}/{name}"].median)
                    result[f"{op}_vs_core"][name].append(
                        ratio(samples[f"{op}/{name}"], samples[f"{op}/{CORE}"])["ratio"]
                    )
            for system in systems.values():  # free the big values' rows before the next size
                for key in keys:
                    system.set(key, system.prepare(b""))
            del values, tasks
            gc.collect()
            print(f"    {size:>9} B done", flush=True)
    return result


def big_section(database: Database, config: Config, rng: random.Random) -> dict[str, Any]:
    """One 16 MiB value, set then get: time over alternating rounds, then peak Python heap
    growth (tracemalloc) across one set+get, the value allocated beforehand and the value
    read back held until the end. tracemalloc sees every Python object (so every bytes
    buffer) but not memory the database driver or OpenSSL allocate on their own."""
    names = (SECURE, CORE)
    raw_values = [rng.randbytes(BIG) for _ in range(2)]
    with systems_in(database, names) as systems:
        turns = {name: itertools.count() for name in systems}

        def set_get(system: KeyValue) -> bool:
            value = raw_values[next(turns[system.name]) % 2]
            system.set("big", value)
            got = system.get("big")
            return got is not None and len(got) == len(value)

        for system in systems.values():
            for value in raw_values:
                system.set("big", value)
                if system.get("big") != value:
                    raise AssertionError(f"{system.name}: the 16 MiB value did not read back")
        times, _ = interleave(
            {name: timed(functools.partial(set_get, s)) for name, s in systems.items()},
            rounds=config.big_rounds,
            block_ops=1,
            rng=rng,
        )
        memory: dict[str, list[int]] = {name: [] for name in names}
        for _ in range(config.memory_repeats):
            order = list(names)
            rng.shuffle(order)
            for name in order:
                memory[name].append(peak_python_bytes(functools.partial(set_get, systems[name])))
    peak = {name: statistics.median(found) for name, found in memory.items()}
    return {
        "value_bytes": BIG,
        "time": {name: summary(times[name]) for name in names},
        "time_vs_core": ratio(times[SECURE], times[CORE]),
        "peak_bytes": peak,
        "peak_vs_core": peak[SECURE] / peak[CORE],
    }


def batch_section(database: Database, config: Config, rng: random.Random) -> dict[str, Any]:
    """1,000 keys: set_many / get_many against 1,000 single calls, interleaved."""
    keys = [f"batch-{i:04d}" for i in range(BATCH)]
    pool = [rng.randbytes(VALUE_BYTES) for _ in range(BATCH + 1)]
    floor = RawBatchFloor(database.url(), f"kv_{uuid.uuid4().hex[:8]}")
    with systems_in(database, (SECURE,)) as systems:
        system = systems[SECURE]
        assert isinstance(system, SecureKV)
        turn = itertools.count()

        def items() -> list[tuple[str, bytes]]:
            shift = next(turn)
            return [(key, pool[(i + shift) % len(pool)]) for i, key in enumerate(keys)]

        def singles_set(n: int) -> float:
            batches = [items() for _ in range(n)]
            start = clock()
            for batch in batches:
                for key, value in batch:
                    system.set(key, value)
            return clock() - start

        def many_set(n: int) -> float:
            batches = [dict(items()) for _ in range(n)]
            start = clock()
            for batch in batches:
                system.set_many(batch)
            return clock() - start

        def singles_get(n: int) -> float:
            start = clock()
            for _ in range(n):
                for key in keys:
                    system.get(key)
            return clock() - start

        def many_get(n: int) -> float:
            start = clock()
            for _ in range(n):
                if len(system.get_many(keys)) != BATCH:
                    raise AssertionError("get_many lost keys")
            return clock() - start

        def floor_set(n: int) -> float:
            batches = [items() for _ in range(n)]
            start = clock()
            for batch in batches:
                floor.set_many(batch)
            return clock() - start

        def floor_get(n: int) -> float:
            start = clock()
            for _ in range(n):
                if len(floor.get_many(keys)) != BATCH:
                    raise AssertionError("the floor's get_many lost keys")
            return clock() - start

        try:
            system.set_many(dict(items()))
            floor.set_many(items())
            system.get_many(keys)  # compiles its IN-list statements before any clock runs
            floor.get_many(keys)
            tasks = {
                "set x1000": singles_set,
                "set_many": many_set,
                "floor set_many": floor_set,
                "get x1000": singles_get,
                "get_many": many_get,
                "floor get_many": floor_get,
            }
            samples, _ = interleave(tasks, rounds=config.batch_rounds, block_ops=1, rng=rng)
        finally:
            floor.close()
    return {
        "keys": BATCH,
        "time": {name: summary(s) for name, s in samples.items()},
        "set_speedup": ratio(samples["set x1000"], samples["set_many"]),
        "get_speedup": ratio(samples["get x1000"], samples["get_many"]),
        "set_vs_floor": ratio(samples["set_many"], samples["floor set_many"]),
        "get_vs_floor": ratio(samples["get_many"], samples["floor get_many"]),
    }


def scaled(task: Callable[[int], float], share: int) -> Callable[[int], float]:
    """``task`` run for 1/``share`` of each block, its time scaled to the whole block."""

    def run(n: int) -> float:
        ops = max(1, n // share)
        return task(ops) * n / ops

    return run


def peers_section(database: Database, config: Config, rng: random.Random) -> dict[str, Any]:
    """secure_kv against the encryption libraries, each through plain Core's table: per-op
    set and get of 100-byte values (interleaved as in ``ops``), then one 16 MiB value's
    set+get time and peak Python heap (as in ``big``). Ratios are secure_kv / peer."""
    keys = [f"key-{i:04d}" for i in range(KEY_COUNT)]
    raw_values = [rng.randbytes(VALUE_BYTES) for _ in range(VALUE_POOL)]
    result: dict[str, Any] = {"systems": list(PEER_SYSTEMS)}
    with systems_in(database, PEER_SYSTEMS, share_sqlite=True) as systems:
        values = {name: [s.prepare(v) for v in raw_values] for name, s in systems.items()}
        warm_up(systems, keys, values)
        tasks = {}
        for name, system in systems.items():
            share = SLOW_PEERS.get(name, 1)
            tasks[f"set/{name}"] = scaled(key_value_task(system.set, keys, values[name]), share)
            tasks[f"get/{name}"] = scaled(key_task(system.get, keys), share)
        samples, _ = interleave(tasks, rounds=config.rounds, block_ops=config.block_ops, rng=rng)
        for op in ("set", "get"):
            result[op] = {name: summary(samples[f"{op}/{name}"]) for name in PEER_SYSTEMS}
            result[f"{op}_secure_over"] = {
                name: ratio(samples[f"{op}/{SECURE}"], samples[f"{op}/{name}"]) for name in PEER_SYSTEMS
            }
        print("    ops done", flush=True)
        for system in systems.values():  # the 1,000 small rows stay; only the big one is added
            system.set("big", b"")
        big_values = [rng.randbytes(BIG) for _ in range(2)]
        turns = {name: itertools.count() for name in systems}

        def set_get(system: KeyValue) -> bool:
            value = big_values[next(turns[system.name]) % 2]
            system.set("big", value)
            got = system.get("big")
            return got is not None and len(got) == len(value)

        for system in systems.values():
            if not set_get(system):
                raise AssertionError(f"{system.name}: the 16 MiB value did not read back")
        times, _ = interleave(
            {name: timed(functools.partial(set_get, s)) for name, s in systems.items()},
            rounds=config.big_rounds,
            block_ops=1,
            rng=rng,
        )
        memory: dict[str, list[int]] = {name: [] for name in PEER_SYSTEMS}
        for _ in range(config.memory_repeats):
            order = list(PEER_SYSTEMS)
            rng.shuffle(order)
            for name in order:
                memory[name].append(peak_python_bytes(functools.partial(set_get, systems[name])))
        for system in systems.values():
            system.set("big", b"")
    peak = {name: statistics.median(found) for name, found in memory.items()}
    result["big"] = {
        "value_bytes": BIG,
        "time": {name: summary(times[name]) for name in PEER_SYSTEMS},
        "time_secure_over": {name: ratio(times[SECURE], times[name]) for name in PEER_SYSTEMS},
        "peak_bytes": peak,
        "peak_secure_over": {name: peak[SECURE] / peak[name] for name in PEER_SYSTEMS},
    }
    return result


def records_section(database: Database, config: Config, rng: random.Random) -> dict[str, Any]:
    """Per-op set and get of secure_kv and plain Core as the table grows."""
    levels = [n for n in RECORD_LEVELS if n <= config.records]
    if not levels or levels[-1] != config.records:
        levels.append(config.records)
    names = (SECURE, CORE, RAW)
    result: dict[str, Any] = {"counts": levels, "set": {n: [] for n in names}, "get": {n: [] for n in names}}
    value = rng.randbytes(VALUE_BYTES)
    values = [rng.randbytes(VALUE_BYTES) for _ in range(VALUE_POOL)]
    with systems_in(database, names) as systems:
        loaded = 0
        for level in levels:
            start = time.perf_counter()
            while loaded < level:
                count = min(LOAD_CHUNK, level - loaded)
                items = [(f"rec-{i:08d}", value) for i in range(loaded, loaded + count)]
                for system in systems.values():
                    system.bulk_load(items)
                loaded += count
            load_seconds = time.perf_counter() - start
            sample_keys = [f"rec-{rng.randrange(level):08d}" for _ in range(4000)]
            tasks = {}
            for name, system in systems.items():
                tasks[f"set/{name}"] = key_value_task(system.set, sample_keys, values)
                tasks[f"get/{name}"] = key_task(system.get, sample_keys)
            samples, _ = interleave(tasks, rounds=config.record_rounds, block_ops=config.block_ops, rng=rng)
            for name in names:
                for op in ("set", "get"):
                    result[op][name].append(samples[f"{op}/{name}"].median)
            print(f"    {level:>9,} records (loaded in {load_seconds:.1f} s)", flush=True)
    for op in ("set", "get"):
        result[f"{op}_growth"] = {name: result[op][name][-1] / result[op][name][0] for name in names}
    return result


SECTIONS: dict[str, Callable[[Database, Config, random.Random], dict[str, Any]]] = {
    "ops": ops_section,
    "sizes": sizes_section,
    "big": big_section,
    "batch": batch_section,
    "records": records_section,
    "peers": peers_section,
}


# --- output ------------------------------------------------------------------------------


def show(database: str, name: str, r: dict[str, Any]) -> None:
    us = 1e6
    if name == "ops":
        for op in ("set", "get"):
            line = ", ".join(
                f"{s} {r[op][s]['median'] * us:.0f} µs ({r[f'{op}_vs_core'][s]['ratio']:.2f}x)"
                for s in OPS_SYSTEMS
            )
            print(f"  {op}: {line}")
            print(
                f"       sqlalchemy-utils / secure_kv = {r[f'{op}_utils_over_secure']['ratio']:.1f}x, "
                f"secure_kv / raw + AES-GCM = {r[f'{op}_vs_raw']['ratio']:.2f}x"
            )
    elif name == "big":
        print(
            f"  16 MiB set+get: secure_kv {r['time'][SECURE]['median'] * 1e3:.0f} ms, plain Core "
            f"{r['time'][CORE]['median'] * 1e3:.0f} ms ({r['time_vs_core']['ratio']:.2f}x); peak heap "
            f"{r['peak_bytes'][SECURE] / MIB:.1f} / {r['peak_bytes'][CORE] / MIB:.1f} MiB "
            f"({r['peak_vs_core']:.2f}x)"
        )
    elif name == "batch":
        t = r["time"]
        print(
            f"  1,000 keys: set_many {r['set_speedup']['ratio']:.1f}x faster than 1,000 set, "
            f"get_many {r['get_speedup']['ratio']:.1f}x faster than 1,000 get"
        )
        for op in ("set", "get"):
            against = r[f"{op}_vs_floor"]
            print(
                f"  {op}_many {t[f'{op}_many']['median'] * 1e3:.2f} ms vs floor "
                f"{t[f'floor {op}_many']['median'] * 1e3:.2f} ms: {against['ratio']:.2f}x "
                f"(rounds {against['round_p25']:.2f}-{against['round_p75']:.2f})"
            )
    elif name == "peers":
        for op in ("set", "get"):
            line = ", ".join(
                f"{s} {r[op][s]['median'] * us:,.0f} µs ({r[f'{op}_secure_over'][s]['ratio']:.2f}x)"
                for s in r["systems"]
            )
            print(f"  {op} (secure_kv / system): {line}")
        big = r["big"]
        line = ", ".join(
            f"{s} {big['time'][s]['median'] * 1e3:,.0f} ms / {big['peak_bytes'][s] / MIB:.1f} MiB "
            f"({big['time_secure_over'][s]['ratio']:.2f}x / {big['peak_secure_over'][s]:.2f}x)"
            for s in r["systems"]
        )
        print(f"  16 MiB set+get time / peak heap (secure_kv / system): {line}")
    elif name == "records":
        for op in ("set", "get"):
            growth = ", ".join(f"{s} {g:.2f}x" for s, g in r[f"{op}_growth"].items())
            print(f"  {op} per op, {r['counts'][-1]:,} vs {r['counts'][0]:,} records: {growth}")


def environment(config: Config, seed: int, quick: bool) -> dict[str, Any]:
    return {
        "secure_kv": secure_kv.__version__,
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "cryptography": cryptography.__version__,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "seed": seed,
        "config": asdict(config),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": list(os.getloadavg()),
    }


def profile(quick: bool, rng: random.Random) -> None:
    """cProfile secure_kv's set, get and get_many on SQLite (after warm-up)."""
    ops = 200 if quick else 3000
    database = SQLiteFiles()
    try:
        with systems_in(database, (SECURE,)) as systems:
            system = systems[SECURE]
            assert isinstance(system, SecureKV)
            keys = [f"key-{i:04d}" for i in range(KEY_COUNT)]
            values = [rng.randbytes(VALUE_BYTES) for _ in range(VALUE_POOL)]
            warm_up(systems, keys, {SECURE: values})
            for op, task in (
                ("set", key_value_task(system.set, keys, values)),
                ("get", key_task(system.get, keys)),
                ("get_many(1000)", timed(functools.partial(system.get_many, keys))),
            ):
                profiler = cProfile.Profile()
                profiler.enable()
                task(ops if "many" not in op else max(1, ops // 100))
                profiler.disable()
                print(f"\n=== secure_kv {op} (SQLite), by own time ===")
                pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(15)
    finally:
        database.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    parser.add_argument("--records", type=int, help="largest record count (default 1,000,000; quick 10,000)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}"
    )
    parser.add_argument("--postgres", metavar="URL", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--json", metavar="PATH", default=str(RESULTS), help="where to write the results")
    parser.add_argument(
        "--no-report", action="store_true", help="do not rewrite docs/performance.md and the plot"
    )
    parser.add_argument("--seed", type=int, help="random seed for values and block order")
    parser.add_argument("--profile", action="store_true", help="cProfile secure_kv set/get/get_many and exit")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time SQLite by the thread's CPU time, robust to a busy machine (PostgreSQL: always wall)",
    )
    args = parser.parse_args(argv)

    for name in list(os.environ):  # the developer's settings must not change what is measured
        if name.startswith("SECURE_KV_"):
            del os.environ[name]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    if args.profile:
        profile(args.quick, rng)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    config = Config.for_mode(args.quick, args.records)
    env = environment(config, seed, args.quick)
    print(
        f"secure_kv {env['secure_kv']} benchmark{' [QUICK]' if args.quick else ''}: Python {env['python']}, "
        f"SQLAlchemy {env['sqlalchemy']}, cryptography {env['cryptography']}, SQLite {env['sqlite']}, "
        f"{env['cpus']} CPUs, load {env['load_average_before'][0]:.2f}, seed {seed}",
        flush=True,
    )
    results: dict[str, Any] = {"environment": env, "databases": {}}
    started = time.perf_counter()
    databases: list[Callable[[], Database]] = [SQLiteFiles]
    if not args.no_postgres:
        databases.append(functools.partial(PostgresSchemas, args.postgres))
    for make in databases:
        try:
            database = make()
        except Exception as error:
            cause = getattr(error, "orig", None) or error
            print(f"\nPostgreSQL: skipped, server unreachable ({str(cause).strip().splitlines()[0]})")
            results["databases"]["postgresql"] = None
            continue
        label = (
            database.name if not isinstance(database, PostgresSchemas) else f"postgresql {database.version}"
        )
        print(f"\n{label}", flush=True)
        if isinstance(database, PostgresSchemas):
            env["postgresql"] = database.version
        found: dict[str, Any] = {}
        use_cpu_clock(args.clock == "cpu" and database.name == "sqlite")
        found["clock"] = "cpu" if args.clock == "cpu" and database.name == "sqlite" else "wall"
        try:
            for section in sections:
                print(f"  [{section}]", flush=True)
                section_started = time.perf_counter()
                found[section] = SECTIONS[section](database, config, rng)
                found[section]["seconds"] = time.perf_counter() - section_started
                show(database.name, section, found[section])
                gc.collect()
        finally:
            database.close()
        results["databases"][database.name] = found
    env["seconds"] = time.perf_counter() - started
    env["load_average_after"] = list(os.getloadavg())
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {path} ({env['seconds']:.0f} s)")
    if not args.no_report:
        from bench.report import write_report

        for written in write_report(results):
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
