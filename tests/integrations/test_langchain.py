"""The LangChain adapter against the real langchain-core (and LangGraph, where installed), with
the framework's own fake chat models, through ``FakePlatform``: no network, no API key.

Skipped when langchain-core is not installed (the main suite runs without it); the nox session
``langchain`` installs it and runs these.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.tools import tool

from heartbeat_sync import InboundMessage, format_delegation_results
from heartbeat_sync.integrations.langchain import (
    HeartbeatCallbackHandler,
    current_message,
    message_handler,
)
from heartbeat_sync.testing import FakePlatform, Workspace

from ..conftest import HeartbeatFactory, wait_until


@tool
def lookup(city: str) -> str:
    """The weather in a city."""
    if city == "Atlantis":
        raise ValueError("no such city: Atlantis")
    return f"{city}: sunny"


def weather_chain() -> Runnable[Any, str]:
    """A prompt, a chat model and a parser: three nested runs in one top-level run."""
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{question}")])
    return prompt | FakeListChatModel(responses=["Sunny.", "Rainy."]) | StrOutputParser()


@pytest.fixture
def agent(platform: FakePlatform) -> Workspace:
    """A workspace whose messages are polled (what an agent with ``on_message`` serves)."""
    return platform.add_workspace(name="agent", delivery_mode="poll")


@pytest.fixture
def beats_held(platform: FakePlatform, agent: Workspace) -> Iterator[None]:
    """Every beat of ``agent`` refused (503) until the test clears it: the Heartbeat then keeps
    counting the runs' successes and errors, and the first beat that passes reports them all."""
    platform.fault("heartbeat", status=503, workspace_id=agent.id)
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


def test_each_top_level_run_counts_once_and_a_failing_tool_is_an_error(
    platform: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory, beats_held: None
) -> None:
    hb = make_hb(workspace_id=agent.id)
    hb.start_thread()
    handler = HeartbeatCallbackHandler(hb)
    config: RunnableConfig = {"callbacks": [handler]}
    chain = weather_chain()
    assert chain.invoke({"question": "Lisbon?"}, config) == "Sunny."
    assert chain.invoke({"question": "Porto?"}, config) == "Rainy."
    failing = RunnableLambda(lambda city: {"city": city}) | lookup
    with pytest.raises(ValueError, match="Atlantis"):
        failing.invoke("Atlantis", config)
    assert lookup.invoke({"city": "Faro"}, config) == "Faro: sunny"  # a tool on its own: a run
    assert (hb.active_tasks, hb.current_task) == (0, "")
    # Four runs, one failed, whatever they nested (a prompt, a model, a parser, a tool).
    beat = first_passing_beat(platform, agent.id)
    assert beat["error_rate"] == 0.25
    assert beat["sample_error"] == "ValueError: no such city: Atlantis"
    assert (beat["active_tasks"], beat["current_task"]) == (0, "")
    # While the runs went on, the beats saw one task at a time.
    assert {b["active_tasks"] for b in sent_beats(platform, agent.id)} <= {0, 1}


def test_two_concurrent_runs_are_two_tasks_on_the_beats(
    platform: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory, beats_held: None
) -> None:
    hb = make_hb(workspace_id=agent.id)
    hb.start_thread()
    release = threading.Event()
    started: list[str] = []
    lock = threading.Lock()

    def hold(task: str) -> str:
        with lock:
            started.append(task)
        assert release.wait(10)
        if task.startswith("fail"):
            raise RuntimeError(f"gave up on {task}\nwith a traceback")
        return task

    chain = (RunnableLambda(hold) | FakeListChatModel(responses=["done"])).with_config(
        run_name="work"
    )
    outputs: list[object] = []
    config: RunnableConfig = {"callbacks": [HeartbeatCallbackHandler(hb)], "max_concurrency": 2}
    # batch runs the two on a thread pool.
    runner = threading.Thread(
        target=lambda: outputs.extend(
            chain.batch(["tidy the index", "fail the report"], config, return_exceptions=True)
        )
    )
    runner.start()
    try:
        assert wait_until(lambda: len(started) == 2)
        assert hb.active_tasks == 2
        assert platform.wait_for(
            lambda: any(b["active_tasks"] == 2 for b in sent_beats(platform, agent.id))
        )
        tasks = {b["current_task"] for b in sent_beats(platform, agent.id) if b["active_tasks"]}
        assert tasks <= {"work: tidy the index", "work: fail the report"} and tasks
    finally:
        release.set()
        runner.join(10)
    assert not runner.is_alive()
    assert isinstance(outputs[0], AIMessage) and isinstance(outputs[1], RuntimeError)
    assert (hb.active_tasks, hb.current_task) == (0, "")
    beat = first_passing_beat(platform, agent.id)
    assert beat["error_rate"] == 0.5
    assert beat["sample_error"] == "RuntimeError: gave up on fail the report with a traceback"
    assert beat["active_tasks"] == 0


def test_current_task_is_the_runs_name_and_the_start_of_its_input(
    make_hb: HeartbeatFactory,
) -> None:
    hb = make_hb()  # not started: what the handler sets, read directly
    hb.current_task = "waiting for work"
    seen: list[str] = []
    chain = RunnableLambda(lambda text: seen.append(hb.current_task) or text, name="summarise")
    handler = HeartbeatCallbackHandler(hb)
    chain.invoke("Summarise\n\nthe quarterly   report " + "x" * 500, {"callbacks": [handler]})
    chain.invoke("short", {"callbacks": [handler], "run_name": "named run"})
    assert seen == [
        "summarise: Summarise the quarterly report " + "x" * 29 + "…",
        "named run: short",
    ]
    assert hb.current_task == "waiting for work"  # back to what it was
    assert hb.error_rate == 0.0


def test_a_model_called_on_its_own_is_a_run_and_its_newest_message_the_summary(
    make_hb: HeartbeatFactory,
) -> None:
    hb = make_hb()
    seen: list[str] = []

    class Watching(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(hb.current_task)
            return super()._generate(*args, **kwargs)

    model = Watching(messages=iter([AIMessage(content="hi")]))
    model.invoke(
        [("system", "Be brief."), ("user", "Hello there")],
        {
            "callbacks": [
                HeartbeatCallbackHandler(hb),
                HeartbeatCallbackHandler(hb),  # two: still one run
            ]
        },
    )
    assert seen == ["Watching: Hello there"]
    assert hb.error_rate == 0.0 and hb.active_tasks == 0


def test_a_handler_attached_inside_a_counted_run_does_not_count_it_again(
    make_hb: HeartbeatFactory,
) -> None:
    hb = make_hb()
    inner = FakeListChatModel(responses=["ok"]).with_config(
        callbacks=[HeartbeatCallbackHandler(hb)]
    )
    outer = RunnableLambda(lambda text: text) | inner
    seen: list[int] = []
    watch = RunnableLambda(lambda message: seen.append(hb.active_tasks) or message)
    (outer | watch).invoke("go", {"callbacks": [HeartbeatCallbackHandler(hb)]})
    assert seen == [1]
    # Alone, the inner model is a run of its own.
    inner.invoke("go")
    assert hb.active_tasks == 0


def message(text: str, **fields: Any) -> InboundMessage:
    base: dict[str, Any] = {
        "id": "row-1",
        "seq": None,
        "source": "canvas",
        "source_id": None,
        "peer_name": None,
        "peer_role": None,
        "text": text,
        "parts": (),
        "attachments": (),
        "received_at": None,
    }
    base.update(fields)
    return InboundMessage(**base)


@pytest.mark.parametrize(
    ("output", "reply"),
    [
        ("plain text", "plain text"),
        (AIMessage(content="a message"), "a message"),
        (
            AIMessage(content=[{"type": "text", "text": "blo"}, {"type": "text", "text": "cks"}]),
            "blocks",
        ),
        ({"output": "an agent's output"}, "an agent's output"),
        ({"messages": [AIMessage(content="old"), AIMessage(content="newest")]}, "newest"),
        ("", None),
        (None, None),
    ],
)
def test_the_reply_is_the_text_of_the_output(
    output: object, reply: str | None, tmp_path: Path
) -> None:
    handler = message_handler(RunnableLambda(lambda _: output), results_file=tmp_path / "r.jsonl")
    assert handler(message("hi")) == reply


def test_an_output_without_text_is_an_error(tmp_path: Path) -> None:
    handler = message_handler(RunnableLambda(lambda _: 42), results_file=tmp_path / "r.jsonl")
    with pytest.raises(TypeError, match="returned int, not text"):
        handler(message("hi"))


def test_the_input_key_and_the_config(tmp_path: Path) -> None:
    got: list[tuple[object, dict[str, Any]]] = []

    def remember(value: object, config: RunnableConfig) -> str:
        got.append((value, dict(config.get("metadata") or {})))
        assert current_message() is not None
        return "ok"

    handler = message_handler(
        RunnableLambda(remember),
        results_file=tmp_path / "r.jsonl",
        input_key="input",
        config={"metadata": {"team": "blue"}, "tags": ["inbound"]},
    )
    sender = message("hello", source="peer", source_id="ws-2", peer_name="beta", message_id="m-1")
    assert handler(sender) == "ok"
    value, metadata = got[0]
    assert value == {"input": "hello"}
    assert metadata["team"] == "blue"
    assert {k: metadata[k] for k in ("source", "source_id", "peer_name", "message_id")} == {
        "source": "peer",
        "source_id": "ws-2",
        "peer_name": "beta",
        "message_id": "m-1",
    }
    assert metadata["activity_id"] == "row-1" and metadata["redelivered"] is False
    assert current_message() is None


def test_an_inbound_message_is_answered_with_the_results_in_front_once(
    platform: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = platform.add_workspace(name="beta", delivery_mode="poll")
    prompts: list[str] = []
    metadata: list[dict[str, Any]] = []
    release = threading.Event()

    def remember(text: str, config: RunnableConfig) -> str:
        prompts.append(text)
        metadata.append(dict(config.get("metadata") or {}))
        if text == "explode":
            raise ValueError("the model is down")
        assert release.wait(10)
        return text

    model = FakeListChatModel(responses=["Memmo Alfama it is.", "You are welcome."])
    handler = message_handler((RunnableLambda(remember) | model).with_config(run_name="concierge"))
    hb = make_hb(workspace_id=agent.id, on_message=handler)
    handler.heartbeat = hb  # its runs counted on the beats (its results file is the Heartbeat's)
    platform.add_delegation(
        agent.id, status="completed", summary="Find hotels", response_preview="Memmo Alfama"
    )
    hb.start_thread()
    assert wait_until(lambda: hb.status().results_delivered == 1)
    results = [json.loads(line) for line in Path(hb.results_path).read_text().splitlines()]

    platform.queue_poll_message(agent.id, "Which hotel?")
    # The handler's run is one task on the beats (the Heartbeat counts the handler; the
    # callback handler does not add its run again), with the message as the current task.
    assert platform.wait_for(
        lambda: any(
            b["active_tasks"] == 1 and b["current_task"] == "concierge: Which hotel?"
            for b in platform.heartbeats(agent.id)
        )
    )
    release.set()
    # The answer to the canvas: a notification (after the one about the delegation's result).
    assert wait_until(lambda: platform.notifications(agent.id)[-1:] == ["Memmo Alfama it is."])
    platform.queue_poll_message(agent.id, "Thanks!", sender_id=peer.id)
    assert wait_until(lambda: hb.status().replies_sent == 2)
    platform.queue_poll_message(agent.id, "explode")
    assert wait_until(lambda: hb.status().handler_errors == 1)

    # The result was in front of the first prompt, and of no other.
    assert prompts[0] == format_delegation_results(results) + "\n\nWhich hotel?"
    assert "Memmo Alfama" in prompts[0] and prompts[1:] == ["Thanks!", "explode"]
    assert not Path(hb.results_path).read_text()
    # The peer's answer went back to the peer.
    rows = [r for r in platform.activity_rows(peer.id) if isinstance(r, dict)]
    assert len(rows) == 1 and rows[0]["source_id"] == agent.id
    parts = rows[0]["request_body"]["params"]["message"]["parts"]
    assert parts == [{"kind": "text", "text": "You are welcome."}]
    assert (metadata[0]["source"], metadata[0]["source_id"]) == ("canvas", None)
    assert (metadata[1]["source"], metadata[1]["source_id"]) == ("peer", peer.id)
    # Three runs, one failed; never more tasks than handlers.
    assert hb.sample_error == "ValueError: the model is down"
    assert platform.wait_for(
        lambda: any(
            b["error_rate"] and b["sample_error"] == "ValueError: the model is down"
            for b in platform.heartbeats(agent.id)
        )
    )
    assert all(b["active_tasks"] <= 1 for b in platform.heartbeats(agent.id))
    assert wait_until(lambda: hb.active_tasks == 0 and hb.current_task == "")


# -- LangGraph ---------------------------------------------------------------------------------


def tool_agent(handle_tool_errors: bool, answers: list[AIMessage]) -> Runnable[Any, Any]:
    """A LangGraph agent: a fake chat model that calls the ``lookup`` tool, a tool node, the
    loop between them (the shape of LangGraph's prebuilt agent)."""
    graph_module = pytest.importorskip("langgraph.graph")
    prebuilt = pytest.importorskip("langgraph.prebuilt")
    model = GenericFakeChatModel(messages=iter(answers))

    def call_model(state: dict[str, list[BaseMessage]]) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = graph_module.StateGraph(graph_module.MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", prebuilt.ToolNode([lookup], handle_tool_errors=handle_tool_errors))
    graph.add_edge(graph_module.START, "model")
    graph.add_conditional_edges("model", prebuilt.tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def calls(city: str) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": "lookup", "args": {"city": city}, "id": city}]
    )


def test_a_langgraph_agent_is_one_run_and_a_tool_error_it_recovers_from_is_none(
    platform: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory, beats_held: None
) -> None:
    recovering = tool_agent(True, [calls("Atlantis"), calls("Lisbon"), AIMessage(content="Sunny.")])
    failing = tool_agent(False, [calls("Atlantis")])
    hb = make_hb(workspace_id=agent.id)
    hb.start_thread()
    config: RunnableConfig = {"callbacks": [HeartbeatCallbackHandler(hb)]}
    out = recovering.invoke({"messages": "Weather in Atlantis, else Lisbon?"}, config)
    assert out["messages"][-1].content == "Sunny."
    with pytest.raises(ValueError, match="Atlantis"):
        failing.invoke({"messages": "Weather in Atlantis?"}, config)
    beat = first_passing_beat(platform, agent.id)
    assert beat["error_rate"] == 0.5  # two runs, whatever their nodes, tools and model calls
    assert beat["sample_error"] == "ValueError: no such city: Atlantis"
    tasks = {b["current_task"] for b in sent_beats(platform, agent.id)} - {""}
    assert tasks <= {
        "LangGraph: Weather in Atlantis, else Lisbon?",
        "LangGraph: Weather in Atlantis?",
    }


def test_a_langgraph_agent_answers_messages(
    platform: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    graph = tool_agent(True, [calls("Lisbon"), AIMessage(content="Lisbon is sunny.")])
    handler = message_handler(graph, input_key="messages")
    hb = make_hb(workspace_id=agent.id, on_message=handler)
    handler.heartbeat = hb
    platform.queue_poll_message(agent.id, "Weather in Lisbon?")
    hb.start_thread()
    assert wait_until(lambda: platform.notifications(agent.id) == ["Lisbon is sunny."])
    assert wait_until(lambda: hb.status().messages_handled == 1)
    assert hb.sample_error == ""
