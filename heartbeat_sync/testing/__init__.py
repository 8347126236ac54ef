"""An in-process fake of the Molecule AI platform server, for tests.

:class:`FakePlatform` serves the subset of the platform HTTP API that a heartbeat loop talks to
on a real loopback socket, answering as the real server does (``docs/platform.md`` in the
repository says what that is), so that agents and clients can be exercised end to end without
the real server::

    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp:
        ws = fp.add_workspace()
        files = fp.agent_files(ws.id, folder)  # the token written where a Heartbeat reads it
        ...  # point the client at fp.url, e.g. Heartbeat(fp.url, ws.id, **files)
        assert fp.wait_for_requests("heartbeat", 1)
        assert fp.heartbeats(ws.id)[0]["workspace_id"] == ws.id

Two server generations are modelled: ``"MAY"`` (the newer server, which returns the
inbound secret on every heartbeat, supports the activity ``since_id`` cursor and the
delegations ledger) and ``"APR"`` (the older one).

Routes served:

* ``POST /registry/heartbeat`` (route name ``"heartbeat"``)
* ``POST /registry/register`` (``"register"``)
* ``GET /workspaces/:id/delegations`` (``"delegations"``)
* ``GET /workspaces/:id/activity`` (``"activity"``)
* ``GET /workspaces/:id`` (``"workspace"``)
* ``GET /workspaces/:id/state`` (``"state"``)
* ``POST /workspaces/:id/a2a`` (``"a2a"``)
* ``POST /workspaces/:id/notify`` (``"notify"``)
* ``GET /registry/:id/peers`` (``"peers"``): siblings, children, then the parent, never a
  removed workspace; the discovery check (a workspace without tokens is open)
* ``GET /workspaces/:id/events/stream`` (``"events"``): Server-Sent Events framed as the real
  server frames them (``: ping``, then one ``data: {"type", "timestamp", "data"}`` per event):
  ``DELEGATION_COMPLETE``/``DELEGATION_FAILED`` when a delegation ends, ``ACTIVITY_LOGGED``
  for every activity row written, ``WORKSPACE_HEARTBEAT`` for every beat,
  ``WORKSPACE_PAUSED``, ``WORKSPACE_HIBERNATED`` and ``WORKSPACE_REMOVED`` from
  :meth:`FakePlatform.pause`, :meth:`FakePlatform.hibernate` and :meth:`FakePlatform.delete`,
  ``WORKSPACE_ONLINE`` for a registration and for a beat that brings the workspace back. Open
  streams can be dropped (:meth:`FakePlatform.drop_streams`) and stalled
  (:meth:`FakePlatform.stall_streams`);
  ``fault("events", status=404)`` refuses the stream like a server without the route, and a
  header fault (``fault("events", headers={"Content-Type": "text/plain"})``) changes the
  stream's headers.
  :meth:`FakePlatform.held` holds every request while events keep flowing (a slow poll
  during a burst of events).

Anything else answers ``404 {"error":"not found"}`` and is logged with route
``"unknown"``.  :meth:`FakePlatform.pause`, :meth:`FakePlatform.hibernate` and
:meth:`FakePlatform.delete` do what the real server's admin routes do, and every route then
answers as the real server does for a paused, hibernated or removed workspace.

Like the real server, a request whose ``Origin`` header is neither its own
``http(s)://`` + ``Host`` nor one of the server's default ``CORS_ORIGINS``
(``http://localhost:3000``, ``http://localhost:3001``) is refused on every route with
``403`` and an empty body.

Failures (status codes, garbage bodies, huge bodies, delays, dropped connections, trickled
answers) can be injected per route with :meth:`FakePlatform.fault`.

Not modelled: rate limiting, the SaaS tenant guard, admin/org tokens, the A2A
hierarchy check, activity ``peer_id``/``since_secs``/``before_ts`` (ignored),
WebSocket broadcasts, and UUID validation of workspace ids (any string is an id).

Where it differs from the real server on purpose (``tests/platform`` runs the library
against the real one): workspaces, tokens, delegations and activity rows are set up
with :class:`FakePlatform`'s methods, not with the server's admin routes (create, delegate,
rotate, pause, delete); ``POST /workspaces/:id/a2a`` answers from
:meth:`FakePlatform.set_a2a_responses` instead of forwarding to an agent's URL (the real
server answers ``503 {"error":"workspace has no URL"}`` for a push-mode workspace that
registered none: script that with :meth:`FakePlatform.fault`); ``CORS_ORIGINS`` cannot be
configured; a request body sent with ``Transfer-Encoding: chunked`` is refused with 400 and
the connection closed (bodies are read by ``Content-Length`` only).

It needs nothing beyond this package and the standard library.
"""

from ._model import ROUTES, RecordedRequest, Response, Workspace
from ._platform import FakePlatform
from ._setup import AgentFiles

__all__ = ["ROUTES", "AgentFiles", "FakePlatform", "RecordedRequest", "Response", "Workspace"]
