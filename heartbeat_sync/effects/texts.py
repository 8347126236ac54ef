"""Pure: the texts and bodies the library sends or hands over, built from results.

The beat body, the wake-up text an agent receives, the canvas notification, and the text a
prompt gets for a batch of results (the reference runtime reader's format). Nothing here does
I/O or keeps state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Pure, so the pure module itself: the delivery face loads files and locks.
from ..delivery.rows import ORIGIN_ACTIVITY, Result

__all__ = [
    "TRIGGER_MAX_LINES",
    "build_beat_body",
    "format_delegation_results",
    "notify_text",
    "trigger_text",
]

#: Lines listed in one wake-up message; the rest are counted (they are all in the results file).
TRIGGER_MAX_LINES = 50


def build_beat_body(
    workspace_id: str,
    *,
    error_rate: float,
    sample_error: str,
    active_tasks: int,
    current_task: str,
    uptime_seconds: float,
    wedge_reason: str | None = None,
    runtime_metadata: Mapping[str, Any] | None = None,
    is_busy: bool | None = None,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The heartbeat body, with the reference's fields and rules, and the newer platform's.

    ``uptime_seconds`` is sent as an int (the server rejects a fraction with 400). When the
    runtime is wedged, ``runtime_state`` is ``"wedged"`` and the reason replaces
    ``sample_error``; otherwise the key is absent. ``runtime_metadata`` is absent when None.
    ``is_busy`` (a JSON bool) and ``observed_generation`` (an integer: the last ``generation``
    a reply carried) are read by the August 2026 platform, which refuses the beat when their
    type is wrong, and ignored by the May one; each is absent when None.
    """
    body: dict[str, Any] = {
        "workspace_id": workspace_id,
        "error_rate": float(error_rate) if math.isfinite(error_rate) else 0.0,
        "sample_error": sample_error,
        "active_tasks": int(active_tasks),
        "current_task": current_task,
        "uptime_seconds": max(0, int(uptime_seconds)),
    }
    if wedge_reason is not None:
        body["runtime_state"] = "wedged"
        body["sample_error"] = wedge_reason
    if runtime_metadata is not None:
        body["runtime_metadata"] = dict(runtime_metadata)
    if is_busy is not None:
        body["is_busy"] = bool(is_busy)
    if observed_generation is not None:
        body["observed_generation"] = int(observed_generation)
    return body


def _summary_line(result: Result) -> str:
    r = result.record
    if result.origin == ORIGIN_ACTIVITY:
        line = (
            f"- [completed] Peer response from {r['target_id'][:8]}: "
            f"{r['summary'][:80] or '(no summary)'}"
        )
    else:
        line = f"- [{r['status']}] Delegation {r['delegation_id'][:8]}: {r['summary'][:80]}"
    if r.get("error") and r["error"] != r["summary"]:
        line += f"\n  Error: {r['error'][:100]}"
    return line


def trigger_text(results: Sequence[Result], parent_name: str, more: int = 0) -> str:
    """The wake-up text the agent receives for a batch of results (the reference's wording).

    Peer text never goes into it beyond the platform's summary (the agent reads the full
    results from the results file); a batch of only activity results uses the reference's
    activity wording, anything else the delegation wording. At most
    :data:`TRIGGER_MAX_LINES` results are listed; the rest (and ``more``) are counted.
    """
    only_activity = bool(results) and all(r.origin == ORIGIN_ACTIVITY for r in results)
    lines = [_summary_line(r) for r in results[:TRIGGER_MAX_LINES]]
    more += max(0, len(results) - TRIGGER_MAX_LINES)
    if more:
        lines.append(f"- … and {more} more in the results file")
    if only_activity:
        head = (
            "Delegation results are ready (from a2a_receive via activity_logs). "
            "Review them and take appropriate action:\n"
        )
        report = (
            f"\n\nIMPORTANT: Delegate a summary of these results to your parent "
            f"'{parent_name}' using delegate_task. Also use send_message_to_user "
            f"to notify the user."
        )
    else:
        head = "Delegation results are ready. Review them and take appropriate action:\n"
        report = (
            f"\n\nIMPORTANT: Report these results back to your parent '{parent_name}' "
            f"by delegating a summary to them. Use delegate_task or delegate_task_async "
            f"with a concise status report. Also use send_message_to_user to notify the user."
        )
    if not parent_name:
        report = "\n\nReport results using send_message_to_user to notify the user."
    return head + "\n".join(lines) + report


def notify_text(result: Result) -> str:
    """The canvas notification for one result (the reference's wording)."""
    r = result.record
    if result.origin == ORIGIN_ACTIVITY:
        msg = f"Delegation completed: {r['summary'][:100] or '(no summary)'}"
    else:
        msg = f"Delegation {r['status']}: {r['summary'][:100]}"
    if r.get("response_preview"):
        msg += f"\nResult: {r['response_preview'][:200]}"
    return msg


# --------------------------------------------------------------------------------------------
# Results for a prompt
# --------------------------------------------------------------------------------------------

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
