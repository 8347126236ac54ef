"""A LangChain agent on a workspace: its runs on the beats, its messages answered.

What it shows (``pip install 'heartbeat-sync[langchain]'``; no API key: the model is
langchain-core's own ``GenericFakeChatModel``, scripted):

* ``message_handler(chain)`` as the Heartbeat's ``on_message``: each message to the workspace
  (from a user on the canvas, or from a peer) is the chain's input, with the delegation results
  that came back put in front of it (each once), and the chain's answer goes back the way the
  message came;
* ``handler.heartbeat = hb`` and ``HeartbeatCallbackHandler(hb)``: every top-level run, a
  message's or the agent's own, is one task on the beats while it runs (``active_tasks``,
  ``current_task``), and a success or an error (``error_rate``, ``sample_error``) when it ends;
  what it nests (the prompt, the model, the parser, a tool) is not counted again.

With no platform URL it plays a short story against an in-process ``FakePlatform`` and ends by
itself: a delegation to a researcher completes, a user asks on the canvas, the researcher
asks too, and the agent runs a chore of its own whose tool fails::

    python examples/langchain_agent.py

Against a platform, it answers the workspace's messages with the scripted model until stopped
(replace ``make_model`` with a real chat model)::

    PLATFORM_URL=http://platform:8080 WORKSPACE_ID=<id> python examples/langchain_agent.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool

try:
    from heartbeat_sync import Heartbeat
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from heartbeat_sync import Heartbeat
from heartbeat_sync.integrations.langchain import HeartbeatCallbackHandler, message_handler

ANSWERS = [
    "Stay at Memmo Alfama: the researcher's first pick, with a view of the river.",
    "Nothing more for now, thank you: the hotels were what we needed.",
]


def make_model() -> GenericFakeChatModel:
    """The chat model: scripted answers, then an echo. Replace it with a real one."""

    def answers() -> Any:
        yield from (AIMessage(content=text) for text in ANSWERS)
        while True:
            yield AIMessage(content="(scripted model) noted.")

    return GenericFakeChatModel(messages=answers())


def show_prompt(value: Any) -> Any:
    """Print what the model is given (a chain step like any other)."""
    print("----- the model is given -----")
    print(value.to_string())
    return value


def make_chain() -> Runnable[Any, str]:
    """The agent: a prompt, the model, a parser (three nested runs in each top-level run)."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a travel concierge. Be brief."), ("user", "{input}")]
    )
    chain = prompt | RunnableLambda(show_prompt) | make_model() | StrOutputParser()
    return chain.with_config(run_name="concierge")


@tool
def tidy_notes(folder: str) -> str:
    """Tidy the agent's notes in a folder."""
    raise PermissionError(f"cannot write to {folder}")


def serve(platform_url: str, workspace_id: str, interval: float, **files: Any) -> Heartbeat:
    """The Heartbeat, answering messages with the chain; the caller starts it."""
    handler = message_handler(make_chain(), input_key="input")
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
                response_preview="Memmo Alfama, Santiago de Alfama, Palacio Belmonte",
            )
            print("[platform] the researcher completed a delegation")
            wait_for("the result", lambda: hb.status().results_delivered == 1)

            fp.queue_poll_message(agent.id, "Where should we stay in Lisbon?")
            print("[platform] a user asks on the canvas")
            wait_for("the reply", lambda: len(fp.notifications(agent.id)) == 2)
            print(f"reply to the canvas: {fp.notifications(agent.id)[-1]}")

            fp.queue_poll_message(agent.id, "Do you need anything else?", sender_id=researcher.id)
            print("[platform] the researcher asks")
            wait_for("the reply", lambda: hb.status().replies_sent == 2)
            rows = [r for r in fp.activity_rows(researcher.id) if isinstance(r, dict)]
            reply = rows[-1]["request_body"]["params"]["message"]["parts"][0]["text"]
            print(f"reply to the researcher: {reply}")

            # A chore of the agent's own, outside any message: its tool fails.
            chore = (RunnableLambda(lambda f: {"folder": f}) | tidy_notes).with_config(
                run_name="tidy notes"
            )
            try:
                chore.invoke("/notes", {"callbacks": [HeartbeatCallbackHandler(hb)]})
            except PermissionError as exc:
                print(f"the chore failed: {exc}")
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
    parser = argparse.ArgumentParser(description="A LangChain agent on a workspace.")
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
