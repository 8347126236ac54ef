"""Nox sessions for heartbeat_sync: tests on every Python, floors, lint, types, package.

Install nox (``pip install -e ".[dev]"`` or ``pip install nox``), then from the repository root:

    nox                      # every session below, in this order
    nox -l                   # list the sessions
    nox -s lint types        # only these sessions
    nox -s "tests(3.12)"     # one interpreter
    nox -s tests -- -m slow  # arguments after ``--`` replace the default pytest arguments

Sessions:

``lint``
    ``ruff check .`` and ``ruff format --check .`` (config in ``ruff.toml``).
``types``
    ``mypy --strict --python-version 3.9 heartbeat_sync``, on the newest interpreter found.
    mypy 2.x no longer accepts 3.9 as a target, so mypy is pinned to 1.20.2 (the last release
    that does); the dependencies are the releases pip picks for Python 3.9 (mypy parses their
    sources as 3.9 too), the stubs (types-requests) the newest.
``tests(3.9)`` ... ``tests(3.13)``
    ``python -m pytest`` with the newest releases of the dependencies, without the integration
    suite against the real platform server (``tests/platform``: ``.ci/run`` runs it once, in
    the README's test command; ``nox -s "tests(3.12)" -- tests/platform`` runs it here). The
    oldest interpreter found runs the whole suite; the others run ``-m "not slow"`` (the
    subprocess and crash tests would only repeat what the oldest and the README's test command,
    on the default ``python3``, show). Each runs in four pytest-xdist workers (``addopts`` in
    ``setup.cfg``): most of the suite's time is waiting on sockets and events, so four
    workers share two cores well.
``floors``
    The suite (but ``tests/platform`` and the slow subprocess tests, which ``tests`` runs on
    the same interpreter) on the oldest interpreter with exactly the minimum versions of the
    run-time dependencies, read from ``install_requires`` in
    ``setup.cfg`` (every entry there must have a ``>=`` floor).
``langchain(floor)``, ``langchain(newest)``, ``smolagents(floor)``, ``smolagents(newest)``
    The framework adapters (``heartbeat_sync.integrations``) against the real frameworks:
    ``tests/integrations`` and the framework's example (``tests/test_examples.py``), which the
    other sessions skip for want of the framework. ``floor`` installs exactly the minimum
    version of the extra's requirement (``setup.cfg``) on the oldest Python the framework
    supports; ``newest`` the newest releases on the newest Python found, and runs
    ``mypy --strict`` on the adapter with the framework installed (the ``types`` session leaves
    the adapters out: their imports need the framework). LangChain's sessions add LangGraph,
    which runs through the same callbacks. ``$HEARTBEAT_SYNC_FRAMEWORKS`` tells the tests which
    frameworks must import: a broken install fails, never skips.
``package``
    ``python -m build`` (sdist, then the wheel from the sdist) into a temporary directory;
    the wheel is installed into a fresh virtual environment outside the source tree (one for
    the oldest and one for the newest Python found); from a directory outside the tree it imports
    ``heartbeat_sync``, ``heartbeat_sync.testing`` and ``heartbeat_sync.integrations`` (without
    a framework), checks ``py.typed`` and the adapters were shipped, and runs
    ``heartbeat-sync --help``.

Interpreters are looked up by name on ``PATH`` (``python3.X``), then in pyenv's versions
directory (``$PYENV_ROOT``, ``pyenv root``, ``~/.pyenv``): pyenv's shims only expose the
versions that are selected. A version that is not found is skipped with a message, not failed.
"""

from __future__ import annotations

import configparser
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

#: Every Python version the package supports (``python_requires = >=3.9``), oldest first.
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
#: Tool versions; see the module docstring for why mypy is not the newest.
RUFF = "ruff==0.17.6"
MYPY = "mypy==1.20.2"

#: pytest arguments that leave out the integration suite (it needs the real platform server).
NO_INTEGRATION = ("--ignore=tests/platform",)

#: The framework adapters' extras: the oldest Python the framework's floor supports, the
#: test-only packages their tests add, and the modules that must import in their sessions.
FRAMEWORKS = {
    "langchain": ("3.9", ("langgraph",), "langchain_core,langgraph"),
    "smolagents": ("3.10", (), "smolagents"),
}

nox.options.sessions = ["lint", "types", "tests", "floors", "langchain", "smolagents", "package"]
# Interpreters are resolved below; one that is missing is skipped by the session itself.
# (nox would otherwise fail a missing interpreter when the CI variable is set.)
nox.options.error_on_missing_interpreters = False


# -- finding interpreters ----------------------------------------------------------------------


@functools.cache
def _pyenv_roots() -> list[Path]:
    roots = [os.environ.get("PYENV_ROOT", "")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=False
            )
            roots.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    roots.append(str(Path.home() / ".pyenv"))
    return list(dict.fromkeys(Path(r) for r in roots if r))


def _patch_level(path: str) -> int:
    # .../versions/3.12.1/bin/python3.12 -> 1
    return int(Path(path).parent.parent.name.rsplit(".", 1)[1])


def _really(executable: str, version: str) -> str | None:
    """The interpreter's real ``sys.executable`` if it runs and is ``version``, else None.

    Guards against pyenv shims, which exist for every installed version but fail for the
    ones that are not selected.
    """
    code = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"
    try:
        out = subprocess.run(
            [executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or lines[0] != version:
        return None
    return lines[1]


@functools.cache
def find_python(version: str) -> str | None:
    """Path of a working ``python<version>`` (on PATH, then in pyenv), or None."""
    name = f"python{version}"
    candidates = [shutil.which(name) or ""]
    for root in _pyenv_roots():
        # Only final releases (3.12.1, not 3.12.1t or 3.13-dev), the newest patch first.
        found = glob.glob(str(root / "versions" / f"{version}.*" / "bin" / name))
        found = [p for p in found if re.fullmatch(r"\d+\.\d+\.\d+", Path(p).parent.parent.name)]
        candidates += sorted(found, key=_patch_level, reverse=True)
    for candidate in dict.fromkeys(c for c in candidates if c):
        real = _really(candidate, version)
        if real:
            return real
    return None


def _pythons(versions: tuple[str, ...]) -> list[nox.param]:
    """Parameters (``python``, ``version``) with ``python`` the found path, or False if none.

    With ``python=False`` nox makes no virtualenv, so the session can skip with a message.
    """
    return [nox.param(find_python(v) or False, v, id=v) for v in versions]


def _found(versions: tuple[str, ...] = PYTHONS) -> tuple[str, ...]:
    """The versions among ``versions`` that are found, oldest first."""
    return tuple(v for v in versions if find_python(v))


def _oldest() -> tuple[str, ...]:
    """The oldest version found (none if none is)."""
    return _found()[:1]


def _ends() -> tuple[str, ...]:
    """The oldest and the newest version found (one if only one is, none if none is)."""
    found = _found()
    return tuple(dict.fromkeys(found[:1] + found[-1:]))


def _newest_found(versions: tuple[str, ...]) -> tuple[str, ...]:
    """The newest found version as a 1-tuple (the newest wanted one if none is found)."""
    return _found(versions)[-1:] or versions[-1:]


def _skip_if_missing(session: nox.Session, version: str) -> None:
    if not session.python:
        session.skip(f"Python {version} not found (no python{version} on PATH nor in pyenv)")


# -- setup.cfg ---------------------------------------------------------------------------------


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _requirements() -> list[str]:
    """``install_requires`` of ``setup.cfg``."""
    return _lines(_setup_cfg()["options"]["install_requires"])


def _floors(reqs: list[str] | None = None) -> dict[str, str]:
    """``{name: minimum version}`` from ``reqs`` (default ``install_requires``); each entry
    must have a ``>=`` floor (an upper bound after it is allowed)."""
    result = {}
    for req in _requirements() if reqs is None else reqs:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)\s*>=\s*([^,;\s]+)(\s*,\s*<[^,;\s]+)?", req)
        if not match:
            raise ValueError(f"setup.cfg: {req!r} has no '>=' floor")
        result[match.group(1)] = match.group(2)
    return result


def _extra(name: str) -> list[str]:
    """The extra ``name`` of ``setup.cfg``."""
    return _lines(_setup_cfg()["options.extras_require"][name])


def _test_extra() -> list[str]:
    """The ``test`` extra of ``setup.cfg``."""
    return _lines(_setup_cfg()["options.extras_require"]["test"])


def _resolve_for(session: nox.Session, python: str, reqs: list[str]) -> list[str]:
    """``name==version`` of what pip would install for ``reqs`` on Python ``python``."""
    report = Path(session.create_tmp(), "resolved.json")
    session.run(
        *("python", "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"),
        *("--only-binary=:all:", "--python-version", python, "--report", str(report), *reqs),
        silent=True,
    )
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs]


# -- sessions ----------------------------------------------------------------------------------


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize(("python", "version"), _pythons(_newest_found(PYTHONS[1:])))
def types(session: nox.Session, version: str) -> None:
    """mypy --strict, targeting the oldest supported Python."""
    _skip_if_missing(session, version)
    # mypy reads the dependencies' sources as Python 3.9 too, so install the releases a 3.9
    # user gets (the newest ones may need 3.10, e.g. filelock's use `match`); the stubs and
    # mypy itself are the newest that fit.
    session.install(MYPY, "types-requests", *_resolve_for(session, PYTHONS[0], _requirements()))
    session.run("mypy", "--strict", "--python-version", PYTHONS[0], "heartbeat_sync")


@nox.session
@nox.parametrize(("python", "version"), _pythons(PYTHONS))
def tests(session: nox.Session, version: str) -> None:
    """The test suite with the newest dependencies (whole on the oldest, not slow on the rest)."""
    _skip_if_missing(session, version)
    session.install(".[test]")
    if session.posargs:
        args = list(session.posargs)
    elif version in _oldest():
        args = [*NO_INTEGRATION]
    else:
        args = [*NO_INTEGRATION, "-m", "not slow"]
    session.run("python", "-m", "pytest", *args)


@nox.session
@nox.parametrize(("python", "version"), _pythons(PYTHONS[:1]))
def floors(session: nox.Session, version: str) -> None:
    """The suite on the oldest Python with the oldest supported dependencies."""
    _skip_if_missing(session, version)
    pins = _floors()
    session.install(*(f"{name}=={ver}" for name, ver in pins.items()))
    session.install("--no-deps", ".")
    session.install(*_test_extra())
    # Nothing above may have moved a floor: check what is installed, and that it is consistent.
    check = (
        "import sys; from importlib.metadata import version; "
        f"pins = {pins!r}; "
        "bad = {n: version(n) for n, v in pins.items() if version(n) != v}; "
        "print('floors:', pins); sys.exit(f'not the floors: {bad}' if bad else 0)"
    )
    session.run("python", "-c", check)
    session.run("python", "-m", "pip", "check")
    session.run("python", "-m", "pytest", *(session.posargs or [*NO_INTEGRATION, "-m", "not slow"]))


def _framework_pythons(extra: str) -> list[nox.param]:
    """``floor`` on the oldest Python found that the framework supports, ``newest`` on the
    newest found."""
    supported = PYTHONS[PYTHONS.index(FRAMEWORKS[extra][0]) :]
    oldest = _found(supported)[:1] or supported[:1]
    newest = _newest_found(supported)
    return [
        nox.param(find_python(oldest[0]) or False, oldest[0], "floor", id="floor"),
        nox.param(find_python(newest[0]) or False, newest[0], "newest", id="newest"),
    ]


def _framework(session: nox.Session, extra: str, version: str, which: str) -> None:
    """The adapter of ``extra`` against its framework: its tests and example, and mypy."""
    _skip_if_missing(session, version)
    _, test_only, must_import = FRAMEWORKS[extra]
    if which == "floor":
        pins = _floors(_extra(extra))
        session.install(".[test]", *(f"{name}=={v}" for name, v in pins.items()), *test_only)
        check = (
            "import sys; from importlib.metadata import version; "
            f"pins = {pins!r}; "
            "bad = {n: version(n) for n, v in pins.items() if version(n) != v}; "
            "print('floors:', pins); sys.exit(f'not the floors: {bad}' if bad else 0)"
        )
        session.run("python", "-c", check)
    else:
        session.install(f".[test,{extra}]", *test_only, MYPY)
        session.run("mypy", "--strict", f"heartbeat_sync/integrations/{extra}.py")
    session.run("python", "-m", "pip", "check")
    tests = ["tests/integrations", "tests/test_examples.py", "-k", f"integrations or {extra}"]
    session.run(
        *("python", "-m", "pytest", *(session.posargs or tests)),
        env={"HEARTBEAT_SYNC_FRAMEWORKS": must_import},
    )


@nox.session
@nox.parametrize(("python", "version", "which"), _framework_pythons("langchain"))
def langchain(session: nox.Session, version: str, which: str) -> None:
    """The LangChain adapter with langchain-core (and LangGraph): floor and newest."""
    _framework(session, "langchain", version, which)


@nox.session
@nox.parametrize(("python", "version", "which"), _framework_pythons("smolagents"))
def smolagents(session: nox.Session, version: str, which: str) -> None:
    """The smolagents adapter with smolagents: floor and newest."""
    _framework(session, "smolagents", version, which)


@nox.session
@nox.parametrize(("python", "version"), _pythons(_newest_found(PYTHONS)))
def package(session: nox.Session, version: str) -> None:
    """Build sdist and wheel, install the wheel in a fresh venv, import it, run the CLI."""
    _skip_if_missing(session, version)
    session.install("build")
    with tempfile.TemporaryDirectory(prefix="heartbeat-sync-package-") as tmp:
        dist = Path(tmp, "dist")
        session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
        (wheel,) = dist.glob("*.whl")
        (sdist,) = dist.glob("*.tar.gz")
        session.log(f"built {sdist.name} and {wheel.name}")

        # A fresh venv for the oldest and for the newest Python found.
        targets = [find_python(v) or "" for v in _ends()]
        check = (
            "import os, sys, heartbeat_sync, heartbeat_sync.testing, heartbeat_sync.integrations; "
            "pkg = os.path.dirname(heartbeat_sync.__file__); "
            "assert pkg.startswith(sys.prefix), f'imported {pkg}, not from the venv'; "
            "assert os.path.isfile(os.path.join(pkg, 'py.typed')), 'py.typed is missing'; "
            "adapters = [os.path.join(pkg, 'integrations', f'{n}.py') "
            "for n in ('langchain', 'smolagents')]; "
            "assert all(map(os.path.isfile, adapters)), 'an adapter is missing'; "
            "print('imported heartbeat_sync', heartbeat_sync.__version__, 'from', pkg)"
        )
        bindir = "Scripts" if sys.platform == "win32" else "bin"
        for i, interpreter in enumerate(targets):
            venv = Path(tmp, f"venv{i}")
            cwd = Path(tmp, f"cwd{i}")  # outside the source tree: nothing imports from it
            cwd.mkdir()
            session.run(interpreter, "-m", "venv", str(venv), external=True)
            python = str(venv / bindir / "python")
            session.run(python, "-m", "pip", "install", "-q", str(wheel), external=True)
            with session.chdir(cwd):
                session.run(python, "-c", check, external=True)
                session.run(str(venv / bindir / "heartbeat-sync"), "--help", external=True)
            session.log(f"{wheel.name} works on {interpreter}")
