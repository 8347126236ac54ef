"""The wire: everything that crosses to the platform.

Holds ``client`` (:class:`PlatformClient`: one method per route, returning parsed values or
raising :class:`PlatformError`), ``http`` (sessions, urllib3 ``Retry``, whole-request deadlines,
aborts), ``body`` (response bodies, bounded), ``auth`` (the token, the inbound secret, ``Origin``
and the tenant header), ``events`` (:class:`EventStream`, the event-stream thread), ``streams``
(:class:`StreamReader`: many workspaces' streams on one thread), ``sse`` (pure: the stream's
parser and which events matter) and ``registration`` (:func:`register`).

Offers those, and nothing of delivery or side effects. May import only the package's base
modules.
"""

from __future__ import annotations

from .auth import (
    Credentials,
    origin_header,
    resolve_configs_dir,
    resolve_org_id,
    save_token,
)
from .client import CursorGone, PlatformClient, PlatformError
from .events import EventStream, events_enabled
from .http import RETRY_STATUSES, SessionFactory, make_session
from .registration import (
    Registration,
    RegistrationError,
    register,
    register_with,
    registration_body,
)
from .sse import ONLINE_EVENT
from .streams import Stream, StreamFactory, StreamReader

__all__ = [
    "ONLINE_EVENT",
    "RETRY_STATUSES",
    "Credentials",
    "CursorGone",
    "EventStream",
    "PlatformClient",
    "PlatformError",
    "Registration",
    "RegistrationError",
    "SessionFactory",
    "Stream",
    "StreamFactory",
    "StreamReader",
    "events_enabled",
    "make_session",
    "origin_header",
    "register",
    "register_with",
    "registration_body",
    "resolve_configs_dir",
    "resolve_org_id",
    "save_token",
]
