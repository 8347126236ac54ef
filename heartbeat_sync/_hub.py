"""Many workspaces in one process, on a fixed number of threads: :class:`Hub`."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import _logctx, _status
from ._heartbeat import Heartbeat
from ._logctx import get_logger
from .effects import Pump
from .loop import CallbackLane, Drivers
from .wire import StreamFactory, StreamReader

logger = get_logger(__name__)

#: Heartbeat's keyword arguments a hub sets itself, never taken from the caller.
_HUB_OWNED = frozenset({"platform_url", "workspace_id", "start_phase"})
_OPTIONS = frozenset(inspect.signature(Heartbeat.__init__).parameters) - {"self", "positional"}


def _check_options(options: dict[str, Any], where: str) -> None:
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"{where}: unknown Heartbeat option(s) {', '.join(unknown)}")
    owned = sorted(set(options) & _HUB_OWNED)
    if owned:
        raise TypeError(f"{where}: {', '.join(owned)} is the hub's to set, not an option")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


class Hub:
    """Serves many workspaces from one process on a fixed number of threads.

    Each workspace added is a :class:`Heartbeat` with every guarantee a lone one has (its own
    files, token, once-only delivery, lifecycle, message handler), and :meth:`add` returns it
    (set its ``current_task``, call its ``beat_now()``, read its ``status()``). What differs
    is the threads: a lone Heartbeat has a beat thread, a side-effect thread, an event-stream
    thread and (with ``on_state_change``) a callback thread of its own; a hub's workspaces
    share ``beat_threads`` threads that do their cycles, ``effect_threads`` threads that send
    their wake-ups, notifications and replies, one thread that reads all their event streams
    and one that runs their state-change callbacks. A message handler's threads
    (``max_concurrent``) stay the workspace's own: they run the user's code.

    The hub spreads its workspaces' beats evenly over the interval (the ``n``-th of ``N``
    workspaces with the same interval beats at ``n/N`` of it), and keeps them spread as
    workspaces are added or removed. A workspace removed from the platform ends alone; the
    others go on.

    Args:
        platform_url: The platform's base URL, for every workspace.
        beat_threads: Threads that do the workspaces' cycles. A cycle that waits on a slow
            platform holds one of them (up to ``request_timeout``), so two let the others go
            on meanwhile.
        effect_threads: Threads that send the workspaces' side effects. A wake-up waits on
            the agent (up to ``self_message_timeout``) and holds one of them meanwhile.
        **defaults: :class:`Heartbeat` keyword arguments for every workspace (each
            :meth:`add` may override them), for example ``interval_seconds``, ``org_id`` or
            ``request_timeout``. ``start_phase`` is the hub's.

    A hub does not follow a ``fork()``: make it in the process that serves the workspaces.
    """

    def __init__(
        self,
        platform_url: str,
        *,
        beat_threads: int = 2,
        effect_threads: int = 2,
        **defaults: Any,
    ) -> None:
        if not isinstance(platform_url, str) or not platform_url.strip():
            raise ValueError("platform_url must be a non-empty string")
        _check_options(defaults, "Hub()")
        self.platform_url = platform_url
        self._defaults = dict(defaults)
        self._drivers = Drivers(_positive_int("beat_threads", beat_threads))
        self._pump = Pump(_positive_int("effect_threads", effect_threads))
        self._lane = CallbackLane()
        self._reader = StreamReader()
        self._lock = threading.Lock()
        self._members: dict[str, Heartbeat] = {}
        self._started = False
        self._stopped = False

    # --- members --------------------------------------------------------------------------

    def add(self, workspace_id: str, **options: Any) -> Heartbeat:
        """Add a workspace; return its :class:`Heartbeat`. ``options`` are Heartbeat keyword
        arguments over the hub's defaults. A hub already started starts it at once.

        Raises ValueError for a workspace already in the hub, or a bad option (as
        ``Heartbeat()`` would), and RuntimeError once the hub was stopped.
        """
        _check_options(options, "Hub.add()")
        settings = {**self._defaults, **options}
        hb = Heartbeat(self.platform_url, workspace_id, **settings)
        streams: StreamFactory | None = self._reader.stream if hb.events else None
        hb._join_hub(self._drivers, self._pump, self._lane, streams)
        with self._lock:
            if self._stopped:
                raise RuntimeError("the hub was stopped: make a new one")
            if hb.workspace_id in self._members:
                raise ValueError(f"workspace {hb.workspace_id} is already in the hub")
            self._members[hb.workspace_id] = hb
            if self._started:
                # Under the lock: a stop() that comes meanwhile finds it and stops it too.
                hb._start_on_hub()
                started = True
            else:
                started = False
        if started:
            self._spread()
        return hb

    def remove(self, workspace_id: str, timeout: float = 5.0) -> bool:
        """Stop one workspace and take it out of the hub; True if its work ended within
        ``timeout`` seconds (see :meth:`Heartbeat.stop`). KeyError if it is not in the hub."""
        with self._lock:
            hb = self._members.pop(workspace_id)
        done = hb.stop(timeout)
        self._spread()
        return done

    def __getitem__(self, workspace_id: str) -> Heartbeat:
        with self._lock:
            return self._members[workspace_id]

    def __contains__(self, workspace_id: object) -> bool:
        with self._lock:
            return workspace_id in self._members

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._members))

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    @property
    def members(self) -> list[Heartbeat]:
        """The workspaces' Heartbeats, in the order they were added."""
        with self._lock:
            return list(self._members.values())

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the shared threads and every workspace added (again: nothing more)."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the hub was stopped: make a new one")
            if self._started:
                return
            self._started = True
            self._drivers.start()
            self._pump.start()
            self._reader.start()
            for hb in self._members.values():
                hb._start_on_hub()
        self._spread()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop every workspace and the shared threads; True if all ended within ``timeout``
        seconds, one bound for the whole hub whatever the number of workspaces. Requests in
        flight are cut short; see :meth:`Heartbeat.stop` for what each workspace does."""
        deadline = time.monotonic() + max(0.0, timeout)

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        with self._lock:
            self._stopped = True
            members = list(self._members.values())
        for hb in members:  # every run halted first, so that they all end together
            run = hb._run
            if run is not None:
                run.interrupt()
        done = all([hb.stop(left()) for hb in members])
        done = self._drivers.stop(left()) and done
        done = self._pump.stop(left()) and done
        done = self._reader.stop(left()) and done
        done = self._lane.stop(left()) and done
        return done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every workspace has ended (stopped, or removed from the platform);
        False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        for hb in self.members:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not hb.wait(left):
                return False
        return True

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> dict[str, _status.Status]:
        """Each workspace's :meth:`Heartbeat.status`, by workspace id."""
        with self._lock:
            members = list(self._members.items())
        return {wid: hb.status() for wid, hb in members}

    def threads(self) -> list[threading.Thread]:
        """The hub's shared threads that are alive (the handlers' are the workspaces')."""
        shared = [*self._drivers.thread_list, *self._pump.thread_list]
        for extra in (self._reader.thread, self._lane.thread):
            if extra is not None:
                shared.append(extra)
        return [t for t in shared if t.is_alive()]

    # --- the spread -----------------------------------------------------------------------

    def _spread(self) -> None:
        """Give the ``n``-th of the ``N`` running workspaces of each interval the slot at
        ``n/N`` of it."""
        groups: dict[float, list[Heartbeat]] = {}
        for hb in self.members:
            groups.setdefault(hb.interval_seconds, []).append(hb)
        for interval, group in groups.items():
            for n, hb in enumerate(group):
                run = hb._run
                if run is not None:
                    with _logctx.workspace(hb.workspace_id):
                        logger.debug(
                            "beat slot at %.3f of the %g s interval, %d of %d in the hub",
                            n / len(group),
                            interval,
                            n + 1,
                            len(group),
                        )
                    run.move_to(n / len(group))
