"""Adapters for the synchronous agent frameworks: each counts an agent's runs on a Heartbeat and
turns an agent into an ``on_message`` handler.

Holds ``langchain`` (LangChain and LangGraph: ``HeartbeatCallbackHandler`` and
``message_handler``; the ``heartbeat-sync[langchain]`` extra), ``smolagents`` (``HeartbeatMonitor``
and ``message_handler``; the ``heartbeat-sync[smolagents]`` extra) and ``_runs`` (what both
share and no framework needs: the runs in flight per Heartbeat, the summary a run shows as
``current_task``, the error text, the delegation results put in front of a message).

Offers nothing itself: import the adapter you need, ``heartbeat_sync.integrations.langchain``
or ``heartbeat_sync.integrations.smolagents``. Importing this package imports no framework;
an adapter imports its framework, and without it raises an ``ImportError`` that names the extra
to install. It is the top layer: its modules may import only the public face
(``heartbeat_sync``) and each other, and nothing in the package imports them.
"""

from __future__ import annotations

__all__: list[str] = []
