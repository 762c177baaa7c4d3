"""Several processes, each with several threads, append to the audit log at once: every
event is written, every chain verifies, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import sqlalchemy as sa

from secure_kv import Category, SecureStore
from secure_kv.audit.verify import verify
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import format_master_key

PROCESSES = 3
THREADS = 3
ROUNDS = 15

WORKER = (
    textwrap.dedent(
        """
    import sys, threading
    from secure_kv import SecureStore, Category
    process = sys.argv[1]
    store = SecureStore.from_settings()
    failures = []

    def work(thread):
        try:
            ws = store.workspace("shared")  # one workspace: the data key is created in a race
            for i in range(ROUNDS):
                key = f"p{process}-t{thread}-{i}"
                ws.set(key, b"token-value", category=Category.TOKEN)
                assert ws.get(key) == b"token-value"
        except BaseException as error:
            failures.append(repr(error))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    if failures:
        sys.exit("\\n".join(failures))
    """
    )
    .replace("ROUNDS", str(ROUNDS))
    .replace("THREADS", str(THREADS))
)


def test_concurrent_appenders_in_several_processes_all_verify(database_url: str) -> None:
    raw = os.urandom(32)
    with SecureStore.open(database_url, master_key=StaticMasterKey(raw)):
        pass  # create the schema first; the workers race on everything else
    env = {
        **os.environ,
        "SECURE_KV_DATABASE_URL": database_url,
        "SECURE_KV_KEY_PROVIDER": "env",
        "SECURE_KV_MASTER_KEY": format_master_key(raw),
    }
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(p)], env=env, stderr=subprocess.PIPE, text=True)
        for p in range(PROCESSES)
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors
    with SecureStore.open(database_url, master_key=StaticMasterKey(raw)) as store:
        report = verify(store._db, store._provider)
        assert report.ok, report.failures
        engine = sa.create_engine(database_url)
        with engine.connect() as c:
            counts = dict(
                c.execute(sa.text("SELECT action, COUNT(*) FROM skv_audit_events GROUP BY action")).all()
            )
        engine.dispose()
    writes = PROCESSES * THREADS * ROUNDS
    assert counts["record.write"] == writes
    assert counts["record.read"] == writes
    assert counts["datakey.create"] == 1
    assert report.chains >= PROCESSES


def test_threads_of_one_store_append_without_losing_events(
    database_url: str, master_key: StaticMasterKey
) -> None:
    import threading

    with SecureStore.open(database_url, master_key=master_key) as store:
        ws = store.workspace("w")
        ws.set("token", b"value", category=Category.TOKEN)
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for _ in range(20):
                    assert ws.get("token") == b"value"
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        report = verify(store._db, store._provider)
        assert report.ok, report.failures
        assert report.events == 2 + 4 * 20
