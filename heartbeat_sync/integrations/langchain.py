"""LangChain and LangGraph on a Heartbeat: runs counted, messages answered.

Needs ``langchain-core`` (``pip install 'heartbeat-sync[langchain]'``); LangGraph runs through the
same callbacks, so a compiled graph is a runnable like any other::

    from heartbeat_sync import Heartbeat
    from heartbeat_sync.integrations.langchain import HeartbeatCallbackHandler, message_handler

    handler = message_handler(agent)  # a message in, the agent's answer out
    hb = Heartbeat(platform_url, workspace_id, on_message=handler)
    handler.heartbeat = hb  # the message runs counted on the beats too
    hb.start_thread()
    agent.invoke(inputs, config={"callbacks": [HeartbeatCallbackHandler(hb)]})  # and these

:class:`HeartbeatCallbackHandler` counts each top-level run once, whatever it nests;
:func:`message_handler` makes any runnable an ``on_message`` handler.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Union
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
    from langchain_core.documents import Document
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult
    from langchain_core.runnables import Runnable, RunnableConfig
except ImportError as exc:  # the framework is an extra
    raise ImportError(
        "heartbeat_sync.integrations.langchain needs langchain-core: "
        "pip install 'heartbeat-sync[langchain]'"
    ) from exc

from .. import Heartbeat, InboundMessage
from ._runs import (
    current_message,
    error_text,
    handling,
    ledger,
    summary,
    text_of,
    with_results,
)

__all__ = [
    "HeartbeatCallbackHandler",
    "RunnableMessageHandler",
    "current_message",
    "message_handler",
]


def _run_name(kind: str, serialized: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str:
    """The run's name as LangChain's tracer shows it: ``run_name`` / the runnable's name, else
    the serialized name, else the last part of its class path, else the kind of run."""
    name = kwargs.get("name")
    if isinstance(name, str) and name:
        return name
    if serialized:
        if isinstance(serialized.get("name"), str) and serialized["name"]:
            return str(serialized["name"])
        path = serialized.get("id")
        if isinstance(path, list) and path and isinstance(path[-1], str):
            return path[-1]
    return kind


class HeartbeatCallbackHandler(BaseCallbackHandler):
    """A LangChain callback handler that keeps a Heartbeat true to the runs it sees.

    Give it to a run (``config={"callbacks": [handler]}``, or ``runnable.with_config(...)``);
    it then sees the run and everything nested in it. It counts each *top-level* run once: a run
    whose parent it has not seen (a chain's, a graph's, a model's or a tool's called on its own).
    Nested chains, graph nodes, model calls, tools and retrievers belong to their top-level run
    and are not counted, whether they succeed or fail.

    * When a top-level run begins: ``heartbeat.active_tasks`` goes up by one, and
      ``heartbeat.current_task`` shows ``"<run name>: <input>"``: the run's name (its
      ``run_name``, else the runnable's) cut to 40 characters, and the text of its input (a
      string; a message's content; the newest message of a list; a dict's ``input``,
      ``question``, ``query``, ``task``, ``messages``, ``text``, ``prompt`` or ``content``, else
      its first value with a text) with white space squeezed and cut to 60 characters, ``…``
      marking a cut. Never the whole prompt.
    * When it ends: ``active_tasks`` goes down by one, and ``heartbeat.record_success()``.
    * When it fails: ``active_tasks`` goes down by one, and
      ``heartbeat.record_error("<ExceptionType>: <its message>")``, white space squeezed, cut
      to 200 characters. A nested failure the run recovers from (a tool error a graph's tool node
      turns into a message, a fallback) is not an error of the run.
    * ``current_task`` then shows the newest top-level run still in flight or, with none, what
      it showed before the first began (unless the agent changed it meanwhile). It is set only
      when a top-level run begins or ends, never on nested events (a changed ``current_task``
      is beaten at once).

    Runs may fire from any thread (a thread pool, ``batch``): the handler is thread-safe, and
    every handler and adapter made for one Heartbeat shares one record of the runs in flight, so
    a run two of them see is counted once. A run started by a :func:`message_handler` handler
    is not added to ``active_tasks``: the Heartbeat already counts its running handlers as
    tasks. A callback that fails is logged by LangChain and never fails the run.

    Args:
        heartbeat: The Heartbeat whose beats report the runs.
    """

    #: Called in order on the event loop's thread for async runs too (never from an executor).
    run_inline = True

    def __init__(self, heartbeat: Heartbeat) -> None:
        super().__init__()
        self.heartbeat = heartbeat
        self._ledger = ledger(heartbeat)

    def __repr__(self) -> str:
        return f"HeartbeatCallbackHandler({self.heartbeat.workspace_id!r})"

    def _begin(
        self,
        kind: str,
        serialized: Mapping[str, Any] | None,
        data: object,
        run_id: UUID,
        parent_run_id: UUID | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        self._ledger.begin(
            run_id,
            lambda: summary(_run_name(kind, serialized, kwargs), text_of(data)),
            parent=parent_run_id,
        )

    # -- starts -------------------------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A chain (or graph) begins: a new top-level run unless its parent is in flight."""
        self._begin("chain", serialized, inputs, run_id, parent_run_id, kwargs)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A chat model call begins; its input's text is its newest message's."""
        self._begin("chat_model", serialized, messages[:1], run_id, parent_run_id, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A text model call begins; its input's text is its first prompt."""
        self._begin("llm", serialized, prompts[:1], run_id, parent_run_id, kwargs)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A tool begins (a top-level run only when called on its own)."""
        self._begin("tool", serialized, input_str, run_id, parent_run_id, kwargs)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """A retriever begins (a top-level run only when called on its own)."""
        self._begin("retriever", serialized, query, run_id, parent_run_id, kwargs)

    # -- ends -----------------------------------------------------------------------------------

    def on_chain_end(
        self,
        outputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A chain ends: a success when it is a top-level run."""
        self._ledger.end(run_id)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """A model call ends: a success when it is a top-level run."""
        self._ledger.end(run_id)

    def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A tool ends: a success when it is a top-level run."""
        self._ledger.end(run_id)

    def on_retriever_end(
        self,
        documents: Sequence[Document],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A retriever ends: a success when it is a top-level run."""
        self._ledger.end(run_id)

    # -- failures -------------------------------------------------------------------------------

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A chain fails: an error when it is a top-level run."""
        self._ledger.end(run_id, error_text(error))

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """A model call fails: an error when it is a top-level run."""
        self._ledger.end(run_id, error_text(error))

    def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A tool fails: an error when it is a top-level run."""
        self._ledger.end(run_id, error_text(error))

    def on_retriever_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A retriever fails: an error when it is a top-level run."""
        self._ledger.end(run_id, error_text(error))


# -- message_handler ----------------------------------------------------------------------------

ResultsFile = Union[str, "os.PathLike[str]", None]


def _output_text(output: object) -> str | None:
    """The reply in a runnable's output: a string; a message's content (its text blocks
    joined); a dict's ``"output"``, else the newest of its ``"messages"`` (a LangGraph agent's
    state). None for None."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return text_of(output) or ""
    if isinstance(output, Mapping):
        if "output" in output:
            return _output_text(output["output"])
        messages = output.get("messages")
        if isinstance(messages, Sequence) and not isinstance(messages, str) and messages:
            return _output_text(messages[-1])
    raise TypeError(
        f"the runnable returned {type(output).__name__}, not text: a str, a message, or a dict "
        "with 'output' or 'messages' (add an output parser, or pick the text in a RunnableLambda)"
    )


class RunnableMessageHandler:
    """An ``on_message`` handler that answers each message with a runnable (make it with
    :func:`message_handler`).

    For each message it takes the delegation results that came back (each once: they are
    removed from the results file) and puts them, formatted by
    :func:`heartbeat_sync.format_delegation_results`, in front of the message's text, a blank
    line between; invokes the runnable with that text (or ``{input_key: text}``) and a config
    whose ``metadata`` carries the sender; and returns the text of its output as the reply
    (None, or an empty text: no reply). An exception from the runnable is raised again: the
    Heartbeat logs it and counts it in ``status().handler_errors``; the results taken for it
    are not given again.

    The metadata: ``source`` (``"canvas"`` or ``"peer"``), ``source_id`` (the peer's workspace
    id, None for the canvas), ``peer_name``, ``peer_role``, ``message_id`` (the A2A
    ``messageId``, where sent), ``activity_id`` (the message's activity row id,
    :attr:`heartbeat_sync.InboundMessage.id`: unique) and ``redelivered``, as the
    :class:`~heartbeat_sync.InboundMessage` has them. A tool may also call
    :func:`current_message` for the whole message.

    Attributes:
        runnable: What answers.
        heartbeat: None, or the Heartbeat whose beats count each message's run (a
            :class:`HeartbeatCallbackHandler` is added to the run's callbacks): its success or
            error and its ``current_task`` (not ``active_tasks``: the Heartbeat counts the
            running handlers itself). Set it once the Heartbeat exists, before it starts; the
            Heartbeat needs the handler when it is made, so it cannot be passed here first.
        results_file: Where the delegation results are taken from; None: the heartbeat's
            ``results_path`` when there is one, else the default a Heartbeat without
            ``results_file`` uses (``$DELEGATION_RESULTS_FILE``, else
            ``/tmp/delegation_results.jsonl``).
    """

    def __init__(
        self,
        runnable: Runnable[Any, Any],
        *,
        results_file: ResultsFile = None,
        input_key: str | None = None,
        config: RunnableConfig | None = None,
    ) -> None:
        self.runnable = runnable
        self.results_file = results_file
        self.heartbeat: Heartbeat | None = None
        self._input_key = input_key
        self._config: RunnableConfig = config if config is not None else {}
        self._lock = threading.Lock()
        self._counter: HeartbeatCallbackHandler | None = None

    def __repr__(self) -> str:
        return f"RunnableMessageHandler({self.runnable!r})"

    def _counting(self) -> HeartbeatCallbackHandler | None:
        hb = self.heartbeat
        if hb is None:
            return None
        with self._lock:
            if self._counter is None or self._counter.heartbeat is not hb:
                self._counter = HeartbeatCallbackHandler(hb)
            return self._counter

    def _results_path(self) -> ResultsFile:
        if self.results_file is not None:
            return self.results_file
        return self.heartbeat.results_path if self.heartbeat is not None else None

    def config_for(self, message: InboundMessage) -> RunnableConfig:
        """The config a message's run is invoked with: the one given, its ``metadata`` updated
        with the sender, and its callbacks with the heartbeat's handler."""
        config: RunnableConfig = {**self._config}
        config["metadata"] = {
            **(self._config.get("metadata") or {}),
            "source": message.source,
            "source_id": message.source_id,
            "peer_name": message.peer_name,
            "peer_role": message.peer_role,
            "message_id": message.message_id,
            "activity_id": message.id,
            "redelivered": message.redelivered,
        }
        counter = self._counting()
        if counter is not None:
            callbacks = self._config.get("callbacks")
            if isinstance(callbacks, BaseCallbackManager):
                manager = callbacks.copy()
                manager.add_handler(counter, inherit=True)
                config["callbacks"] = manager
            else:
                config["callbacks"] = [*(callbacks or []), counter]
        return config

    def __call__(self, message: InboundMessage) -> str | None:
        """Answer ``message``: the reply's text, or None for no reply."""
        text = with_results(message.text, self._results_path())
        value: Any = text if self._input_key is None else {self._input_key: text}
        with handling(message):
            output = self.runnable.invoke(value, self.config_for(message))
        return _output_text(output) or None


def message_handler(
    runnable: Runnable[Any, Any],
    *,
    results_file: ResultsFile = None,
    input_key: str | None = None,
    config: RunnableConfig | None = None,
) -> RunnableMessageHandler:
    """An ``on_message`` handler that answers each message with ``runnable``.

    ``Heartbeat(..., on_message=message_handler(runnable))``: each message's text, with the
    delegation results that came back in front of it (each once), is given to
    ``runnable.invoke``, the sender in the config's ``metadata``, and the text of the output is
    the reply. See :class:`RunnableMessageHandler` for the details, and set its ``heartbeat``
    to count the runs on the beats.

    Args:
        runnable: Any runnable: a chain, a chat model, a compiled LangGraph graph. It may run
            on several threads at once with ``max_concurrent`` above 1.
        results_file: Where the delegation results are taken from (the Heartbeat's
            ``results_file``); None: the Heartbeat's set as ``heartbeat``, else the default.
        input_key: None: the runnable is given the text itself. A key: it is given
            ``{input_key: text}`` (``"input"`` for a prompt template's variable;
            ``"messages"`` for a LangGraph agent, whose state takes a text as a user message).
        config: A config every run starts from (tags, callbacks, ``recursion_limit``, ...);
            its ``metadata`` is kept, the sender's keys added.

    The output's text is: a string as it is; a message's content (its text blocks joined); a
    dict's ``"output"``, else its newest ``"messages"`` entry. Anything else raises a
    ``TypeError`` (the message is counted as failed, no reply is sent).
    """
    return RunnableMessageHandler(
        runnable, results_file=results_file, input_key=input_key, config=config
    )
