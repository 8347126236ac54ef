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

Three server generations are modelled, chosen with ``FakePlatform(generation=...)``:

* ``"MAY"`` (the default; ``"2026-05"`` is another name for it, and :attr:`FakePlatform.generation`
  then reports ``"MAY"``): the May 2026 server. The heartbeat returns the inbound secret on
  every beat; activity has the ``since_id`` cursor (rows strictly after the cursor row's
  ``created_at``); delegations are ledger rows; registration knows poll mode.
* ``"2026-08"``: the August 2026 server, as May except where ``docs/platform.md`` says it
  differs. The heartbeat reply carries ``generation`` (the workspace's desired generation,
  :meth:`FakePlatform.set_desired_generation`) and the beat may carry ``is_busy`` (bool or
  null) and ``observed_generation`` (integer or null), which are stored
  (:class:`Workspace`) and refuse the beat with 400 when of another type. Every activity row
  carries ``seq`` (one server-wide counter, gaps allowed) and ``since_id`` compares
  ``(created_at, seq)``; timestamps drop trailing zeros. ``POST /workspaces/:id/activity/ack``
  exists. Delegation rows carry ``direction`` (``"sent"``, or ``"received"`` for a row added
  with ``add_delegation(..., direction="received")``). The platform root ``Org Concierge``
  (``kind: "platform"``, ``offline``, no URL) exists from the start, is the parent of every
  workspace added without one (so :meth:`FakePlatform.workspaces` lists it first) and the last
  of a top-level workspace's peers; ``GET /workspaces/:id`` shows ``kind``,
  ``last_heartbeat_at`` and the other new keys. Every A2A caller proves itself with a bearer,
  a message to oneself included; a message with no workspace caller (a canvas message) comes
  from :attr:`FakePlatform.admin_token` (which may also claim any caller) and is marked as
  such. A message is logged at ingest (``message/send → <name> (ingest)``; a poll-mode
  target's row gets two ``ACTIVITY_LOGGED`` with ``message_id``, a push target's row is
  completed with the answer); a message to a workspace still waiting for its agent
  (``awaiting_agent``, ``provisioning``) is queued (202) and logged twice, as
  :meth:`FakePlatform.queue_busy_message` logs one; any other push target without a URL
  answers ``503 workspace has no URL``. ``DELETE /workspaces/:id`` wants
  ``X-Confirm-Name: <name>`` and answers a repeat with 410. Registration accepts
  ``http://127.0.0.1`` URLs, keeps a stored local URL (and a URL when none is sent), and
  writes nothing for a paused or hibernated workspace. Unknown routes answer the router's
  ``404 page not found`` (``text/plain``).
* ``"APR"``: an older server (no inbound secret, no cursor, no poll mode, activity-log
  delegation rows).

The set-up methods that differ by generation: :meth:`FakePlatform.set_desired_generation`
(the 2026-08 beat reply), ``add_activity(..., same_instant_as=row_id)`` (rows of one instant,
which only 2026-08's cursor tells apart), ``add_delegation(..., direction="received")``
(listed on 2026-08 only), :meth:`FakePlatform.queue_poll_message` and
:meth:`FakePlatform.queue_busy_message` (a message as the proxy logs it), and
``add_workspace(..., url=..., delivery_mode=...)``.

Routes served:

* ``POST /registry/heartbeat`` (route name ``"heartbeat"``)
* ``POST /registry/register`` (``"register"``)
* ``GET /workspaces/:id/delegations`` (``"delegations"``)
* ``GET /workspaces/:id/activity`` (``"activity"``)
* ``POST /workspaces/:id/activity/ack`` (``"ack"``): 2026-08 only; before it, the router's
  ``404 page not found`` (``text/plain``)
* ``GET /workspaces/:id`` (``"workspace"``)
* ``GET /workspaces/:id/state`` (``"state"``)
* ``DELETE /workspaces/:id`` (``"delete"``): the admin's (bearer
  :attr:`FakePlatform.admin_token`); with children, ``409`` unless ``?confirm=true``, which
  removes them too
* ``POST /workspaces/:id/a2a`` (``"a2a"``)
* ``POST /workspaces/:id/notify`` (``"notify"``): the notify row and ``AGENT_MESSAGE``
* ``GET /registry/:id/peers`` (``"peers"``): siblings, children, then the parent, never a
  removed workspace; the discovery check (a workspace without tokens is open)
* ``GET /workspaces/:id/events/stream`` (``"events"``): Server-Sent Events framed as the real
  server frames them (``: ping``, then one ``data: {"type", "timestamp", "data"}`` per event):
  ``DELEGATION_SENT``/``DELEGATION_STATUS``/``DELEGATION_COMPLETE``/``DELEGATION_FAILED`` for
  the workspace's own delegations, ``ACTIVITY_LOGGED`` for the activity rows written (as the
  generation sends it; none for a notify), ``USER_MESSAGE`` and ``A2A_RESPONSE`` (2026-08, a
  canvas message and its answer), ``AGENT_MESSAGE`` for a notify, ``WORKSPACE_HEARTBEAT`` for
  every beat, ``TASK_UPDATED``, ``EXTERNAL_CREDENTIALS_ROTATED`` from
  :meth:`FakePlatform.rotate_token`, ``WORKSPACE_PAUSED``, ``WORKSPACE_HIBERNATED`` and
  ``WORKSPACE_REMOVED`` from :meth:`FakePlatform.pause`, :meth:`FakePlatform.hibernate` and
  :meth:`FakePlatform.delete` (or the delete route), ``WORKSPACE_ONLINE`` for a registration
  and for a beat that brings the workspace back. Open streams can be dropped
  (:meth:`FakePlatform.drop_streams`) and stalled (:meth:`FakePlatform.stall_streams`);
  ``fault("events", status=404)`` refuses the stream like a server without the route, and a
  header fault (``fault("events", headers={"Content-Type": "text/plain"})``) changes the
  stream's headers.
  :meth:`FakePlatform.held` holds every request while events keep flowing (a slow poll
  during a burst of events).

The ``/workspaces/:id/*`` routes also accept the admin's bearer, as the real server's
WorkspaceAuth does. Anything else answers ``404 {"error":"not found"}`` (MAY, APR; 2026-08:
``404 page not found``) and is logged with route ``"unknown"``. :meth:`FakePlatform.pause`,
:meth:`FakePlatform.hibernate` and :meth:`FakePlatform.delete` do what the real server's
admin routes do, and every route then answers as the real server does for a paused,
hibernated or removed workspace.

Like the real server, a request whose ``Origin`` header is neither its own
``http(s)://`` + ``Host`` nor one of the server's default ``CORS_ORIGINS``
(``http://localhost:3000``, ``http://localhost:3001``) is refused on every route with
``403`` and an empty body.

The SaaS tenant guard is off unless ``FakePlatform(org_id=...)`` is given (the server's
``MOLECULE_ORG_ID``): then every route but ``/registry/register`` and ``/registry/heartbeat``
(and ``/health``, ``/buildinfo``, ``/metrics``, ``/cp/*``, which this fake does not serve)
wants ``X-Molecule-Org-Id: <org_id>`` (or a ``Fly-Replay-Src`` with ``state=<org_id>``).
Without it (or empty) MAY (and APR) answer ``404`` with an empty body and no ``Content-Type``,
2026-08
``400 {"code":"TENANT_ORG_HEADER_REQUIRED",...}``; a wrong one is the empty 404 on both.

Failures (status codes, garbage bodies, huge bodies, delays, dropped connections, trickled
answers) can be injected per route with :meth:`FakePlatform.fault`.

Not modelled: rate limiting, the A2A hierarchy check, same-origin canvas requests
(``CANVAS_PROXY_URL``), a push agent whose call fails as busy (write its rows with
:meth:`FakePlatform.queue_busy_message`), the ``source_type`` markers of 2026-08 (rows are
stored as sent, ``USER_MESSAGE`` carries no ``role``/``systemKind``), activity
``peer_id``/``since_secs``/``before_ts`` (ignored), activity retention (acking changes nothing
visible, as on the real server), wake intents and the 2026-08 stall watchdog (a desired
generation is raised by hand; reaching it settles nothing, and no liveness probe is queued),
chat history and WebSocket broadcasts, the admin routes other than delete (create, list, pause,
resume, rotate: :class:`FakePlatform` methods stand for them), ``removed_at`` of a removed
workspace (``null``), and UUID validation of workspace ids (any string is an id).

Where it differs from the real server on purpose (``tests/platform`` runs the library
against the real one): workspaces, tokens, delegations and activity rows are set up
with :class:`FakePlatform`'s methods, not with the server's admin routes (create, delegate,
rotate, pause); ``POST /workspaces/:id/a2a`` answers a push-mode target from
:meth:`FakePlatform.set_a2a_responses` instead of forwarding to an agent's URL (MAY and APR
answer from it even when the workspace registered no URL, where the real server answers
``503 {"error":"workspace has no URL"}``, except for a MAY workspace that is still
``awaiting_agent`` or ``provisioning``: script the rest with :meth:`FakePlatform.fault`;
2026-08 wants a URL, any string, as the real server); a queued message is delivered by an
idle beat to no agent; ``CORS_ORIGINS`` cannot be configured; a request body sent with
``Transfer-Encoding: chunked`` is refused with 400 and the connection closed (bodies are read
by ``Content-Length`` only).

It needs nothing beyond this package and the standard library.
"""

from ._model import ROUTES, RecordedRequest, Response, Workspace
from ._platform import FakePlatform
from ._setup import AgentFiles

__all__ = ["ROUTES", "AgentFiles", "FakePlatform", "RecordedRequest", "Response", "Workspace"]
