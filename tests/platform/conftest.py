"""The integration suite against the real platform server, of every generation given.

It runs when ``$HEARTBEAT_SYNC_PLATFORM`` names the folders that hold the servers' ``start``
and ``stop`` scripts, separated by ``os.pathsep`` (``:``), each as ``GENERATION=FOLDER`` (e.g.
``2026-05=/srv/platform:2026-08=/srv/platform-2026-08``) or a bare folder; otherwise every test
here is skipped with that reason. Each test that asks for ``real_platform`` runs once per
folder (its id: the generation, or the folder's name), unless it is marked
``@pytest.mark.generations("2026-08")`` for behaviour one generation has: it then runs on the
folders labelled so (on a bare folder, once the server has said what it is). Each server is
started once per session into a fresh ``mktemp -d`` folder (Postgres, running as the
``postgres`` user when we are root, must be able to reach it), when its first test asks for it,
and stopped at the end; the server says its generation by its heartbeat answer, and a label
that disagrees fails the test.

The suite runs in parallel (pytest-xdist): these tests are one group, so one worker runs them
all and only that worker starts the servers. A test's timeout covers the test itself, not a
start (which may install Postgres and Redis first and has its own bound, ``START_TIMEOUT``).

When the variable is set, or ``CI`` is, a skipped test here is reported as a failure: in CI the
suite must have run, all of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ._real import ENV_VAR, AgentServer, RealPlatform

HERE = Path(__file__).resolve().parent
#: Seconds ``start`` may take: it may install Postgres and Redis with apt-get first.
START_TIMEOUT = 600


#: The generations the suite knows, by the label a folder may carry.
GENERATIONS = ("2026-05", "2026-08")


def _folders() -> list[tuple[str | None, Path]]:
    """The folders of ``$HEARTBEAT_SYNC_PLATFORM``, each with its label (None: bare)."""
    value = os.environ.get(ENV_VAR, "").strip()
    found: list[tuple[str | None, Path]] = []
    for part in (p.strip() for p in value.split(os.pathsep)):
        if not part:
            continue
        label, sep, folder = part.partition("=")
        if sep and label in GENERATIONS:
            found.append((label, Path(folder).resolve()))
        else:
            found.append((None, Path(part).resolve()))
    return found


def _scripts() -> bool:
    return bool(_folders())


def _strict() -> bool:
    return bool(os.environ.get("CI", "").strip() or _scripts())


def _ours(item: pytest.Item) -> bool:
    return HERE in item.path.resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(
        reason=f"{ENV_VAR} is not set: it names the folder with the platform server's "
        "start/stop scripts (see README, 'The integration suite')"
    )
    for item in items:
        if _ours(item):
            item.add_marker(pytest.mark.platform)
            item.add_marker(pytest.mark.xdist_group("platform"))
            timeout = item.get_closest_marker("timeout")
            seconds = timeout.args[0] if timeout and timeout.args else config.getini("timeout")
            item.add_marker(pytest.mark.timeout(float(seconds), func_only=True), append=False)
            if not _scripts():
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _strict() and _ours(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but the integration suite must run here (CI or {ENV_VAR} is set): {reason}"
        )


#: A test's generations, when it is about behaviour only some have.
GENERATIONS_MARK = "generations"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{GENERATIONS_MARK}(*ids): the real-server test runs only on these generations "
        "(2026-05, 2026-08)",
    )


class _Servers:
    """The session's servers by folder: started when a test first needs one, stopped at the
    end."""

    started: ClassVar[dict[tuple[Path, str], RealPlatform]] = {}
    errors: ClassVar[dict[tuple[Path, str], str]] = {}


#: The organisation of the variant servers (``tenant_platform``): a tenant guard on, and the
#: delegation ledger written (where August lists a delegation a workspace received).
TENANT_ORG_ID = "11111111-2222-3333-4444-555555555555"
_VARIANT_ENV = (
    f"MOLECULE_ORG_ID={TENANT_ORG_ID}",
    "DELEGATION_LEDGER_WRITE=1",
    # An August server with an org id thinks itself a managed tenant and asks its control
    # plane for these for 90 s, then exits: any values do for a test (May ignores them).
    "MOLECULE_CP_URL=http://127.0.0.1:9",
    "MOLECULE_LLM_USAGE_TOKEN=test",
    "MOLECULE_LLM_USAGE_URL=http://127.0.0.1:9/usage",
    "MOLECULE_LLM_BASE_URL=http://127.0.0.1:9/llm",
    "MOLECULE_LLM_ANTHROPIC_BASE_URL=http://127.0.0.1:9/anthropic",
)


#: The rate-limited variant (``limited_platform``): 400 requests a minute per key. August
#: applies ``RATE_LIMIT`` only outside ``MOLECULE_ENV=development`` (its start script's
#: default); May whenever an admin token is set.
LIMITED_RATE = 400
_LIMITED_ENV = (f"RATE_LIMIT={LIMITED_RATE}", "MOLECULE_ENV=staging")


def _start(scripts: Path, extra: tuple[str, ...] = ()) -> RealPlatform:
    for name in ("start", "stop"):
        if not (scripts / name).is_file():
            raise RuntimeError(f"{ENV_VAR}: no {name} script in {scripts}")
    state = Path(tempfile.mkdtemp(prefix="heartbeat-sync-platform-"))
    # mkdtemp makes it 0700; Postgres (the postgres user when we are root) must reach pg/ in it.
    state.chmod(0o711)
    (state / "server.extra.env").write_text("\n".join(("RATE_LIMIT=100000", *extra)) + "\n")
    started = subprocess.run(
        [str(scripts / "start"), str(state)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(
            f"{scripts / 'start'} {state} failed ({started.returncode}):\n"
            f"{started.stdout[-4000:]}\n{started.stderr[-4000:]}"
        )
    env = dict(
        line.split("=", 1)
        for line in (state / "platform.env").read_text().splitlines()
        if "=" in line
    )
    return RealPlatform(
        env["PLATFORM_URL"], env["ADMIN_TOKEN"], env["DATABASE_URL"], state, scripts=scripts
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    started, _Servers.started = _Servers.started, {}
    for (scripts, _), platform in started.items():
        platform.close()
        stopped = subprocess.run(
            [str(scripts / "stop"), str(platform.state_dir)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if stopped.returncode == 0:  # its data and logs are of no use to anyone now
            shutil.rmtree(platform.state_dir, ignore_errors=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "real_platform" not in metafunc.fixturenames:
        return
    folders = _folders()
    mark = metafunc.definition.get_closest_marker(GENERATIONS_MARK)
    wanted = frozenset(mark.args) if mark else None
    chosen = [(label, f) for label, f in folders if wanted is None or label in (None, *wanted)]
    if not chosen:
        # Nothing to run it on: no folder at all, or none of the generations it is about.
        params: list[Any] = [None]
        ids = ["no-server" if not folders else f"not-{'-'.join(sorted(wanted or ()))}"]
    else:
        params = [(label, f, wanted) for label, f in chosen]
        ids = [label or f.name for label, f in chosen]
    metafunc.parametrize("real_platform", params, indirect=True, ids=ids)


@pytest.fixture(scope="session")
def real_platform(request: pytest.FixtureRequest) -> RealPlatform:
    """The real server of one generation (the test's parameter), started once per session
    (by the worker that runs this suite) and stopped at its end."""
    if request.param is None:
        if not _folders():
            pytest.skip(f"{ENV_VAR} is not set")
        pytest.skip(f"no server of the generations this test is about in {ENV_VAR}")
    label, scripts, wanted = request.param
    platform = _server(scripts, "plain")
    if label is not None and platform.generation != label:
        pytest.fail(f"{scripts} is labelled {label}, but its server is {platform.generation}")
    if wanted is not None and platform.generation not in wanted:
        pytest.skip(f"a {'/'.join(sorted(wanted))} behaviour; {scripts} is {platform.generation}")
    return platform


def _server(scripts: Path, variant: str) -> RealPlatform:
    """The session's server of ``scripts`` in ``variant`` (``plain``, ``tenant``: see
    :data:`TENANT_ORG_ID`, or ``limited``: see :data:`LIMITED_RATE`), started the first time
    it is asked for."""
    key = (scripts, variant)
    if key not in _Servers.started and key not in _Servers.errors:
        extra = {"tenant": _VARIANT_ENV, "limited": _LIMITED_ENV}.get(variant, ())
        try:
            _Servers.started[key] = _start(scripts, extra)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _Servers.errors[key] = str(exc)
    if key in _Servers.errors:
        pytest.fail(f"the platform server did not start: {_Servers.errors[key]}")
    return _Servers.started[key]


@pytest.fixture
def tenant_platform(real_platform: RealPlatform) -> RealPlatform:
    """A second server of ``real_platform``'s generation, with a tenant guard (org id
    :data:`TENANT_ORG_ID`) and the delegation ledger written; started once per session.
    Its helpers send the org id."""
    assert real_platform.scripts is not None
    platform = _server(real_platform.scripts, "tenant")
    platform.org_id = TENANT_ORG_ID
    return platform


@pytest.fixture
def limited_platform(real_platform: RealPlatform) -> RealPlatform:
    """A second server of ``real_platform``'s generation whose rate limit is
    :data:`LIMITED_RATE` requests a minute per key; started once per session."""
    assert real_platform.scripts is not None
    return _server(real_platform.scripts, "limited")


@pytest.fixture
def agent_server() -> Iterator[AgentServer]:
    """A JSON-RPC agent on 127.0.0.1; register it with its ``url`` (``http://localhost:PORT``)."""
    agent = AgentServer()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def hb_files(tmp_path: Path) -> dict[str, Any]:
    """Keyword arguments placing a Heartbeat's files and configs dir in ``tmp_path``."""
    configs = tmp_path / "configs"
    configs.mkdir()
    return {
        "results_file": tmp_path / "results.jsonl",
        "cursor_file": tmp_path / "cursor",
        "seen_file": tmp_path / "seen",
        "configs_dir": configs,
    }
