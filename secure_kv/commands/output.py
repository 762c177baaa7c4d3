"""The JSON and CSV every command writes, in one place: one array format, one CSV dialect.

Arrays are streamed an object per line, so a report or a listing of any size is written in
constant memory and can be read as it comes.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = ["write_csv", "write_json", "write_json_array"]

_encode = json.JSONEncoder(ensure_ascii=False).encode


def write_json(out: TextIO, data: Any) -> None:
    """One JSON document, indented, with a final newline (a command's report)."""
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_json_array(out: TextIO, items: Iterable[Any]) -> int:
    """``items`` as a JSON array, one object per line, streamed; returns how many."""
    out.write("[")
    number = 0
    for number, item in enumerate(items, 1):
        out.write(",\n  " if number > 1 else "\n  ")
        out.write(_encode(item))
    out.write("\n]\n" if number else "]\n")
    return number


def write_csv(out: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A header line and ``rows``, streamed, with RFC 4180 line ends.

    With ``"\\n"`` alone, csv leaves a field holding a bare ``"\\r"`` unquoted, and a name
    with one would split its row for every reader.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
