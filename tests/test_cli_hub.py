"""``heartbeat-sync run --workspace ID:DIR ...`` serves several workspaces from one process
(a hub): each beats with its own token, gets its own results in its DIR, and the process
stops cleanly on SIGTERM; a removal of every workspace ends it with the removed exit code."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from heartbeat_sync.cli.args import build_parser
from heartbeat_sync.cli.config import ConfigError, load_run_config
from heartbeat_sync.testing import FakePlatform

from .test_cli import _stop, cli_env, posix_signals, start_cli


@posix_signals
@pytest.mark.timeout(60)
def test_run_serves_several_workspaces_from_one_process(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        homes = {}
        for name in ("first", "second", "third"):
            ws = platform.add_workspace(name=name)
            platform.write_token(ws.id, tmp_path / ws.id)
            homes[ws.id] = tmp_path / ws.id
        ids = list(homes)
        did = platform.add_delegation(ids[1], status="completed", summary="second's report")
        proc = start_cli(
            "run",
            f"--platform-url={platform.url}",
            "--interval=5",
            *(f"--workspace={wid}:{home}" for wid, home in homes.items()),
            env=cli_env(),
        )
        try:
            assert platform.wait_for(
                lambda: all(len(platform.heartbeats(w)) >= 1 for w in ids), timeout=20
            )
            results = homes[ids[1]] / "results.jsonl"
            assert platform.wait_for(lambda: results.exists() and did in results.read_text(), 10)
        finally:
            rc, took, err = _stop(proc, signal.SIGTERM)
        assert rc == 0, err
        assert took < 8.0
        assert "3 workspaces on" in err
        assert "stopped (threads ended: yes)" in err
        for wid in ids:  # each with its own token
            beat = platform.requests_for("heartbeat", wid)[0]
            assert beat.headers.get("authorization") == f"Bearer {platform.workspace(wid).token}"
        assert not (homes[ids[0]] / "results.jsonl").exists()


@posix_signals
@pytest.mark.timeout(60)
def test_run_ends_with_the_removed_code_once_every_workspace_is_removed(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        ids = []
        for name in ("a", "b"):
            ws = platform.add_workspace(name=name)
            platform.write_token(ws.id, tmp_path / ws.id)
            ids.append(ws.id)
        proc = start_cli(
            "run",
            f"--platform-url={platform.url}",
            "--interval=5",
            *(f"--workspace={wid}:{tmp_path / wid}" for wid in ids),
            env=cli_env(),
        )
        try:
            assert platform.wait_for(
                lambda: all(len(platform.heartbeats(w)) >= 1 for w in ids), timeout=20
            )
            platform.delete(ids[0])
            platform.delete(ids[1])
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 3, err
        assert "every workspace was removed" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workspace", "abc"], "expected ID:DIR"),
        (["--workspace", "a b:/tmp/x"], "invalid workspace id"),
        (["--workspace", "a:/x", "--workspace", "a:/y"], "given twice"),
        (["--workspace", "a:/x", "--results-file", "/r"], "--results-file names one workspace"),
        (["--workspace", "a:/x", "--workspace-id", "b"], "--workspace-id names one workspace"),
    ],
)
def test_run_refuses_a_workspace_list_it_cannot_serve(argv: list[str], message: str) -> None:
    args = build_parser().parse_args(["run", "--platform-url", "http://127.0.0.1:1", *argv])
    with pytest.raises(ConfigError, match=message):
        load_run_config(args, {})


def test_each_workspace_keeps_its_files_in_its_own_dir(tmp_path: Path) -> None:
    homes = ["--workspace", f"a:{tmp_path / 'a'}", "--workspace", f"b:{tmp_path / 'b'}"]
    args = build_parser().parse_args(
        ["run", "--platform-url", "http://127.0.0.1:1", "--interval", "30", *homes]
    )
    config, _ = load_run_config(args, {})
    assert [wid for wid, _ in config.members] == ["a", "b"]
    options = dict(config.members[1][1])
    assert options["configs_dir"] == str(tmp_path / "b")
    assert options["results_file"] == str(tmp_path / "b" / "results.jsonl")
    assert options["interval_seconds"] == 30.0
