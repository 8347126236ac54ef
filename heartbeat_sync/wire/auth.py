"""Credentials on disk: the bearer token the platform issued and the inbound secret it sends.

Both are secrets: nothing in this module (or anywhere in the library) logs their values.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from pathlib import Path

import filelock
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .. import _safefile, _validate
from .._config import ENV_CONFIGS_DIR, ENV_ORG_ID, ENV_PLATFORM_URL, ENV_TOKEN
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog

logger = get_logger(__name__)

TOKEN_FILE = ".auth_token"
INBOUND_SECRET_FILE = ".platform_inbound_secret"
#: The header that routes a request to its tenant; without it such a platform answers 404.
ORG_ID_HEADER = "X-Molecule-Org-Id"
_TOKEN_LOCK_TIMEOUT = 10.0


def resolve_org_id(org_id: str | None) -> str | None:
    """The tenant id to send: ``org_id`` when given, else ``$MOLECULE_ORG_ID``, checked by
    :func:`._validate.org_id` (``ValueError`` naming the argument or the variable)."""
    if org_id is not None:
        return _validate.org_id(org_id)
    return _validate.org_id(os.environ.get(ENV_ORG_ID), f"${ENV_ORG_ID}")


def save_token(configs_dir: Path, token: str) -> Path:
    """Write ``token`` to ``<configs_dir>/.auth_token``, 0600, atomically; return the path.

    The platform shows a registration token once, so it must survive whatever happens next:
    it goes to a temporary 0600 file in the same directory, is flushed to disk, and replaces
    the old file with ``os.replace`` (a reader sees the old token or the new one, never a part),
    all under ``FileLock(<configs_dir>/.auth_token.lock)`` so two writers never interleave.
    Raises ``OSError`` (whose text never holds the token) when it cannot be written.
    """
    if not token or not isinstance(token, str):
        raise ValueError("refusing to save an empty token")
    configs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = configs_dir / TOKEN_FILE
    with filelock.FileLock(str(path) + ".lock", timeout=_TOKEN_LOCK_TIMEOUT):
        # The lock guards the temp name too, so the default one is safe.
        _safefile.atomic_write(str(path), token.encode("utf-8"), fsync=True)
    return path


def check_token_writable(configs_dir: Path) -> None:
    """Raise ``OSError`` unless a token could be saved in ``configs_dir`` now.

    Asked before a registration is sent: the platform may answer it with a token it never
    shows again, so the place it goes to must be known good first. The directory is created
    (0700) if missing, and a file is created in it and removed again: what :func:`save_token`
    needs (the lock file, the temp file, the rename).
    """
    configs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f"{TOKEN_FILE}.probe-", dir=configs_dir)
    os.close(fd)
    os.unlink(probe)
    token = configs_dir / TOKEN_FILE
    if token.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(token))


def keep_token_elsewhere(token: str, workspace_id: str) -> Path | None:
    """Save a token that could not be saved where it belongs in a new 0600 file of its own,
    in ``~/.molecule-workspace`` or else the temporary directory; return its path (None when
    nowhere could take it). The file's name holds the workspace id, never the token.
    """
    for place in (Path.home() / ".molecule-workspace", Path(tempfile.gettempdir())):
        try:
            place.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkstemp: a new name of its own, O_EXCL, mode 0600.
            fd, name = tempfile.mkstemp(prefix=f"auth_token-{workspace_id}-", dir=place)
        except OSError:
            continue
        try:
            _safefile.write_all(fd, token.encode("utf-8"))
            os.fsync(fd)
        except OSError:
            _safefile.unlink_if_present(name)
            continue
        finally:
            os.close(fd)
        return Path(name)
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """The origin of ``url`` in the form the platform accepts as an ``Origin`` header.

    The platform compares the header, as a string, with ``http://`` or ``https://`` followed by
    the request's ``Host`` header, and refuses anything else with an empty 403 on every route.
    So this is ``scheme://host[:port]`` as urllib3 writes ``Host``: scheme and host lower-case,
    a default port left out, no credentials, no path, no trailing slash.

    Raises ``ValueError`` unless ``url`` is an http(s) URL with a host.
    """
    try:
        parts = parse_url(url.strip())
    except LocationParseError as exc:
        raise ValueError(f"{_validate.redact_url(url)!r} is not a URL") from exc
    scheme = (parts.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not parts.host:
        shown = _validate.redact_url(url)
        raise ValueError(f"{shown!r} is not an http:// or https:// URL with a host")
    host = parts.host.lower()
    if parts.port is None or parts.port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{parts.port}"


def origin_header(origin: str | None, platform_url: str) -> str | None:
    """The ``Origin`` to send: ``origin`` serialised, else the platform URL's own origin when
    ``$PLATFORM_URL`` asks for the header (as the reference runtime sends it).

    Raises ``ValueError`` naming the argument when ``origin`` is not an http(s) URL.
    """
    if origin:
        try:
            return origin_of(origin)
        except ValueError as exc:
            raise ValueError(f"origin: {exc}") from None
    if not os.environ.get(ENV_PLATFORM_URL):
        return None
    try:
        return origin_of(platform_url)
    except ValueError:
        return None  # no request can reach such a URL anyway


def resolve_configs_dir(configs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory that holds ``.auth_token`` and ``.platform_inbound_secret``.

    The order is the reference runtime's: the argument, then ``$CONFIGS_DIR`` (created if
    missing), then ``/configs`` if it exists and is writable, then ``~/.molecule-workspace``
    (created with mode 0700). Reading the environment happens here, at call time.
    """
    if configs_dir is not None:
        return Path(configs_dir)
    env = os.environ.get(ENV_CONFIGS_DIR)
    if env:
        path = Path(env)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("cannot create CONFIGS_DIR %s: %s", path, exc)
        return path
    default = Path("/configs")
    if default.is_dir() and os.access(default, os.W_OK):
        return default
    home = Path.home() / ".molecule-workspace"
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("cannot create %s: %s", home, exc)
    return home


def _read_secret_file(path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return value.lstrip("\ufeff").strip() or None


def usable_token(value: str) -> bool:
    """True when ``value`` can be sent as ``Bearer <value>``: printable ASCII, no white space.

    A token with a control character (an inner newline) or a non-ASCII one (a BOM left
    inside, a typographic quote) would make ``requests`` fail with an error that quotes the
    whole header, token included.
    """
    return bool(value) and all("!" <= c <= "~" for c in value)


class Credentials:
    """The workspace's bearer token and inbound secret, shared by the library's threads.

    The token is read once and cached; :meth:`refresh` re-reads it (the loop does that after a
    401, which is how a token rotated on disk is picked up). ``$MOLECULE_WORKSPACE_TOKEN`` is
    the fallback when the file is missing or empty.
    """

    def __init__(
        self,
        configs_dir: Path,
        origin: str | None = None,
        env_token: str | None = None,
        org_id: str | None = None,
    ) -> None:
        self.configs_dir = configs_dir
        self._origin = origin_of(origin) if origin else None
        self.org_id = _validate.org_id(org_id)
        self._env_token = (env_token or "").lstrip("\ufeff").strip() or None
        self._warn = RateLimitedLog(logger)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_loaded = False
        self._adopted: str | None = None
        self._stale: str | None = None
        self._secret: str | None = None
        self._secret_loaded = False
        self._mode_checked = False

    @property
    def token_path(self) -> Path:
        return self.configs_dir / TOKEN_FILE

    @property
    def secret_path(self) -> Path:
        return self.configs_dir / INBOUND_SECRET_FILE

    def _load_token(self) -> str | None:
        token = _read_secret_file(self.token_path)
        if token and not usable_token(token):
            # Never quote it: the message would hold (most of) the secret.
            self._warn.warning(
                "token-file",
                "ignoring the token in %s: it holds white space, control or non-ASCII "
                "characters (a token is one line of printable ASCII)",
                self.token_path,
            )
            token = None
        if token and not self._mode_checked:
            self._mode_checked = True
            try:
                mode = self.token_path.stat().st_mode & 0o777
            except OSError:
                mode = 0
            if mode & 0o077:
                logger.warning(
                    "%s is readable by other users (mode %o); it should be 0600",
                    self.token_path,
                    mode,
                )
        env = self._env_token
        if not token and env and not usable_token(env):
            self._warn.warning(
                "token-env",
                "ignoring $%s: it holds white space, control or non-ASCII characters",
                ENV_TOKEN,
            )
            env = None
        adopted = self._adopted
        if adopted is not None and (token is None or token == self._stale):
            return adopted  # the file still holds what it held when the token was adopted
        return token or env

    def adopt(self, token: str) -> None:
        """Use ``token``, a registration's that could not be saved, until the token file
        holds another one than now (the platform revoked the one it holds, if any, when it
        issued this one)."""
        stale = _read_secret_file(self.token_path)
        with self._lock:
            self._adopted = token
            self._stale = stale
            self._token = token
            self._token_loaded = True

    def token(self) -> str | None:
        """The current bearer token, or None when none is known."""
        with self._lock:
            if not self._token_loaded:
                self._token = self._load_token()
                self._token_loaded = True
            return self._token

    def invalidate(self) -> None:
        """Forget the token held: the next request reads it again (the platform said it was
        rotated)."""
        with self._lock:
            self._token_loaded = False

    def refresh(self) -> bool:
        """Re-read the token from disk. Returns True if it changed."""
        fresh = self._load_token()
        with self._lock:
            changed = fresh != self._token
            self._token = fresh
            self._token_loaded = True
        return changed

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header sent with every request, or None."""
        return self._origin

    def headers(self, self_source: str | None = None, *, auth: bool = True) -> dict[str, str]:
        """Request headers: ``Authorization`` when a token is known (and ``auth``), ``Origin``
        when configured, ``X-Molecule-Org-Id`` when an org id is set, and ``X-Workspace-ID``
        for calls the platform must attribute to this workspace."""
        headers: dict[str, str] = {}
        token = self.token() if auth else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.org_id:
            headers[ORG_ID_HEADER] = self.org_id
        if self._origin:
            headers["Origin"] = self._origin
        if self_source:
            headers["X-Workspace-ID"] = self_source
        return headers

    def save_inbound_secret(self, secret: str) -> bool:
        """Persist the platform's inbound secret if it changed. Returns True if written.

        Written 0600 to a temporary file in the same directory, then ``os.replace``: a reader
        sees the old secret or the new one, never a partial file. An ``OSError`` is logged
        (without the value) and not raised; the next beat tries again.
        """
        if not secret:
            return False
        with self._lock:
            if not self._secret_loaded:
                self._secret = _read_secret_file(self.secret_path)
                self._secret_loaded = True
            if secret == self._secret:
                return False
            # No file lock guards the secret (the last writer wins, whole): a temp name of this
            # process's own keeps two processes from writing through one temp file.
            path = str(self.secret_path)
            try:
                self.configs_dir.mkdir(parents=True, exist_ok=True)
                _safefile.atomic_write(
                    path, secret.encode("utf-8"), tmp=f"{path}.tmp.{os.getpid()}"
                )
            except OSError as exc:
                logger.warning("could not save the platform inbound secret: %s", exc.strerror)
                return False
            self._secret = secret
            return True

    def reinit_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._warn.reinit_after_fork()
