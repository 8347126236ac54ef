"""The package's layers, as the README's "How the code is laid out" promises them.

The imports every module runs when it is loaded are read with ``ast`` (not those under
``TYPE_CHECKING`` or inside functions). They must form no cycle; none may go up a layer; a
sub-package is reached only through its face (its ``__init__``), never into one of its
modules; and the modules the README marks *pure* import no threads, I/O or HTTP, so that their
unit tests need neither sockets nor sleeps. A long module that is one concern is fine: no size
is checked.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "heartbeat_sync"
README = PACKAGE.parent / "README.md"

#: The layers, top (imports the most) to bottom. A unit is a root module or a sub-package; it
#: may import a unit of a lower layer, and a unit of its own layer only where no cycle follows.
LAYERS: dict[str, int] = {
    # The frameworks' adapters: through the public face alone; nothing imports them.
    "integrations": 8,
    "__main__": 7,
    "cli": 6,
    "testing": 5,
    # The surface: the public names, the Heartbeat, its settings.
    "": 4,
    "_heartbeat": 4,
    "_hub": 4,
    "_settings": 4,
    # The beat thread.
    "loop": 3,
    # What the beat thread uses: the results files, the platform, the side effects.
    "delivery": 2,
    "wire": 2,
    "effects": 2,
    # The base: no threads of their own, nothing of the platform.
    "__about__": 1,
    "_config": 1,
    "_exit": 1,
    "_fork": 1,
    "_metadata": 1,
    "_logctx": 1,
    "_ratelimit": 1,
    "_safefile": 1,
    "_status": 1,
    "_validate": 1,
    "_wedge": 1,
}
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
    """Every module of the package by dotted name below it (``loop.cycle``; ``""`` is the
    package's own ``__init__``, ``loop`` the sub-package's)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _targets(name: str, node: ast.ImportFrom) -> list[str]:
    """The package modules a ``from`` import in module ``name`` reads when it is loaded."""
    known = modules()
    if node.level:
        here = name.split(".") if name else []
        base = here if _is_package(name) else here[:-1]
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
    elif node.module and (node.module + ".").startswith("heartbeat_sync."):
        base = []
    else:
        return []
    module = node.module or ""
    if not node.level:
        module = module[len("heartbeat_sync") :].lstrip(".")
    target = [*base, *(module.split(".") if module else [])]
    found = []
    names_a_module = False
    # ``from . import x``: x may be a module of that package rather than a name in it.
    for alias in node.names:
        sub = ".".join([*target, alias.name])
        if sub in known:
            found.append(sub)
            names_a_module = True
    dotted = ".".join(target)
    if dotted in known and not (names_a_module and not module):
        found.append(dotted)  # names from the package's face (or a module's)
    return found


def imports(name: str) -> tuple[set[str], set[str]]:
    """Module ``name``'s imports run at import time: (package modules, top-level others)."""
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    internal: set[str] = set()
    external: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            found = _targets(name, node)
            if found:
                internal.update(found)
            elif node.module and not node.level:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    external.discard("__future__")
    return internal - {name}, external


def unit(name: str) -> str:
    """The layer unit a module belongs to: its sub-package, or the root module itself."""
    return name.split(".")[0] if "." in name or name in SUBPACKAGES else name


SUBPACKAGES = {"cli", "delivery", "effects", "integrations", "loop", "testing", "wire"}
#: What each adapter may import of the frameworks (the package's own modules import none).
FRAMEWORKS = {
    "integrations.langchain": {"langchain_core"},
    "integrations.smolagents": {"smolagents"},
}
ALL_FRAMEWORKS = {"langchain", "langchain_core", "langgraph", "smolagents"}


def graph() -> dict[str, set[str]]:
    return {name: imports(name)[0] for name in modules()}


def find_cycle(edges: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle in ``edges`` as the path that closes it, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(edges.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for node in sorted(edges):
        cycle = visit(node, [])
        if cycle:
            return cycle
    return None


def layering_faults(edges: Mapping[str, set[str]], pure: Collection[str] = ()) -> list[str]:
    """Every import in ``edges`` that goes up a layer, or into another sub-package's module
    instead of its face; and a cycle between units of one layer.

    A pure module may import a pure module of another sub-package directly (the faces load
    threads and I/O, which a pure module must not)."""
    faults = []
    units: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            a, b = unit(source), unit(target)
            if a == b:
                continue
            units.setdefault(a, set()).add(b)
            if LAYERS[b] > LAYERS[a]:
                faults.append(f"{source or '__init__'} imports {target}: up a layer")
            if b in SUBPACKAGES and target != b and not (source in pure and target in pure):
                faults.append(f"{source or '__init__'} imports {target}: not through {b}'s face")
    cycle = find_cycle(units)
    if cycle:
        faults.append("units import each other: " + " -> ".join(u or "__init__" for u in cycle))
    return faults


def pure_modules() -> list[str]:
    """The modules the README's layout table marks *pure*."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    pure = []
    for row in section.splitlines():
        if row.startswith("| `") and "(*pure*)" in row:
            names = re.findall(r"`([\w.]+)`", row.split("|")[1])
            parts = row.split("|")[2].split(";")
            # Cells list their modules in order, "; "-separated; "(*pure*)" marks one part.
            pure += [n for n, part in zip(names, parts) if "(*pure*)" in part]
    return pure


def test_every_module_has_a_layer() -> None:
    assert {unit(name) for name in modules()} <= set(LAYERS)


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(graph()) is None


def test_nothing_imports_up_a_layer_or_into_another_subpackage() -> None:
    assert layering_faults(graph(), set(pure_modules())) == []


def test_the_integrations_use_the_public_face_alone() -> None:
    # An adapter is written as a user's code would be: heartbeat_sync's public names, and the
    # other integrations modules; no internal module, and nothing in the package imports it.
    names = [n for n in modules() if unit(n) == "integrations"]
    assert {"integrations", "integrations._runs"} <= set(names)
    for name in names:
        internal, _ = imports(name)
        assert all(t == "" or unit(t) == "integrations" for t in internal), name
        assert guarded_imports(name) & ALL_FRAMEWORKS == FRAMEWORKS.get(name, set()), name
    for name in modules():
        if unit(name) != "integrations":
            internal, external = imports(name)
            assert not {t for t in internal if unit(t) == "integrations"}, name
            assert not (external | guarded_imports(name)) & ALL_FRAMEWORKS, name


def guarded_imports(name: str) -> set[str]:
    """The top-level packages module ``name`` imports in a ``try`` at import time (where an
    adapter imports its framework, to name the extra when it is missing)."""
    found: set[str] = set()
    for node in ast.parse(modules()[name].read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Try):
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                    found.add(inner.module.split(".")[0])
                elif isinstance(inner, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in inner.names)
    return found


def test_the_checks_see_a_fault() -> None:
    # The checks read the package's own imports, and they see what they must refuse.
    assert "delivery.rows" in imports("effects.texts")[0]
    assert "threading" in imports("loop.run")[1]
    assert {"loop", "delivery", "effects", "wire"} <= imports("_heartbeat")[0]
    assert layering_faults({"wire.client": {"loop"}}) == ["wire.client imports loop: up a layer"]
    assert layering_faults({"loop.cycle": {"wire.client"}}) == [
        "loop.cycle imports wire.client: not through wire's face"
    ]
    assert layering_faults({"wire.client": {"effects"}, "effects.sender": {"wire"}}) == [
        "units import each other: effects -> wire -> effects"
    ]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert layering_faults({"effects.texts": {"delivery.rows"}}, {"effects.texts"}) != []
    pure = {"effects.texts", "delivery.rows"}
    assert layering_faults({"effects.texts": {"delivery.rows"}}, pure) == []


@pytest.mark.parametrize("name", pure_modules())
def test_a_pure_module_imports_no_io(name: str) -> None:
    internal, external = imports(name)
    assert external & IMPURE == set()
    assert internal <= {*pure_modules(), CONSTANTS}, internal - {*pure_modules(), CONSTANTS}


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


def test_each_subpackage_says_what_it_holds_offers_and_may_import() -> None:
    for name in SUBPACKAGES - {"testing"}:
        doc = ast.get_docstring(ast.parse(modules()[name].read_text(encoding="utf-8"))) or ""
        assert "Holds" in doc and "Offers" in doc and "import" in doc, name
