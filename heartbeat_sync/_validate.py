"""Checks of the constructor's arguments: pure, and every message names the argument and range.

A value that passes is one the loop can use for ever: no infinite or NaN wait, no wait longer
than ``threading`` accepts, no string where a number belongs.
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from urllib.parse import urlsplit

#: What the platform issues as a workspace id is a UUID; ids of this shape are accepted
#: (letters, digits, ``-`` and ``_``), so that nothing in one can leave its path segment.
_WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Everything from the scheme's ``//`` to the last ``@``: where a URL's user info can be (more
#: when an ``@`` comes later, which only makes a message say less).
_USER_INFO = re.compile(r"(?<=//).*@", re.DOTALL)
#: The longest wait any argument can ask for: a day (``threading`` refuses far more).
ONE_DAY = 86400.0


def number(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
) -> float:
    """``value`` as a float when it is a real number in the range, else ``ValueError``.

    The range is ``[low, high]``, or ``(low, high]`` with ``low_open``. Booleans, strings
    and NaN are refused; so is infinity, since ``high`` is finite.
    """
    bracket = "(" if low_open else "["
    allowed = f"a number in {bracket}{_plain(low)}, {_plain(high)}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {allowed}, not {value!r}")
    result = float(value)
    too_low = result <= low if low_open else result < low
    if math.isnan(result) or too_low or result > high:
        raise ValueError(f"{name} must be {allowed}, not {value!r}")
    return result


def _plain(bound: float) -> str:
    """``bound`` as people write it: 2592000, not 2.592e+06."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def optional_number(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> float | None:
    """As :func:`number`, with None passed through."""
    if value is None:
        return None
    try:
        return number(name, value, low, high, low_open=low_open)
    except ValueError as exc:
        raise ValueError(f"{exc} (or None)") from None


def workspace_id(value: object) -> str:
    """The workspace id when it can only ever name one path segment, else ``ValueError``.

    The platform's ids are UUIDs; letters, digits, ``-`` and ``_`` are accepted (up to 128
    characters), so ``/``, ``?``, ``#``, ``%``, ``.``, white space and control characters can
    never send a request, and the bearer token with it, to another route.
    """
    if not isinstance(value, str) or not _WORKSPACE_ID.fullmatch(value):
        raise ValueError(
            "workspace_id must be the platform's workspace id (a UUID such as "
            "'3f2b8c1e-0d4a-4e5f-9a7b-1c2d3e4f5a6b'): 1 to 128 letters, digits, '-' or '_'; "
            f"not {value!r}"
        )
    return value


def org_id(value: object, name: str = "org_id") -> str | None:
    """The tenant id stripped of surrounding white space (None when empty), else
    ``ValueError`` naming ``name`` (the argument, or the variable the value came from).

    Only printable ASCII without white space passes: it is sent as a header on every request,
    and a BOM or a zero-width space pasted along with it, or a typographic dash, would make
    every request fail with an error that names nothing.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    stripped = value.strip()
    bad = next((c for c in stripped if not "!" <= c <= "~"), None)
    if bad is not None:
        what = " ".join(filter(None, [f"U+{ord(bad):04X}", unicodedata.name(bad, "")]))
        raise ValueError(
            f"{name} must be printable ASCII without white space (a tenant id such as "
            f"'org-1'), not {value!a}, which holds {what}"
        )
    return stripped or None


def redact_url(url: str) -> str:
    """``url`` with its user info (``user:password@``) shown as ``***@``: safe for a message."""
    return _USER_INFO.sub("***@", url, count=1)


def url_problem(url: str) -> str | None:
    """What keeps ``url`` from being the platform's base URL (a phrase that follows the URL's
    name in a message, e.g. "must have a host"), or None when nothing does.

    An http(s) URL with a host, and nothing the library must not send: no user info (requests
    would turn it into Basic auth in place of the bearer token, and it would be logged), no
    white space or unprintable character, no query or fragment (the routes are appended).
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        return "may not hold white space or unprintable characters"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # the port raises ValueError when unreadable
    except ValueError:
        return "is not a URL: its host or port cannot be read"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if "@" in parts.netloc:
        return (
            "may not carry user info (user:password@): the platform takes the bearer token "
            "alone, and the user info would be sent as Basic auth in its place"
        )
    if not host:
        return "must have a host"
    if "?" in url or "#" in url:
        return "may not have a query or a fragment: the routes are appended to it"
    return None


def platform_url(value: object, name: str = "platform_url") -> str:
    """The platform's base URL, stripped of surrounding white space and of a trailing slash,
    when :func:`url_problem` finds nothing wrong with it; else ``ValueError`` naming ``name``
    (the URL is shown with its user info, and so any password, replaced by ``***``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name} is required: the platform's http:// or https:// base URL, such as "
            "'https://acme.moleculesai.app'"
        )
    url = value.strip()
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"{name} {problem}; got {redact_url(url)!r}")
    return url.rstrip("/")
