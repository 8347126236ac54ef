"""Registration: ``POST /registry/register``, and keeping what it shows only once.

An external agent (one that runs outside the platform) joins its workspace by registering: the
platform records the agent's URL (push delivery) or notes that the agent polls, marks the
workspace online, and may hand out a bearer token. That token appears in this one answer and
never again, so it is on disk (``<configs_dir>/.auth_token``, 0600, atomically) before
:func:`register` returns. Nothing here logs the token or the inbound secret.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import _http, _validate
from ._auth import (
    Credentials,
    origin_header,
    resolve_configs_dir,
    resolve_org_id,
    save_token,
)
from ._client import PlatformClient, PlatformError
from ._config import ENV_TOKEN
from ._http import make_session
from ._ratelimit import RateLimitedLog

logger = logging.getLogger(__name__)

DELIVERY_MODES = ("push", "poll")
#: The first wait before a registration is tried again (it doubles up to a cap).
REGISTER_RETRY_FIRST = 1.0
#: Statuses after which a registration is tried again: the platform is overloaded or down
#: (a GET's retry statuses, and 500), or the token is not (yet) the right one (401; it is
#: re-read before each attempt).
RETRY_STATUSES = _http.RETRY_STATUSES | {401, 500}


class RegistrationError(Exception):
    """The platform did not register the workspace, or its token could not be kept.

    ``status`` is the HTTP status (None when no answer arrived, e.g. the platform is
    unreachable) and ``error`` the platform's ``error`` text, or what went wrong. Neither
    ever holds the token.
    """

    def __init__(self, message: str, *, status: int | None, error: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error

    @property
    def transport(self) -> bool:
        """True when no answer arrived: trying again later may succeed."""
        return self.status is None


@dataclass(frozen=True)
class Registration:
    """What the platform answered to a successful registration (no secret is kept here).

    Attributes:
        workspace_id: The workspace registered.
        status: The platform's ``status`` field (``"registered"``).
        delivery_mode: ``"push"`` or ``"poll"`` as the platform recorded it, or None when an
            older platform does not say.
        token_issued: True when the answer carried a new bearer token (it was written to
            ``token_file``); False when the workspace already had one (the file is kept).
        token_file: Where the bearer token is kept: ``<configs_dir>/.auth_token``.
        inbound_secret_saved: True when the answer carried the platform's inbound secret and
            it was written to ``<configs_dir>/.platform_inbound_secret``.
    """

    workspace_id: str
    status: str
    delivery_mode: str | None
    token_issued: bool
    token_file: Path
    inbound_secret_saved: bool


def registration_body(
    workspace_id: str,
    *,
    url: str | None,
    agent_card: dict[str, Any] | None,
    delivery_mode: str | None,
) -> dict[str, Any]:
    """The register request body; ``ValueError`` for arguments the platform would refuse."""
    _validate.workspace_id(workspace_id)
    if delivery_mode is not None and delivery_mode not in DELIVERY_MODES:
        raise ValueError(f"delivery_mode must be 'push' or 'poll', not {delivery_mode!r}")
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise ValueError(f"url must be a non-empty string, not {url!r}")
    if agent_card is not None and not isinstance(agent_card, dict):
        raise ValueError(f"agent_card must be a dict, not {type(agent_card).__name__}")
    # The platform requires a card; it fills an empty one's name from the workspace.
    body: dict[str, Any] = {"id": workspace_id, "agent_card": dict(agent_card or {})}
    if url is not None:
        body["url"] = url.strip()
    if delivery_mode is not None:
        body["delivery_mode"] = delivery_mode
    return body


def register_with(
    client: PlatformClient, body: dict[str, Any], credentials: Credentials
) -> Registration:
    """Send ``body`` with ``client`` and keep what the answer shows once.

    The token (when the answer has one) is written before this returns; the inbound secret is
    saved as the heartbeat saves it. Raises :class:`RegistrationError`.
    """
    try:
        reply = client.register(body)
    except PlatformError as exc:
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        text = error if isinstance(error, str) and error else str(exc)
        raise RegistrationError(str(exc), status=exc.status, error=text[:300]) from None
    token = reply.get("auth_token")
    issued = isinstance(token, str) and bool(token.strip())
    if issued:
        assert isinstance(token, str)
        try:
            save_token(credentials.configs_dir, token.strip())
        except OSError as exc:
            # The platform will not show this token again: the caller must know at once.
            raise RegistrationError(
                f"registered, but the new token could not be saved in "
                f"{credentials.configs_dir}: {exc.strerror or type(exc).__name__}",
                status=200,
                error="token not saved",
            ) from None
        credentials.refresh()
    secret = reply.get("platform_inbound_secret")
    saved = isinstance(secret, str) and bool(secret) and credentials.save_inbound_secret(secret)
    raw_mode = reply.get("delivery_mode")
    raw_status = reply.get("status")
    registration = Registration(
        workspace_id=str(body.get("id")),
        status=raw_status if isinstance(raw_status, str) else "",
        delivery_mode=raw_mode if isinstance(raw_mode, str) else None,
        token_issued=issued,
        token_file=credentials.token_path,
        inbound_secret_saved=bool(saved),
    )
    logger.info(
        "registered workspace %s (delivery mode %s%s)",
        registration.workspace_id,
        registration.delivery_mode or "not reported",
        "; a new token was saved" if issued else "",
    )
    return registration


def register_until_done(
    client: PlatformClient,
    body: dict[str, Any],
    credentials: Credentials,
    *,
    stopping: Callable[[], bool],
    wait: Callable[[float], None],
    max_delay: float,
    warn: RateLimitedLog,
    on_failure: Callable[[RegistrationError], None],
) -> bool:
    """Register, trying again with a doubling wait (up to ``max_delay``) while the platform
    cannot be reached or answers a status in :data:`RETRY_STATUSES`. Returns True once
    registered; False when refused for good (one ERROR line) or when ``stopping()``."""
    delay = REGISTER_RETRY_FIRST
    while not stopping():
        credentials.refresh()  # a token placed meanwhile counts
        try:
            register_with(client, body, credentials)
            return True
        except RegistrationError as exc:
            if stopping():
                return False
            on_failure(exc)
            if not (exc.transport or exc.status in RETRY_STATUSES):
                logger.error("registration refused, beating without it: %s", exc)
                return False
            warn.warning("register", "registration failed, retrying in %.1f s: %s", delay, exc)
        wait(delay)
        delay = min(delay * 2, max_delay)
    return False


def register(
    platform_url: str,
    workspace_id: str,
    *,
    url: str | None = None,
    agent_card: dict[str, Any] | None = None,
    configs_dir: str | os.PathLike[str] | None = None,
    org_id: str | None = None,
    delivery_mode: str | None = None,
    timeout: float = 10.0,
) -> Registration:
    """Register an agent for ``workspace_id`` with the platform: ``POST /registry/register``.

    Args:
        platform_url: Base URL of the platform, e.g. ``https://acme.moleculesai.app``, checked
            as ``Heartbeat`` checks it (no user info, which would replace the token).
        workspace_id: The workspace the agent serves (created beforehand, e.g. with the admin
            API's ``POST /workspaces {"external": true, "runtime": "external"}``).
        url: Where the platform reaches the agent (push delivery). The platform refuses
            loopback IP addresses; ``http://localhost:PORT`` is accepted.
        agent_card: The A2A agent card; None sends ``{}`` (the platform fills in the name).
        configs_dir: Where ``.auth_token`` and ``.platform_inbound_secret`` live. None:
            ``$CONFIGS_DIR``, else ``/configs`` if writable, else ``~/.molecule-workspace``.
        org_id: The tenant of a multi-tenant platform, sent as ``X-Molecule-Org-Id``: printable
            ASCII without white space, surrounding white space stripped. None:
            ``$MOLECULE_ORG_ID`` (checked alike).
        delivery_mode: ``"push"`` or ``"poll"``; None lets the platform keep the mode it has
            (push for a new workspace, which then needs ``url``).
        timeout: Seconds for the whole request, a number in (0, 3600].

    The request carries the token already in ``<configs_dir>/.auth_token`` (or
    ``$MOLECULE_WORKSPACE_TOKEN``): a workspace that has a token accepts only a registration
    that shows it. A token in the answer is written to ``<configs_dir>/.auth_token`` (0600,
    atomically) before this returns, and never logged; without one the file is kept.

    Returns:
        A :class:`Registration` saying what the platform recorded.

    Raises:
        RegistrationError: the platform refused (``status`` and its ``error`` text), could not
            be reached (``status`` None), or the new token could not be saved.
        ValueError: an argument the platform would refuse anyway, or no request could use.
    """
    platform_url = _validate.platform_url(platform_url)
    seconds = _validate.number("timeout", timeout, 0, 3600, low_open=True)
    body = registration_body(
        workspace_id, url=url, agent_card=agent_card, delivery_mode=delivery_mode
    )
    tenant = resolve_org_id(org_id)
    credentials = Credentials(
        resolve_configs_dir(configs_dir),
        origin=origin_header(None, platform_url),
        env_token=os.environ.get(ENV_TOKEN),
        org_id=tenant,
    )
    client = PlatformClient(platform_url, workspace_id, credentials, make_session, timeout=seconds)
    try:
        return register_with(client, body, credentials)
    finally:
        client.close()
