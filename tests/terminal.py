"""Running the real ``secure-kv`` in a subprocess, with stderr on a pseudo-terminal.

A terminal is what makes rich draw progress bars (and, before issue 11, swallow stdout):
:func:`run_at_terminal` gives the child a real pty as stderr while stdout goes to a file,
the way a user types ``secure-kv audit report --format csv > records.csv``.
"""

from __future__ import annotations

import fcntl
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


_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size


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

    With ``interrupt_when``, stdout is a pipe nobody reads until the SIGINT is sent (as if
    piped into a pager not yet scrolled): a command that writes data is held mid-work, so
    a fast machine cannot finish it before the signal lands.
    """
    master, slave = os.openpty()
    out_path = tmp_path / f"stdout-{time.monotonic_ns()}"
    received = bytearray()
    held = bytearray()
    with out_path.open("wb") as out:
        child = subprocess.Popen(
            [*COMMAND, *args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out if interrupt_when is None else subprocess.PIPE,
            stderr=slave,
            env=dict(env),
        )
        os.close(slave)
        if child.stdout is not None:
            # Room for the first batches, so the command gets under way before it is held.
            fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        reader = threading.Thread(target=_drain, args=(master, received), daemon=True)
        reader.start()
        if stdin is not None:
            assert child.stdin is not None
            child.stdin.write(stdin)
            child.stdin.close()
        deadline = time.monotonic() + timeout
        stdout_reader = None
        if interrupt_when is not None:
            assert child.stdout is not None
            while child.poll() is None and time.monotonic() < deadline:
                if interrupt_when(bytes(received)):
                    _interrupt_until_it_answers(child, received)
                    break
                time.sleep(0.02)
            stdout_reader = threading.Thread(target=_drain, args=(child.stdout.fileno(), held), daemon=True)
            stdout_reader.start()
        code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
        reader.join(timeout=10)
        if stdout_reader is not None:
            stdout_reader.join(timeout=10)
            out.write(held)
    os.close(master)
    return Run(code, out_path.read_bytes(), bytes(received))


def _interrupt_until_it_answers(child: subprocess.Popen[bytes], received: bytearray) -> None:
    """SIGINT, and again (as a user presses Ctrl-C again) if the command has not said
    "interrupted" within five seconds: stdout is still held, so it cannot have finished.
    On a loaded machine a first signal has been seen to go unanswered."""
    for _ in range(3):
        child.send_signal(signal.SIGINT)
        answer_by = time.monotonic() + 5.0
        while time.monotonic() < answer_by:
            if b"interrupted" in received or child.poll() is not None:
                return
            time.sleep(0.02)


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
