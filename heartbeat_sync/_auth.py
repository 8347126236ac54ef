"""Credentials on disk: the bearer token the platform issued and the inbound secret it sends.

Both are secrets: nothing in this module (or anywhere in the library) logs their values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from ._ratelimit import RateLimitedLog

logger = logging.getLogger(__name__)

TOKEN_FILE = ".auth_token"
INBOUND_SECRET_FILE = ".platform_inbound_secret"
TOKEN_ENV = "MOLECULE_WORKSPACE_TOKEN"


def resolve_configs_dir(configs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory that holds ``.auth_token`` and ``.platform_inbound_secret``.

    The order is the reference runtime's: the argument, then ``$CONFIGS_DIR`` (created if
    missing), then ``/configs`` if it exists and is writable, then ``~/.molecule-workspace``
    (created with mode 0700). Reading the environment happens here, at call time.
    """
    if configs_dir is not None:
        return Path(configs_dir)
    env = os.environ.get("CONFIGS_DIR")
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
        self, configs_dir: Path, origin: str | None = None, env_token: str | None = None
    ) -> None:
        self.configs_dir = configs_dir
        self._origin = origin
        self._env_token = (env_token or "").lstrip("\ufeff").strip() or None
        self._warn = RateLimitedLog(logger)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_loaded = False
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
                TOKEN_ENV,
            )
            env = None
        return token or env

    def token(self) -> str | None:
        """The current bearer token, or None when none is known."""
        with self._lock:
            if not self._token_loaded:
                self._token = self._load_token()
                self._token_loaded = True
            return self._token

    def refresh(self) -> bool:
        """Re-read the token from disk. Returns True if it changed."""
        fresh = self._load_token()
        with self._lock:
            changed = fresh != self._token
            self._token = fresh
            self._token_loaded = True
        return changed

    def headers(self, self_source: str | None = None) -> dict[str, str]:
        """Request headers: ``Authorization`` when a token is known, ``Origin`` when configured,
        and ``X-Workspace-ID`` for calls the platform must attribute to this workspace."""
        headers: dict[str, str] = {}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
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
            tmp = self.secret_path.with_name(INBOUND_SECRET_FILE + f".tmp.{os.getpid()}")
            try:
                self.configs_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    # The mode given to open() only applies when the file is created.
                    os.fchmod(fd, 0o600)
                    os.write(fd, secret.encode("utf-8"))
                finally:
                    os.close(fd)
                os.replace(tmp, self.secret_path)
            except OSError as exc:
                logger.warning("could not save the platform inbound secret: %s", exc.strerror)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                return False
            self._secret = secret
            return True

    def reinit_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._warn.reinit_after_fork()
