"""What wakes the beat thread: its timed sleep, and the asks that cut it short."""

from __future__ import annotations

import threading

__all__ = ["Wakeups"]


class Wakeups:
    """What wakes the beat thread: one ``Event`` is both its timed sleep and "wake now".

    Asks are flags read at the top of the loop, so one raised while a cycle runs is not lost;
    asks made while the thread waits are one ask.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        #: ``beat_now()`` or a new ``current_task`` asked for a cycle.
        self.beat_asked = False
        #: The event stream asked for the polls. Its own flag, so that it is never merged
        #: into (or held back with) a requested beat.
        self.poll_asked = False

    def ask_beat(self) -> None:
        """Ask for a cycle soon."""
        self.beat_asked = True
        self.event.set()

    def ask_poll(self) -> None:
        """Ask for the polls soon, without a beat."""
        self.poll_asked = True
        self.event.set()

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``, or until woken; then be ready to wait again."""
        self.event.wait(seconds)
        self.event.clear()
