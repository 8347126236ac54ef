"""``runtime_metadata`` for the beat: from the user's callable, or from the runtime's adapter."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ._logctx import get_logger

logger = get_logger(__name__)

MetadataSource = Callable[[], Optional[Mapping[str, Any]]]

#: The seven capability flags the platform expects, in RuntimeCapabilities' order.
CAPABILITY_KEYS = (
    "heartbeat",
    "scheduler",
    "session",
    "status_mgmt",
    "retry",
    "activity_decoration",
    "channel_dispatch",
)


def _capabilities_dict(caps: Any) -> dict[str, bool]:
    raw = caps.to_dict() if hasattr(caps, "to_dict") else caps
    if not isinstance(raw, Mapping):
        raise TypeError(f"capabilities() gave {type(raw).__name__}, not a mapping")
    return {key: bool(raw.get(key, False)) for key in CAPABILITY_KEYS}


def _adapter_class(module_name: str) -> Any:
    try:
        # The reference runtime's own resolver: it reads ADAPTER_MODULE itself.
        from adapters import get_adapter  # type: ignore[import-not-found]
    except ImportError:
        module = importlib.import_module(module_name)
        for attr in ("Adapter", "adapter"):
            if hasattr(module, attr):
                return getattr(module, attr)
        raise ImportError(f"{module_name} has no Adapter") from None
    return get_adapter("")


def adapter_metadata(module_name: str | None) -> dict[str, Any] | None:
    """Metadata from the adapter module ``module_name`` (``$ADAPTER_MODULE``), as the
    reference builds it.

    ``{"capabilities": {7 bools}}`` plus ``idle_timeout_seconds`` when the adapter's override
    is an int > 0. None when the variable is unset or anything about the adapter fails: a
    beat must never fail because capability discovery did.
    """
    module_name = (module_name or "").strip()
    if not module_name:
        return None
    try:
        adapter = _adapter_class(module_name)()
        meta: dict[str, Any] = {"capabilities": _capabilities_dict(adapter.capabilities())}
        override = getattr(adapter, "idle_timeout_override", None)
        idle = override() if callable(override) else None
        if isinstance(idle, int) and not isinstance(idle, bool) and idle > 0:
            meta["idle_timeout_seconds"] = idle
        return meta
    except Exception as exc:
        logger.debug("runtime_metadata: adapter %s failed: %s", module_name, exc)
        return None


def collect(source: MetadataSource | None, adapter_module: str | None) -> dict[str, Any] | None:
    """The beat's ``runtime_metadata``: the user's callable first, then the adapter.

    None (the key is left out of the beat) when neither yields a mapping; a failure of
    either is logged at DEBUG and never raised.
    """
    if source is not None:
        try:
            meta = source()
        except Exception as exc:
            logger.debug("runtime_metadata callable failed: %s", exc)
            meta = None
        if isinstance(meta, Mapping):
            return dict(meta)
        if meta is not None:
            logger.debug("runtime_metadata callable returned %s, ignored", type(meta).__name__)
    return adapter_metadata(adapter_module)
