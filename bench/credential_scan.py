"""CPU time of the credential scan (secure_kv/credentials.py) on crafted and ordinary values.

Run: ``.venv/bin/python bench/credential_scan.py``. Each line is the median CPU seconds of
one ``find_credential`` call over a 16 KiB value (the most it scans), so a regression to
super-linear work shows as a jump here (``key=K1`` repeated: 169 ms before the one-pass
assignment scan, 6 ms after, on the 2-core CI machine).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from secure_kv.credentials import MAX_SCAN_BYTES, find_credential


def _fill(unit: str) -> bytes:
    return (unit * (MAX_SCAN_BYTES // len(unit) + 1)).encode()[:MAX_SCAN_BYTES]


CASES: dict[str, bytes] = {
    "key=K1 (assignments, no separators)": _fill("key=K1"),
    "pwd:K1 (assignments, no separators)": _fill("pwd:K1"),
    "passkey=secret_token (overlapping words)": _fill("passkey=secret_token1"),
    "token/pass/secret mixed": _fill("token=Zx9pass:Qw8secret=Er7"),
    "bearer + spaces": ("bearer" + " " * (MAX_SCAN_BYTES - 6)).encode(),
    "url scheme://user:pass runs": _fill("a://" + "u" * 190 + ":" + "p" * 190),
    "English prose": _fill("the quick brown fox jumps over the lazy dog. "),
    "JSON settings": _fill('{"theme": "dark", "lang": "en", "size": 12}, '),
}


def cpu_seconds(call: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    for name, value in CASES.items():
        seconds = cpu_seconds(lambda value=value: find_credential(value))  # type: ignore[misc]
        print(f"{seconds * 1000:9.2f} ms  {name}")


if __name__ == "__main__":
    main()
