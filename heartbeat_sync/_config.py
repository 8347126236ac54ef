"""Every environment variable the library and its command line read, and their defaults.

The names are the reference runtime's where it has one. Nothing here is read at import time:
the functions read ``os.environ`` when they are called (a ``Heartbeat`` calls them when it is
constructed, the command line when it starts), so a test or a program can set the environment
first.
"""

from __future__ import annotations

import os

__all__ = [
    "ALL_ENV",
    "DEFAULT_CURSOR_FILE",
    "DEFAULT_INTERVAL",
    "DEFAULT_RESULTS_FILE",
    "DEFAULT_SEEN_FILE",
    "ENV_ADAPTER_MODULE",
    "ENV_AGENT_URL",
    "ENV_CA_BUNDLES",
    "ENV_CONFIGS_DIR",
    "ENV_CURSOR_FILE",
    "ENV_EVENTS",
    "ENV_INTERVAL",
    "ENV_ORG_ID",
    "ENV_PLATFORM_URL",
    "ENV_RESULTS_FILE",
    "ENV_SEEN_FILE",
    "ENV_TOKEN",
    "ENV_WORKSPACE_ID",
    "env",
    "env_path",
]

#: The platform's base URL (the command line's default; the library sends its origin as
#: ``Origin`` when it is set, as the reference runtime does).
ENV_PLATFORM_URL = "PLATFORM_URL"
#: This workspace's id (the command line's default).
ENV_WORKSPACE_ID = "WORKSPACE_ID"
#: Seconds between beats for ``heartbeat-sync run`` (clamped to [5, 300] like the reference).
ENV_INTERVAL = "HEARTBEAT_INTERVAL_SECONDS"
#: Where ``.auth_token`` is read and ``.platform_inbound_secret`` written.
ENV_CONFIGS_DIR = "CONFIGS_DIR"
#: The JSONL results file.
ENV_RESULTS_FILE = "DELEGATION_RESULTS_FILE"
#: The activity cursor file.
ENV_CURSOR_FILE = "DELEGATION_ACTIVITY_CURSOR_FILE"
#: The file of delegation ids already delivered.
ENV_SEEN_FILE = "DELEGATION_SEEN_FILE"
#: The bearer token, used when ``.auth_token`` is missing or empty.
ENV_TOKEN = "MOLECULE_WORKSPACE_TOKEN"
#: The runtime's adapter module, asked for the beat's ``runtime_metadata``.
ENV_ADAPTER_MODULE = "ADAPTER_MODULE"
#: The tenant of a multi-tenant platform, sent as ``X-Molecule-Org-Id``.
ENV_ORG_ID = "MOLECULE_ORG_ID"
#: The agent's own URL, registered by ``heartbeat-sync register`` (push mode).
ENV_AGENT_URL = "AGENT_URL"
#: ``0``/``false``/``no``/``off`` turns the event stream off.
ENV_EVENTS = "HEARTBEAT_SYNC_EVENTS"
#: requests' own CA bundle variables, in its order: read once per session, as requests would
#: on every request (not in ALL_ENV: they are the caller's TLS set-up, not configuration).
ENV_CA_BUNDLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

#: Every variable above, for whoever must clear or list them all (a test isolating itself
#: from the caller's environment, a help text); a name added above belongs here too.
ALL_ENV = (
    ENV_PLATFORM_URL,
    ENV_WORKSPACE_ID,
    ENV_INTERVAL,
    ENV_CONFIGS_DIR,
    ENV_RESULTS_FILE,
    ENV_CURSOR_FILE,
    ENV_SEEN_FILE,
    ENV_TOKEN,
    ENV_ADAPTER_MODULE,
    ENV_ORG_ID,
    ENV_AGENT_URL,
    ENV_EVENTS,
)

#: Results file used when neither an argument nor the environment names one.
DEFAULT_RESULTS_FILE = "/tmp/delegation_results.jsonl"
#: Activity cursor used when neither an argument nor the environment names one.
DEFAULT_CURSOR_FILE = "/tmp/delegation_activity_cursor"
#: Seen file used when neither an argument nor the environment names one.
DEFAULT_SEEN_FILE = "/tmp/delegation_seen_ids"
#: Seconds between beats when nothing else is said (the reference's ``HEARTBEAT_INTERVAL``).
DEFAULT_INTERVAL = 30.0


def env(name: str) -> str | None:
    """The variable's value with surrounding white space stripped; None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_path(value: str | os.PathLike[str] | None, name: str, default: str) -> str:
    """``value`` if given, else the variable ``name`` if set, else ``default``."""
    if value is not None:
        return os.fspath(value)
    return os.environ.get(name) or default
