"""Capability: none; this keeps SECURITY.md's map of the adversarial suite honest.

SECURITY.md's table (between the ``security-map`` markers) must have one row for every
attacker capability and asset of the threat model, and every test a row names must exist,
so a renamed or deleted test breaks the build instead of leaving a claim without evidence.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES = (
    "database write access",
    "database read access (backups, replicas)",
    "leaked previous master key plus write access",
    "write access to Dify's plugin storage",
    "a local user (files, environment, process list)",
    "a caller passing bad input through the API and the CLI",
)
ASSETS = ("record values", "data keys", "master key", "audit log", "tenant isolation", "metadata")
COLUMNS = ("attacker", "asset", "holds", "detected, by", "out of scope", "shown by")
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def rows() -> list[list[str]]:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- security-map:start -->\n(.*?)<!-- security-map:end -->", text, re.S)
    assert match is not None, "SECURITY.md has lost its security-map markers"
    lines = [line for line in match.group(1).splitlines() if line.startswith("|")]
    table = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    assert tuple(table[0]) == COLUMNS, table[0]
    return table[2:]


@cache
def defined_tests(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def test_every_capability_meets_every_asset_once() -> None:
    pairs = [(row[0], row[1]) for row in rows()]
    assert all(len(row) == len(COLUMNS) for row in rows())
    assert sorted(pairs) == sorted((c, a) for c in CAPABILITIES for a in ASSETS)


def test_every_row_names_tests_that_exist() -> None:
    missing = []
    for row in rows():
        shown_by = row[-1]
        references = _REFERENCE.findall(shown_by)
        if shown_by == "n/a":
            assert row[2].startswith("n/a"), f"{row[:2]}: only a row that does not apply may name no test"
            continue
        assert references, f"{row[:2]} names no test"
        for path, name in references:
            if not (ROOT / path).is_file() or name not in defined_tests(path):
                missing.append(f"{path}::{name}")
    assert missing == [], "SECURITY.md names tests that do not exist"


def test_every_adversarial_module_names_its_capability() -> None:
    for path in sorted((ROOT / "tests" / "adversarial").glob("test_*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert re.match(r"(Attacker|Capabilit(y|ies))", docstring), f"{path.name} has no capability docstring"
