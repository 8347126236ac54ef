"""A hub serves many workspaces from one process on a fixed number of threads, each keeping a
lone Heartbeat's guarantees: its own files and results, once; its lifecycle (a removal ends
that workspace alone); its side effects and callbacks; beats spread evenly; one bounded stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from heartbeat_sync import Hub
from heartbeat_sync.testing import FakePlatform

from .conftest import read_lines, wait_until


def _hub(
    platform: FakePlatform,
    tmp_path: Path,
    n: int,
    each: Callable[[str], dict[str, Any]] = lambda wid: {},
    **defaults: Any,
) -> tuple[Hub, list[str]]:
    options: dict[str, Any] = {"interval_seconds": 0.5, "exit_timeout": None}
    options.update(defaults)
    hub = Hub(platform.url, **options)
    ids = []
    for i in range(n):
        ws = platform.add_workspace(name=f"member-{i}")
        hub.add(ws.id, **platform.agent_files(ws.id, tmp_path / ws.id), **each(ws.id))
        ids.append(ws.id)
    return hub, ids


def _library_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("heartbeat-sync") and t.name != "heartbeat-sync-watchdog"
    ]


def test_twenty_workspaces_beat_on_a_fixed_number_of_threads(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 20, on_state_change=lambda old, new: None)
        hub.start()
        try:
            assert wait_until(lambda: all(s.beats_ok >= 2 for s in hub.status().values()), 15)
            did = platform.add_delegation(ids[7], status="completed")
            assert wait_until(lambda: hub[ids[7]].status().results_delivered == 1, 10)
            # Its wake-up goes out through the shared side-effect threads.
            assert wait_until(lambda: len(platform.a2a_messages(ids[7])) >= 1, 10)
            # Every stream is open, on the one thread that reads them all.
            assert wait_until(
                lambda: all(s.stream and s.stream.connected for s in hub.status().values()), 10
            )
            # Beat threads, side-effect threads, the callbacks' lane and the streams' reader:
            # the same few whatever the number of workspaces.
            names = _library_threads()
            assert len(names) <= 6, names
            assert len(hub.threads()) <= 6
        finally:
            assert hub.stop(5.0)
        assert _library_threads() == []
    # The result is in its workspace's file alone, once.
    for wid in ids:
        lines = read_lines(Path(hub[wid].results_path))
        assert sum(did in line for line in lines) == (1 if wid == ids[7] else 0)


def test_a_removed_workspace_ends_alone_and_the_others_beat_on(tmp_path: Path) -> None:
    states: dict[str, list[str]] = {}
    lock = threading.Lock()

    def seen(wid: str) -> dict[str, Any]:
        def on_state(old: str, new: str) -> None:
            with lock:
                states.setdefault(wid, []).append(new)

        return {"on_state_change": on_state}

    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 5, seen, events=False)
        with hub:
            assert wait_until(lambda: all(s.beats_ok >= 1 for s in hub.status().values()), 10)
            platform.delete(ids[2])
            assert hub[ids[2]].wait(timeout=10)
            assert hub[ids[2]].status().state == "removed"
            beats = {wid: hub[wid].status().beats_ok for wid in ids}
            others = [wid for wid in ids if wid != ids[2]]
            assert wait_until(
                lambda: all(hub[w].status().beats_ok >= beats[w] + 2 for w in others), 10
            )
            assert all(hub[w].status().state == "healthy" for w in others)
            assert not hub.wait(timeout=0.05)  # the others have not ended
        with lock:
            assert states[ids[2]][-1] == "removed"
            assert all("removed" not in states.get(w, []) for w in others)


def test_the_hub_spreads_its_members_beats_over_the_interval(tmp_path: Path) -> None:
    interval = 1.0
    with FakePlatform() as platform:
        hub, _ = _hub(platform, tmp_path, 10, interval_seconds=interval, events=False)
        with hub:
            assert wait_until(lambda: all(s.beats_ok >= 2 for s in hub.status().values()), 15)
            platform.clear_requests()
            assert wait_until(lambda: len(platform.requests_for("heartbeat")) >= 40, 15)
            beats = platform.requests_for("heartbeat")
    # Each member beats at its own tenth of the interval: the phases of the beats, by member,
    # are ten distinct tenths (within a loaded machine's lateness).
    phases: dict[str | None, list[float]] = {}
    for r in beats:
        phases.setdefault(r.workspace_id, []).append(r.time % interval)
    tenths = sorted(round(sorted(p)[len(p) // 2] * 10) % 10 for p in phases.values())
    assert len(set(tenths)) >= 8, tenths


def test_one_stop_for_the_whole_hub_is_bounded_while_the_platform_hangs(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        hub, _ = _hub(platform, tmp_path, 10, events=False, request_timeout=30.0)
        hub.start()
        try:
            assert wait_until(lambda: all(s.beats_ok >= 1 for s in hub.status().values()), 10)
            before = len(platform.requests_for("heartbeat"))
            platform.fault("heartbeat", delay=60.0)
            # Requests are logged as they arrive: these beats now hang in flight, and hold
            # both of the hub's beat threads.
            assert platform.wait_for_requests("heartbeat", before + 2, timeout=10)
        finally:
            started = time.monotonic()
            stopped = hub.stop(2.0)
            took = time.monotonic() - started
        assert took < 4.0, took
        assert stopped
        assert _library_threads() == []


def test_a_workspace_added_to_a_running_hub_starts_and_takes_its_share(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 2, events=False)
        with hub:
            ws = platform.add_workspace(name="late")
            late = hub.add(ws.id, **platform.agent_files(ws.id, tmp_path / ws.id))
            assert wait_until(lambda: late.status().beats_ok >= 2, 10)
            assert len(hub) == 3 and ws.id in hub
            assert hub.remove(ids[0], timeout=5.0)
            assert ids[0] not in hub and len(hub) == 2
            assert hub.status().keys() == {ids[1], ws.id}


def test_a_hubs_member_is_started_and_stopped_by_the_hub_alone(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 1, events=False)
        with pytest.raises(RuntimeError, match="belongs to a Hub"):
            hub[ids[0]].start_thread()
        with pytest.raises(ValueError, match="already in the hub"):
            hub.add(ids[0], **platform.agent_files(ids[0], tmp_path / "again"))
        hub.stop(1.0)
        with pytest.raises(RuntimeError, match="stopped"):
            hub.start()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"beat_threads": 0}, ValueError),
        ({"effect_threads": True}, ValueError),
        ({"start_phase": 0.5}, TypeError),
        ({"no_such_option": 1}, TypeError),
        ({"interval_seconds": -1}, ValueError),
    ],
)
def test_a_hubs_arguments_are_checked_when_it_is_made(
    kwargs: dict[str, Any], error: type[Exception], tmp_path: Path
) -> None:
    with FakePlatform() as platform:
        ws = platform.add_workspace()
        with pytest.raises(error):
            hub = Hub(platform.url, **kwargs)
            hub.add(ws.id, **platform.agent_files(ws.id, tmp_path))


def test_a_callback_that_stops_its_workspace_returns_at_once(tmp_path: Path) -> None:
    """The hub's callbacks share one thread: a member stopped from its own callback does not
    wait for that thread, and the others' callbacks still run."""
    results: dict[str, bool] = {}
    done = threading.Event()

    hub: Hub | None = None

    def stopper(wid: str) -> dict[str, Any]:
        def on_state(old: str, new: str) -> None:
            if new == "healthy" and wid not in results and hub is not None:
                results[wid] = hub[wid].stop(timeout=5.0)
                if len(results) == 3:
                    done.set()

        return {"on_state_change": on_state}

    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 3, stopper, events=False)
        started = time.monotonic()
        with hub:
            assert done.wait(10)
        assert time.monotonic() - started < 5.0
        assert results == dict.fromkeys(ids, True)


def test_a_workspace_whose_requests_hang_holds_one_beat_thread_not_the_others(
    tmp_path: Path,
) -> None:
    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 5, events=False, request_timeout=30.0)
        with hub:
            assert wait_until(lambda: all(s.beats_ok >= 1 for s in hub.status().values()), 10)
            platform.fault("heartbeat", delay=60.0, workspace_id=ids[0])
            before = len(platform.requests_for("heartbeat", ids[0]))
            assert platform.wait_for_requests("heartbeat", before + 1, 10, ids[0])
            beats = {w: hub[w].status().beats_ok for w in ids[1:]}
            # The other four beat on, every interval, on the beat thread left.
            assert wait_until(
                lambda: all(hub[w].status().beats_ok >= beats[w] + 3 for w in ids[1:]), 10
            )


def test_a_slow_wake_up_holds_one_side_effect_thread_not_the_others(tmp_path: Path) -> None:
    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 3, events=False, self_message_timeout=30.0)
        with hub:
            assert wait_until(lambda: all(s.beats_ok >= 1 for s in hub.status().values()), 10)
            platform.fault("a2a", delay=60.0, workspace_id=ids[0])
            platform.add_delegation(ids[0], status="completed")
            assert platform.wait_for_requests("a2a", 1, 10, ids[0])  # logged as it arrives
            # While the first workspace's wake-up hangs, the others' results still bring
            # their wake-ups and notifications at once.
            for wid in ids[1:]:
                platform.add_delegation(wid, status="completed")
            assert wait_until(
                lambda: all(hub[w].status().notifications_sent >= 1 for w in ids[1:]), 10
            )
            assert all(len(platform.a2a_messages(w)) >= 1 for w in ids[1:])


def test_the_shared_stream_reader_brings_results_and_removals_at_once(tmp_path: Path) -> None:
    """At a 30 s interval only the events can bring a result or a removal within seconds:
    the one thread that reads every member's stream asks each member's run for its poll or
    its state check."""
    with FakePlatform() as platform:
        hub, ids = _hub(platform, tmp_path, 10, interval_seconds=30.0)
        with hub:
            assert wait_until(
                lambda: all(s.stream and s.stream.connected for s in hub.status().values()), 10
            )
            assert wait_until(lambda: all(s.beats_ok >= 1 for s in hub.status().values()), 10)
            for wid in ids[:5]:
                platform.add_delegation(wid, status="completed")
            assert wait_until(
                lambda: all(hub[w].status().results_delivered == 1 for w in ids[:5]), 5
            )
            platform.delete(ids[9])
            assert hub[ids[9]].wait(timeout=5)
            assert hub[ids[9]].status().state == "removed"
            assert all(hub[w].status().beats_ok == 1 for w in ids[:9])  # no cycle needed
