"""secure_kv's single calls and batches against their floors, alternated in shuffled rounds.

A focused companion to ``suite.py``'s ``ops`` and ``batch`` sections: only secure_kv and
the raw floors run (no other system pollutes the CPU caches between blocks), so the
ratios settle in a minute even on a busy machine. On SQLite each task is timed by the
thread's CPU time (see ``bench/_harness.py``); on PostgreSQL by the wall clock.

    python bench/bench_floors.py                # SQLite
    python bench/bench_floors.py --postgres     # PostgreSQL at the default test server
    python bench/bench_floors.py --rounds 20

Prints, per operation, secure_kv's per-key time, the floor's, and the median over rounds
of their ratio with its 25th-75th percentile.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._harness import PostgresSchemas, SQLiteFiles, quartiles  # noqa: E402
from bench.systems import RawBatchFloor, SecureKV  # noqa: E402

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KEYS = 1000
SINGLES = 200  # single calls per task and round
VALUE_BYTES = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--postgres", nargs="?", const=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    database = PostgresSchemas(args.postgres) if args.postgres else SQLiteFiles()
    clock = time.perf_counter if args.postgres else time.thread_time
    keys = [f"batch-{i:04d}" for i in range(KEYS)]
    pool = [rng.randbytes(VALUE_BYTES) for _ in range(KEYS + 1)]
    secure = SecureKV(database.url())
    floor = RawBatchFloor(database.url(), "kv_floor")
    try:

        def items(shift: int) -> list[tuple[str, bytes]]:
            return [(key, pool[(i + shift) % len(pool)]) for i, key in enumerate(keys)]

        secure.set_many(dict(items(0)))
        floor.set_many(items(0))
        secure.get_many(keys)
        floor.get_many(keys)
        singles = keys[:SINGLES]
        tasks: dict[str, Callable[[int], Any]] = {
            "get": lambda r: [secure.get(k) for k in singles],
            "floor get": lambda r: [floor.get(k) for k in singles],
            "set": lambda r: [secure.set(k, v) for k, v in items(r)[:SINGLES]],
            "floor set": lambda r: [floor.set(k, v) for k, v in items(r)[:SINGLES]],
            "get_many": lambda r: secure.get_many(keys),
            "floor get_many": lambda r: floor.get_many(keys),
            "set_many": lambda r: secure.set_many(dict(items(r))),
            "floor set_many": lambda r: floor.set_many(items(r)),
        }
        times: dict[str, list[float]] = {name: [] for name in tasks}
        for round_ in range(1, args.rounds + 1):
            order = list(tasks)
            rng.shuffle(order)
            for name in order:
                start = clock()
                tasks[name](round_)
                times[name].append(clock() - start)
    finally:
        secure.close()
        floor.close()
        database.close()
    print(f"{database.name}, {'wall' if args.postgres else 'CPU'} clock, {args.rounds} rounds")
    for op, per in (("get", SINGLES), ("set", SINGLES), ("get_many", KEYS), ("set_many", KEYS)):
        mine, base = times[op], times[f"floor {op}"]
        ratios = [a / b for a, b in zip(mine, base, strict=True)]
        low, high = quartiles(ratios)
        print(
            f"  {op:9s} {statistics.median(mine) / per * 1e6:8.2f} µs/key, floor "
            f"{statistics.median(base) / per * 1e6:8.2f}: {statistics.median(ratios):.2f}x "
            f"(rounds {low:.2f}-{high:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
