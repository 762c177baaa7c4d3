"""Timing and memory helpers shared by the benchmarks in ``bench/``.

Nothing here knows about secure_kv: a *task* is any callable ``run(n) -> seconds`` that
performs ``n`` operations and returns how long they took. :func:`interleave` runs several
tasks in shuffled, alternating blocks, so slow drift of a shared machine (other tenants,
thermal or frequency changes) hits every task alike instead of whichever happened to run
last.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Task = Callable[[int], float]

__all__ = [
    "Samples",
    "Task",
    "interleave",
    "key_task",
    "key_value_task",
    "peak_python_bytes",
    "quartiles",
]


@dataclass
class Samples:
    """Per-operation seconds, one sample per block (or per repetition)."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quartiles(self) -> tuple[float, float]:
        return quartiles(self.values)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the value itself when there is only one)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def interleave(
    tasks: dict[str, Task], *, rounds: int, block_ops: int, rng: random.Random
) -> tuple[dict[str, Samples], list[list[str]]]:
    """Run every task once per round, in a freshly shuffled order each round.

    Returns per-op seconds for each block of each task, and the order used in each round
    (so callers can pair tasks round by round). A full collection runs before each block so
    one task's garbage is not collected on another task's clock; the collector otherwise
    stays on, as it would in an application.
    """
    samples = {name: Samples() for name in tasks}
    orders: list[list[str]] = []
    for _ in range(rounds):
        order = list(tasks)
        rng.shuffle(order)
        orders.append(order)
        for name in order:
            gc.collect()
            samples[name].values.append(tasks[name](block_ops) / block_ops)
    return samples, orders


def key_value_task(
    operation: Callable[[str, bytes], Any], keys: Sequence[str], values: Sequence[bytes]
) -> Task:
    """A task calling ``operation(key, value)``, walking keys and values round-robin.

    The (key, value) pairs of a block are picked before the clock starts; a cursor carries
    over between blocks so successive blocks write different keys. ``len(values)`` should
    be coprime with ``len(keys)`` so a key gets a different value each time round.
    """
    cursor = 0

    def run(n: int) -> float:
        nonlocal cursor
        batch = [(keys[(cursor + i) % len(keys)], values[(cursor + i) % len(values)]) for i in range(n)]
        cursor += n
        start = time.perf_counter()
        for key, value in batch:
            operation(key, value)
        return time.perf_counter() - start

    return run


def key_task(operation: Callable[[str], Any], keys: Sequence[str]) -> Task:
    """A task calling ``operation(key)``, walking the keys round-robin (see above)."""
    cursor = 0

    def run(n: int) -> float:
        nonlocal cursor
        batch = [keys[(cursor + i) % len(keys)] for i in range(n)]
        cursor += n
        start = time.perf_counter()
        for key in batch:
            operation(key)
        return time.perf_counter() - start

    return run


def peak_python_bytes(work: Callable[[], Any]) -> int:
    """Peak Python-heap growth (bytes) while ``work()`` runs, result held until the end.

    Only allocations made after tracing starts count, so inputs prepared beforehand are
    free. tracemalloc sees the Python allocators (every bytes/bytearray object, whoever
    creates it) but not memory that C libraries (SQLite, libpq, OpenSSL) allocate on their
    own.
    """
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = work()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - baseline
