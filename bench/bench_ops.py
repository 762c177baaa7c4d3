"""secure_kv set/get against a plain SQLAlchemy Core key-value table, and the 16 MiB case.

The quick answer to "what does the encryption cost?": the ``ops`` (100-byte values,
default category) and ``big`` (one 16 MiB value: set+get time and peak Python heap)
sections of ``bench/suite.py``, on SQLite and, when reachable, PostgreSQL. Every figure is
a ratio against the baseline measured in the same run (see suite.py for the method).

    python bench/bench_ops.py            # both sections, printed; nothing is written
    python bench/bench_ops.py --quick    # a smoke run
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import main

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        sys.exit(
            main(
                [
                    "--sections",
                    "ops,big",
                    "--no-report",
                    "--json",
                    str(Path(scratch) / "results.json"),
                    *sys.argv[1:],
                ]
            )
        )
