"""Issue 11, point 6: Ctrl-C during long work says what happened and what to run next,
exits 130, ``status`` tells an interrupted rotation from a running one, and running the
same command again finishes the job with every record readable.

The command runs for real in a subprocess at a pseudo-terminal, and gets a real SIGINT
once its progress bar shows work done.
"""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from secure_kv import SecureStore
from secure_kv.cli import main
from secure_kv.keys import EnvMasterKey
from secure_kv.keys.base import generate_master_key
from secure_kv.store.internals import record_event
from tests.terminal import cli_env, run_at_terminal

RECORDS = 30_000
STARTED = re.compile(rb"[1-9][\d,]*/30,000 records")


def test_ctrl_c_during_a_report_or_a_rotation_says_how_far_it_got_and_a_rerun_finishes(
    sqlite_url: str, tmp_path: Path
) -> None:
    key = generate_master_key()
    provider = EnvMasterKey({"SECURE_KV_MASTER_KEY": key})
    values = {f"k{i:05d}": i.to_bytes(4, "big") for i in range(RECORDS)}
    with SecureStore.open(sqlite_url, master_key=provider) as store:
        store.workspace("big").set_many(values)
    env = cli_env(sqlite_url, key)

    report = run_at_terminal(
        ["audit", "report", "--format", "csv"],
        env,
        tmp_path,
        # Its stdout is held (see run_at_terminal): the bar being shown is enough to know
        # the report is under way and cannot finish before the signal.
        interrupt_when=lambda seen: re.search(rb"/30,000", seen) is not None,
    )
    assert report.code == 130, report.terminal_text
    assert re.search(
        r"interrupted: [\d,]+ of 30,000 records written; the output is incomplete", report.terminal_text
    ), report.terminal_text

    run = run_at_terminal(
        ["rotate", "workspace", "big", "--batch-size", "50"],
        env,
        tmp_path,
        interrupt_when=lambda seen: STARTED.search(seen) is not None,
    )
    assert run.code == 130, run.terminal_text
    said = re.search(
        r"interrupted: ([\d,]+) of 30,000 records re-encrypted; run the same command to resume",
        run.terminal_text,
    )
    assert said is not None, run.terminal_text
    assert 0 < int(said.group(1).replace(",", "")) < RECORDS
    assert "Traceback" not in run.terminal_text and "Aborted" not in run.terminal_text

    runner = CliRunner(env=env)
    status = runner.invoke(main, ["status"])
    assert "rotation interrupted: run `secure-kv rotate workspace big` to resume" in status.stdout
    assert (
        runner.invoke(main, ["status", "--format", "json"]).stdout.count('"rotation_state": "interrupted"')
        == 1
    )

    rerun = runner.invoke(main, ["rotate", "workspace", "big"])
    assert rerun.exit_code == 0, rerun.output
    assert "(resumed)" in rerun.stderr
    status = runner.invoke(main, ["status"])
    assert "rotation" not in status.stdout.split("state", 1)[1]  # nothing unfinished
    with SecureStore.open(sqlite_url, master_key=provider) as store:
        assert store.workspace("big").get_many(list(values)) == values


def test_status_says_running_while_a_rotation_runs(sqlite_url: str, tmp_path: Path) -> None:
    """A rotation that started and has not ended (here: killed without a word, as SIGKILL
    leaves it) is "running" to status, not "interrupted".
    """
    key = generate_master_key()
    provider = EnvMasterKey({"SECURE_KV_MASTER_KEY": key})
    with SecureStore.open(sqlite_url, master_key=provider) as store:
        store.workspace("w").set_many({f"k{i}": b"v" for i in range(10)})
        record_event(store, "admin.rotate_workspace", workspace="w", outcome="started")
        store._keys.create_version(1, b"w", 2)
    status = CliRunner(env=cli_env(sqlite_url, key)).invoke(main, ["status"])
    assert "rotation running" in status.stdout
