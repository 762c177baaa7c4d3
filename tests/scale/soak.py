"""A soak with faults: worker processes run a mixed workload on one database while a fault
injector SIGKILLs workers, terminates their server connections and restarts PgBouncer.

Each key has one writer, so the check at the end is exact. A worker journals every write
before sending it (``I``) and once the store acknowledged it (``A``) or refused it (``F``);
a write that was in flight when the worker died or the call failed is *ambiguous*: it may
or may not have landed. Invariants:

* every key reads back as its last acknowledged write, or as one of the ambiguous writes
  sent after it (never older, never anything else);
* no read, during the run or after it, returns another key's or another workspace's value
  (each value names its workspace, key and write number);
* no error outside ``secure_kv.errors`` (and, with no tampering, none but ``StorageError``);
* every audit chain verifies.

``python -m tests.scale.soak`` (``make soak``) runs it on SQLite, PostgreSQL direct and
through PgBouncer, and MariaDB, and prints the report; tests/scale/test_soak.py runs a short
version in ``make test``.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEYS_PER_WORKER = 40
WORKSPACES = 3
FORK = multiprocessing.get_context("fork")


def workspace_of(worker: int) -> str:
    return f"ws-{worker % WORKSPACES}"


def value_of(workspace: str, key: str, seq: int) -> bytes:
    """A value naming its workspace, key and write number (a misrouted read shows)."""
    return f"{workspace}/{key}/{seq}/".encode() + b"x" * (seq % 97)


def describe_value(value: bytes) -> tuple[str, str, int] | None:
    try:
        workspace, key, seq, _ = value.decode().split("/", 3)
        return workspace, key, int(seq)
    except ValueError:
        return None


@dataclass
class KeyState:
    """What a key may hold: its last acknowledged write (seq, or -1 for a delete, or None for
    never written) and the ambiguous writes sent after it (seq; -1 for a delete)."""

    acked: int | None = None
    ambiguous: set[int] = field(default_factory=set)

    def allowed(self) -> set[int | None]:
        allowed: set[int | None] = {None if self.acked == -1 else self.acked}
        allowed.update(None if seq == -1 else seq for seq in self.ambiguous)
        return allowed


def read_journal(path: Path) -> tuple[dict[str, KeyState], int, list[str]]:
    """Replay a worker's journal: each key's state, the next write number, logged problems."""
    states: dict[str, KeyState] = {}
    pending: dict[int, tuple[str, bool]] = {}
    problems: list[str] = []
    next_seq = 1
    if not path.exists():
        return states, next_seq, problems
    for line in path.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "I":
            seq_text, key, delete = rest.split(" ")
            seq = int(seq_text)
            pending[seq] = (key, delete == "d")
            state = states.setdefault(key, KeyState())
            state.ambiguous.add(-1 if delete == "d" else seq)
            next_seq = max(next_seq, seq + 1)
        elif kind == "A":
            for seq in map(int, rest.split(",")):
                key, delete = pending.pop(seq)
                states[key] = KeyState(acked=-1 if delete else seq)
        elif kind == "F":
            for seq in map(int, rest.split(",")):
                pending.pop(seq, None)  # stays ambiguous
        elif kind == "P":
            problems.append(rest)
    return states, next_seq, problems


class Worker:
    """One worker process's loop; state rebuilt from its journal after a SIGKILL."""

    def __init__(self, url: str, raw_key: bytes, worker: int, directory: Path, deadline: float) -> None:
        self.url, self.raw_key, self.worker, self.deadline = url, raw_key, worker, deadline
        self.journal_path = directory / f"worker-{worker}.journal"
        self.latency_path = directory / f"worker-{worker}.latency"
        self.states, self.seq, _ = read_journal(self.journal_path)
        self.workspace = workspace_of(worker)
        self.keys = [f"w{worker}-k{i}" for i in range(KEYS_PER_WORKER)]
        self.random = random.Random(os.getpid())
        self.journal = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.latencies = array.array("d")
        self.storage_errors = 0

    def log(self, line: str) -> None:
        os.write(self.journal, (line + "\n").encode())

    def problem(self, text: str) -> None:
        self.log("P " + text.replace("\n", " ")[:300])

    def flush_latencies(self) -> None:
        with self.latency_path.open("ab") as out:
            self.latencies.tofile(out)
        self.latencies = array.array("d")

    def check_read(self, key: str, value: bytes | None) -> None:
        state = self.states.get(key, KeyState())
        if value is not None:
            described = describe_value(value)
            if described is None or described[:2] != (self.workspace, key):
                self.problem(f"FOREIGN read of {self.workspace}/{key} returned {value[:60]!r}")
                return
            if value != value_of(self.workspace, key, described[2]):
                self.problem(f"CORRUPT read of {self.workspace}/{key}")
                return
        seq = None if value is None else describe_value(value)[2]  # type: ignore[index]
        if seq not in state.allowed():
            self.problem(f"STALE read of {self.workspace}/{key}: {seq}, expected one of {state.allowed()}")

    def write(self, keys: list[str], delete: bool, call: Callable[[dict[str, bytes]], None]) -> None:
        seqs = []
        values = {}
        for key in keys:
            seq, self.seq = self.seq, self.seq + 1
            self.log(f"I {seq} {key} {'d' if delete else 's'}")
            self.states.setdefault(key, KeyState()).ambiguous.add(-1 if delete else seq)
            seqs.append(seq)
            values[key] = value_of(self.workspace, key, seq)
        try:
            call(values)
        except BaseException:
            self.log("F " + ",".join(map(str, seqs)))
            raise
        self.log("A " + ",".join(map(str, seqs)))
        for key, seq in zip(keys, seqs, strict=True):
            self.states[key] = KeyState(acked=-1 if delete else seq)

    def one_operation(self, store: Any) -> None:
        from secure_kv import Category

        ws = store.workspace(self.workspace)
        choice = self.random.random()
        key = self.random.choice(self.keys)
        if choice < 0.35:
            self.write([key], False, lambda values: ws.set(key, values[key]))
        elif choice < 0.6:
            self.check_read(key, ws.get(key))
        elif choice < 0.7:
            keys = self.random.sample(self.keys, 5)
            self.write(keys, False, ws.set_many)
        elif choice < 0.8:
            keys = self.random.sample(self.keys, 5)
            found = ws.get_many(keys)
            for k in keys:
                self.check_read(k, found.get(k))
        elif choice < 0.9:  # a token: its reads are audited
            token_key = f"{key}-token"
            keys = [token_key]
            self.write(keys, False, lambda v: ws.set(token_key, v[token_key], category=Category.TOKEN))
            self.check_read(token_key, ws.get(token_key))
        elif choice < 0.95:
            self.write([key], True, lambda values: ws.delete(key))
        else:
            keys = self.random.sample(self.keys, 3)
            self.write(keys, True, lambda values: ws.delete_many(keys))

    def run(self) -> None:
        from secure_kv import SecureStore
        from secure_kv.errors import SecureKVError, StorageError
        from secure_kv.keys import StaticMasterKey

        store = None
        try:
            while time.time() < self.deadline:
                started = time.perf_counter()
                try:
                    if store is None:
                        store = SecureStore.open(self.url, master_key=StaticMasterKey(self.raw_key))
                    self.one_operation(store)
                except StorageError:
                    self.storage_errors += 1
                    self.log("S")
                    time.sleep(0.05)
                    continue
                except SecureKVError as error:
                    self.problem(f"UNEXPECTED {type(error).__name__}: {error}")
                    continue
                except Exception as error:
                    self.problem(f"UNDOCUMENTED {type(error).__module__}.{type(error).__name__}: {error}")
                    time.sleep(0.05)
                    continue
                self.latencies.append(time.perf_counter() - started)
                if len(self.latencies) >= 50:
                    self.flush_latencies()
        finally:
            self.flush_latencies()
            if store is not None:
                store.close()


def _worker_main(url: str, raw_key: bytes, worker: int, directory: str, deadline: float) -> None:
    Worker(url, raw_key, worker, Path(directory), deadline).run()


@dataclass
class Faults:
    """What the injector may do besides SIGKILLing workers (``None``: not on this backend)."""

    kill_connections: Callable[[], int] | None = None
    restart_pooler: Callable[[], None] | None = None


@dataclass
class SoakReport:
    backend: str
    workers: int
    seconds: float
    operations: int
    ops_per_second: float
    p50_ms: float
    p99_ms: float
    faults: dict[str, int]
    storage_errors: int
    problems: list[str]
    lost_writes: list[str]
    audit_ok: bool
    audit_failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.lost_writes and self.audit_ok

    def line(self) -> str:
        faults = ", ".join(f"{n} {kind}" for kind, n in sorted(self.faults.items())) or "none"
        return (
            f"{self.backend}: {self.workers} workers, {self.seconds:.0f} s, {self.operations} ops "
            f"({self.ops_per_second:,.0f}/s), p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; "
            f"faults survived: {faults}; StorageErrors: {self.storage_errors}; "
            f"lost writes: {len(self.lost_writes)}; problems: {len(self.problems)}; "
            f"audit {'verifies' if self.audit_ok else 'FAILS'}"
        )


def run_soak(
    backend: str,
    url: str,
    *,
    workers: int = 8,
    seconds: float = 10.0,
    fault_every: float = 0.5,
    faults: Faults | None = None,
    directory: Path | None = None,
    seed: int | None = None,
) -> SoakReport:
    """Run the soak on ``url`` and check every invariant; the report says what held."""
    from secure_kv import SecureStore
    from secure_kv.commands.audit import audit_verify
    from secure_kv.keys import StaticMasterKey
    from secure_kv.settings import load_settings

    faults = faults or Faults()
    chooser = random.Random(seed)
    raw_key = os.urandom(32)
    work = Path(tempfile.mkdtemp(prefix="skv-soak-")) if directory is None else directory
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)):
        pass  # the schema, before any fault
    started = time.time()
    deadline = started + seconds
    processes: dict[int, Any] = {}

    def spawn(worker: int) -> None:
        process = FORK.Process(target=_worker_main, args=(url, raw_key, worker, str(work), deadline))
        process.start()
        processes[worker] = process

    for worker in range(workers):
        spawn(worker)
    done: Counter[str] = Counter()
    kinds = ["sigkill"]
    if faults.kill_connections is not None:
        kinds.append("connections terminated")
    if faults.restart_pooler is not None:
        kinds.append("pgbouncer restart")
    while time.time() < deadline - fault_every:
        time.sleep(fault_every * (0.5 + chooser.random()))
        kind = chooser.choice(kinds)
        if kind == "sigkill":
            worker = chooser.randrange(workers)
            process = processes[worker]
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join()
                done[kind] += 1
                spawn(worker)  # a new process resumes the worker from its journal
        elif kind == "connections terminated":
            assert faults.kill_connections is not None
            done[kind] += faults.kill_connections()
        else:
            assert faults.restart_pooler is not None
            faults.restart_pooler()
            done[kind] += 1
    for process in processes.values():
        process.join(timeout=120)
        if process.is_alive():
            process.kill()
            process.join()
    elapsed = time.time() - started

    problems: list[str] = []
    lost: list[str] = []
    storage_errors = 0
    latencies = array.array("d")
    with SecureStore.open(url, master_key=StaticMasterKey(raw_key)) as store:
        for worker in range(workers):
            journal = work / f"worker-{worker}.journal"
            states, _, logged = read_journal(journal)
            problems.extend(f"worker {worker}: {p}" for p in logged)
            storage_errors += sum(1 for line in journal.read_text().splitlines() if line == "S")
            latency_file = work / f"worker-{worker}.latency"
            if latency_file.exists():
                latencies.frombytes(latency_file.read_bytes())
            ws = store.workspace(workspace_of(worker))
            found = ws.get_many(list(states))
            for key, state in states.items():
                value = found.get(key)
                seq = None
                if value is not None:
                    described = describe_value(value)
                    if described is None or described[:2] != (workspace_of(worker), key):
                        problems.append(f"FOREIGN final value of {key}")
                        continue
                    seq = described[2]
                if seq not in state.allowed():
                    lost.append(f"{workspace_of(worker)}/{key}: holds {seq}, acknowledged {state.acked}")
    verified = audit_verify(settings=load_settings(database_url=url), master_key=StaticMasterKey(raw_key))
    ordered = sorted(latencies)
    return SoakReport(
        backend=backend,
        workers=workers,
        seconds=elapsed,
        operations=len(ordered),
        ops_per_second=len(ordered) / elapsed,
        p50_ms=1000 * statistics.median(ordered) if ordered else 0.0,
        p99_ms=1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
        faults=dict(done),
        storage_errors=storage_errors,
        problems=problems,
        lost_writes=lost,
        audit_ok=verified.ok,
        audit_failures=[str(f) for f in verified.failures],
    )


# --- fault helpers shared by the test and `make soak` ----------------------------------------


def postgres_killer(admin_url: str, database: str) -> Callable[[], int]:
    """Terminate every server connection to ``database`` (pg_terminate_backend)."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def kill() -> int:
        with engine.connect() as connection:
            return len(
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).all()
            )

    return kill


def mysql_killer(admin_url: str, database: str) -> Callable[[], int]:
    """KILL every server connection using ``database``."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def kill() -> int:
        killed = 0
        with engine.connect() as connection:
            ids = connection.exec_driver_sql(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                (database,),
            ).scalars()
            for connection_id in list(ids):
                try:
                    connection.exec_driver_sql(f"KILL {int(connection_id)}")
                    killed += 1
                except sa.exc.DBAPIError:
                    pass  # it ended meanwhile
        return killed

    return kill


@contextmanager
def soak_databases(
    postgres_url: str, mysql_url: str, directory: Path
) -> Iterator[dict[str, tuple[str, Faults]]]:
    """Fresh databases on the shared servers and a PgBouncer of its own (``make soak``)."""
    import sqlalchemy as sa

    from .servers import PgBouncer

    pg_admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    my_admin = sa.create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:10]
    pg_direct, pg_bounced, my_name = f"skv_soak_{suffix}", f"skv_soak_pgb_{suffix}", f"skv_soak_{suffix}"
    pg = sa.make_url(postgres_url)
    with ExitStack() as stack:
        for name in (pg_direct, pg_bounced):
            with pg_admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            stack.callback(_drop_pg, pg_admin, name)
        with my_admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE `{my_name}`")
        stack.callback(_drop_mysql, my_admin, my_name)
        bouncer = PgBouncer(pg.host or "127.0.0.1", pg.port or 5432, pool_size=4)
        bouncer.start()
        stack.callback(bouncer.cleanup)
        admin_pg = pg.render_as_string(hide_password=False)
        yield {
            "sqlite": (f"sqlite:///{directory / 'soak.db'}", Faults()),
            "postgresql": (
                pg.set(database=pg_direct).render_as_string(hide_password=False),
                Faults(kill_connections=postgres_killer(admin_pg, pg_direct)),
            ),
            "postgresql+pgbouncer": (
                bouncer.url(pg_bounced),
                Faults(
                    kill_connections=postgres_killer(admin_pg, pg_bounced), restart_pooler=bouncer.restart
                ),
            ),
            "mariadb": (
                sa.make_url(mysql_url).set(database=my_name).render_as_string(hide_password=False),
                Faults(kill_connections=mysql_killer(mysql_url, my_name)),
            ),
        }
    pg_admin.dispose()
    my_admin.dispose()


def _drop_pg(admin: Any, name: str) -> None:
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_mysql(admin: Any, name: str) -> None:
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="per database")
    parser.add_argument("--fault-every", type=float, default=0.5, help="mean seconds between faults")
    parser.add_argument("--backends", default="sqlite,postgresql,postgresql+pgbouncer,mariadb")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)
    postgres_url = os.environ.get(
        "SECURE_KV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    mysql_url = os.environ.get("SECURE_KV_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
    reports = []
    with tempfile.TemporaryDirectory(prefix="skv-soak-") as temp:
        with soak_databases(postgres_url, mysql_url, Path(temp)) as backends:
            for name in args.backends.split(","):
                url, faults = backends[name]
                work = Path(temp) / name
                work.mkdir()
                print(
                    f"soaking {name} for {args.seconds:.0f} s with {args.workers} workers...", file=sys.stderr
                )
                report = run_soak(
                    name, url, workers=args.workers, seconds=args.seconds, fault_every=args.fault_every,
                    faults=faults, directory=work,
                )  # fmt: skip
                reports.append(report)
                print(report.line())
                for text in (report.problems + report.lost_writes + report.audit_failures)[:20]:
                    print(f"  {text}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in reports], indent=2))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
