"""Response bodies: read whole within a bound, and parsed as JSON."""

from __future__ import annotations

import json
from typing import Any

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
