"""The one place the ``secure-kv`` command uses rich: progress bars on stderr and tables.

Imported only by the commands that draw something (rich takes a tenth of a second to
import). Nothing here interprets markup: names and messages reach rich as
:class:`~rich.text.Text` built from :func:`~secure_kv.display.shown` strings, and progress
bars never redirect stdout, so data written to stdout while a bar runs goes where the
user sent it (a file, a pipe), byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from secure_kv.display import shown

__all__ = ["BarProgress", "PhaseProgress", "bar_progress", "phase_progress", "print_table", "stdout_console"]


def stdout_console() -> Console:
    """stdout for tables: no markup, no highlighting, no emoji codes; a terminal wraps to
    its width, a pipe or file gets whole lines (rich would otherwise cut them at 80 columns).
    """
    console = Console(markup=False, highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, emoji=False, width=100_000)
    return console


def stderr_console() -> Console:
    return Console(stderr=True, markup=False, highlight=False, emoji=False)


def print_table(
    headers: tuple[str, ...], rows: Sequence[Sequence[str]], console: Console | None = None
) -> None:
    """A table whose every cell is plain text (names already passed through ``shown``)."""
    table = Table(*headers)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    (console or stdout_console()).print(table)


class _CountColumn(ProgressColumn):
    """``1,200/50,000 records``, or ``1,200 records`` while the total is unknown."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        done = int(task.completed)
        if task.total is None:
            return Text(f"{done:,} {self.unit}", style="progress.download")
        return Text(f"{done:,}/{int(task.total):,} {self.unit}", style="progress.download")


class _RateColumn(ProgressColumn):
    """Units per second, from rich's moving estimate."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


def _bar(unit: str, transient: bool = False) -> RichProgress:
    console = stderr_console()
    return RichProgress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        _CountColumn(unit),
        _RateColumn(unit),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        # Never: data written to stdout while the bar runs must reach stdout untouched.
        redirect_stdout=False,
        redirect_stderr=False,
        disable=not console.is_terminal,  # no bar, nor stray blank lines, in pipes and logs
    )


class BarProgress:
    """secure_kv's :class:`~secure_kv.progress.Progress` as one rich bar on stderr.

    Counts what is done whatever the terminal, so an interrupted command can say how far
    it got.
    """

    def __init__(self, bar: RichProgress) -> None:
        self._bar = bar
        self._task: TaskID | None = None
        self.total = 0
        self.done = 0

    def start(self, total: int, description: str) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self.total, self.done = total, 0
        self._task = self._bar.add_task(shown(description), total=total)

    def describe(self, description: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=shown(description))

    def advance(self, count: int) -> None:
        self.done += count
        if self._task is not None:
            self._bar.advance(self._task, count)


@contextmanager
def bar_progress(unit: str) -> Iterator[BarProgress]:
    bar = _bar(unit)
    with bar:
        yield BarProgress(bar)


class PhaseProgress:
    """One labelled bar per phase (``records``, ``data keys``, ``events``), each with its
    total when known: ``tick(phase, done)`` is the callback ``audit verify`` and
    ``audit report`` take.
    """

    def __init__(self, bar: RichProgress, totals: dict[str, int]) -> None:
        self._bar = bar
        self._totals = totals
        self._tasks: dict[str, TaskID] = {}
        self.done: dict[str, int] = {}

    def tick(self, phase: str, done: int) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._bar.add_task(shown(phase), total=self._totals.get(phase))
        self.done[phase] = done
        self._bar.update(self._tasks[phase], completed=done)

    def total(self, phase: str, total: int) -> None:
        self._totals[phase] = total
        if phase in self._tasks:
            self._bar.update(self._tasks[phase], total=total)

    def totals(self, totals: dict[str, int]) -> None:
        for phase, total in totals.items():
            self.total(phase, total)

    def total_of(self, phase: str) -> int:
        return self._totals.get(phase, 0)


@contextmanager
def phase_progress(totals: dict[str, int] | None = None) -> Iterator[PhaseProgress]:
    bar = _bar("", transient=True)
    with bar:
        yield PhaseProgress(bar, dict(totals or {}))
