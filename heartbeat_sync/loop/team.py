"""The workspace's team on the platform, for an evenly spread slot (:func:`.schedule.team_phase`).

What the platform answers, verified on the real server: ``GET /workspaces/:id`` (an open route)
gives the workspace's ``parent_id`` (null at the top level); ``GET /registry/:id/peers`` (the
workspace's bearer, 404 for an unknown id) lists its siblings, its children and its parent,
never a removed one. The siblings are the entries with the same ``parent_id``; for a top-level
workspace, the other top-level ones.

The slot is worked out once a run, after the first beat that the platform took. An answer that
will not change (a refusal, a server without the route, a list that cannot be read) leaves the
phase hashed from the id; a transport failure or a 5xx is tried again after a later beat, up to
:data:`MAX_TRIES` times. :func:`siblings` is pure; :func:`find_phase` is the only I/O.
"""

from __future__ import annotations

from typing import Any

from .._logctx import get_logger
from ..delivery import valid_id
from ..wire import PlatformClient, PlatformError
from . import schedule as _schedule

logger = get_logger(__name__)

#: Lookups a run tries (each after a beat the platform took) before it keeps the hashed phase.
MAX_TRIES = 3


def siblings(peers: Any, workspace_id: str, parent_id: str | None) -> list[str] | None:
    """The ids of ``workspace_id``'s siblings (same ``parent_id``) in a peers answer; None when
    the answer is not a list. Entries that are not objects or carry no valid id are passed over.
    """
    if not isinstance(peers, list):
        return None
    found = []
    for peer in peers:
        if not isinstance(peer, dict):
            continue
        peer_id = peer.get("id")
        if not isinstance(peer_id, str) or not valid_id(peer_id) or peer_id == workspace_id:
            continue
        if peer.get("kind") == "platform":
            continue  # the platform's own root workspace: no member of any team
        if peer.get("parent_id") == parent_id:
            found.append(peer_id)
    return found


def _parent_of(workspace: dict[str, Any]) -> tuple[bool, str | None]:
    """(known, parent id) from ``GET /workspaces/:id``: null is the top level."""
    parent = workspace.get("parent_id")
    if parent is None:
        return True, None
    if isinstance(parent, str) and valid_id(parent):
        return True, parent
    return False, None


def transient(exc: PlatformError) -> bool:
    """A failure worth another try: no answer, a 429 or a 5xx."""
    return exc.status is None or exc.status == 429 or exc.status >= 500


def find_phase(client: PlatformClient) -> float | None:
    """The workspace's :func:`~.schedule.team_phase`, or None when the platform cannot tell
    (the phase then stays hashed from the id). Raises :class:`PlatformError` when
    :func:`transient` (worth another try)."""
    workspace_id = client.workspace_id
    try:
        known, parent = _parent_of(client.workspace(workspace_id))
        team = siblings(client.peers(), workspace_id, parent) if known else None
    except PlatformError as exc:
        if transient(exc):
            raise
        logger.info("the beat slot stays hashed from the workspace id: %s", exc)
        return None
    if team is None:
        logger.info("the beat slot stays hashed from the workspace id: no team in the answer")
        return None
    phase = _schedule.team_phase(workspace_id, team, parent)
    logger.debug("beat slot at %.3f of the interval, in a team of %d", phase, len(team) + 1)
    return phase
