"""The beat thread: one run of a Heartbeat's threads, one cycle at a time.

Holds ``run`` (:class:`Run`: a run's threads, its halt and alarm, the asks for a cycle or a
poll, its client and event stream, the end on removal), ``cycle`` (:class:`Cycle`: the beat,
the polls, the registration and the state check, each returning what came of it),
``inbound`` (:class:`Inbound`: a run's messages, claimed and handed to the handlers),
``schedule`` (pure: the slots, the next step, the token bucket), ``lifecycle`` (active,
paused, removed, from what the platform answers), ``registrar`` (when to try a registration,
and when to give up), ``team`` (the team's even slots), ``tally`` (the counters),
``callbacks`` (the thread that runs ``on_state_change``, or a hub's lane shared by its
workspaces) and ``drivers`` (the few threads that step a hub's runs).

Offers what ``Heartbeat`` puts together for each run. May import the faces of
:mod:`..delivery`, :mod:`..wire` and :mod:`..effects`, and the package's base modules; nothing
imports it but the surface (``_heartbeat``, ``_hub``).
"""

from __future__ import annotations

from .callbacks import CallbackLane, Callbacks, CallbackShare
from .cycle import Cycle, Outcome
from .drivers import Drivers, Ticket
from .inbound import Inbound
from .lifecycle import Lifecycle
from .registrar import Registrar
from .run import Run
from .tally import Tally

__all__ = [
    "CallbackLane",
    "CallbackShare",
    "Callbacks",
    "Cycle",
    "Drivers",
    "Inbound",
    "Lifecycle",
    "Outcome",
    "Registrar",
    "Run",
    "Tally",
    "Ticket",
]
