"""``heartbeat-sync run --handler module:function``: a workspace served by a handler from the
command line, its running handlers given their grace on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from heartbeat_sync.cli import main
from heartbeat_sync.testing import FakePlatform

from .conftest import wait_until
from .test_cli import REPO, posix_signals, run_env

AGENT = textwrap.dedent(
    """
    import pathlib, time

    def handle(message):
        if message.text == "slow":
            pathlib.Path("started").write_text("yes")
            time.sleep(1.5)
            return "slow done"
        return "echo " + message.text
    """
)


@posix_signals
@pytest.mark.timeout(60)
def test_run_with_a_handler_answers_and_lets_a_running_handler_finish_on_sigterm(
    tmp_path: Path,
) -> None:
    with FakePlatform() as platform:
        ws = platform.add_workspace(name="cli-agent", delivery_mode="poll")
        files = platform.agent_files(ws.id, tmp_path / "files")
        (tmp_path / "my_agent.py").write_text(AGENT)
        env = run_env(platform.url, ws.id, files, "5")
        env["PYTHONPATH"] = str(REPO)
        process = subprocess.Popen(
            [sys.executable, "-m", "heartbeat_sync", "run", "--handler", "my_agent:handle"],
            cwd=tmp_path,  # the handler's module is found here, as with python -m
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 1, timeout=15)
            platform.queue_poll_message(ws.id, "hi")
            assert platform.wait_for(lambda: platform.notifications(ws.id) == ["echo hi"], 10)
            platform.queue_poll_message(ws.id, "slow")
            assert wait_until(lambda: (tmp_path / "started").exists(), timeout=10)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, err
        # The handler that ran at the signal finished, and its answer went out before exit.
        assert platform.notifications(ws.id) == ["echo hi", "slow done"]
        assert "messages to my_agent:handle" in err
        assert "messages: 2 handled, 0 raised, 2 replies sent, 0 still running" in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--handler", "no_colon"], "--handler must be module:function"),
        (["--handler", "a b:c"], "--handler must be module:function"),
        (["--handler", "no_such_module_here:handle"], "cannot import no_such_module_here"),
        (["--handler", "json:no_such_function"], "json has no no_such_function"),
        (["--handler", "json:__doc__"], "json:__doc__ is not callable"),
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--max-concurrent", "many"], "--max-concurrent"),
        (["--handler-grace", "-1"], "--handler-grace"),
    ],
)
def test_a_bad_handler_option_exits_2_naming_it(
    argv: list[str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PLATFORM_URL", "http://platform:8080")
    monkeypatch.setenv("WORKSPACE_ID", "ws-1")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command may put the cwd first
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("heartbeat-sync run: error: ")
    assert named in err[0]
