"""The package's shape, as the README's "How the code is laid out" promises it.

An import graph without cycles (nothing imports upward), and the modules the README marks
*pure* free of threads and I/O, so that their unit tests need neither sockets nor sleeps. A
long module that is one concern is fine: no size is checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "heartbeat_sync"
README = PACKAGE.parent / "README.md"

#: What a pure module may not import: threads, processes, files, sockets, HTTP, locks on disk.
IMPURE = {
    "asyncio",
    "filelock",
    "http",
    "io",
    "logging",
    "multiprocessing",
    "os",
    "requests",
    "select",
    "shutil",
    "signal",
    "socket",
    "subprocess",
    "tempfile",
    "threading",
    "urllib3",
}
#: The one package module a pure module may import besides the pure ones: names and defaults.
CONSTANTS = "_config"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name below it (``_cycle``, ``testing._routes``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, node: ast.ImportFrom) -> list[str]:
    """The package modules a relative ``from`` import in module ``name`` reads at import."""
    here = name.split(".") if name else []
    is_package = modules()[name].name == "__init__.py"
    base = here if is_package else here[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    target = [*base, *(node.module.split(".") if node.module else [])]
    if node.module:
        return [".".join(target)]
    return [".".join([*target, alias.name]) for alias in node.names]


def imports(name: str) -> tuple[set[str], set[str]]:
    """Module ``name``'s imports run at import time: (package modules, top-level others).

    Imports under ``if TYPE_CHECKING:`` and inside functions are left out: they do not make
    a module depend on another when it is loaded.
    """
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    internal: set[str] = set()
    external: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            known = modules()
            internal.update(m for m in _resolve(name, node) if m in known)
        elif isinstance(node, ast.ImportFrom) and node.module:
            external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    external.discard("__future__")
    return internal - {name}, external


def pure_modules() -> list[str]:
    """The modules the README's layout table marks *pure*."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    pure = []
    for row in section.splitlines():
        if row.startswith("| `") and "(*pure*)" in row:
            names = re.findall(r"`(_?[\w.]+)`", row.split("|")[1])
            parts = row.split("|")[2].split(";")
            # Cells list their modules in order, "; "-separated; "(*pure*)" marks one part.
            pure += [n for n, part in zip(names, parts) if "(*pure*)" in part]
    return pure


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: imports(name)[0] for name in modules()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join([*path, name])
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_readme_names_the_pure_modules() -> None:
    pure = pure_modules()
    assert {
        "loop.schedule",
        "delivery.rows",
        "effects.texts",
        "effects.policy",
        "cli.config",
    } <= set(pure)
    assert set(pure) <= set(modules())


@pytest.mark.parametrize("name", pure_modules())
def test_a_pure_module_imports_no_io(name: str) -> None:
    internal, external = imports(name)
    assert external & IMPURE == set()
    assert internal <= {*pure_modules(), CONSTANTS}, internal - {*pure_modules(), CONSTANTS}


def test_the_checks_see_an_upward_import() -> None:
    # The checks above read the package's own imports: a cycle and an I/O import are seen.
    assert "delivery.rows" in imports("effects.texts")[0]
    assert "threading" in imports("loop.run")[1]
    assert "loop.cycle" in imports("_heartbeat")[0]
