"""``heartbeat-sync register``, and ``run``'s exit code when the workspace is removed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from heartbeat_sync.cli.commands import EXIT_REMOVED, main
from heartbeat_sync.testing import FakePlatform, Workspace

from .test_cli import cli, cli_env, run_env, start_cli


def test_register_from_the_environment_saves_the_token_and_says_so(
    platform: FakePlatform, tmp_path: Path
) -> None:
    ws = platform.add_workspace(with_token=False, status="awaiting_agent")
    configs = tmp_path / "configs"
    env = cli_env(
        PLATFORM_URL=platform.url,
        WORKSPACE_ID=ws.id,
        CONFIGS_DIR=str(configs),
        MOLECULE_ORG_ID="org-9",
        AGENT_URL="http://localhost:8123",
    )
    done = cli("register", "--agent-card", '{"name": "cli-agent"}', env=env)
    assert done.returncode == 0, done.stderr
    assert ws.token and ws.token not in done.stdout + done.stderr
    assert (configs / ".auth_token").read_text() == ws.token
    assert done.stdout.strip() == (
        f"registered workspace {ws.id}: delivery mode push; a new token was saved to "
        f"{configs / '.auth_token'}"
    )
    (sent,) = platform.requests_for("register")
    assert sent.headers["x-molecule-org-id"] == "org-9"
    assert sent.json() == {
        "id": ws.id,
        "agent_card": {"name": "cli-agent"},
        "url": "http://localhost:8123",
        "delivery_mode": "push",
    }
    assert ws.status == "online"


def test_register_refused_is_exit_1_with_the_platform_text(
    platform: FakePlatform, ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No token on disk, but the workspace has one: the platform wants to see it.
    code = main(
        [
            "register",
            f"--platform-url={platform.url}",
            f"--workspace-id={ws.id}",
            f"--configs-dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (
        "heartbeat-sync register: error: register answered 401: missing workspace auth token"
    )


def test_register_says_a_removed_workspace_was_removed_and_keeps_the_token_file(
    platform: FakePlatform, ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = tmp_path / "configs"
    platform.write_token(ws.id, configs)
    before = (configs / ".auth_token").read_text()
    platform.delete(ws.id)
    args = ["register", f"--platform-url={platform.url}", f"--workspace-id={ws.id}"]
    code = main([*args, f"--configs-dir={configs}"])
    out, err = capsys.readouterr()
    assert code == EXIT_REMOVED and out == ""
    assert f"workspace {ws.id} was removed from the platform" in err
    assert "saved" not in err and (configs / ".auth_token").read_text() == before
    assert platform.requests_for("register") == []


def test_register_configuration_errors_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "--workspace-id=w"]) == 2
    assert "PLATFORM_URL" in capsys.readouterr().err
    assert main(["register", "--platform-url=http://p", "--workspace-id=w", "--agent-card=[]"]) == 2
    assert "JSON object" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--org-id=acme\u2013prod"], {}, "--org-id"),
        ([], {"MOLECULE_ORG_ID": "\ufefforg-1"}, "MOLECULE_ORG_ID"),
    ],
    ids=["flag", "environment"],
)
def test_register_refuses_an_org_id_a_header_cannot_carry_with_exit_2_naming_its_source(
    platform: FakePlatform,
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(
        [
            "register",
            f"--platform-url={platform.url}",
            f"--workspace-id={ws.id}",
            f"--configs-dir={tmp_path / 'configs'}",
            *argv,
        ]
    )
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("heartbeat-sync register: error: ")
    assert named in lines[0]
    assert platform.requests == []


@pytest.mark.timeout(30)
def test_run_refuses_an_org_id_from_the_environment_a_header_cannot_carry_with_exit_2(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    files = platform.agent_files(ws.id, tmp_path)
    env = run_env(platform.url, ws.id, files, "30", MOLECULE_ORG_ID="acme\u2013prod")
    done = cli("run", env=env, timeout=10)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("heartbeat-sync run: error: $MOLECULE_ORG_ID must be printable ASCII")
    assert platform.requests == []


PASSWORD = "s3cret-pw"
URL_SOURCES = pytest.mark.parametrize("source", ["flag", "environment"])


def _with_user_info(url: str) -> str:
    return url.replace("http://", f"http://agent:{PASSWORD}@")


@URL_SOURCES
def test_register_refuses_a_platform_url_with_user_info_with_exit_2_and_no_password(
    platform: FakePlatform,
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: str,
) -> None:
    url = _with_user_info(platform.url)
    argv = ["register", f"--workspace-id={ws.id}", f"--configs-dir={tmp_path / 'configs'}"]
    if source == "flag":
        argv.append(f"--platform-url={url}")
    else:
        monkeypatch.setenv("PLATFORM_URL", url)
    code = main(argv)
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert code == 2
    (line,) = captured.err.splitlines()
    assert line.startswith("heartbeat-sync register: error: invalid platform URL")
    assert "user info" in line
    assert ("--platform-url" if source == "flag" else "PLATFORM_URL") in line
    assert platform.requests == []


@URL_SOURCES
@pytest.mark.timeout(40)
def test_run_refuses_a_platform_url_with_user_info_and_never_prints_the_password(
    platform: FakePlatform, ws: Workspace, tmp_path: Path, source: str
) -> None:
    """run used to start with such a URL, and its first INFO line printed the password."""
    url = _with_user_info(platform.url)
    env = run_env(url, ws.id, platform.agent_files(ws.id, tmp_path), "30")
    argv = ["run"]
    if source == "flag":
        env["PLATFORM_URL"] = "http://platform.example"
        argv.append(f"--platform-url={url}")
    proc = start_cli(*argv, env=env)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # it runs: stop it, and look at what it printed
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert PASSWORD not in out + err, err
    assert proc.returncode == 2, err
    (line,) = err.splitlines()
    assert line.startswith("heartbeat-sync run: error: invalid platform URL")
    assert "user info" in line
    assert platform.requests == []


def test_run_exits_with_its_own_code_and_one_line_when_the_workspace_is_removed(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    files = platform.agent_files(ws.id, tmp_path)
    proc = start_cli("run", env=run_env(platform.url, ws.id, files, "5"))
    try:
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 1, timeout=10)
        platform.delete(ws.id)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_REMOVED == 3, err
    assert took < 5 + 2  # within one interval (5 s), plus the process's exit
    lines = [line for line in err.splitlines() if "removed" in line]
    assert lines[-1] == (
        f"heartbeat-sync run: workspace {ws.id} was removed from the platform; exiting with code 3"
    )
    assert sum(" ERROR " in line for line in err.splitlines()) == 1
