"""The command line: ``demo``, ``run``, ``results``, and its argument and config handling."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heartbeat_sync import __version__, format_delegation_results
from heartbeat_sync.cli.commands import main
from heartbeat_sync.testing import AgentFiles, FakePlatform, Workspace

from .conftest import CONFIG_ENV, wait_until

REPO = Path(__file__).resolve().parent.parent

#: Configuration the CLI reads from the environment: cleared for every subprocess.

posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_env(
    platform_url: str, workspace_id: str, files: AgentFiles, interval: str, **extra: str
) -> dict[str, str]:
    """The environment of ``heartbeat-sync run`` as the platform's runtime sets it, on the
    agent's ``files`` (``FakePlatform.agent_files``'s)."""
    return cli_env(
        PLATFORM_URL=platform_url,
        WORKSPACE_ID=workspace_id,
        CONFIGS_DIR=str(files["configs_dir"]),
        DELEGATION_RESULTS_FILE=str(files["results_file"]),
        DELEGATION_ACTIVITY_CURSOR_FILE=str(files["cursor_file"]),
        DELEGATION_SEEN_FILE=str(files["seen_file"]),
        HEARTBEAT_INTERVAL_SECONDS=interval,
        **extra,
    )


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``heartbeat-sync ARGS`` in a child process, its output read as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "heartbeat_sync", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartbeat_sync", *args],
        cwd=REPO,
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- parser, help, version ---------------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "demo", "results"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"heartbeat-sync {__version__}"


def test_no_command_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: heartbeat-sync" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_module_entry_point() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"heartbeat-sync {__version__}"
    done = cli()
    assert done.returncode == 2
    assert "usage: heartbeat-sync" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--seconds", "0"],
        ["demo", "--seconds", "-1"],
        ["demo", "--interval", "0"],
        ["demo", "--interval", "soon"],
        ["demo", "--seconds", "nan"],
        ["run", "--log-level", "LOUD"],
        ["nonsense"],
    ],
)
def test_bad_arguments_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


# --- run: configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({}, [], "PLATFORM_URL"),
        ({"PLATFORM_URL": "  "}, [], "PLATFORM_URL"),
        ({"PLATFORM_URL": "platform:8080", "WORKSPACE_ID": "w"}, [], "PLATFORM_URL"),
        ({"PLATFORM_URL": "ftp://platform", "WORKSPACE_ID": "w"}, [], "PLATFORM_URL"),
        ({"PLATFORM_URL": "http://", "WORKSPACE_ID": "w"}, [], "PLATFORM_URL"),
        ({"WORKSPACE_ID": "w"}, ["--platform-url", "localhost"], "--platform-url"),
        ({"PLATFORM_URL": "http://p"}, [], "WORKSPACE_ID"),
        ({"PLATFORM_URL": "http://p", "WORKSPACE_ID": "a/b"}, [], "WORKSPACE_ID"),
        (
            {"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w", "HEARTBEAT_INTERVAL_SECONDS": "x"},
            [],
            "HEARTBEAT_INTERVAL_SECONDS",
        ),
        ({"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w"}, ["--interval", "soon"], "--interval"),
    ],
)
def test_config_errors_exit_2_with_one_line(
    env: dict[str, str],
    argv: list[str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["run", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("heartbeat-sync run: error: ")
    assert named in lines[0]


@pytest.mark.timeout(30)
def test_config_error_in_a_process() -> None:
    done = cli("run", env=cli_env(PLATFORM_URL="http://platform:8080"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "heartbeat-sync run: error: no workspace id: set WORKSPACE_ID or pass --workspace-id"
    ]


# --- run: the process ---------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, float, str]:
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, time.monotonic() - start, err


@posix_signals
@pytest.mark.timeout(40)
def test_run_beats_delivers_and_stops_on_sigterm(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    files = platform.agent_files(ws.id, tmp_path)
    did = platform.add_delegation(ws.id, status="completed", summary="report written")
    results = files["results_file"]
    env = run_env(platform.url, ws.id, files, "2")  # clamped to 5
    proc = start_cli("run", env=env)
    try:
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 1, timeout=10)
        assert platform.wait_for(lambda: len(platform.notifications(ws.id)) == 1, timeout=5)
        assert did in results.read_text()
    finally:
        rc, took, err = _stop(proc, signal.SIGTERM)
    assert rc == 0, err
    assert took < 5.0
    assert "outside [5, 300]; clamped to 5 s" in err
    assert "a beat every 5 s" in err
    assert "received SIGTERM; stopping" in err
    assert re.search(
        r"stopped \(threads ended: yes\): [1-9]\d* beats ok, 0 failed, 1 results delivered", err
    )


@posix_signals
@pytest.mark.timeout(40)
def test_run_from_flags_stops_on_sigint(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    files = platform.agent_files(ws.id, tmp_path)
    proc = start_cli(
        "run",
        f"--platform-url={platform.url}/",
        f"--workspace-id={ws.id}",
        "--interval=120",
        f"--configs-dir={files['configs_dir']}",
        f"--results-file={files['results_file']}",
        f"--cursor-file={files['cursor_file']}",
        f"--seen-file={files['seen_file']}",
        "--log-level=WARNING",
        env=cli_env(),
    )
    try:
        # The first beat comes at once, not after the start phase (up to 12 s here).
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 1, timeout=10)
    finally:
        rc, took, err = _stop(proc, signal.SIGINT)
    assert rc == 0, err
    assert took < 5.0
    assert "offline after 180 s" in err
    assert "INFO" not in err  # --log-level=WARNING
    beat = platform.requests_for("heartbeat", ws.id)[0]
    # A URL given by flag is the Origin header, as $PLATFORM_URL would be.
    assert beat.headers.get("origin") == platform.url
    assert beat.headers.get("authorization") == f"Bearer {ws.token}"


@posix_signals
@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("file_token", "env_token", "no_token_warned"),
    [
        (None, None, True),
        # A token the Heartbeat would refuse to send counts as none, as it does for the loop.
        ("two words", None, True),
        (None, "from-env", False),
        ("from-file", None, False),
    ],
    ids=["none", "unusable-file-token", "env-token", "file-token"],
)
def test_run_warns_once_when_it_has_no_token_the_heartbeat_could_send(
    file_token: str | None,
    env_token: str | None,
    no_token_warned: bool,
    platform: FakePlatform,
    ws: Workspace,
    tmp_path: Path,
) -> None:
    # The agent's files, but a configs dir of their own: the workspace's token is not in it.
    configs = tmp_path / "run-configs"
    configs.mkdir()
    if file_token is not None:
        (configs / ".auth_token").write_text(file_token)
        (configs / ".auth_token").chmod(0o644)  # the Heartbeat warns about this, once
    files = platform.agent_files(ws.id, tmp_path)
    files["configs_dir"] = configs
    extra = {"MOLECULE_WORKSPACE_TOKEN": env_token} if env_token is not None else {}
    env = run_env(platform.url, ws.id, files, "60", **extra)
    proc = start_cli("run", "--log-level=WARNING", env=env)
    try:
        assert platform.wait_for(lambda: len(platform.requests_for("heartbeat", ws.id)) >= 1, 10)
    finally:
        rc, _, err = _stop(proc, signal.SIGTERM)
    assert rc == 0, err
    lines = err.splitlines()
    assert sum("no auth token" in line for line in lines) == int(no_token_warned), err
    readable = sum("readable by other users" in line for line in lines)
    # Only a token it can send has its file's mode checked; the check is not said twice.
    assert readable == (1 if file_token == "from-file" else 0), err
    for secret in ("two words", "from-env", "from-file"):
        assert secret not in err


# --- results ------------------------------------------------------------------------------------

RECORDS = [
    {
        "delegation_id": "d-1",
        "target_id": "peer",
        "source_id": "me",
        "status": "completed",
        "summary": "Summarise the report",
        "response_preview": "Revenue up 12%",
        "error": "",
        "timestamp": 1.5,
    },
    {
        "delegation_id": "d-2",
        "target_id": "peer",
        "source_id": "me",
        "status": "failed",
        "summary": "Book the venue",
        "response_preview": "",
        "error": "no rooms left",
        "timestamp": 2.5,
    },
]


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_results_shows_without_consuming(
    results_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = results_file.read_bytes()
    assert main(["results", "--file", str(results_file)]) == 0
    captured = capsys.readouterr()
    assert captured.out == format_delegation_results(RECORDS) + "\n"
    assert "2 result(s)" in captured.err
    assert "left in place" in captured.err
    assert results_file.read_bytes() == before


def test_results_json(results_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "--file", str(results_file), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == RECORDS
    assert len(results_file.read_text().splitlines()) == 2


def test_results_consume(results_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "--file", str(results_file), "--consume"]) == 0
    captured = capsys.readouterr()
    assert "[A2A_RESULT_FROM_PEER]" in captured.out
    assert "- [failed] Book the venue" in captured.out
    assert "consumed" in captured.err
    assert results_file.read_text() == ""
    assert main(["results", "--file", str(results_file), "--consume"]) == 0
    assert capsys.readouterr().out == f"no results in {results_file}\n"


def test_results_default_path_from_the_environment(
    results_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELEGATION_RESULTS_FILE", str(results_file))
    assert main(["results", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_results_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.jsonl"
    assert main(["results", "--file", str(missing)]) == 0
    assert capsys.readouterr().out == f"no results in {missing}\n"
    assert main(["results", "--file", str(missing), "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert not missing.exists()


@pytest.mark.timeout(30)
def test_results_consume_json_in_a_process(results_file: Path) -> None:
    done = cli(
        "results", "--consume", "--json", env=cli_env(DELEGATION_RESULTS_FILE=str(results_file))
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == RECORDS
    assert results_file.read_text() == ""


# --- demo ---------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_demo_tells_the_whole_story() -> None:
    start = time.monotonic()
    done = cli("demo", "--seconds", "3", "--interval", "0.2", timeout=20)
    took = time.monotonic() - start
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    assert took < 3 + 5
    # Beats, as the platform saw them.
    assert "platform  heartbeat #1 accepted" in out
    # Results written by the loop, for both delegations and the peer's answer.
    assert len(re.findall(r"library   \[\w{8}\] 1 new result\(s\) written to", out)) >= 2
    # The busy agent: a 503, the retry, and the wake-up delivered.
    assert "wake-up self-message answered 503 Service Unavailable (agent busy)" in out
    assert "retrying in 1.0 s" in out
    assert re.search(r"library   \[\w{8}\] wake-up sent for \d result\(s\)", out)
    assert "wake-up self-message delivered to the agent:" in out
    # Notifications.
    assert "notification shown to the user: Delegation completed" in out
    # The token rotation: a 401 beat, the new token, then recovery.
    assert "heartbeat refused: 401 Unauthorized" in out
    assert "heartbeat failed (1 consecutive)" in out
    assert "the new token was written" in out
    assert "heartbeat recovered after 1 failed beat(s)" in out
    assert "healthy -> degraded" in out
    assert "degraded -> healthy" in out
    # The summary, read off the status.
    summary = out[out.index("--- summary") :]
    beats = re.search(r"beats\s+(\d+) ok, (\d+) failed", summary)
    assert beats
    assert int(beats[1]) >= 5
    assert int(beats[2]) >= 1
    assert re.search(r"results\s+3 delivered", summary)
    wakeups = re.search(r"wake-ups\s+(\d+) sent; (\d+) attempt\(s\) refused", summary)
    assert wakeups
    assert int(wakeups[1]) >= 1
    assert int(wakeups[2]) == 1
    assert re.search(r"notifications\s+3 sent \(the platform accepted 3\)", summary)
    assert re.search(r"drops\s+0 \(none\)", summary)
    assert "all stopped" in summary
    assert summary.count("[x]") == 4
    assert "[ ]" not in summary
    assert "read_delegation_results() consumed 3 result(s):" in summary
    assert "[A2A_RESULT_FROM_PEER]" in summary
    assert "Response: Revenue up 12% quarter on quarter." in summary
    assert "Response: Also: Q3 churn fell to 2.1%" in summary
    assert "results left in the file afterwards: 0" in summary


@pytest.mark.timeout(30)
def test_demo_in_process_leaves_no_thread_or_handler(capsys: pytest.CaptureFixture[str]) -> None:
    lib_logger = logging.getLogger("heartbeat_sync")
    handlers, level = list(lib_logger.handlers), lib_logger.level
    before = set(threading.enumerate())
    start = time.monotonic()
    assert main(["demo", "--seconds", "1.5", "--interval", "0.1"]) == 0
    assert time.monotonic() - start < 1.5 + 4
    out = capsys.readouterr().out
    assert "--- summary" in out
    assert "threads        all stopped" in out
    # The process-wide request watchdog (started by the first request, idle for a while
    # before it ends) is shared by every Heartbeat; the demo's own threads are gone.
    assert wait_until(
        lambda: {t for t in threading.enumerate() if t.name != "heartbeat-sync-watchdog"} <= before,
        timeout=3,
    )
    assert lib_logger.handlers == handlers
    assert lib_logger.level == level
