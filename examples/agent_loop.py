"""A synchronous agent loop that feeds delegation results into its next prompt.

What it shows:

* the heartbeat running beside a blocking agent loop (``with Heartbeat(...) as hb:``), with
  ``hb.current_task`` saying what the agent does;
* each turn, ``read_delegation_results(hb.results_path)`` takes the results the heartbeat has
  written since the last turn (each is returned by exactly one call), and
  ``format_delegation_results(...)`` turns them into the ``[A2A_RESULT_FROM_PEER]`` block that
  is injected into the next prompt, as the reference runtime's executors do;
* the prompt is printed instead of being sent to a model.

In a deployed agent the heartbeat's wake-up self-message reaches the agent's A2A server and
starts a turn; this loop simply takes turns at a fixed pace.

Against a platform (delegations are whatever the platform has for the workspace)::

    PLATFORM_URL=http://platform:8080 WORKSPACE_ID=<id> python examples/agent_loop.py --turns 20

With no platform URL it starts an in-process ``FakePlatform`` where the agent has delegated a
task to a researcher; the platform completes that delegation after turn 2, and a later prompt
carries the result. It ends by itself within a few seconds::

    python examples/agent_loop.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

try:
    from heartbeat_sync import Heartbeat, format_delegation_results, read_delegation_results
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from heartbeat_sync import Heartbeat, format_delegation_results, read_delegation_results

SYSTEM = "You are a travel-planning agent. Delegate research, then answer the user."
USER = "Plan a weekend in Lisbon for two."


def build_prompt(turn: int, results_block: str) -> str:
    """The next prompt: the system text, new delegation results (if any), and the task."""
    parts = [SYSTEM]
    if results_block:
        parts.append("New results from your delegations:\n" + results_block)
    parts.append(f"User: {USER}\n(turn {turn})")
    return "\n\n".join(parts)


def fake_model(prompt: str) -> str:
    """Stands in for a model call."""
    if "[A2A_RESULT_FROM_PEER]" in prompt:
        return "Assistant: the researcher's hotels are in; drafting the itinerary."
    return "Assistant: still waiting for the researcher."


def agent_loop(
    hb: Heartbeat,
    turns: int,
    turn_seconds: float,
    after_turn: Callable[[int], None] | None = None,
    stop_after_results: bool = False,
) -> int:
    """Take up to ``turns`` turns; return how many results were injected into prompts.

    With ``stop_after_results`` the loop ends after the first turn that injected results.
    """
    pause = threading.Event()
    injected = 0
    for turn in range(1, turns + 1):
        hb.current_task = f"turn {turn}: reading results"
        records = read_delegation_results(hb.results_path)
        prompt = build_prompt(turn, format_delegation_results(records))
        print(f"----- prompt, turn {turn} ({len(records)} new result(s)) -----")
        print(prompt)
        hb.current_task = f"turn {turn}: waiting for the model"
        print(fake_model(prompt))
        hb.record_success()
        injected += len(records)
        if after_turn is not None:
            after_turn(turn)
        if stop_after_results and records:
            break
        pause.wait(turn_seconds)
    hb.current_task = ""
    return injected


def run(platform_url: str, workspace_id: str, interval: float, turns: int, **files: Any) -> None:
    """The agent against a real platform: ``turns`` turns, ``interval`` seconds apart."""
    with Heartbeat(platform_url, workspace_id, interval_seconds=interval, **files) as hb:
        injected = agent_loop(hb, turns, turn_seconds=interval)
    print(f"{injected} result(s) were injected into prompts")


def standalone(interval: float, turns: int) -> int:
    """The agent against an in-process FakePlatform that completes a delegation mid-run."""
    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp, tempfile.TemporaryDirectory() as tmp:
        agent = fp.add_workspace(name="travel-agent")
        researcher = fp.add_workspace(name="researcher")
        files = fp.agent_files(agent.id, tmp)  # its token written where the Heartbeat reads it
        delegation = fp.add_delegation(
            agent.id, target_id=researcher.id, summary="Find three hotels in Alfama"
        )
        print(f"no platform URL given: using an in-process FakePlatform at {fp.url}")

        def platform_side(turn: int) -> None:
            if turn == 2:
                fp.set_delegation(
                    agent.id,
                    delegation,
                    status="completed",
                    response_preview="Memmo Alfama, Santiago de Alfama, Palacio Belmonte",
                )
                print(f"[platform] the researcher completed delegation {delegation[:8]}")

        with Heartbeat(
            fp.url, agent.id, interval_seconds=interval, exit_timeout=None, **files
        ) as hb:
            injected = agent_loop(
                hb,
                turns,
                turn_seconds=2 * interval,
                after_turn=platform_side,
                stop_after_results=True,
            )
        print(f"{injected} result(s) were injected into prompts")
        wakeups = fp.a2a_messages(agent.id)
        print(f"the platform received {len(wakeups)} wake-up message(s) for the agent")
    return 0 if injected else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An agent loop that reads delegation results.")
    parser.add_argument("--platform-url", default=os.environ.get("PLATFORM_URL"))
    parser.add_argument("--workspace-id", default=os.environ.get("WORKSPACE_ID"))
    parser.add_argument("--interval", type=float, help="seconds between beats (and turns)")
    parser.add_argument("--turns", type=int, default=10, help="turns to take (default: 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    if not args.platform_url:
        return standalone(args.interval or 0.25, args.turns)
    if not args.workspace_id:
        parser.error("a platform URL needs a workspace id: set WORKSPACE_ID or --workspace-id")
    interval = args.interval or float(os.environ.get("HEARTBEAT_INTERVAL_SECONDS") or 30)
    run(args.platform_url, args.workspace_id, interval, args.turns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
