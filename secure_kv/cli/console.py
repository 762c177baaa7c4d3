"""The one place the ``secure-kv`` command uses rich: progress bars on stderr and tables.

One adapter, :class:`BarProgress`, draws every long job (rotation, shred, purge, audit
verify and report), as each reports through :class:`secure_kv.progress.Progress`.

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

__all__ = ["BarProgress", "markup_console", "print_table", "progress_bars", "stdout_console"]


def stdout_console() -> Console:
    """stdout for tables: no markup, no highlighting, no emoji codes; a terminal wraps to
    its width, a pipe or file gets whole lines (rich would otherwise cut them at 80 columns).
    """
    console = Console(markup=False, highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, emoji=False, width=100_000)
    return console


def markup_console() -> Console:
    """stdout with rich's markup, for text this package writes itself (the demo)."""
    return Console()


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


class BarProgress:
    """secure_kv's :class:`~secure_kv.progress.Progress` as rich bars on stderr: one bar per
    job or phase (``audit verify`` starts three), each labelled and counted against its total.

    Counts what is done whatever the terminal (``done`` of ``total``, for the job started
    last), so an interrupted command can say how far it got.
    """

    def __init__(self, bars: RichProgress) -> None:
        self._bars = bars
        self._task: TaskID | None = None
        self.total = 0
        self.done = 0

    def start(self, total: int, description: str) -> None:
        self.total, self.done = total, 0
        self._task = self._bars.add_task(shown(description), total=total)

    def describe(self, description: str) -> None:
        if self._task is not None:
            self._bars.update(self._task, description=shown(description))

    def advance(self, count: int) -> None:
        self.done += count
        if self._task is not None:
            self._bars.advance(self._task, count)


@contextmanager
def progress_bars(unit: str = "", *, transient: bool = False) -> Iterator[BarProgress]:
    """Bars on stderr, counting ``unit`` (``records``, ``keys``); ``transient``: gone when
    the work ends (a report whose summary follows). Nothing is drawn unless stderr is a
    terminal, so pipes and logs get no stray lines.
    """
    console = stderr_console()
    bars = RichProgress(
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
        disable=not console.is_terminal,
    )
    with bars:
        yield BarProgress(bars)
