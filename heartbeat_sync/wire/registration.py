"""Registration: ``POST /registry/register``, and keeping what it shows only once.

An external agent (one that runs outside the platform) joins its workspace by registering: the
platform records the agent's URL (push delivery) or notes that the agent polls, marks the
workspace online, and may hand out a bearer token. That token appears in this one answer and
never again, so it is on disk (``<configs_dir>/.auth_token``, 0600, atomically) before
:func:`register` returns. Nothing here logs the token or the inbound secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _validate
from .._config import ENV_TOKEN
from .._logctx import get_logger
from .auth import (
    Credentials,
    check_token_writable,
    keep_token_elsewhere,
    origin_header,
    resolve_configs_dir,
    resolve_org_id,
    save_token,
)
from .client import PlatformClient, PlatformError
from .http import make_session

logger = get_logger(__name__)

DELIVERY_MODES = ("push", "poll")


class RegistrationError(Exception):
    """The platform did not register the workspace, or its token could not be kept.

    ``status`` is the HTTP status (None when no answer arrived, e.g. the platform is
    unreachable) and ``error`` the platform's ``error`` text, or what went wrong. Neither
    ever holds the token. ``registered`` is True when the platform did register the
    workspace but the token it issued could not be saved where it belongs: ``token_file``
    then names the 0600 file it was kept in instead (None if none could take it).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        error: str,
        retry_after: float | None = None,
        transport: bool | None = None,
        registered: bool = False,
        token_file: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.retry_after = retry_after
        self._transport = status is None if transport is None else transport
        self.registered = registered
        self.token_file = token_file

    @property
    def transport(self) -> bool:
        """True when no answer arrived: trying again later may succeed."""
        return self._transport


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

    Nothing is sent unless a token could be saved in ``credentials.configs_dir`` (the platform
    shows a token it issues once). The token (when the answer has one) is written before
    this returns; the inbound secret is saved as the heartbeat saves it. Raises
    :class:`RegistrationError`; one with ``registered`` set when the platform registered the
    workspace but its token could not be saved (it is then kept in a 0600 file of its own,
    named in the message, and used by ``credentials`` meanwhile).
    """
    configs_dir = credentials.configs_dir
    try:
        check_token_writable(configs_dir)
    except OSError as exc:
        raise RegistrationError(
            f"not registering: a token the platform issues could not be saved in "
            f"{configs_dir} ({exc.strerror or type(exc).__name__}); nothing was sent",
            status=None,
            error="configs_dir not writable",
            transport=False,
        ) from None
    try:
        reply = client.register(body)
    except PlatformError as exc:
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        text = error if isinstance(error, str) and error else str(exc)
        raise RegistrationError(
            str(exc), status=exc.status, error=text[:300], retry_after=exc.retry_after
        ) from None
    token = reply.get("auth_token")
    issued = isinstance(token, str) and bool(token.strip())
    if issued:
        assert isinstance(token, str)
        _keep_token(token.strip(), str(body.get("id")), credentials)
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


def _keep_token(token: str, workspace_id: str, credentials: Credentials) -> None:
    """Save a token the platform just issued; if that fails, keep it where it can be found.

    The platform will not show it again and has revoked any older one: losing it locks the
    workspace out (the next registration is refused with 401).
    """
    try:
        save_token(credentials.configs_dir, token)
    except OSError as exc:
        kept = keep_token_elsewhere(token, workspace_id)
        credentials.adopt(token)
        where = (
            f"it is kept in {kept} (0600): move that file to {credentials.token_path}"
            if kept is not None
            else "and no other place could keep it either"
        )
        raise RegistrationError(
            f"registered, but the token the platform issued could not be saved in "
            f"{credentials.configs_dir} ({exc.strerror or type(exc).__name__}); {where}",
            status=200,
            error="token not saved",
            registered=True,
            token_file=kept,
        ) from None


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

    Nothing is sent for a workspace the platform removed (the open ``GET /workspaces/:id``
    answers 410), nor unless ``configs_dir`` can take a token.

    Raises:
        RegistrationError: the platform refused (``status`` and its ``error`` text), could not
            be reached (``status`` None), removed the workspace (410), or ``configs_dir``
            cannot take a token (nothing sent); or the workspace was registered but its new
            token could not be saved (``registered`` True, the token kept in ``token_file``).
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
        _refuse_removed(client)
        return register_with(client, body, credentials)
    finally:
        client.close()


def _refuse_removed(client: PlatformClient) -> None:
    """Raise :class:`RegistrationError` when the platform says the workspace was removed.

    The platform answers a removed workspace's registration 200 with a fresh token that no
    route accepts (its status stays ``removed``): saving it would replace a token file with
    a useless one and report success. The open ``GET /workspaces/:id`` answers 410 for it.
    Any other answer (or none) lets the registration itself say what is wrong.
    """
    try:
        client.workspace(client.workspace_id)
    except PlatformError as exc:
        if exc.status == 410:
            raise RegistrationError(
                f"workspace {client.workspace_id} was removed from the platform: not "
                f"registering (its token file is left as it is)",
                status=410,
                error="workspace removed",
            ) from None
