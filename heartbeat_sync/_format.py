"""The text a prompt gets for a batch of results (the reference runtime reader's format)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["format_delegation_results"]

_MARKER_OPEN = "[A2A_RESULT_FROM_PEER]"
_MARKER_CLOSE = "[/A2A_RESULT_FROM_PEER]"
# The upstream runtime's escapes (molecule-runtime _sanitize_a2a._escape_boundary_markers).
_MARKER_OPEN_ESCAPED = "[/ A2A_RESULT_FROM_PEER]"
_MARKER_CLOSE_ESCAPED = "[/ /A2A_RESULT_FROM_PEER]"
_SUMMARY_MAX = 80
_PREVIEW_MAX = 200


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _escape_markers(text: str) -> str:
    return text.replace(_MARKER_OPEN, _MARKER_OPEN_ESCAPED).replace(
        _MARKER_CLOSE, _MARKER_CLOSE_ESCAPED
    )


def format_delegation_results(records: Iterable[Mapping[str, Any]]) -> str:
    """Text for prompt injection, as the reference runtime's reader produces it.

    One ``- [<status>] <summary>`` line per record (``?`` when the status is empty), plus
    ``  Response: <preview>`` when there is a preview, and ``  Failed: <error>`` for a failed
    delegation whose error is not its summary already; summary cut to 80, preview and error
    to 200 characters after escaping. The whole block is wrapped in
    ``[A2A_RESULT_FROM_PEER]`` ... ``[/A2A_RESULT_FROM_PEER]``; no content can forge either
    marker. ``""`` when there is no record. Non-mapping records are skipped; non-string
    values are ``str()``-ed, ``None`` is empty.
    """
    parts: list[str] = []
    for record in records:
        if not isinstance(record, Mapping):
            continue
        status = _as_text(record.get("status")) or "?"
        summary = _escape_markers(_as_text(record.get("summary")))[:_SUMMARY_MAX]
        # Escape the bracketed status together with its brackets: a status of
        # "/A2A_RESULT_FROM_PEER" would otherwise become a closing marker.
        parts.append(f"{_escape_markers(f'- [{status}]')} {summary}")
        preview = _as_text(record.get("response_preview"))
        if preview:
            parts.append(f"  Response: {_escape_markers(preview)[:_PREVIEW_MAX]}")
        error = _as_text(record.get("error"))
        if status == "failed" and error and error != _as_text(record.get("summary")):
            parts.append(f"  Failed: {_escape_markers(error)[:_PREVIEW_MAX]}")
    if not parts:
        return ""
    return _MARKER_OPEN + "\n" + "\n".join(parts) + "\n" + _MARKER_CLOSE
