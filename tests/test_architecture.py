"""The package reads as its architecture: docs/architecture.md draws the layers that
pyproject.toml's import contract enforces (``lint-imports``, run by ``make lint``), names
every module, and every subpackage says what it holds."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "secure_kv"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _code_block_after(marker: str) -> str:
    """The fenced block that follows ``marker`` in docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    start = text.index(marker)
    match = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M).search(text, start)
    assert match is not None, f"no code block after {marker!r} in {ARCHITECTURE}"
    return match.group(1)


def _contract(contract_id: str) -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    [contract] = [c for c in contracts if c.get("id") == contract_id]
    return contract


def _normalized(layer: str) -> str:
    """A layer as ``a | b`` or ``a : b``, without the ``secure_kv.`` prefix and in order."""
    separator = "|" if "|" in layer else ":"
    names = sorted(name.strip().removeprefix("secure_kv.") for name in layer.split(separator))
    return f" {separator} ".join(names)


def test_the_layer_diagram_is_the_import_contract() -> None:
    block = _code_block_after("<!-- layers:")
    # Each line: the layer, then (after two spaces or more) what it is for.
    drawn = [_normalized(re.split(r"\s{2,}", line.strip())[0]) for line in block.splitlines() if line.strip()]
    enforced = [_normalized(layer) for layer in _contract("layers")["layers"]]  # type: ignore[union-attr]
    assert drawn == enforced, (
        "docs/architecture.md's layer diagram and [tool.importlinter] in pyproject.toml differ: "
        "change both together"
    )


def _modules_in_tree() -> tuple[set[str], set[str]]:
    """(the files, the directories listed without their contents) in the package tree."""
    block = _code_block_after("## The package")
    files: set[str] = set()
    opaque: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, directory) of the enclosing directories
    previous_dir: tuple[int, str] | None = None
    for line in block.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        names = re.split(r"\s{2,}", line.strip())[0].split()
        if previous_dir is not None and indent <= previous_dir[0]:
            opaque.add(previous_dir[1])  # a directory whose contents are not listed
        previous_dir = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = "/".join(directory for _, directory in stack)
        for name in names:
            path = f"{parent}/{name}" if parent else name
            if name.endswith("/"):
                stack.append((indent, name.rstrip("/")))
                previous_dir = (indent, path.rstrip("/"))
            else:
                files.add(path)
    if previous_dir is not None:
        opaque.add(previous_dir[1])
    return files, opaque


def test_the_package_tree_names_every_module_and_only_modules_that_exist() -> None:
    listed, opaque = _modules_in_tree()
    root = PACKAGE.parent
    modules = {
        path.relative_to(root).as_posix() for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts
    }
    required = {
        module
        for module in modules
        # A subpackage's __init__.py may go unnamed: its directory stands for it.
        if not (module.endswith("/__init__.py") and module.count("/") > 1)
        and not any(module.startswith(f"{directory}/") for directory in opaque)
    }
    missing = sorted(required - listed)
    assert not missing, f"docs/architecture.md's package tree does not name: {missing}"
    absent = sorted(name for name in listed if not (root / name).exists())
    assert not absent, f"docs/architecture.md's package tree names what does not exist: {absent}"


def _subpackages() -> list[Path]:
    return sorted(init.parent for init in PACKAGE.rglob("__init__.py") if "__pycache__" not in init.parts)


@pytest.mark.parametrize(
    "package", _subpackages(), ids=lambda path: path.relative_to(PACKAGE.parent).as_posix()
)
def test_every_package_says_what_it_holds_in_its_docstring(package: Path) -> None:
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
    assert docstring, f"{package} has no docstring: say in one line what it holds"
    summary = docstring.splitlines()[0]
    assert summary.strip() and len(summary) <= 110, f"{package}: the docstring's first line is its summary"


def test_no_module_imports_itself_through_others() -> None:
    """The acyclic_siblings contract sees cycles between siblings; this sees every cycle,
    through a package's ``__init__`` too, counting imports under ``TYPE_CHECKING``."""
    import grimp

    graph = grimp.build_graph("secure_kv", cache_dir=None)
    cycles = {frozenset(component) for component in _strongly_connected(graph) if len(component) > 1}
    assert not cycles, f"import cycles: {sorted(sorted(c) for c in cycles)}"


def _strongly_connected(graph: object) -> list[set[str]]:
    """Tarjan's algorithm over the package's import graph, without recursion."""
    modules = sorted(graph.modules)  # type: ignore[attr-defined]
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}  # type: ignore[attr-defined]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components
