"""An external agent from nothing: register, beat, answer messages, read results, end when
removed.

An external agent runs outside the platform (a laptop, a VM, a CI runner). Its workspace is
created with the admin API, which shows the workspace's token once::

    curl -s -X POST "$PLATFORM_URL/workspaces" -H "Authorization: Bearer $ADMIN_TOKEN" \\
      -H 'Content-Type: application/json' \\
      -d '{"name": "nightly-report", "external": true, "runtime": "external"}'
    # -> {"id": "<WORKSPACE_ID>", "status": "awaiting_agent", "connection": {"auth_token": ...}}

Then this plain synchronous script, given the id and that token, does the rest::

    PLATFORM_URL=... WORKSPACE_ID=... MOLECULE_WORKSPACE_TOKEN=... \\
        python examples/external_agent.py --configs-dir ./agent-configs

1. ``register()`` joins the workspace in poll mode (no inbound URL needed) and keeps what the
   platform shows once (a token, the inbound secret) in ``--configs-dir``;
2. a ``Heartbeat`` keeps it online on daemon threads and brings delegation results back;
3. every message to the workspace, from a user on the canvas or from a peer workspace, goes to
   ``answer()`` (``on_message``), once; what it returns goes back the way the message came;
4. the script works (here: it reports progress and consumes results as they arrive);
5. ``hb.wait()`` returns when the workspace is removed on the platform, and the script ends.

With no platform URL it plays the whole story against an in-process ``FakePlatform``: the
operator creates the workspace, a canvas user and a peer write to it, a delegation completes,
the operator deletes the workspace.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

try:
    from heartbeat_sync import Heartbeat, InboundMessage, read_delegation_results, register
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from heartbeat_sync import Heartbeat, InboundMessage, read_delegation_results, register


def answer(message: InboundMessage) -> str:
    """The agent's work for a message: on a thread of its own, so the beats go on meanwhile.
    What it returns is the reply: a notification for a canvas user, an A2A message for a
    peer."""
    sender = "a canvas user" if message.source == "canvas" else message.peer_name or "a peer"
    print(f"message from {sender}: {message.text}", flush=True)
    return f"nightly-report here: noted {message.text!r}"


def run_agent(
    platform_url: str,
    workspace_id: str,
    files: dict[str, Any],
    *,
    interval: float,
    poll: float,
    on_result: Any = None,
) -> int:
    """Register, keep the workspace alive, consume results until the workspace is removed."""
    reg = register(
        platform_url,
        workspace_id,
        agent_card={"name": "nightly-report", "description": "an external example agent"},
        delivery_mode="poll",
        configs_dir=files["configs_dir"],
    )
    print(f"registered: delivery mode {reg.delivery_mode}, new token issued: {reg.token_issued}")
    consumed = 0

    def on_state_change(old: str, new: str) -> None:
        print(f"state: {old} -> {new}", flush=True)

    hb = Heartbeat(
        platform_url,
        workspace_id,
        interval_seconds=interval,
        on_state_change=on_state_change,
        on_message=answer,
        **files,
    )
    hb.start_thread()
    hb.current_task = "waiting for delegation results"

    def take_results() -> None:
        nonlocal consumed
        for record in read_delegation_results(files["results_file"]):
            consumed += 1
            print(f"result: [{record['status']}] {record['response_preview']}")
            hb.current_task = f"{consumed} result(s) handled"
            if on_result is not None:
                on_result(record)

    # The script's own work: wake up now and then, take the results that came back.
    while not hb.wait(timeout=poll):
        take_results()
    take_results()  # what arrived just before the end
    status = hb.status()
    print(f"the heartbeat ended: state {status.state}, {status.beats_ok} beats ok")
    print(f"{status.messages_handled} message(s) answered, {status.replies_sent} reply(ies) sent")
    print(f"{consumed} result(s) consumed")
    return 0 if status.state == "removed" else 1


def standalone(interval: float) -> int:
    """The whole story against an in-process FakePlatform."""
    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp, tempfile.TemporaryDirectory() as tmp:
        # The operator creates the external workspace; its token is handed to the agent.
        ws = fp.add_workspace(name="nightly-report", status="awaiting_agent")
        print(f"no platform URL given: an in-process FakePlatform at {fp.url}")
        # The token the admin API showed, handed to the agent (or: $MOLECULE_WORKSPACE_TOKEN).
        files: dict[str, Any] = {**fp.agent_files(ws.id, tmp), "exit_timeout": None}
        did = fp.add_delegation(ws.id, target_id="researcher", summary="Collect the numbers")

        def operator() -> None:
            # Once the agent runs, a canvas user and a peer write to it; once both have their
            # answers, the delegation completes; later the workspace is deleted.
            fp.wait_for(lambda: ws.status == "online", timeout=10)
            fp.queue_poll_message(ws.id, "How is the report going?")
            peer = fp.add_workspace(name="researcher", delivery_mode="poll")
            fp.queue_poll_message(ws.id, "The numbers are in.", sender_id=peer.id)
            fp.wait_for(
                lambda: bool(fp.notifications(ws.id)) and bool(fp.activity_rows(peer.id)), 10
            )
            fp.set_delegation(ws.id, did, status="completed", response_preview="42 rows")

        def delete_after(record: dict[str, Any]) -> None:
            threading.Timer(2 * interval, fp.delete, args=(ws.id,)).start()

        threading.Thread(target=operator, daemon=True).start()
        code = run_agent(
            fp.url, ws.id, files, interval=interval, poll=interval / 2, on_result=delete_after
        )
        print(f"the platform received {len(fp.heartbeats(ws.id))} heartbeats")
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An external agent, from nothing.")
    parser.add_argument("--platform-url", default=os.environ.get("PLATFORM_URL"))
    parser.add_argument("--workspace-id", default=os.environ.get("WORKSPACE_ID"))
    parser.add_argument("--configs-dir", default=os.environ.get("CONFIGS_DIR"))
    parser.add_argument("--interval", type=float, help="seconds between beats")
    parser.add_argument("--results-file", default=os.environ.get("DELEGATION_RESULTS_FILE"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    if not args.platform_url:
        return standalone(args.interval or 0.3)
    if not args.workspace_id:
        parser.error("a platform URL needs a workspace id: set WORKSPACE_ID or --workspace-id")
    configs = Path(args.configs_dir or Path.home() / ".molecule-workspace")
    results = Path(args.results_file or configs / "delegation_results.jsonl")
    files: dict[str, Any] = {
        "results_file": results,
        "cursor_file": results.with_name(results.name + ".cursor"),
        "seen_file": results.with_name(results.name + ".seen"),
        "configs_dir": configs,
    }
    interval = args.interval or float(os.environ.get("HEARTBEAT_INTERVAL_SECONDS") or 30)
    return run_agent(
        args.platform_url, args.workspace_id, files, interval=interval, poll=min(interval, 1.0)
    )


if __name__ == "__main__":
    sys.exit(main())
