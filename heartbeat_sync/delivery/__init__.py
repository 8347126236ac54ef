"""Delivery: platform rows into results, written once to the results file, ever.

Holds ``inbox`` (:class:`Inbox`: the one object the beat thread hands rows to, returning the
fresh results, the messages claimed for handlers and where the next activity page starts),
``results`` (the results file and the public reader), ``journal`` (the crash-safe delivery
protocol), ``handoff`` (which messages are in handlers' hands, and whose), ``idlog`` (the seen
file and the activity cursor), ``rows`` and ``messages`` (pure: rows into results, and into the
messages a handler receives) and ``activity`` (pure: where each activity page starts).

Offers the inbox, the results file and its reader, and the result type with the id rule. May
import only the package's base modules: it knows nothing of HTTP, threads or the platform's
routes.
"""

from __future__ import annotations

from .handoff import Owner
from .inbox import Inbox, Page
from .messages import CANVAS, InboundMessage, MessageRow
from .results import ResultsFile, read_delegation_results
from .rows import ORIGIN_ACTIVITY, ORIGIN_DELEGATION, Record, Result, message_text, valid_id

__all__ = [
    "CANVAS",
    "ORIGIN_ACTIVITY",
    "ORIGIN_DELEGATION",
    "InboundMessage",
    "Inbox",
    "MessageRow",
    "Owner",
    "Page",
    "Record",
    "Result",
    "ResultsFile",
    "message_text",
    "read_delegation_results",
    "valid_id",
]
