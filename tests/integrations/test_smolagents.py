"""The smolagents adapter against the real smolagents, with a scripted model (a subclass of the
framework's own ``Model``) driving real ``ToolCallingAgent`` runs, through ``FakePlatform``: no
network, no API key.

Skipped when smolagents is not installed (the main suite runs without it); the nox session
``smolagents`` installs it and runs these.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Union

import pytest

pytest.importorskip("smolagents")

from smolagents import ChatMessage, Model, ToolCallingAgent, tool
from smolagents.memory import ActionStep
from smolagents.models import (
    ChatMessageToolCall,
    ChatMessageToolCallFunction,
    MessageRole,
)
from smolagents.monitoring import LogLevel

from heartbeat_sync import format_delegation_results
from heartbeat_sync.integrations.smolagents import (
    HeartbeatMonitor,
    current_message,
    message_handler,
)
from heartbeat_sync.testing import FakePlatform, Workspace

from ..conftest import HeartbeatFactory, wait_until

#: A step of a script: a tool's name and its arguments, or an exception the model raises.
Step = Union[tuple[str, dict[str, Any]], BaseException]


class ScriptedModel(Model):
    """A smolagents model that answers each call with the next tool call of its script, and
    records the messages it was given (the agent's prompts)."""

    def __init__(self, script: list[Step]) -> None:
        super().__init__(model_id="scripted")
        self.script = list(script)
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def generate(
        self,
        messages: list[Any],
        stop_sequences: list[str] | None = None,
        response_format: dict[str, str] | None = None,
        tools_to_call_from: list[Any] | None = None,
        **kwargs: Any,
    ) -> ChatMessage:
        with self._lock:
            self.prompts.append("\n".join(_text(m) for m in messages))
            step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            number = len(self.prompts)
        if isinstance(step, BaseException):
            raise step
        name, arguments = step
        call = ChatMessageToolCall(
            function=ChatMessageToolCallFunction(name=name, arguments=arguments),
            id=f"call-{number}",
            type="function",
        )
        return ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[call])


def _text(message: Any) -> str:
    content = message["content"] if isinstance(message, dict) else message.content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def answer(text: str) -> Step:
    return ("final_answer", {"answer": text})


def look(city: str) -> Step:
    return ("lookup", {"city": city})


#: Called by the ``lookup`` tool before it answers (a test may hold it there).
on_lookup: list[Callable[[str], None]] = []


@tool
def lookup(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city's name.
    """
    for hook in list(on_lookup):
        hook(city)
    if city == "Atlantis":
        raise ValueError("no such city: Atlantis")
    return f"{city}: sunny"


@pytest.fixture(autouse=True)
def _no_hooks() -> Iterator[None]:
    yield
    on_lookup.clear()


def make_agent(script: list[Step], *, max_steps: int = 4, **options: Any) -> ToolCallingAgent:
    return ToolCallingAgent(
        tools=[lookup],
        model=ScriptedModel(script),
        max_steps=max_steps,
        verbosity_level=LogLevel.OFF,
        **options,
    )


@pytest.fixture
def agent_ws(platform: FakePlatform) -> Workspace:
    """A workspace whose messages are polled (what an agent with ``on_message`` serves)."""
    return platform.add_workspace(name="agent", delivery_mode="poll")


@pytest.fixture
def beats_held(platform: FakePlatform, agent_ws: Workspace) -> Iterator[None]:
    """Every beat of ``agent_ws`` refused (503) until the test clears it: the Heartbeat then
    keeps counting, and the first beat that passes reports every run."""
    platform.fault("heartbeat", status=503, workspace_id=agent_ws.id)
    yield
    platform.clear_faults("heartbeat")


def sent_beats(platform: FakePlatform, workspace_id: str) -> list[dict[str, Any]]:
    """Every beat's body as sent, answered or refused."""
    return [r.json() for r in platform.requests_for("heartbeat", workspace_id)]


def first_passing_beat(platform: FakePlatform, workspace_id: str) -> dict[str, object]:
    """Let the beats pass again, once one built after the runs ended was refused (the beats go
    one at a time, so every later one reports all the runs); the first beat that passes."""
    sent = len(platform.requests_for("heartbeat", workspace_id))

    def refused_after_the_runs() -> bool:
        beats = platform.requests_for("heartbeat", workspace_id)
        return len(beats) > sent and beats[sent].status is not None

    assert platform.wait_for(refused_after_the_runs)
    platform.clear_faults("heartbeat")
    assert platform.wait_for(lambda: bool(platform.heartbeats(workspace_id)))
    return platform.heartbeats(workspace_id)[0]


MAX_STEPS_ERROR = (
    "AgentMaxStepsError: Reached max steps. (last step error: AgentToolExecutionError: Error "
    "executing tool 'lookup' with arguments {'city': 'Atlantis'}: ValueError: no such city: "
    "Atlantis Please try again or use another tool)"
)


def test_each_run_counts_once_a_tool_error_recovered_from_is_none(
    platform: FakePlatform, agent_ws: Workspace, make_hb: HeartbeatFactory, beats_held: None
) -> None:
    hb = make_hb(workspace_id=agent_ws.id)
    hb.start_thread()
    monitor = HeartbeatMonitor(hb)
    # A failing tool, then a good one, then an answer: the model saw the error and went on.
    recovers = monitor.attach(make_agent([look("Atlantis"), look("Lisbon"), answer("Sunny.")]))
    assert recovers.run("Weather in Atlantis, else Lisbon?") == "Sunny."
    # The failing tool until max_steps: smolagents asks the model for an answer and returns
    # it, and the run is an error.
    stuck = monitor.attach(make_agent([look("Atlantis")], max_steps=2))
    stuck.run("Weather in Atlantis?")
    assert hb.sample_error == MAX_STEPS_ERROR[:200].rstrip() + "…"
    # The model fails: the run raises.
    broken = monitor.attach(make_agent([ConnectionError("the model's server is down")]))
    with pytest.raises(Exception, match="Error while generating output") as raised:
        broken.run("Weather in Faro?")
    assert type(raised.value).__name__ == "AgentGenerationError"
    assert recovers.run("Weather in Lisbon?", reset=True) == "Sunny."  # the script's last step
    assert (hb.active_tasks, hb.current_task) == (0, "")
    beat = first_passing_beat(platform, agent_ws.id)
    assert beat["error_rate"] == 0.5  # four runs, whatever their steps
    assert beat["sample_error"] == (
        "AgentGenerationError: Error while generating output: the model's server is down"
    )
    assert {b["active_tasks"] for b in sent_beats(platform, agent_ws.id)} <= {0, 1}


def test_two_concurrent_runs_are_two_tasks_on_the_beats(
    platform: FakePlatform, agent_ws: Workspace, make_hb: HeartbeatFactory, beats_held: None
) -> None:
    hb = make_hb(workspace_id=agent_ws.id)
    hb.start_thread()
    monitor = HeartbeatMonitor(hb)
    release = threading.Event()
    looking: list[str] = []
    on_lookup.append(lambda city: (looking.append(city), release.wait(10)))
    agents = [
        monitor.attach(make_agent([look("Lisbon"), answer("Sunny.")], name="north")),
        monitor.attach(make_agent([look("Atlantis")], max_steps=1, name="south")),
    ]
    tasks = ["Weather in Lisbon?", "Weather in Atlantis?"]
    outputs: list[object] = [None, None]

    def run(i: int) -> None:
        outputs[i] = agents[i].run(tasks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(looking) == 2)
        assert hb.active_tasks == 2
        assert platform.wait_for(
            lambda: any(b["active_tasks"] == 2 for b in sent_beats(platform, agent_ws.id))
        )
        shown = {b["current_task"] for b in sent_beats(platform, agent_ws.id) if b["active_tasks"]}
        assert shown and shown <= {"north: Weather in Lisbon?", "south: Weather in Atlantis?"}
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert outputs[0] == "Sunny."
    assert (hb.active_tasks, hb.current_task) == (0, "")
    beat = first_passing_beat(platform, agent_ws.id)
    assert beat["error_rate"] == 0.5
    assert str(beat["sample_error"]).startswith("AgentMaxStepsError: Reached max steps.")


def test_current_task_is_the_agents_name_and_the_start_of_its_task(
    make_hb: HeartbeatFactory,
) -> None:
    hb = make_hb()  # not started: what the monitor sets, read directly
    hb.current_task = "waiting for work"
    seen: list[str] = []
    on_lookup.append(lambda city: seen.append(hb.current_task))
    monitor = HeartbeatMonitor(hb)
    named = monitor.attach(make_agent([look("Lisbon"), answer("ok")], name="forecaster"))
    named.run("Weather\nin   Lisbon, " + "please " * 20)
    plain = monitor.attach(make_agent([look("Porto"), answer("ok")]))
    plain.run("Porto?")
    assert seen == [
        "forecaster: Weather in Lisbon, please please please please please please…",
        "ToolCallingAgent: Porto?",
    ]
    assert hb.current_task == "waiting for work"


def test_a_managed_agents_run_is_part_of_its_managers(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    monitor = HeartbeatMonitor(hb)
    tasks_inside: list[int] = []
    on_lookup.append(lambda city: tasks_inside.append(hb.active_tasks))
    worker = make_agent(
        [look("Lisbon"), answer("Lisbon: sunny")], name="worker", description="Finds weather."
    )
    manager = make_agent(
        [("worker", {"task": "Weather in Lisbon?", "additional_args": {}}), answer("It is sunny.")],
        name="manager",
        managed_agents=[worker],
    )
    monitor.attach(worker)  # attached too: still one run
    monitor.attach(manager)
    monitor.attach(manager)  # again: nothing more
    HeartbeatMonitor(hb).attach(manager)  # another monitor of the same Heartbeat: nothing more
    assert manager.run("Weather?") == "It is sunny."
    assert tasks_inside == [1]
    assert hb.active_tasks == 0 and hb.error_rate == 0.0
    worker.run("Weather in Lisbon?")  # on its own, the worker's run is one
    assert hb.active_tasks == 0


def test_a_streamed_run_counts_while_it_is_iterated(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    monitor = HeartbeatMonitor(hb)
    agent = monitor.attach(make_agent([look("Lisbon"), answer("Sunny.")]))
    steps = agent.run("Weather?", stream=True)
    assert hb.active_tasks == 0  # not begun until iterated
    first = next(steps)
    assert first is not None and hb.active_tasks == 1
    rest = list(steps)
    assert rest and hb.active_tasks == 0
    # One given up half way (after a step) is no success and no error.
    again = monitor.attach(make_agent([look("Lisbon"), answer("Sunny.")]))
    steps = again.run("Weather?", stream=True)
    assert any(isinstance(step, ActionStep) for step in steps)  # stops after the first step
    steps.close()
    assert hb.active_tasks == 0
    stuck = monitor.attach(make_agent([look("Atlantis")], max_steps=1))
    list(stuck.run("Weather in Atlantis?", stream=True))
    assert hb.error_rate == 0.5


def test_what_the_monitor_and_the_handler_are_given_is_checked(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    with pytest.raises(TypeError, match="smolagents agent"):
        HeartbeatMonitor(hb).attach(object())  # type: ignore[type-var]
    with pytest.raises(TypeError, match="smolagents agent or a callable"):
        message_handler(42)  # type: ignore[arg-type]


def test_an_inbound_message_is_answered_with_the_results_in_front_once(
    platform: FakePlatform, agent_ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = platform.add_workspace(name="beta", delivery_mode="poll")
    release = threading.Event()
    senders: list[object] = []
    on_lookup.append(lambda city: (senders.append(current_message()), release.wait(10)))
    model = ScriptedModel(
        [
            look("Lisbon"),
            answer("Memmo Alfama it is."),
            look("Porto"),
            answer("You are welcome."),
            ValueError("the model is down"),
        ]
    )
    agent = ToolCallingAgent(
        tools=[lookup], model=model, max_steps=3, verbosity_level=LogLevel.OFF, name="concierge"
    )
    handler = message_handler(agent)
    hb = make_hb(workspace_id=agent_ws.id, on_message=handler)
    handler.heartbeat = hb  # its runs counted on the beats (its results file is the Heartbeat's)
    platform.add_delegation(
        agent_ws.id, status="completed", summary="Find hotels", response_preview="Memmo Alfama"
    )
    hb.start_thread()
    assert wait_until(lambda: hb.status().results_delivered == 1)
    results = [json.loads(line) for line in Path(hb.results_path).read_text().splitlines()]

    platform.queue_poll_message(agent_ws.id, "Which hotel?")
    # One task on the beats (the Heartbeat counts the handler; the monitor does not add its
    # run again), with the message as the current task.
    assert platform.wait_for(
        lambda: any(
            b["active_tasks"] == 1 and b["current_task"] == "concierge: Which hotel?"
            for b in platform.heartbeats(agent_ws.id)
        )
    )
    release.set()
    # The answer to the canvas: a notification (after the one about the delegation's result).
    assert wait_until(lambda: platform.notifications(agent_ws.id)[-1:] == ["Memmo Alfama it is."])
    platform.queue_poll_message(agent_ws.id, "Thanks!", sender_id=peer.id)
    assert wait_until(lambda: hb.status().replies_sent == 2)
    platform.queue_poll_message(agent_ws.id, "Again?")
    assert wait_until(lambda: hb.status().handler_errors == 1)

    # The result was in the first task, in front of the message, and in no other.
    assert format_delegation_results(results) + "\n\nWhich hotel?" in model.prompts[0]
    assert "Thanks!" in model.prompts[2] and "Again?" in model.prompts[4]
    assert all("A2A_RESULT_FROM_PEER" not in p for p in model.prompts[2:])
    assert not Path(hb.results_path).read_text()
    # The peer's answer went back to the peer; the tool saw who asked.
    rows = [r for r in platform.activity_rows(peer.id) if isinstance(r, dict)]
    assert len(rows) == 1 and rows[0]["source_id"] == agent_ws.id
    parts = rows[0]["request_body"]["params"]["message"]["parts"]
    assert parts == [{"kind": "text", "text": "You are welcome."}]
    assert [getattr(m, "source", None) for m in senders] == ["canvas", "peer"]
    assert hb.sample_error.startswith("AgentGenerationError: Error while generating output")
    assert all(b["active_tasks"] <= 1 for b in platform.heartbeats(agent_ws.id))
    assert wait_until(lambda: hb.active_tasks == 0 and hb.current_task == "")


def test_a_factory_answers_messages_in_parallel(
    platform: FakePlatform, agent_ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    release = threading.Event()
    looking: list[str] = []
    on_lookup.append(lambda city: (looking.append(city), release.wait(10)))

    def new_agent() -> ToolCallingAgent:
        return make_agent([look("Lisbon"), answer("Sunny.")], name="forecaster")

    handler = message_handler(new_agent)
    hb = make_hb(workspace_id=agent_ws.id, on_message=handler, max_concurrent=2)
    handler.heartbeat = hb
    platform.queue_poll_message(agent_ws.id, "Weather?")
    platform.queue_poll_message(agent_ws.id, "Weather again?")
    hb.start_thread()
    try:
        assert wait_until(lambda: len(looking) == 2)
        assert platform.wait_for(
            lambda: any(b["active_tasks"] == 2 for b in platform.heartbeats(agent_ws.id))
        )
    finally:
        release.set()
    assert wait_until(lambda: platform.notifications(agent_ws.id) == ["Sunny.", "Sunny."])
    assert all(b["active_tasks"] <= 2 for b in platform.heartbeats(agent_ws.id))
    assert wait_until(lambda: hb.active_tasks == 0)
