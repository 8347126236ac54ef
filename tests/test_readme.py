"""The README's two commands are the ones CI runs, word for word; its framework examples use
the adapters' real names and the extras setup.cfg defines."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```sh")
    end = lines.index("```", start + 1)
    return lines[start + 1 : end]


def test_readme_starts_with_the_demo_and_test_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.index("```sh") < text.index("\n## ")  # before any section
    demo, tests = _readme_commands()
    assert demo.endswith("heartbeat-sync demo")
    assert tests.endswith("python -m pytest") and '".[test]"' in tests


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in _readme_commands():
        assert command in ci


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _defined(module: Path) -> set[str]:
    """The names a module defines or imports at its top level (read, not imported: the
    frameworks need not be installed)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def test_the_framework_examples_are_ten_lines_of_real_names() -> None:
    section = _section("With your framework")
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2
    for block, framework in zip(blocks, ("langchain", "smolagents")):
        ast.parse(block)
        assert len([line for line in block.splitlines() if line.strip()]) <= 10
        module = ROOT / "heartbeat_sync" / "integrations" / f"{framework}.py"
        imported = re.search(rf"from heartbeat_sync\.integrations\.{framework} import (.*)", block)
        assert imported, framework
        for name in imported[1].split(","):
            assert name.strip() in _defined(module), name


def test_the_framework_extras_and_versions_are_setup_cfgs() -> None:
    section = _section("With your framework")
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    for extra in ("langchain", "smolagents"):
        assert f"`pip install 'heartbeat-sync[{extra}]'`" in section
        (requirement,) = [line.strip() for line in extras[extra].splitlines() if line.strip()]
        assert f"`{requirement}`" in section
