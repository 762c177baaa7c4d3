"""Untrusted text made safe to show: workspace and key names, values' metadata, messages.

Names are chosen by plugins and tenants. Shown as stored they could hide or restyle
themselves (a newline forges a second row, a right-to-left mark reverses what follows, an
escape sequence drives the terminal). :func:`shown` makes every such character visible as
its Python escape, so an auditor reads exactly what is stored. Standard library only: the
command imports it on every call.
"""

from __future__ import annotations

__all__ = ["plural", "shown", "shown_message"]


def _escaped(char: str) -> str:
    return repr(char)[1:-1]  # "\n" -> \n, "\u200f" -> \u200f, "\x1b" -> \x1b


def shown(text: str) -> str:
    """``text`` with every non-printable character (controls, format characters such as
    right-to-left marks, line separators, unusual spaces) as its escape, and ``\\`` doubled
    so that an escape in the name itself is told apart.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        "\\\\" if char == "\\" else char if char.isprintable() else _escaped(char) for char in text
    )


def shown_message(text: str) -> str:
    """A message on one line: non-printable characters escaped, backslashes kept as they are
    (messages quote names with ``repr``, which escapes them already; paths keep theirs).
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 byte``, ``2 bytes``, ``1,000 records``: the count with the right form of the noun."""
    return f"{count:,} {singular if count == 1 else plural_form or singular + 's'}"
