"""A smolagents agent on a workspace: its runs on the beats, its messages answered.

What it shows (``pip install 'heartbeat-sync[smolagents]'``; no API key: the model is a
subclass of smolagents' own ``Model`` that plays a script of tool calls):

* ``message_handler(agent)`` as the Heartbeat's ``on_message``: each message to the workspace
  (from a user on the canvas, or from a peer) is the task of an ``agent.run``, with the
  delegation results that came back put in front of it (each once), and the agent's final
  answer goes back the way the message came;
* ``handler.heartbeat = hb`` and ``HeartbeatMonitor(hb).attach(agent)``: every run, a message's
  or the agent's own, is one task on the beats while it runs (``active_tasks``,
  ``current_task``), and a success or an error (``error_rate``, ``sample_error``) when it ends;
  a tool error the agent recovers from is not an error of the run, reaching ``max_steps`` is.

With no platform URL it plays a short story against an in-process ``FakePlatform`` and ends by
itself: a delegation to a researcher completes, a user asks on the canvas (the agent's tool
fails once, and it recovers), and the agent runs a chore of its own that never gets anywhere::

    python examples/smolagents_agent.py

Against a platform, it answers the workspace's messages with the scripted model until stopped
(replace ``ScriptedModel`` with a real model, ``InferenceClientModel`` or ``LiteLLMModel``)::

    PLATFORM_URL=http://platform:8080 WORKSPACE_ID=<id> python examples/smolagents_agent.py
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from smolagents import ChatMessage, Model, ToolCallingAgent, tool
from smolagents.models import ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole
from smolagents.monitoring import LogLevel

try:
    from heartbeat_sync import Heartbeat
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from heartbeat_sync import Heartbeat
from heartbeat_sync.integrations.smolagents import HeartbeatMonitor, message_handler


class ScriptedModel(Model):
    """A model that plays a script of tool calls (then repeats its last one), and prints the
    task it is given the first time it sees it. Replace it with a real one."""

    def __init__(self, script: list[tuple[str, dict[str, Any]]]) -> None:
        super().__init__(model_id="scripted")
        self._script = itertools.chain(script, itertools.repeat(script[-1]))
        self._calls = itertools.count(1)

    def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
        task = next((m for m in messages if m.role == MessageRole.USER), None)
        if task is not None and len(messages) <= 2:  # the system prompt and the task
            print("----- the agent's task -----")
            print("".join(p.get("text", "") for p in task.content or []))
        name, arguments = next(self._script)
        call = ChatMessageToolCallFunction(name=name, arguments=arguments)
        message = ChatMessageToolCall(
            function=call, id=f"call-{next(self._calls)}", type="function"
        )
        return ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[message])


@tool
def hotel_rooms(hotel: str) -> str:
    """Rooms free tonight in a hotel.

    Args:
        hotel: The hotel's name.
    """
    if hotel == "Palacio Belmonte":
        raise ConnectionError("the booking service is down")
    return f"{hotel}: 3 rooms free"


def make_agent() -> ToolCallingAgent:
    """The agent: checks the rooms of the researcher's hotels, then answers."""
    model = ScriptedModel(
        [
            ("hotel_rooms", {"hotel": "Palacio Belmonte"}),  # fails: the model tries another
            ("hotel_rooms", {"hotel": "Memmo Alfama"}),
            ("final_answer", {"answer": "Stay at Memmo Alfama: 3 rooms free tonight."}),
        ]
    )
    return ToolCallingAgent(
        tools=[hotel_rooms],
        model=model,
        name="concierge",
        max_steps=4,
        verbosity_level=LogLevel.OFF,
    )


def serve(platform_url: str, workspace_id: str, interval: float, **files: Any) -> Heartbeat:
    """The Heartbeat, answering messages with the agent; the caller starts it."""
    handler = message_handler(make_agent)  # a new agent for each message
    hb = Heartbeat(
        platform_url, workspace_id, interval_seconds=interval, on_message=handler, **files
    )
    handler.heartbeat = hb  # each message's run counted on the beats too
    return hb


def standalone(interval: float) -> int:
    """The story against an in-process FakePlatform."""
    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp, tempfile.TemporaryDirectory() as tmp:

        def wait_for(what: str, predicate: Callable[[], bool]) -> None:
            if not fp.wait_for(predicate, timeout=10):
                raise SystemExit(f"gave up waiting for {what}")

        agent = fp.add_workspace(name="concierge", delivery_mode="poll")
        researcher = fp.add_workspace(name="researcher", delivery_mode="poll")
        files = fp.agent_files(agent.id, tmp)
        print(f"no platform URL given: using an in-process FakePlatform at {fp.url}")
        hb = serve(fp.url, agent.id, interval, exit_timeout=None, **files)
        with hb:
            fp.add_delegation(
                agent.id,
                target_id=researcher.id,
                status="completed",
                summary="Find three hotels in Alfama",
                response_preview="Palacio Belmonte, Memmo Alfama, Santiago de Alfama",
            )
            print("[platform] the researcher completed a delegation")
            wait_for("the result", lambda: hb.status().results_delivered == 1)

            fp.queue_poll_message(agent.id, "Where can we sleep tonight?")
            print("[platform] a user asks on the canvas")
            wait_for("the reply", lambda: len(fp.notifications(agent.id)) == 2)
            print(f"reply to the canvas: {fp.notifications(agent.id)[-1]}")

            # A chore of the agent's own, outside any message: the booking service stays
            # down, and the run ends at max_steps.
            chore = HeartbeatMonitor(hb).attach(
                ToolCallingAgent(
                    tools=[hotel_rooms],
                    model=ScriptedModel([("hotel_rooms", {"hotel": "Palacio Belmonte"})]),
                    name="night_audit",
                    max_steps=2,
                    verbosity_level=LogLevel.OFF,
                )
            )
            chore.run("Check the rooms of Palacio Belmonte.")
            wait_for("a beat", lambda: any(b["sample_error"] for b in fp.heartbeats(agent.id)))
        beats = fp.heartbeats(agent.id)
        print(f"the platform received {len(beats)} heartbeats; the busy ones:")
        for beat in beats:
            if beat["active_tasks"] or beat["error_rate"]:
                print(
                    f"  active_tasks {beat['active_tasks']}, current_task "
                    f"{beat['current_task']!r}, error_rate {beat['error_rate']:.2f}, "
                    f"sample_error {beat['sample_error']!r}"
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A smolagents agent on a workspace.")
    parser.add_argument("--platform-url", default=os.environ.get("PLATFORM_URL"))
    parser.add_argument("--workspace-id", default=os.environ.get("WORKSPACE_ID"))
    parser.add_argument("--interval", type=float, help="seconds between beats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    if not args.platform_url:
        return standalone(args.interval or 0.25)
    if not args.workspace_id:
        parser.error("a platform URL needs a workspace id: set WORKSPACE_ID or --workspace-id")
    hb = serve(args.platform_url, args.workspace_id, args.interval or 30.0)
    hb.start_thread()
    print("answering the workspace's messages; Ctrl-C to stop")
    try:
        hb.wait()
    except KeyboardInterrupt:
        hb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
