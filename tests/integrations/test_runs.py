"""What the adapters share, without a framework: the runs in flight on a Heartbeat, the summary
a run shows, the error text."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest

from heartbeat_sync import Heartbeat, format_delegation_results
from heartbeat_sync.integrations import _runs
from heartbeat_sync.integrations._runs import error_text, ledger, summary, text_of

from ..conftest import HeartbeatFactory


def test_a_summary_is_the_name_and_the_start_of_the_text() -> None:
    assert summary("answer", "What is  the\n weather?") == "answer: What is the weather?"
    long = "word " * 40
    assert summary("answer", long) == "answer: " + ("word " * 12).strip() + "…"
    assert len(summary("n" * 100, long)) <= _runs.NAME_CHARS + _runs.TEXT_CHARS + 4
    assert summary("answer", "") == "answer"
    assert summary("", None) == "run"


def test_a_summary_leaves_out_the_results_put_in_front() -> None:
    block = format_delegation_results([{"status": "completed", "summary": "find hotels"}])
    # The markers the summary looks for are the ones format_delegation_results writes.
    assert block.startswith(_runs._RESULTS_OPEN) and block.endswith(_runs._RESULTS_CLOSE)
    assert summary("answer", block + "\n\nWhich hotel?") == "answer: Which hotel?"


def test_the_text_of_inputs_of_every_shape() -> None:
    class Message:
        def __init__(self, content: object) -> None:
            self.content = content

    assert text_of("plain") == "plain"
    assert text_of({"input": "from input", "other": "x"}) == "from input"
    assert text_of({"unknown": "first value"}) == "first value"
    assert text_of({"messages": [Message("old"), Message("newest")]}) == "newest"
    assert text_of([("user", "a pair")]) == "a pair"
    assert text_of(Message([{"type": "text", "text": "block"}, {"type": "image"}])) == "block"
    assert text_of(42) is None
    assert text_of({"a": {"b": {"c": {"d": {"e": {"f": "too deep"}}}}}}) is None


def test_an_error_is_its_type_and_the_first_line_of_its_message() -> None:
    assert (
        error_text(ValueError("no such city:\n  Atlantis")) == "ValueError: no such city: Atlantis"
    )
    assert error_text(KeyError()) == "KeyError"
    assert error_text(RuntimeError("x" * 500)) == "RuntimeError: " + "x" * 186 + "…"
    assert error_text(KeyError(), "after\n2 steps") == "KeyError (after 2 steps)"


def test_a_ledger_counts_top_level_runs_and_keeps_the_heartbeat_true(
    make_hb: HeartbeatFactory,
) -> None:
    hb = make_hb()  # never started: its counters are what the runs did, exactly
    hb.current_task = "idle"
    book = ledger(hb)
    assert ledger(hb) is book
    assert book.begin("a", lambda: "first")
    assert not book.begin("a.1", lambda: "nested", parent="a")
    assert not book.begin("a", lambda: "again")  # a second adapter seeing the same run
    assert (hb.active_tasks, hb.current_task) == (1, "first")
    assert book.begin("b", lambda: "second")
    assert (hb.active_tasks, hb.current_task) == (2, "second")
    assert not book.end("a.1", "nested failure")  # a nested run's outcome is not counted
    assert book.end("b", "ValueError: boom")
    assert (hb.active_tasks, hb.current_task) == (1, "first")
    assert book.end("a")
    assert not book.end("a")
    assert (hb.active_tasks, hb.current_task) == (0, "idle")
    assert hb.error_rate == 0.5 and hb.sample_error == "ValueError: boom"


def test_a_ledger_leaves_a_current_task_the_agent_set_meanwhile(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    book = ledger(hb)
    book.begin("a", lambda: "running")
    hb.current_task = "the agent's own words"
    book.end("a")
    assert hb.current_task == "the agent's own words"


def test_a_run_given_up_is_no_success_and_no_error(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    book = ledger(hb)
    book.begin("a", lambda: "a")
    book.end("a", record=False)
    assert hb.active_tasks == 0 and hb.error_rate == 0.0
    book.begin("b", lambda: "b")
    book.end("b", "X")
    assert hb.error_rate == 1.0  # one request: the first run was not counted


def test_a_ledger_is_thread_safe(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    book = ledger(hb)
    go = threading.Barrier(8)

    def runs(n: int) -> None:
        go.wait(5)
        for i in range(200):
            key = (n, i)
            book.begin(key, lambda: "x")
            book.begin((key, "child"), lambda: "y", parent=key)
            book.end((key, "child"))
            book.end(key, "E" if i % 4 == 0 else None)

    threads = [threading.Thread(target=runs, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert hb.active_tasks == 0 and book.in_flight() == 0
    assert hb.error_rate == 0.25


def test_a_ledger_is_for_a_heartbeat() -> None:
    with pytest.raises(TypeError, match=r"heartbeat_sync\.Heartbeat"):
        ledger(object())  # type: ignore[arg-type]


def test_a_ledger_does_not_keep_its_heartbeat_alive(tmp_path: Path) -> None:
    hb = Heartbeat("http://127.0.0.1:9", "ws-1", results_file=tmp_path / "r", exit_timeout=None)
    book = ledger(hb)
    gone = weakref.ref(hb)
    del hb
    gc.collect()
    assert gone() is None
    assert book not in _runs._ledgers.values()
