"""Response bodies: read whole within a bound and parsed as JSON, or read piece by piece as
they arrive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Callable, cast

import requests

#: A GET response body larger than this is abandoned unread: the platform never sends one.
MAX_BODY_BYTES = 4 * 1024 * 1024


class BodyTooLarge(ValueError):
    """The response body was larger than the library accepts."""


def read_body(resp: requests.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read a streamed response body, giving up past ``limit`` bytes (memory stays bounded)."""
    try:
        length = int(resp.headers.get("Content-Length", "-1"))
    except ValueError:
        length = -1
    if length > limit:
        resp.close()
        raise BodyTooLarge(f"response body of {length} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit:
            resp.close()
            raise BodyTooLarge(f"response body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(data: bytes) -> Any:
    """Parse JSON, returning None for an empty or malformed body (never raises)."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


#: The most a single read of the stream takes (it returns sooner with what has arrived).
READ_SIZE = 65536


def read_as_it_arrives(resp: requests.Response) -> Iterator[bytes]:
    """The body of a streamed response, each piece as soon as it has arrived, never held back
    waiting for more; it ends with the body.

    The platform sends the stream chunked, and each chunk (an event) is read as it comes. A
    body without chunked framing (a proxy may pass it on so, up to the connection's close or a
    ``Content-Length``) is read a piece at a time with one system call at most, so each read
    returns whatever has arrived, up to :data:`READ_SIZE` bytes.
    """
    raw = resp.raw
    if raw.chunked:
        yield from resp.iter_content(chunk_size=READ_SIZE)
        return
    read1 = _read1(raw)
    if read1 is None:
        # No such read (an encoded body with urllib3 before 2.2): only a byte at a time is
        # sure to return without waiting for bytes that are not sent yet.
        yield from resp.iter_content(chunk_size=1)
        return
    while True:
        piece = read1(READ_SIZE)
        if not piece:
            return
        yield piece


def _read1(raw: Any) -> Callable[[int], bytes] | None:
    """A read of at most one system call for ``raw`` (a urllib3 response), if there is one."""
    read1 = getattr(raw, "read1", None)
    if callable(read1):
        return cast("Callable[[int], bytes]", read1)  # urllib3 2.2 and later; it decodes too
    # urllib3 2.0 and 2.1 have none, but the standard library's response they read from has:
    # it returns the bytes as sent, so it serves only a body sent without Content-Encoding.
    plain_read1 = getattr(getattr(raw, "_fp", None), "read1", None)
    encoding = raw.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity") and callable(plain_read1):
        return cast("Callable[[int], bytes]", plain_read1)
    return None
