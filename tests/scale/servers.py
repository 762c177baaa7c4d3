"""Real server processes the scale tests start and stop themselves: a PgBouncer in front of
the shared PostgreSQL server, and throw-away PostgreSQL clusters (a primary and a streaming
standby) for the failover test. Nothing here touches the shared servers' configuration.

PostgreSQL and PgBouncer refuse to run as root; as root, their processes run as the
``postgres`` user (``runuser``), in directories handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PGBOUNCER = os.environ.get("SECURE_KV_TEST_PGBOUNCER", "/usr/sbin/pgbouncer")


def _newest_pg_bin() -> Path:
    """Debian's newest installed PostgreSQL server binaries (the failover test's clusters)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = Path(os.environ.get("SECURE_KV_TEST_PG_BIN") or _newest_pg_bin())
SERVICE_USER = "postgres"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick, never 5432 or 6432 in use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_service_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVICE_USER, "--", *command]


def private_dir(prefix: str) -> Path:
    """A temporary directory the server processes may write (owned by ``postgres`` under root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _wait_for_port(
    port: int, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} after {timeout} s")


class PgBouncer:
    """Debian's PgBouncer in transaction pooling mode, with a pool smaller than its clients.

    ``* = host=... port=...`` routes any database name to the same server, so each test can
    use a database of its own through one PgBouncer.
    """

    def __init__(
        self, server_host: str, server_port: int, *, pool_size: int = 2, pool_mode: str = "transaction"
    ) -> None:
        self.server = (server_host, server_port)
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.port = free_port()
        self.directory = private_dir("skv-pgbouncer-")
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        host, port = self.server
        (self.directory / "userlist.txt").write_text('"postgres" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.directory / "userlist.txt"}
admin_users = postgres
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
max_db_connections = {self.pool_size}
server_reset_query =
server_check_delay = 0
logfile = {self.directory / "pgbouncer.log"}
pidfile = {self.directory / "pgbouncer.pid"}
{"user = " + SERVICE_USER if os.geteuid() == 0 else ""}
"""
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            shutil.chown(self.directory / name, SERVICE_USER if os.geteuid() == 0 else None)

    def url(self, database: str, *, user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._process = subprocess.Popen(
            # As root, PgBouncer itself switches to ``user`` (runuser would not pass on signals).
            [PGBOUNCER, str(self.directory / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(self.port, process=self._process)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; log:\n{self.log()}") from None

    def stop(self) -> None:
        """SIGTERM: an immediate shutdown that drops every client and server connection."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PgCluster:
    """A PostgreSQL cluster of the test's own: its own directory, port and processes."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = port

    def _run(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            _as_service_user([*args]), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    @classmethod
    def primary(cls, directory: Path, *, synchronous_standby: str | None = None) -> PgCluster:
        cluster = cls(directory, free_port())
        cluster._run(
            str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{directory}'\n"
                "wal_level = replica\nmax_wal_senders = 4\nfsync = off\nshared_buffers = 16MB\n"
                "max_connections = 60\n"
            )
            if synchronous_standby:
                conf.write(f"synchronous_standby_names = '{synchronous_standby}'\nsynchronous_commit = on\n")
        with (cluster.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        return cluster

    def standby(self, directory: Path, *, name: str) -> PgCluster:
        """A streaming standby of this (running) cluster, made by pg_basebackup."""
        standby = PgCluster(directory, free_port())
        self._run(
            str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-D", str(standby.data), "-R", "-X", "stream", "--no-sync", "-c", "fast",
        )  # fmt: skip
        # After what pg_basebackup -R wrote to postgresql.auto.conf, which overrides postgresql.conf.
        with (standby.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"port = {standby.port}\nunix_socket_directories = '{directory}'\n"
                f"primary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres "
                f"application_name={name}'\n"
                # Promoted, it has no standby of its own to wait for (a failover tool such
                # as Patroni rewrites this; without it every commit would hang).
                "synchronous_standby_names = ''\n"
            )
        return standby

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "server.log"), "-w",
            "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(RuntimeError):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"
