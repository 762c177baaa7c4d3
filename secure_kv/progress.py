"""How long admin operations (rotation, shred, purge) report progress.

The library knows nothing about terminals: it calls a :class:`Progress`, and the CLI passes
one that draws a rich progress bar. Python callers can pass their own or nothing.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_PROGRESS", "Progress"]


class Progress(Protocol):
    """Receives the size of a job, then how much of it is done, as it goes."""

    def start(self, total: int, description: str) -> None:
        """The job has ``total`` units (records or data keys); a new one may follow."""

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
