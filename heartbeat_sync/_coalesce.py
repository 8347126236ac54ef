"""How soon a cycle that the caller asked for may run: a token bucket, pure arithmetic.

``beat_now()`` and every new ``current_task`` ask the beat thread for a cycle. Asks that come
while one waits are one ask (the loop's wake event); this bucket spaces the cycles that
answer them. A few run at once (a script that changes its task five times in a second is
beaten five times); a storm is held to one cycle every ``spacing`` seconds, so the requests
stay well inside the platform's rate limit (600 a minute per token) whatever the caller does.
"""

from __future__ import annotations

#: Cycles that may run back to back after a quiet spell.
BURST = 5
#: Seconds per cycle once the burst is spent.
SPACING = 1.0


class ForcedCycles:
    """A token bucket of ``burst`` cycles, refilled by one every ``spacing`` seconds.

    At most ``burst + t / spacing`` forced cycles run in any ``t`` seconds.
    """

    def __init__(self, burst: int = BURST, spacing: float = SPACING) -> None:
        self.burst = burst
        self.spacing = spacing
        self._credit = float(burst)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._credit = min(float(self.burst), self._credit + (now - self._at) / self.spacing)
        self._at = now if self._at is None else max(self._at, now)

    def due(self, now: float) -> float:
        """The earliest time (on the clock ``now`` is from) a forced cycle may start."""
        self._refill(now)
        if self._credit >= 1.0:
            return now
        return now + (1.0 - self._credit) * self.spacing

    def take(self, now: float) -> None:
        """Count one forced cycle starting at ``now``."""
        self._refill(now)
        self._credit = max(0.0, self._credit - 1.0)
