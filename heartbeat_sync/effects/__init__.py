"""Side effects: what follows a delivery, off the beat thread.

Holds ``sender`` (:func:`side_effect_worker`: the thread that sends wake-ups, notifications and
replies), ``handlers`` (:class:`HandlerPool`: the threads of the user's message handlers),
``queue`` (:class:`~.queue.QueueWorker`, a daemon thread over a bounded queue,
handed its work), ``policy`` (pure: what to send when) and ``texts`` (pure: the beat body, the
wake-up and notification texts, :func:`format_delegation_results`).

Offers the side-effect thread, its counts and the texts. May import the faces of
:mod:`..delivery` (the result type) and :mod:`..wire` (the client), and the base modules.
"""

from __future__ import annotations

from .handlers import HandlerPool, MessageHandler, PoolCounts
from .policy import Reply, SideEffectCounts
from .queue import Pump
from .sender import SideEffectWorker, side_effect_worker
from .texts import build_beat_body, format_delegation_results

__all__ = [
    "HandlerPool",
    "MessageHandler",
    "PoolCounts",
    "Pump",
    "Reply",
    "SideEffectCounts",
    "SideEffectWorker",
    "build_beat_body",
    "format_delegation_results",
    "side_effect_worker",
]
