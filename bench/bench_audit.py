"""The audit log's cost, measured against a baseline in the same run (issue 7, point 8).

What is compared (one store, one workspace, 1,000 keys of each category, 100-byte values)
    token read      ``ws.get(key)`` of a token: the read, then its signed event written by
                    one INSERT ... SELECT that checks the record is still the one read.
    preference read ``ws.get(key)`` of a preference: one SELECT, no event. The baseline.
    token read, unsigned
                    the token read with Ed25519 signing replaced by a constant: what "signed
                    checkpoints" (no signature per event) would save on each read.
    token read, global chain
                    the token read's event written the way one global chain must: in a
                    transaction that reads the single head row with a lock, inserts the
                    event and updates the head (BEGIN; SELECT ... FOR UPDATE; INSERT; UPDATE;
                    COMMIT), on the same tables. Single process, so without the contention a
                    global head adds when several processes write.
    token write / preference write
                    ``ws.set`` of each: the token's in a transaction with its event.

    Then ``audit report`` and ``audit verify`` (full: records, data keys and chain; and
    --chain-only) over a store of N records (default 100,000: 90 % preferences, 10 % tokens
    with their write events), as records (or events) per second.

Method (shared, noisy 2-core machines): every figure is measured in this run; operations
alternate in shuffled blocks (bench/_harness.py), each figure is the median over blocks,
and ratios come with the 25th-75th percentile of per-round ratios as a noise gauge.

Usage (from the repo root)::

    python bench/bench_audit.py                     # SQLite, 100,000 records
    python bench/bench_audit.py --quick             # smoke test, seconds
    python bench/bench_audit.py --url postgresql+psycopg://postgres@127.0.0.1/test
    python bench/bench_audit.py --records 20000 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench._harness import interleave, key_task, key_value_task, quartiles  # noqa: E402
from secure_kv import Category, SecureStore  # noqa: E402
from secure_kv.audit.events import event_digest  # noqa: E402
from secure_kv.audit.signing_keys import SigningKey  # noqa: E402
from secure_kv.commands import audit_report, audit_verify  # noqa: E402
from secure_kv.envelope import HEADER_BYTES  # noqa: E402
from secure_kv.keys import StaticMasterKey  # noqa: E402
from secure_kv.settings import load_settings  # noqa: E402
from secure_kv.sql.schema import audit_chains  # noqa: E402

KEYS = 1000


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A fresh database: a temporary SQLite file, or a new PostgreSQL schema / MariaDB database."""
    if url is None:
        with tempfile.TemporaryDirectory(prefix="skv-bench-audit-") as tmp:
            yield f"sqlite:///{tmp}/store.db"
        return
    base = sa.make_url(url)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"skv_bench_{uuid.uuid4().hex[:8]}"
    backend = base.get_backend_name()
    with admin.connect() as c:
        c.exec_driver_sql(
            f'CREATE SCHEMA "{name}"' if backend == "postgresql" else f"CREATE DATABASE `{name}`"
        )
    try:
        if backend == "postgresql":
            yield base.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(
                hide_password=False
            )
        else:
            yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(
                f'DROP SCHEMA "{name}" CASCADE' if backend == "postgresql" else f"DROP DATABASE `{name}`"
            )
        admin.dispose()


def global_chain_read(store: SecureStore) -> Callable[[str], bytes | None]:
    """A token read whose event goes to one global chain (see the module docstring)."""
    db, audit, sql = store._db, store._audit, store._sql
    ws = store.workspace("bench")
    workspace_id = store._keys.workspace_id(b"bench")
    lock = "" if db.dialect_name == "sqlite" else " FOR UPDATE"
    begin = "BEGIN IMMEDIATE" if db.dialect_name == "sqlite" else "BEGIN"
    with db.connect() as c, c.begin():
        c.exec_driver_sql(
            "CREATE TABLE bench_global_head (id INTEGER PRIMARY KEY, seq BIGINT, digest VARCHAR(64))"
        )
        c.exec_driver_sql("INSERT INTO bench_global_head VALUES (1, 0, '')")
    # A chain row of its own, so its events never collide with the store's own chains.
    with db.connect() as c, c.begin():
        inserted = c.execute(audit_chains.insert().values(signing_key_id=audit.signer().id, created_at=0))
        chain_id = int(inserted.inserted_primary_key[0])
    paramstyle = "?" if db.dialect_name == "sqlite" else "%s"
    select_head = f"SELECT seq, digest FROM bench_global_head WHERE id = 1{lock}"
    update_head = f"UPDATE bench_global_head SET seq = {paramstyle}, digest = {paramstyle} WHERE id = 1"

    def read(key: str) -> bytes | None:
        key_bytes = key.encode()
        row = db.run(lambda c: sql.select_record.fetchone(c, workspace_id, key_bytes))
        value = ws._open(key, key_bytes, workspace_id, row)
        event = audit.event(
            "record.read", workspace=b"bench", key=key_bytes, category="token", dek_version=row[1]
        )

        def work(c: Any) -> None:
            cursor = c.cursor()
            cursor.execute(begin)
            cursor.execute(select_head)
            seq, previous = cursor.fetchone()
            digest = event_digest(chain_id, seq + 1, bytes.fromhex(previous or "00" * 32), event)
            signature = audit.signer().sign(digest)
            audit.statements.insert_read_event.run(
                c,
                chain_id, seq + 1, event.occurred_at, event.actor, event.action, event.workspace, event.key,
                event.category, event.dek_version, event.outcome, event.detail, digest, signature,
                workspace_id, key_bytes, row[1], bytes(row[3][:HEADER_BYTES]),
            )  # fmt: skip
            cursor.execute(update_head, (seq + 1, digest.hex()))
            cursor.execute("COMMIT")
            cursor.close()

        db.run(work)
        return value

    return read


def unsigned(read: Callable[[str], bytes | None]) -> Callable[[str], bytes | None]:
    """The same read with signing replaced by a constant (for the measurement only)."""
    real = SigningKey.sign

    def run(key: str) -> bytes | None:
        SigningKey.sign = lambda self, digest: bytes(64)  # type: ignore[method-assign]
        try:
            return read(key)
        finally:
            SigningKey.sign = real  # type: ignore[method-assign]

    return run


def per_op(args: argparse.Namespace, url: str, rng: random.Random) -> dict[str, Any]:
    key = StaticMasterKey(os.urandom(32))
    values = [rng.randbytes(100) for _ in range(KEYS + 9)]
    with SecureStore.open(url, master_key=key, credential_policy="warn") as store:
        ws = store.workspace("bench")
        tokens = [f"token-{i}" for i in range(KEYS)]
        prefs = [f"pref-{i}" for i in range(KEYS)]
        for i in range(KEYS):  # warm up: every key written and read once
            ws.set(tokens[i], values[i], category=Category.TOKEN)
            ws.set(prefs[i], values[i])
            ws.get(tokens[i]), ws.get(prefs[i])
        tasks = {
            "token read": key_task(ws.get, tokens),
            "preference read": key_task(ws.get, prefs),
            "token read, unsigned": key_task(unsigned(ws.get), tokens),
            "token read, global chain": key_task(global_chain_read(store), tokens),
            "token write": key_value_task(lambda k, v: ws.set(k, v, category=Category.TOKEN), tokens, values),
            "preference write": key_value_task(ws.set, prefs, values),
        }
        samples, orders = interleave(tasks, rounds=args.rounds, block_ops=args.block_ops, rng=rng)
    result: dict[str, Any] = {"per_op_us": {name: s.median * 1e6 for name, s in samples.items()}}

    def ratio(top: str, bottom: str) -> dict[str, float]:
        per_round = [a / b for a, b in zip(samples[top].values, samples[bottom].values, strict=True)]
        low, high = quartiles(per_round)
        return {"median": samples[top].median / samples[bottom].median, "q1": low, "q3": high}

    result["ratios"] = {
        "token read / preference read": ratio("token read", "preference read"),
        "token read / token read unsigned": ratio("token read", "token read, unsigned"),
        "global chain read / token read": ratio("token read, global chain", "token read"),
        "token write / preference write": ratio("token write", "preference write"),
    }
    del orders
    return result


def populate(url: str, key: StaticMasterKey, records: int, rng: random.Random) -> None:
    value = rng.randbytes(100)
    with SecureStore.open(url, master_key=key) as store:
        for w in range(records // 1000 or 1):
            ws = store.workspace(f"tenant-{w}")
            for i in range(min(1000, records)):
                ws.set(f"k{i}", value, category=Category.TOKEN if i % 10 == 0 else Category.PREFERENCE)


def rates(args: argparse.Namespace, url: str, rng: random.Random) -> dict[str, Any]:
    key = StaticMasterKey(os.urandom(32))
    start = time.perf_counter()
    populate(url, key, args.records, rng)
    populated = time.perf_counter() - start
    settings = load_settings(database_url=url)
    timings: dict[str, list[float]] = {"report": [], "verify": [], "verify --chain-only": []}
    counts: dict[str, int] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        summary = audit_report(io.StringIO(), settings=settings, fmt="json", master_key=key)
        timings["report"].append(time.perf_counter() - start)
        counts["report"] = summary.records
        start = time.perf_counter()
        report = audit_verify(settings=settings, master_key=key)
        timings["verify"].append(time.perf_counter() - start)
        assert report.ok, report.failures[:5]
        counts["verify"] = report.records
        start = time.perf_counter()
        chain = audit_verify(settings=settings, chain_only=True)
        timings["verify --chain-only"].append(time.perf_counter() - start)
        counts["verify --chain-only"] = chain.events
    out = {"records": args.records, "populate_seconds": populated}
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        out[name] = {"seconds": median, "per_second": counts[name] / median, "items": counts[name]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", help="a PostgreSQL or MariaDB server URL (default: a SQLite file)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--records", type=int, help="records for the report/verify rates (default 100000)")
    parser.add_argument("--rounds", type=int, help="blocks per operation (default 15; quick 3)")
    parser.add_argument("--block-ops", type=int, help="operations per block (default 200; quick 30)")
    parser.add_argument("--repeats", type=int, help="report/verify runs (default 3; quick 1)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.records = args.records or (3000 if args.quick else 100_000)
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.block_ops = args.block_ops or (30 if args.quick else 200)
    args.repeats = args.repeats or (1 if args.quick else 3)
    rng = random.Random(args.seed)
    where = sa.make_url(args.url).get_backend_name() if args.url else "sqlite"
    print(f"secure_kv audit benchmark on {where} (python {sys.version.split()[0]})")
    with database(args.url) as url:
        ops = per_op(args, url, rng)
    print("\nper operation (median of blocks, microseconds):")
    for name, micros in ops["per_op_us"].items():
        print(f"  {name:28s} {micros:9.1f}")
    print("\nratios (median; 25th-75th percentile of per-round ratios):")
    for name, r in ops["ratios"].items():
        print(f"  {name:36s} {r['median']:5.2f}x  ({r['q1']:.2f}-{r['q3']:.2f})")
    with database(args.url) as url:
        bulk = rates(args, url, rng)
    print(f"\nover {bulk['records']:,} records (populated in {bulk['populate_seconds']:.0f} s):")
    for name in ("report", "verify", "verify --chain-only"):
        item = bulk[name]
        what = "events" if name.endswith("chain-only") else "records"
        print(f"  audit {name:20s} {item['seconds']:7.2f} s  {item['per_second']:10,.0f} {what}/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"database": where, **ops, "bulk": bulk}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
