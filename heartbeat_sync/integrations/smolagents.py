"""smolagents on a Heartbeat: runs counted, messages answered.

Needs ``smolagents`` (``pip install 'heartbeat-sync[smolagents]'``)::

    from heartbeat_sync import Heartbeat
    from heartbeat_sync.integrations.smolagents import HeartbeatMonitor, message_handler

    handler = message_handler(make_agent)  # an agent for each message: its answer goes back
    hb = Heartbeat(platform_url, workspace_id, on_message=handler)
    handler.heartbeat = hb  # the message runs counted on the beats too
    hb.start_thread()
    HeartbeatMonitor(hb).attach(agent)  # and every agent.run(...) of the agent's own

:class:`HeartbeatMonitor` counts an agent's runs through its ``run()`` and its step callbacks;
:func:`message_handler` makes an agent an ``on_message`` handler.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, Union

try:
    from smolagents.agents import MultiStepAgent, RunResult
    from smolagents.memory import ActionStep
    from smolagents.utils import AgentMaxStepsError
except ImportError as exc:  # the framework is an extra
    raise ImportError(
        "heartbeat_sync.integrations.smolagents needs smolagents: "
        "pip install 'heartbeat-sync[smolagents]'"
    ) from exc

from .. import Heartbeat, InboundMessage
from ._runs import (
    Ledger,
    current_message,
    error_text,
    handling,
    ledger,
    summary,
    with_results,
)

__all__ = [
    "AgentMessageHandler",
    "HeartbeatMonitor",
    "current_message",
    "message_handler",
]

Agent = TypeVar("Agent", bound=MultiStepAgent)
ResultsFile = Union[str, "os.PathLike[str]", None]

#: The attribute an attached agent keeps the ledgers it is counted on in.
_ATTACHED = "_heartbeat_sync_ledgers"

#: The ledgers whose counted run the current context is inside (a managed agent's run, called
#: by a counted agent as a tool, is part of that run; smolagents carries the context into the
#: threads that run tools in parallel).
_inside: contextvars.ContextVar[tuple[Ledger, ...]] = contextvars.ContextVar(
    "heartbeat_sync_smolagents_inside", default=()
)


@dataclass
class _Run:
    """One counted run: what its steps said."""

    key: object = field(default_factory=object)
    step_errors: list[str] = field(default_factory=list)
    max_steps: bool = False


def _agent_name(agent: MultiStepAgent) -> str:
    name = getattr(agent, "name", None)
    return name if isinstance(name, str) and name else type(agent).__name__


class HeartbeatMonitor:
    """Keeps a Heartbeat true to the runs of the smolagents agents it is attached to.

    :meth:`attach` wraps the agent's ``run()`` (on that agent object only) and registers
    :meth:`step_callback` for its action steps. Each ``agent.run(task)`` is then one run:

    * When it begins: ``heartbeat.active_tasks`` goes up by one, and ``heartbeat.current_task``
      shows ``"<agent name>: <task>"``: the agent's ``name`` (else its class name) cut to 40
      characters, and the task with white space squeezed, cut to 60 characters, ``…`` marking a
      cut. Never the whole task.
    * When it returns a final answer: ``active_tasks`` goes down by one, and
      ``heartbeat.record_success()``. A step whose tool failed is not an error of the run when
      the agent goes on to an answer: the model saw the error and recovered.
    * When it fails: ``active_tasks`` goes down by one, and ``heartbeat.record_error(...)``:
      ``"<ExceptionType>: <its message>"`` (white space squeezed) for an exception out of ``run()``
      (``AgentGenerationError`` when the model fails, say), and for a run that reached
      ``max_steps`` without an answer (smolagents then asks the model for one and returns it)
      ``"AgentMaxStepsError: Reached max steps. (last step error: <its error>)"``, the last
      step's error as the step callback saw it; cut to 200 characters.
    * ``current_task`` then shows the newest run still in flight or, with none, what it showed
      before the first began (unless the agent changed it meanwhile). It is set only when a run
      begins or ends, never on a step.

    A managed agent's run, called by an agent this monitor counts, is part of that run (also
    when it is attached itself). A streamed run (``run(task, stream=True)``) is counted while
    its generator is iterated; one closed before its end is no success and no error. Runs may
    go on in several threads (one agent object per thread: an agent's memory is its own): the
    monitor is thread-safe, and every adapter made for one Heartbeat shares one record of the
    runs in flight. A run started by a :func:`message_handler` handler is not added to
    ``active_tasks``: the Heartbeat already counts its running handlers as tasks.

    Args:
        heartbeat: The Heartbeat whose beats report the runs.
    """

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat
        self._ledger = ledger(heartbeat)
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}  # id(agent) -> its counted run in flight

    def __repr__(self) -> str:
        return f"HeartbeatMonitor({self.heartbeat.workspace_id!r})"

    def attach(self, agent: Agent) -> Agent:
        """Count ``agent``'s runs from now on; return ``agent``. Attaching it again (to this
        monitor or another for the same Heartbeat) changes nothing."""
        if not isinstance(agent, MultiStepAgent):
            raise TypeError(f"expected a smolagents agent, not {type(agent).__name__}")
        with self._lock:
            attached: tuple[Ledger, ...] = agent.__dict__.get(_ATTACHED, ())
            if self._ledger in attached:
                return agent
            setattr(agent, _ATTACHED, (*attached, self._ledger))
            agent.step_callbacks.register(ActionStep, self.step_callback)
            original = agent.run  # the bound method, or another monitor's wrapper
            setattr(agent, "run", self._wrap(agent, original))  # noqa: B010 (an instance's)
        return agent

    def step_callback(self, step: ActionStep, agent: MultiStepAgent | None = None) -> None:
        """Told by smolagents after each action step: keeps the step's error, and whether the
        run reached ``max_steps``, for the run's outcome."""
        if agent is None or step.error is None:
            return
        with self._lock:
            run = self._runs.get(id(agent))
            if run is None:
                return
            if isinstance(step.error, AgentMaxStepsError):
                run.max_steps = True
            else:
                run.step_errors.append(error_text(step.error))

    def _wrap(self, agent: MultiStepAgent, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def run(task: str, *args: Any, **kwargs: Any) -> Any:
            if self._ledger in _inside.get():
                return original(task, *args, **kwargs)  # part of a counted run
            stream = kwargs.get("stream", args[0] if args else False)
            if stream:
                return self._streamed(agent, task, original(task, *args, **kwargs))
            counted = self._begin(agent, task)
            token = _inside.set((*_inside.get(), self._ledger))
            try:
                result = original(task, *args, **kwargs)
            except BaseException as exc:
                self._end(agent, counted, error_text(exc))
                raise
            finally:
                _inside.reset(token)
            self._end(agent, counted, self._failure(agent, counted))
            return result

        return run

    def _streamed(
        self, agent: MultiStepAgent, task: str, steps: Generator[Any, None, None]
    ) -> Generator[Any, None, None]:
        counted = self._begin(agent, task)
        while True:
            try:
                item = next(steps)
            except StopIteration:
                break
            except BaseException as exc:
                self._end(agent, counted, error_text(exc))
                raise
            try:
                yield item
            except GeneratorExit:  # closed before its end: given up, neither outcome
                self._end(agent, counted, None, record=False)
                steps.close()
                raise
        self._end(agent, counted, self._failure(agent, counted))

    def _begin(self, agent: MultiStepAgent, task: str) -> _Run:
        run = _Run()
        with self._lock:
            self._runs[id(agent)] = run
        self._ledger.begin(run.key, lambda: summary(_agent_name(agent), task))
        return run

    def _failure(self, agent: MultiStepAgent, run: _Run) -> str | None:
        """The error of a run that returned: reaching ``max_steps`` (seen by the step callback,
        or as smolagents itself tells it, in the last step of the memory), else None."""
        steps = getattr(getattr(agent, "memory", None), "steps", None) or [None]
        if not run.max_steps and not isinstance(
            getattr(steps[-1], "error", None), AgentMaxStepsError
        ):
            return None
        last = f"last step error: {run.step_errors[-1]}" if run.step_errors else None
        return error_text(AgentMaxStepsError("Reached max steps.", agent.logger), last)

    def _end(
        self, agent: MultiStepAgent, run: _Run, error: str | None, record: bool = True
    ) -> None:
        with self._lock:
            if self._runs.get(id(agent)) is run:
                del self._runs[id(agent)]
        self._ledger.end(run.key, error, record=record)


# -- message_handler ----------------------------------------------------------------------------

AgentSource = Union[MultiStepAgent, Callable[[], MultiStepAgent]]


class AgentMessageHandler:
    """An ``on_message`` handler that answers each message with a smolagents agent (make it
    with :func:`message_handler`).

    For each message it takes the delegation results that came back (each once: they are
    removed from the results file) and puts them, formatted by
    :func:`heartbeat_sync.format_delegation_results`, in front of the message's text, a blank
    line between; runs the agent with that text as its task (``agent.run(task, reset=...)``)
    and returns its final answer as the reply: a string as it is, anything else ``str()``-ed,
    None or an empty text for no reply. An exception from the run is raised again: the
    Heartbeat logs it and counts it in ``status().handler_errors``; the results taken for it
    are not given again. The sender is not put in the task; a tool may call
    :func:`current_message` for the whole message.

    Attributes:
        heartbeat: None, or the Heartbeat whose beats count each message's run (the agent is
            attached to a :class:`HeartbeatMonitor` of it): its success or error and its
            ``current_task`` (not ``active_tasks``: the Heartbeat counts the running handlers
            itself). Set it once the Heartbeat exists, before it starts; the Heartbeat needs
            the handler when it is made, so it cannot be passed here first.
        results_file: Where the delegation results are taken from; None: the heartbeat's
            ``results_path`` when there is one, else the default a Heartbeat without
            ``results_file`` uses (``$DELEGATION_RESULTS_FILE``, else
            ``/tmp/delegation_results.jsonl``).
    """

    def __init__(
        self,
        agent: AgentSource,
        *,
        results_file: ResultsFile = None,
        reset: bool = True,
    ) -> None:
        if isinstance(agent, MultiStepAgent):
            self._agent: MultiStepAgent | None = agent
            self._factory: Callable[[], MultiStepAgent] | None = None
        elif callable(agent):
            self._agent, self._factory = None, agent
        else:
            raise TypeError(
                f"expected a smolagents agent or a callable, not {type(agent).__name__}"
            )
        self.results_file = results_file
        self.heartbeat: Heartbeat | None = None
        self._reset = reset
        self._run_lock = threading.Lock()  # one message at a time on a shared agent
        self._monitor_lock = threading.Lock()
        self._monitor: HeartbeatMonitor | None = None

    def __repr__(self) -> str:
        return f"AgentMessageHandler({self._agent or self._factory!r})"

    def _monitored(self, agent: MultiStepAgent) -> MultiStepAgent:
        hb = self.heartbeat
        if hb is None:
            return agent
        with self._monitor_lock:
            if self._monitor is None or self._monitor.heartbeat is not hb:
                self._monitor = HeartbeatMonitor(hb)
            monitor = self._monitor
        return monitor.attach(agent)

    def _results_path(self) -> ResultsFile:
        if self.results_file is not None:
            return self.results_file
        return self.heartbeat.results_path if self.heartbeat is not None else None

    def __call__(self, message: InboundMessage) -> str | None:
        """Answer ``message``: the reply's text, or None for no reply."""
        if self._agent is not None:
            with self._run_lock:
                return self._answer(self._agent, message)
        assert self._factory is not None
        return self._answer(self._factory(), message)

    def _answer(self, agent: MultiStepAgent, message: InboundMessage) -> str | None:
        agent = self._monitored(agent)
        task = with_results(message.text, self._results_path())
        with handling(message):
            output = agent.run(task, reset=self._reset)
        if isinstance(output, RunResult):
            output = output.output
        if output is None:
            return None
        return str(output) or None


def message_handler(
    agent: AgentSource,
    *,
    results_file: ResultsFile = None,
    reset: bool = True,
) -> AgentMessageHandler:
    """An ``on_message`` handler that answers each message with a smolagents agent.

    ``Heartbeat(..., on_message=message_handler(agent))``: each message's text, with the
    delegation results that came back in front of it (each once), is the task of an
    ``agent.run``, and its final answer is the reply. See :class:`AgentMessageHandler` for the
    details, and set its ``heartbeat`` to count the runs on the beats.

    Args:
        agent: The agent (its runs are taken one message at a time: an agent's memory is its
            own), or a callable that makes an agent for each message (then messages run in
            parallel up to the Heartbeat's ``max_concurrent``).
        results_file: Where the delegation results are taken from (the Heartbeat's
            ``results_file``); None: the Heartbeat's set as ``heartbeat``, else the default.
        reset: Passed to ``agent.run``: True, each message a new task; False, the agent keeps
            its memory from one message to the next (a conversation).
    """
    return AgentMessageHandler(agent, results_file=results_file, reset=reset)
