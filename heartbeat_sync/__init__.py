"""Keep a Molecule AI workspace alive and bring its delegation results back, on threads.

    from heartbeat_sync import Heartbeat

    hb = Heartbeat(platform_url, workspace_id)
    hb.start_thread()

The library logs to the ``heartbeat_sync`` logger tree and installs no handlers.
"""

from __future__ import annotations

from .__about__ import __version__
from ._heartbeat import Heartbeat
from ._hub import Hub
from ._status import Status, StreamStatus
from ._wedge import clear_wedge, is_wedged, mark_wedged, wedge_reason
from .delivery import InboundMessage, read_delegation_results
from .effects import format_delegation_results
from .wire import Registration, RegistrationError, register

__all__ = [
    "Heartbeat",
    "Hub",
    "InboundMessage",
    "Registration",
    "RegistrationError",
    "Status",
    "StreamStatus",
    "__version__",
    "clear_wedge",
    "format_delegation_results",
    "is_wedged",
    "mark_wedged",
    "read_delegation_results",
    "register",
    "wedge_reason",
]
