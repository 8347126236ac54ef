"""What the adapters share, and no framework needs: an agent's runs in flight on a Heartbeat.

A *run* is one top-level invocation of an agent (a chain's ``invoke``, a graph's, an agent's
``run()``): the unit the adapters count. :class:`Ledger` is the one record of the runs in flight
on one Heartbeat, shared by every adapter object made for it (two callback handlers attached
to the same run, or a handler and a message handler, count it once). It keeps the Heartbeat's
``active_tasks``, ``current_task`` and error counts true:

* a run that begins adds one to ``active_tasks`` (not a run that a message handler made here
  started: the Heartbeat already counts the running handlers as tasks), and shows its summary
  as ``current_task``;
* a run that ends takes its task back, and records a success, or an error with
  :func:`error_text`; ``current_task`` then shows the newest run still in flight, or, with none,
  what it showed before the first one began (unless something else changed it meanwhile).

Also here: the summary a run shows (:func:`summary`, :func:`text_of`), the delegation results
put in front of a message (:func:`with_results`), and the message whose handler runs in the
current context (:func:`handling`, :func:`current_message`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import threading
import weakref
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Union

from .. import Heartbeat, InboundMessage, format_delegation_results, read_delegation_results

__all__ = [
    "ERROR_CHARS",
    "NAME_CHARS",
    "TEXT_CHARS",
    "Ledger",
    "current_message",
    "error_text",
    "handling",
    "ledger",
    "summary",
    "text_of",
    "with_results",
]

#: The run's name in ``current_task`` is cut to this many characters.
NAME_CHARS = 40
#: The run's input in ``current_task`` is cut to this many characters (then ``…``).
TEXT_CHARS = 60
#: A sample error is cut to this many characters.
ERROR_CHARS = 200

ResultsPath = Union[str, "os.PathLike[str]", None]

_SPACE = re.compile(r"\s+")
#: The markers around a block of delegation results (``format_delegation_results``; no result
#: can forge them).
_RESULTS_OPEN = "[A2A_RESULT_FROM_PEER]"
_RESULTS_CLOSE = "[/A2A_RESULT_FROM_PEER]"
#: Keys whose value is the text of an input, in the order they are tried.
_TEXT_KEYS = ("input", "question", "query", "task", "messages", "text", "prompt", "content")


def _squeeze(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def summary(name: str, text: str | None) -> str:
    """What a run in flight shows as ``current_task``: ``"<name>: <text>"``.

    A leading block of delegation results (what :func:`with_results` puts in front of a
    message) is left out: the text is what follows it. White space runs become one space;
    ``name`` is cut to :data:`NAME_CHARS` and ``text`` to :data:`TEXT_CHARS` characters (``…``
    marks a cut), so a summary is at most 104 characters and never the whole prompt. Without a
    text, the name alone.
    """
    text = text or ""
    if text.startswith(_RESULTS_OPEN) and _RESULTS_CLOSE in text:
        text = text.split(_RESULTS_CLOSE, 1)[1]
    head = _cut(_squeeze(name), NAME_CHARS) or "run"
    body = _cut(_squeeze(text), TEXT_CHARS)
    return f"{head}: {body}" if body else head


def text_of(value: object, depth: int = 0) -> str | None:
    """The text of an input or an output, whatever its shape, or None.

    A string is itself; a message (anything with a ``content``) its content's text (a list of
    content blocks: their ``text`` parts); a chat prompt's value its newest message's; a
    mapping the first of its keys ``input``, ``question``, ``query``, ``task``, ``messages``,
    ``text``, ``prompt``, ``content`` that has a text, else its first value that has one; a
    sequence its last item that has one (the newest message of a list), a ``(role, text)``
    pair its text.
    """
    if depth > 4 or value is None:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        content = getattr(value, "content", None)
        if content is not None:
            return _content_text(content)
        messages = getattr(value, "messages", None)  # a chat prompt's value
        if isinstance(messages, Sequence) and not isinstance(messages, str):
            return text_of(messages, depth + 1)
    if isinstance(value, Mapping):
        for key in _TEXT_KEYS:
            found = text_of(value.get(key), depth + 1)
            if found:
                return found
        for item in value.values():
            found = text_of(item, depth + 1)
            if found:
                return found
        return None
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], str):
            return value[1]  # ("user", "text")
        for item in reversed(value):
            found = text_of(item, depth + 1)
            if found:
                return found
    return None


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return None


def error_text(error: BaseException, detail: str | None = None) -> str:
    """``"<type>: <message>"`` for ``record_error``: the exception's class name and its message
    with white space runs (new lines too) squeezed to one space (the class name alone when the
    message is empty), then `` (<detail>)`` when given; the whole cut to :data:`ERROR_CHARS`
    characters (``…`` marks a cut)."""
    message = _squeeze(str(error))
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    if detail:
        text = f"{text} ({_squeeze(detail)})"
    return _cut(text, ERROR_CHARS)


# -- the message a handler made here runs for ----------------------------------------------------

_handling: contextvars.ContextVar[InboundMessage | None] = contextvars.ContextVar(
    "heartbeat_sync_handling", default=None
)


@contextlib.contextmanager
def handling(message: InboundMessage) -> Iterator[None]:
    """Mark the current context as running ``message``'s handler (the runs started in it are
    not added to ``active_tasks``: the Heartbeat counts its running handlers itself)."""
    token = _handling.set(message)
    try:
        yield
    finally:
        _handling.reset(token)


def current_message() -> InboundMessage | None:
    """The message whose handler (made by an adapter's ``message_handler``) runs in the current
    context, or None. The frameworks carry the context into their worker threads, so a tool can
    ask who sent the message it works on."""
    return _handling.get()


def with_results(text: str, results_file: ResultsPath) -> str:
    """``text`` with the delegation results that came back in front of it, each once.

    Takes every result in ``results_file`` (None: the default a Heartbeat without
    ``results_file`` uses, ``$DELEGATION_RESULTS_FILE`` else ``/tmp/delegation_results.jsonl``)
    with :func:`heartbeat_sync.read_delegation_results`, which removes them: a result is put in
    front of exactly one message. They are formatted by
    :func:`heartbeat_sync.format_delegation_results` and separated from ``text`` by a blank
    line; with none, ``text`` as it is.
    """
    block = format_delegation_results(read_delegation_results(results_file))
    return f"{block}\n\n{text}" if block else text


# -- the runs in flight ----------------------------------------------------------------------


@dataclass
class _Root:
    summary: str
    counts_task: bool


class Ledger:
    """The runs in flight on one Heartbeat (get it with :func:`ledger`). Thread-safe.

    Every run an adapter sees is registered by a key (a run id); a run whose parent is in flight
    belongs to that parent's top-level run, any other run is top-level. Only top-level runs are
    counted.
    """

    def __init__(self, heartbeat: Heartbeat) -> None:
        self._heartbeat = weakref.ref(heartbeat)
        self._lock = threading.Lock()
        self._roots: dict[Hashable, _Root] = {}  # in the order they began
        self._owner: dict[Hashable, Hashable] = {}  # every run in flight -> its top-level run
        self._before = ""  # current_task before the first run in flight began
        self._shown: str | None = None  # what we last set current_task to

    def in_flight(self) -> int:
        """Top-level runs in flight."""
        with self._lock:
            return len(self._roots)

    def begin(
        self,
        key: Hashable,
        summarize: Callable[[], str],
        parent: Hashable | None = None,
    ) -> bool:
        """A run begins; True when it is a new top-level run (then counted).

        It belongs to ``parent``'s top-level run when ``parent`` is in flight; a key already in
        flight (the same run seen by a second adapter object) changes nothing.
        ``summarize`` is called for a top-level run only.
        """
        with self._lock:
            if key in self._owner:
                return False
            if parent is not None and parent in self._owner:
                self._owner[key] = self._owner[parent]
                return False
            hb = self._heartbeat()
            if hb is None:
                return False
            root = _Root(summarize(), counts_task=_handling.get() is None)
            if not self._roots:
                self._before = hb.current_task
            self._owner[key] = key
            self._roots[key] = root
            if root.counts_task:
                hb.active_tasks = max(0, hb.active_tasks) + 1
            self._show(hb, root.summary)
            return True

    def end(self, key: Hashable, error: str | None = None, *, record: bool = True) -> bool:
        """A run ends, with ``error`` (from :func:`error_text`) when it failed; True when it was
        a top-level run (then its outcome is recorded, unless ``record`` is False: a run given
        up half way, neither a success nor an error). A key not in flight changes nothing."""
        with self._lock:
            owner = self._owner.pop(key, None)
            if owner is None or owner != key:
                return False
            root = self._roots.pop(key)
            # Its nested runs that never ended (a framework's generator dropped) go with it.
            for run in [r for r, o in self._owner.items() if o == key]:
                del self._owner[run]
            hb = self._heartbeat()
            if hb is None:
                return True
            if root.counts_task:
                hb.active_tasks = max(0, hb.active_tasks - 1)
            if not record:
                pass
            elif error is None:
                hb.record_success()
            else:
                hb.record_error(error)
            if hb.current_task == self._shown:  # else someone else has said what it does
                latest = next(reversed(self._roots.values()), None)
                self._show(hb, latest.summary if latest is not None else self._before)
            if not self._roots:
                self._shown = None
            return True

    def _show(self, hb: Heartbeat, text: str) -> None:
        # caller holds self._lock; a changed current_task beats at once, so only set on change
        self._shown = text
        if hb.current_task != text:
            hb.current_task = text


_ledgers: weakref.WeakKeyDictionary[Heartbeat, Ledger] = weakref.WeakKeyDictionary()
_ledgers_lock = threading.Lock()


def ledger(heartbeat: Heartbeat) -> Ledger:
    """The one :class:`Ledger` of ``heartbeat`` (made the first time it is asked for)."""
    if not isinstance(heartbeat, Heartbeat):
        raise TypeError(f"expected a heartbeat_sync.Heartbeat, not {type(heartbeat).__name__}")
    with _ledgers_lock:
        found = _ledgers.get(heartbeat)
        if found is None:
            found = _ledgers[heartbeat] = Ledger(heartbeat)
        return found
