"""Running the real ``secure-kv`` in a subprocess, with stderr on a pseudo-terminal.

A terminal is what makes rich draw progress bars (and, before issue 11, swallow stdout):
:func:`run_at_terminal` gives the child a real pty as stderr while stdout goes to a file,
the way a user types ``secure-kv audit report --format csv > records.csv``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

COMMAND = [sys.executable, "-m", "secure_kv"]


@dataclass
class Run:
    code: int
    stdout: bytes
    #: what the terminal received (escape sequences included)
    terminal: bytes

    @property
    def terminal_text(self) -> str:
        return self.terminal.decode("utf-8", "replace")


def _drain(fd: int, sink: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its end
            return
        if not chunk:
            return
        sink.extend(chunk)


def run_at_terminal(
    args: list[str],
    env: Mapping[str, str],
    tmp_path: Path,
    *,
    stdin: bytes | None = None,
    interrupt_when: Callable[[bytes], bool] | None = None,
    timeout: float = 300,
) -> Run:
    """``secure-kv ARGS > file`` with stderr on a pty; optionally SIGINT the child as soon
    as ``interrupt_when(terminal_bytes_so_far)`` holds (Ctrl-C at the terminal).
    """
    master, slave = os.openpty()
    out_path = tmp_path / f"stdout-{time.monotonic_ns()}"
    received = bytearray()
    with out_path.open("wb") as out:
        child = subprocess.Popen(
            [*COMMAND, *args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=slave,
            env=dict(env),
        )
        os.close(slave)
        reader = threading.Thread(target=_drain, args=(master, received), daemon=True)
        reader.start()
        if stdin is not None:
            assert child.stdin is not None
            child.stdin.write(stdin)
            child.stdin.close()
        deadline = time.monotonic() + timeout
        if interrupt_when is not None:
            while child.poll() is None and time.monotonic() < deadline:
                if interrupt_when(bytes(received)):
                    child.send_signal(signal.SIGINT)
                    break
                time.sleep(0.02)
        code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
        reader.join(timeout=10)
    os.close(master)
    return Run(code, out_path.read_bytes(), bytes(received))


def cli_env(database_url: str, master_key: str, **extra: str) -> dict[str, str]:
    """The environment of a user with an env master key and a store URL."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SECURE_KV_")}
    env.update(
        SECURE_KV_DATABASE_URL=database_url,
        SECURE_KV_MASTER_KEY=master_key,
        TERM="xterm-256color",
        COLUMNS="100",
        **extra,
    )
    env.pop("NO_COLOR", None)
    return env
