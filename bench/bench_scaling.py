"""Throughput as processes grow: ops/s for 1, 2, 4 and 8 processes on SQLite, PostgreSQL
direct and PostgreSQL through PgBouncer (transaction pooling), and the connections each
process holds.

Every process opens its own store and runs the same mix for a fixed time: 50% ``get``,
40% ``set`` (1 KiB values), 10% ``get_many`` of 10 keys, each process on keys of its own in
one of four workspaces. Writes ``bench/scaling.json``, ``docs/scaling.png`` and prints a
Markdown table for docs/scaling.md.

    python bench/bench_scaling.py                 # 10 s per point (about 4 minutes)
    python bench/bench_scaling.py --seconds 3     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from secure_kv import SecureStore  # noqa: E402
from secure_kv.keys import StaticMasterKey  # noqa: E402
from tests.scale.servers import PgBouncer  # noqa: E402

DEFAULT_POSTGRES = os.environ.get(
    "SECURE_KV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PROCESSES = (1, 2, 4, 8)
KEYS = 200
FORK = multiprocessing.get_context("fork")


def _worker(url: str, raw_key: bytes, worker: int, start_at: float, seconds: float, out: Any) -> None:
    rng = random.Random(worker)
    value = os.urandom(1024)
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        ws = store.workspace(f"tenant-{worker % 4}")
        keys = [f"p{worker}-k{i}" for i in range(KEYS)]
        ws.set_many(dict.fromkeys(keys, value))
        while time.time() < start_at:
            time.sleep(0.005)
        ops = 0
        end = start_at + seconds
        while time.time() < end:
            choice = rng.random()
            if choice < 0.5:
                ws.get(rng.choice(keys))
                ops += 1
            elif choice < 0.9:
                ws.set(rng.choice(keys), value)
                ops += 1
            else:
                ws.get_many(rng.sample(keys, 10))
                ops += 10
        database = store._db
        held = database._open + database.engine.pool.checkedin() + database.engine.pool.checkedout()  # type: ignore[attr-defined]
        out.put((ops, held))


def measure(url: str, raw_key: bytes, processes: int, seconds: float) -> dict[str, float]:
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)):
        pass
    queue = FORK.Queue()
    start_at = time.time() + 2.0 + 0.3 * processes  # every process has opened and loaded its keys
    workers = [
        FORK.Process(target=_worker, args=(url, raw_key, w, start_at, seconds, queue))
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
    ops = sum(r[0] for r in results)
    return {
        "processes": processes,
        "ops_per_second": ops / seconds,
        "connections_per_process": sum(r[1] for r in results) / processes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per point")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--pool-size", type=int, default=4, help="PgBouncer's server connections")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "scaling.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "scaling.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --json")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.json.read_text())["results"], args.plot)
        return 0
    pg = sa.make_url(args.postgres)
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    names = [f"skv_scale_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    bouncer = PgBouncer(pg.host or "127.0.0.1", pg.port or 5432, pool_size=args.pool_size)
    bouncer.start()
    results: dict[str, list[dict[str, float]]] = {}
    raw_key = os.urandom(32)  # one per database: each point reopens the same PostgreSQL stores
    try:
        with tempfile.TemporaryDirectory(prefix="skv-scale-") as temp:
            backends = {
                "SQLite": lambda n: f"sqlite:///{Path(temp) / f'scale-{n}.db'}",
                "PostgreSQL": lambda n: pg.set(database=names[0]).render_as_string(hide_password=False),
                f"PostgreSQL via PgBouncer (pool {args.pool_size})": lambda n: bouncer.url(names[1]),
            }
            for backend, url_for in backends.items():
                results[backend] = []
                for processes in PROCESSES:
                    point = measure(url_for(processes), raw_key, processes, args.seconds)
                    results[backend].append(point)
                    print(
                        f"{backend}: {processes} process(es): {point['ops_per_second']:,.0f} ops/s, "
                        f"{point['connections_per_process']:.1f} connections per process",
                        file=sys.stderr,
                    )
    finally:
        bouncer.cleanup()
        for name in names:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    environment = {"cpus": os.cpu_count(), "seconds_per_point": args.seconds, "load": os.getloadavg()[0]}
    args.json.write_text(json.dumps({"environment": environment, "results": results}, indent=2) + "\n")
    print("| processes | " + " | ".join(results) + " |")
    print("| ---: | " + " | ".join("---:" for _ in results) + " |")
    for i, processes in enumerate(PROCESSES):
        cells = [
            f"{points[i]['ops_per_second']:,.0f} ops/s ({points[i]['connections_per_process']:.1f} conn.)"
            for points in results.values()
        ]
        print(f"| {processes} | " + " | ".join(cells) + " |")
    plot(results, args.plot)
    return 0


def plot(results: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for backend, points in results.items():
        axis.plot(
            [p["processes"] for p in points], [p["ops_per_second"] for p in points], marker="o", label=backend
        )
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")  # SQLite's in-process writes and a server's round trips differ tenfold
    axis.set_xticks(list(PROCESSES), [str(p) for p in PROCESSES])
    axis.set_xlabel("worker processes")
    axis.set_ylabel("operations per second, all processes (log)")
    axis.set_title(f"secure_kv throughput as processes grow ({os.cpu_count()} CPUs)")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
