"""The ``secure-kv`` command as a script uses it: start-up, ``audit report`` and ``list``.

What is measured (each through the real command in a subprocess, stdout to a file)
    start-up        ``secure-kv --help`` against ``python -c pass`` (the interpreter alone),
                    median of several runs each, alternating.
    audit report    ``secure-kv audit report --format csv > file`` and ``--format json`` over
                    a store of N records (default 100,000 in 100 workspaces): records/s.
    list            ``secure-kv list WORKSPACE --format json > file`` of one workspace of N
                    records: records/s, and the child's peak memory (ru_maxrss).

Usage (from the repo root)::

    python bench/bench_cli.py                 # SQLite, 100,000 records
    python bench/bench_cli.py --quick         # smoke test, seconds
    python bench/bench_cli.py --records 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from secure_kv import Category, SecureStore  # noqa: E402
from secure_kv.keys import EnvMasterKey  # noqa: E402
from secure_kv.keys.base import generate_master_key  # noqa: E402

COMMAND = [sys.executable, "-m", "secure_kv"]


def _run(args: list[str], env: dict[str, str], out: Path | None = None) -> tuple[float, int]:
    """Seconds the command took and the child's peak resident memory (KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    with open(out if out is not None else os.devnull, "wb") as sink:
        subprocess.run(args, env=env, stdout=sink, stderr=subprocess.DEVNULL, check=True)
    seconds = time.perf_counter() - start
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def startup(runs: int) -> dict[str, float]:
    env = dict(os.environ)
    bare: list[float] = []
    helped: list[float] = []
    for _ in range(runs):
        bare.append(_run([sys.executable, "-c", "pass"], env)[0])
        helped.append(_run([*COMMAND, "--help"], env)[0])
    return {
        "python -c pass": statistics.median(bare),
        "secure-kv --help": statistics.median(helped),
        "added by secure-kv": statistics.median(helped) - statistics.median(bare),
    }


def populate(url: str, key: str, records: int, workspaces: int) -> None:
    provider = EnvMasterKey({"SECURE_KV_MASTER_KEY": key})
    value = os.urandom(100)
    per = max(1, records // workspaces)
    with SecureStore.open(url, master_key=provider, credential_policy="warn") as store:
        for w in range(workspaces):
            ws = store.workspace(f"tenant-{w}")
            for start in range(0, per, 1000):
                ws.set_many(
                    {f"k{i:07d}": value for i in range(start, min(per, start + 1000))},
                    category=Category.PREFERENCE,
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="2,000 records, 3 start-up runs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    records = 2_000 if args.quick else args.records
    result: dict[str, Any] = {"startup_seconds": startup(3 if args.quick else 9)}
    with tempfile.TemporaryDirectory(prefix="skv-bench-cli-") as tmp:
        key = generate_master_key()
        env = dict(os.environ, SECURE_KV_MASTER_KEY=key, SECURE_KV_KEY_PROVIDER="env")
        report_url = f"sqlite:///{tmp}/report.db"
        list_url = f"sqlite:///{tmp}/list.db"
        start = time.perf_counter()
        populate(report_url, key, records, 100)
        populate(list_url, key, records, 1)
        result["populate_seconds"] = time.perf_counter() - start
        out = Path(tmp) / "out"
        for fmt in ("csv", "json"):
            seconds, _ = _run(
                [*COMMAND, "--database-url", report_url, "audit", "report", "--format", fmt], env, out
            )
            lines = sum(1 for _ in out.open("rb"))
            result[f"audit report --format {fmt}"] = {
                "records": records,
                "seconds": seconds,
                "per_second": records / seconds,
                "lines": lines,
            }
        seconds, peak = _run(
            [*COMMAND, "--database-url", list_url, "list", "tenant-0", "--format", "json"], env, out
        )
        result["list --format json"] = {
            "records": records,
            "seconds": seconds,
            "per_second": records / seconds,
            "peak_rss_mib": peak / 1024,
            "entries": len(json.loads(out.read_text(encoding="utf-8"))),
        }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
