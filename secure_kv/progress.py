"""The one way long operations report progress: rotation, shred, purge, ``audit verify``
and ``audit report``, and the :mod:`secure_kv.commands` functions over them.

The library knows nothing about terminals: it calls a :class:`Progress`, and the CLI passes
one that draws rich progress bars on stderr. Python callers can pass their own or nothing
(:data:`NO_PROGRESS`). A job with phases (``audit verify``: events, data keys, records)
calls :meth:`~Progress.start` once per phase.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_PROGRESS", "Progress"]


class Progress(Protocol):
    """Receives the size of a job, then how much of it is done, as it goes."""

    def start(self, total: int, description: str) -> None:
        """The job (or its next phase) has ``total`` units (records, data keys, events)."""

    def describe(self, description: str) -> None:
        """What is being worked on now (for example, which workspace)."""

    def advance(self, count: int) -> None:
        """``count`` more units are done."""


class _NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def describe(self, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()
