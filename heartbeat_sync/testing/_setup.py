"""The set-up half of FakePlatform's API: workspaces, tokens, delegations, activity, scripts.

Tests arrange the platform with these methods instead of the real server's admin routes; each
changes the shared :class:`State` under its lock, so the server's threads see it at once.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any, TypedDict

from ..wire import save_token
from ._model import (
    MISSING,
    ActivityEntry,
    Raw,
    Response,
    Workspace,
    entry_json,
    new_secret,
    visible,
)
from ._state import ROOT_ID, State, canvas_marked, message_request


class AgentFiles(TypedDict):
    """The files a ``Heartbeat`` of one workspace keeps, as its keyword arguments."""

    results_file: Path
    cursor_file: Path
    seen_file: Path
    configs_dir: Path


class WorkspaceSetup:
    """What a test can arrange before (or while) a client talks to the platform."""

    _state: State

    def add_workspace(
        self,
        workspace_id: str | None = None,
        *,
        name: str = "",
        parent_id: str | None = None,
        with_token: bool = True,
        talk_to_user_enabled: bool = True,
        status: str = "online",
        url: str = "",
        delivery_mode: str = "push",
        role: str | None = None,
    ) -> Workspace:
        """Create a workspace and return its (live) :class:`Workspace`.

        ``workspace_id`` defaults to a fresh ``uuid4``.  With ``with_token`` (the
        default) one live auth token is minted (``ws.token``); without it the
        registry routes accept unauthenticated calls ("grandfathered").  ``url`` and
        ``role`` is the workspace's role (a message's ``peer_role`` on 2026-08). ``url`` and
        ``delivery_mode`` are what a registration would have stored (2026-08 answers a
        push-mode message to a workspace without a URL with 503, as the real server).
        On 2026-08 a workspace without ``parent_id`` is a child of the platform root
        (``Org Concierge``), as there.  Raises ``ValueError`` if the id exists already
        or ``delivery_mode`` is neither ``"push"`` nor ``"poll"``.
        """
        ws_id = workspace_id if workspace_id is not None else str(uuid.uuid4())
        if delivery_mode not in ("push", "poll"):
            raise ValueError(f"delivery_mode must be 'push' or 'poll', not {delivery_mode!r}")
        state = self._state
        with state.lock:
            if ws_id in state.workspaces:
                raise ValueError(f"workspace {ws_id!r} already exists")
            if parent_id is None and state.aug:
                parent_id = ROOT_ID
            ws = state.create_workspace(
                ws_id,
                name=name,
                parent_id=parent_id,
                status=status,
                talk_to_user_enabled=talk_to_user_enabled,
                tokens=[new_secret()] if with_token else [],
                url=url,
                delivery_mode=delivery_mode,
            )
            ws.role = role
            state.changed()
            return ws

    def write_token(self, workspace_id: str, configs_dir: str | os.PathLike[str]) -> Path:
        """Write the workspace's newest live token to ``<configs_dir>/.auth_token``; its path.

        That is where a ``Heartbeat(..., configs_dir=configs_dir)`` reads it. It is saved as
        :func:`heartbeat_sync.register` saves a token: the directory created (0700) when
        missing, the file 0600, written under a temporary name and renamed into place, so a
        reader never sees part of a token. Call it again after :meth:`rotate_token` to hand
        the new token over. ``KeyError`` when the workspace is unknown, ``ValueError`` when
        it has no live token.
        """
        token = self.workspace(workspace_id).token
        if token is None:
            raise ValueError(f"workspace {workspace_id!r} has no live token")
        return save_token(Path(configs_dir), token)

    def agent_files(self, workspace_id: str, folder: str | os.PathLike[str]) -> AgentFiles:
        """Lay out in ``folder`` what an agent of the workspace keeps, its token written.

        Returns the paths as ``Heartbeat``'s keyword arguments, so that an example or a test
        starts one against this platform in a line, its files out of the way of any other::

            hb = Heartbeat(fp.url, ws.id, **fp.agent_files(ws.id, tmp))

        The token is written to ``<folder>/configs/.auth_token`` by :meth:`write_token`; the
        results, cursor and seen files are ``results.jsonl``, ``cursor`` and ``seen`` in
        ``folder`` (not created). Raises as :meth:`write_token` does.
        """
        files = AgentFiles(
            results_file=Path(folder, "results.jsonl"),
            cursor_file=Path(folder, "cursor"),
            seen_file=Path(folder, "seen"),
            configs_dir=Path(folder, "configs"),
        )
        self.write_token(workspace_id, files["configs_dir"])
        return files

    def workspace(self, workspace_id: str) -> Workspace:
        """The live :class:`Workspace` object; ``KeyError`` if unknown."""
        with self._state.lock:
            return self._state.ws(workspace_id)

    def workspaces(self) -> list[Workspace]:
        """All workspaces, in creation order (on 2026-08 the platform root comes first)."""
        with self._state.lock:
            return list(self._state.workspaces.values())

    def issue_token(self, workspace_id: str) -> str:
        """Mint one more live token for the workspace and return it."""
        with self._state.lock:
            token = new_secret()
            self._state.set_tokens(workspace_id, [*self._state.ws(workspace_id).tokens, token])
            return token

    def rotate_token(self, workspace_id: str) -> str:
        """``POST /workspaces/:id/external/rotate``: revoke all live tokens, mint a new one and
        return it (old ones get 401); ``EXTERNAL_CREDENTIALS_ROTATED {workspace_id}`` goes to
        the workspace's stream."""
        return self._state.rotate_token(workspace_id)

    def pause(self, workspace_id: str) -> int:
        """``POST /workspaces/:id/pause``: pause the workspace and its descendants.

        As on the real server: status ``paused``, the agent URL cleared; beats are still
        answered 200 but change nothing; a push-mode message answers
        ``503 {"error":"workspace has no URL","status":"paused"}``; only a registration
        brings it back.  Returns how many workspaces were paused; ``KeyError`` when the
        workspace is unknown, removed or already paused (the real server's 404).
        """
        return self._state.pause(workspace_id)

    def hibernate(self, workspace_id: str) -> None:
        """``POST /workspaces/:id/hibernate``: status ``hibernated``, the agent URL cleared.

        A push-mode message then answers 503 ``waking`` (``Retry-After: 15``); beats change
        nothing; a registration brings it back.  ``KeyError`` unless it is online or degraded
        (the real server's 404).
        """
        self._state.hibernate(workspace_id)

    def delete(self, workspace_id: str) -> None:
        """``DELETE /workspaces/:id``: status ``removed`` and every token revoked.

        As on the real server: beats pass unauthenticated and are answered 200 (nothing is
        written); ``/workspaces/:id/*`` answers 401 to the old token; ``GET /workspaces/:id``
        answers 410; a registration answers 200 with a fresh token but the status stays
        ``removed``.  ``WORKSPACE_REMOVED`` goes to its stream (on 2026-08 only the first
        time).  No name to confirm, no descendants removed: the HTTP route (with
        :attr:`FakePlatform.admin_token`) asks for those.
        """
        self._state.delete(workspace_id)

    def set_desired_generation(self, workspace_id: str, generation: int) -> None:
        """Raise the workspace's desired generation: the ``generation`` every 2026-08 beat
        reply carries (the real server raises it when it mints a wake intent, e.g. its stall
        watchdog).  It only grows: ``ValueError`` for a lower value or a non-integer,
        ``KeyError`` for an unknown workspace."""
        if type(generation) is not int or generation < 0:
            raise ValueError(f"generation must be an integer >= 0, not {generation!r}")
        with self._state.lock:
            ws = self._state.ws(workspace_id)
            if generation < ws.desired_generation:
                raise ValueError(
                    f"the desired generation only grows: {generation} < {ws.desired_generation}"
                )
            ws.desired_generation = generation
            self._state.changed()

    def revoke_tokens(self, workspace_id: str) -> None:
        """Revoke all live tokens (registry routes then accept unauthenticated calls)."""
        self._state.set_tokens(workspace_id, [])

    def rotate_inbound_secret(self, workspace_id: str) -> str:
        """Replace the workspace's ``platform_inbound_secret`` and return the new one."""
        with self._state.lock:
            ws = self._state.ws(workspace_id)
            ws.inbound_secret = new_secret()
            self._state.changed()
            return ws.inbound_secret

    def add_delegation(
        self,
        workspace_id: str,
        *,
        delegation_id: str | None = None,
        source_id: str | None = None,
        target_id: str = "",
        status: str = "pending",
        summary: str = "",
        response_preview: str = "",
        error: str = "",
        direction: str = "sent",
    ) -> str:
        """Add a delegation to the workspace's ``/delegations`` list; returns its id.

        ``source_id`` defaults to the workspace itself, ``delegation_id`` to a uuid4.
        ``direction="received"`` adds the ledger row of a delegation this workspace
        *received*: ``source_id`` (required) is the workspace that delegated, ``target_id``
        defaults to this one, no event is sent; only 2026-08 lists it (with
        ``"direction": "received"``; its other rows say ``"sent"``), MAY and APR never do.
        """
        return self._state.add_delegation(
            workspace_id,
            delegation_id=delegation_id,
            source_id=source_id,
            target_id=target_id,
            status=status,
            summary=summary,
            response_preview=response_preview,
            error=error,
            direction=direction,
        )

    def set_delegation(
        self,
        workspace_id: str,
        delegation_id: str,
        *,
        status: str | None = None,
        response_preview: str | None = None,
        error: str | None = None,
        summary: str | None = None,
    ) -> None:
        """Update fields of a delegation added with :meth:`add_delegation`.

        Fields left ``None`` are unchanged; ``updated_at`` is bumped.  ``KeyError`` if
        the workspace or delegation is unknown.
        """
        self._state.set_delegation(
            workspace_id,
            delegation_id,
            status=status,
            response_preview=response_preview,
            error=error,
            summary=summary,
        )

    def add_raw_delegation_row(self, workspace_id: str, row: object) -> None:
        """Append any JSON value verbatim to the ``/delegations`` list."""
        with self._state.lock:
            self._state.ws(workspace_id)
            self._state.delegations[workspace_id].append(Raw(row))
            self._state.changed()

    def add_activity(
        self,
        workspace_id: str,
        *,
        source_id: str | None,
        activity_type: str = "a2a_receive",
        text: str | None = None,
        summary: str = "",
        status: str = "ok",
        method: str = "message/send",
        request_body: object = MISSING,
        activity_id: str | None = None,
        committed: bool = True,
        same_instant_as: str | None = None,
    ) -> str:
        """Append an activity row to the workspace's log; returns the row id.

        When ``request_body`` is not given and ``text`` is, the row's request body is
        a JSON-RPC ``message/send`` request carrying ``text`` as one ``kind: text``
        part.  With neither, the row has no ``request_body`` key.  ``created_at`` is
        strictly increasing across all rows of the platform, unless ``same_instant_as``
        names a row of the workspace whose ``created_at`` it then shares (rows written in
        one instant: a ``since_id`` of the first skips the others on MAY, returns them on
        2026-08, which also compares ``seq``).  Every row draws the next ``seq`` of one
        server-wide counter (shown on 2026-08).

        ``committed=False`` makes a row that commits late, as the platform's background
        inserts can: it gets its ``created_at`` now but no read returns it (nor knows its
        id as a ``since_id``) until :meth:`commit_activity`. Rows added meanwhile are
        newer, so a ``since_id`` of one of them never returns it.
        """
        if request_body is MISSING and text is not None:
            request_body = message_request(text, method)
        return self._state.add_activity(
            workspace_id,
            activity_id,
            same_instant_as=same_instant_as,
            activity_type=activity_type,
            status=status,
            source_id=source_id,
            method=method,
            summary=summary,
            request_body=request_body,
            committed=committed,
        )

    def queue_poll_message(
        self,
        target_id: str,
        text: str,
        *,
        sender_id: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """A ``message/send`` carrying ``text`` to the workspace, logged as the proxy logs a
        message to a poll-mode workspace (as if ``POST /workspaces/:id/a2a`` had sent it);
        the id of its row.

        ``sender_id`` is the caller (``None``: a canvas message, which 2026-08 marks in
        ``params.metadata``); ``message_id`` is ``params.message.messageId`` (a uuid4
        otherwise).  MAY: one row ``message/send → <name> (queued for poll)`` and one
        ``ACTIVITY_LOGGED``.  2026-08: one row ``… (ingest)`` and two ``ACTIVITY_LOGGED``
        (``(ingest)``, then ``(queued for poll)``), both with ``message_id``.  The workspace's
        delivery mode is not checked.  ``ValueError`` on APR (no poll mode).
        """
        state = self._state
        with state.lock:
            ws = state.ws(target_id)
            if not state.modern:
                raise ValueError("the APR server has no poll mode")
            request = self._request(text, message_id, sender_id, target_id)
            return state.queue_for_poll(ws, request, sender_id)

    def queue_busy_message(
        self,
        target_id: str,
        text: str,
        *,
        sender_id: str | None = None,
        message_id: str | None = None,
    ) -> list[str]:
        """A ``message/send`` carrying ``text`` that the proxy queued behind the workspace's
        busy agent (its call ended in a timeout, EOF or reset); the ids of the rows written,
        oldest first.

        2026-08: two rows, ``message/send → <name> (ingest)`` and ``… (queued: target busy)``,
        with a byte-identical ``request_body``, each its own id and ``seq``; the second has a
        numeric ``duration_ms`` and its event no ``message_id``.  MAY: one ``status: "error"``
        row ``A2A request to <name> failed: Post "<url>": EOF``.  Either way the message waits
        in the workspace's queue until a beat with ``active_tasks`` 0.  ``sender_id`` and
        ``message_id`` as for :meth:`queue_poll_message`; ``ValueError`` on APR.
        """
        state = self._state
        with state.lock:
            ws = state.ws(target_id)
            if not state.modern:
                raise ValueError("the APR server queues no message")
            request = self._request(text, message_id, sender_id, target_id)
            ids, _ = state.queue_busy(ws, request, sender_id)
            return ids

    def _request(
        self, text: str, message_id: str | None, sender_id: str | None, target_id: str
    ) -> dict[str, Any]:
        request = message_request(text, "message/send", message_id)
        if self._state.aug and sender_id is None:
            return canvas_marked(request, target_id)
        return request

    def commit_activity(self, workspace_id: str, activity_id: str) -> None:
        """Make a row added with ``committed=False`` visible, with its original ``created_at``."""
        self._state.commit_activity(workspace_id, activity_id)

    def add_raw_activity_row(self, workspace_id: str, row: object) -> None:
        """Append any JSON value verbatim to the activity log (never filtered)."""
        with self._state.lock:
            self._state.ws(workspace_id)
            entry = Raw(row, key=(self._state.now_us(), 0))
            self._state.activity[workspace_id].append(entry)
            self._state.changed()

    def activity_rows(self, workspace_id: str) -> list[object]:
        """The workspace's committed activity rows as JSON, oldest first (raw rows verbatim)."""
        state = self._state
        with state.lock:
            state.ws(workspace_id)
            entries = sorted((e for e in state.activity[workspace_id] if visible(e)), key=_key)
            return [entry_json(e, state.generation) for e in entries]

    def set_a2a_responses(self, workspace_id: str, responses: list[Response]) -> None:
        """Script the answers of ``POST /workspaces/:id/a2a`` (replaces any script).

        Each accepted request pops the next :class:`Response`; once the script is
        empty the answer is ``200`` with a JSON-RPC ``result`` message whose text is
        ``"ok"``.
        """
        with self._state.lock:
            self._state.ws(workspace_id)
            self._state.a2a_script[workspace_id] = deque(responses)
            self._state.changed()


def _key(entry: ActivityEntry) -> tuple[int, int]:
    return entry.key
