"""The examples run as scripts: standalone (with their own FakePlatform) and against a platform."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import CONFIG_ENV

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

CLEARED_ENV = (*CONFIG_ENV, "PYTHONPATH")


def run_example(
    name: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``examples/<name>`` as a user would: ``python examples/x.py``, nothing installed."""
    clean = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    clean.update(env or {})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - start


@pytest.mark.timeout(30)
def test_plain_script_standalone(tmp_path: Path) -> None:
    done, took = run_example("plain_script.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "using an in-process FakePlatform" in out
    assert "FAILED invoice-3 (corrupt): cannot parse invoice-3 (corrupt)" in out
    assert out.count("done   invoice-") == 4
    beats = re.search(r"heartbeat: (\d+) beats ok, 0 failed, state stopped", out)
    assert beats
    assert int(beats[1]) >= 2
    assert f"the platform received {beats[1]} heartbeats" in out
    # The platform saw the script's current_task and its error.
    assert "'processing invoice-3 (corrupt)'" in out
    worst = re.search(r"highest error_rate it saw: ([\d.]+) \(sample_error '([^']*)'\)", out)
    assert worst
    assert float(worst[1]) > 0
    assert worst[2] == "cannot parse invoice-3 (corrupt)"
    assert took < 10


@pytest.mark.timeout(30)
def test_thread_pool_worker_standalone(tmp_path: Path) -> None:
    done, took = run_example("thread_pool_worker.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert len(re.findall(r"^job +\d+: ok$", out, re.MULTILINE)) == 10
    assert len(re.findall(r"^job +\d+: error$", out, re.MULTILINE)) == 2
    peak = re.search(r"at most (\d+) tasks ran at once; active_tasks is 0 now", out)
    assert peak
    assert 2 <= int(peak[1]) <= 4
    seen = re.search(r"active_tasks it saw: \[([\d, ]*)\]", out)
    assert seen
    active = [int(n) for n in seen[1].split(",") if n.strip()]
    assert max(active) >= 2  # a beat went out while several tasks ran
    errors = re.search(r"beats reporting errors: (\d+)", out)
    assert errors
    assert int(errors[1]) >= 1
    assert "upstream timed out" in out
    assert took < 10


@pytest.mark.timeout(30)
def test_agent_loop_injects_the_result_into_a_prompt(tmp_path: Path) -> None:
    done, took = run_example("agent_loop.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    completed = out.index("[platform] the researcher completed delegation")
    # The prompts before the delegation completed carry no results...
    assert "[A2A_RESULT_FROM_PEER]" not in out[:completed]
    # ...and a later prompt carries it, injected by format_delegation_results.
    later = out[completed:]
    prompt = later[later.index("----- prompt") :]
    assert re.match(r"----- prompt, turn \d+ \(1 new result\(s\)\) -----", prompt)
    block = re.search(
        r"\[A2A_RESULT_FROM_PEER\]\n(.*?)\n\[/A2A_RESULT_FROM_PEER\]", prompt, re.DOTALL
    )
    assert block
    assert block[1] == (
        "- [completed] Find three hotels in Alfama\n"
        "  Response: Memmo Alfama, Santiago de Alfama, Palacio Belmonte"
    )
    assert "Assistant: the researcher's hotels are in" in out
    assert "1 result(s) were injected into prompts" in out
    assert "the platform received 1 wake-up message(s)" in out
    assert took < 10


@pytest.mark.timeout(30)
def test_plain_script_against_a_platform(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    env = {
        "PLATFORM_URL": platform.url,
        "WORKSPACE_ID": ws.id,
        "CONFIGS_DIR": str(tmp_path / "configs"),
        "DELEGATION_RESULTS_FILE": str(tmp_path / "results.jsonl"),
        "DELEGATION_ACTIVITY_CURSOR_FILE": str(tmp_path / "cursor"),
        "DELEGATION_SEEN_FILE": str(tmp_path / "seen"),
    }
    done, _ = run_example("plain_script.py", "--interval", "0.5", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "FakePlatform" not in done.stdout
    beats = platform.heartbeats(ws.id)
    assert beats
    tasks = {b.get("current_task") for b in beats}
    assert "processing invoice-3 (corrupt)" in tasks
    assert any(b.get("sample_error") == "cannot parse invoice-3 (corrupt)" for b in beats)
    assert all(
        r.headers.get("authorization") == f"Bearer {ws.token}"
        for r in platform.requests_for("heartbeat")
    )


@pytest.mark.timeout(30)
def test_examples_need_a_workspace_id_with_a_platform_url(tmp_path: Path) -> None:
    done, _ = run_example(
        "agent_loop.py", "--platform-url", "http://127.0.0.1:9", cwd=tmp_path, timeout=10
    )
    assert done.returncode == 2
    assert "WORKSPACE_ID" in done.stderr


@pytest.mark.timeout(30)
def test_external_agent_standalone_registers_works_and_ends_when_removed(tmp_path: Path) -> None:
    done, took = run_example("external_agent.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "registered: delivery mode poll, new token issued: False" in out
    assert "state: starting -> healthy" in out, done.stdout  # what it said instead, if not
    assert out.index("state: starting -> healthy") < out.index("result: [completed] 42 rows")
    assert out.index("result: [completed] 42 rows") < out.index("state: healthy -> removed")
    assert "1 result(s) consumed" in out
    assert "message from a canvas user: How is the report going?" in out
    assert "message from a peer: The numbers are in." in out
    assert "2 message(s) answered, 2 reply(ies) sent" in out
    assert re.search(r"^the heartbeat ended: state removed, \d+ beats ok$", done.stdout, re.M)
    assert took < 10


@pytest.mark.timeout(30)
def test_external_agent_against_a_platform(platform: FakePlatform, tmp_path: Path) -> None:
    ws = platform.add_workspace(name="ext", with_token=False, status="awaiting_agent")
    did = platform.add_delegation(ws.id, status="completed", response_preview="done: 7")
    env = {"PLATFORM_URL": platform.url, "WORKSPACE_ID": ws.id}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "external_agent.py"),
            f"--configs-dir={tmp_path / 'configs'}",
            f"--results-file={tmp_path / 'results.jsonl'}",
            "--interval=0.3",
        ],
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if k not in CLEARED_ENV}, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 2, timeout=10)
        assert ws.status == "online" and ws.delivery_mode == "poll"
        # The token the registration issued was kept 0600 and is what the beats carry.
        token_file = tmp_path / "configs" / ".auth_token"
        token = ws.token
        assert token and token_file.read_text() == token
        assert token_file.stat().st_mode & 0o777 == 0o600
        seen = tmp_path / "results.jsonl.seen"  # the example's seen file: delivered ids
        assert platform.wait_for(lambda: seen.exists() and did in seen.read_text(), timeout=5)
        platform.queue_poll_message(ws.id, "are you there?")
        answer = "nightly-report here: noted 'are you there?'"  # beside the result's own
        assert platform.wait_for(lambda: answer in platform.notifications(ws.id), timeout=5)
        platform.delete(ws.id)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "result: [completed] done: 7" in out
    assert "message from a canvas user: are you there?" in out
    assert "state: healthy -> removed" in out
    assert token not in out + err


@pytest.mark.timeout(60)
def test_langchain_agent_answers_messages_and_its_runs_reach_the_beats(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")  # the langchain nox session runs it
    done, took = run_example("langchain_agent.py", cwd=tmp_path, timeout=45)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    prompts = out.split("----- the model is given -----")[1:]
    assert len(prompts) == 2
    # The delegation's result in front of the first message, and of no other.
    assert re.search(
        r"Human: \[A2A_RESULT_FROM_PEER\]\n- \[completed\] Find three hotels in Alfama\n"
        r"  Response: Memmo Alfama, .*\n\[/A2A_RESULT_FROM_PEER\]\n\nWhere should we stay",
        prompts[0],
    )
    assert "Human: Do you need anything else?" in prompts[1]
    assert "A2A_RESULT_FROM_PEER" not in prompts[1]
    assert "reply to the canvas: Stay at Memmo Alfama" in out
    assert "reply to the researcher: Nothing more for now" in out
    failed = r"sample_error 'PermissionError: cannot write to /notes'"
    assert re.search(r"error_rate (0\.\d*[1-9]\d*|1\.00), " + failed, out)
    assert took < 45


@pytest.mark.timeout(60)
def test_smolagents_agent_answers_messages_and_its_runs_reach_the_beats(tmp_path: Path) -> None:
    pytest.importorskip("smolagents")  # the smolagents nox session runs it
    done, took = run_example("smolagents_agent.py", cwd=tmp_path, timeout=45)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    tasks = out.split("----- the agent's task -----")[1:]
    assert len(tasks) == 2
    assert re.search(
        r"New task:\n\[A2A_RESULT_FROM_PEER\]\n- \[completed\] Find three hotels in Alfama\n"
        r"  Response: Palacio Belmonte, .*\n\[/A2A_RESULT_FROM_PEER\]\n\nWhere can we sleep",
        tasks[0],
    )
    assert "A2A_RESULT_FROM_PEER" not in tasks[1]
    # The tool failed once and the agent recovered: an answer, and no error for that run.
    assert "reply to the canvas: Stay at Memmo Alfama: 3 rooms free tonight." in out
    assert re.search(r"sample_error \"AgentMaxStepsError: Reached max steps\. \(last step", out)
    assert took < 45
