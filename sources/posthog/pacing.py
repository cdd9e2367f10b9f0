"""Client-side pacing that mirrors PostHog's per-key rate limits (shared/posthog-api.md §5).

PostHog throttles with DRF-style sliding logs keyed by the API key: a request is allowed while fewer than
N requests were made in the last minute/hour. Mirroring that lets a run wait before it would be refused
instead of collecting 429s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MINUTE, HOUR = 60.0, 3600.0
# per key: the listing tier of session recordings depends on the organisation's plan
PLANS: dict[str, tuple[int, int]] = {"free": (12, 60), "paid": (60, 300), "enterprise": (100, 400)}
DEFAULT_LIMITS: dict[str, tuple[int, int]] = {"general": (480, 4800), "analytics": (240, 1200)}


@dataclass(frozen=True)
class Window:
    """At most `limit` requests in any `seconds`."""

    limit: int
    seconds: float

    @property
    def name(self) -> str:
        """`minute` or `hour` (or the window length) for messages."""
        return {MINUTE: "minute", HOUR: "hourly"}.get(self.seconds, f"{self.seconds:.0f} s")


class Bucket:
    """A sliding log of request times checked against one or more windows."""

    def __init__(self, name: str, windows: Sequence[Window]) -> None:
        self.name = name
        self.windows = tuple(windows)
        self._times: deque[float] = deque()
        self._horizon = max(w.seconds for w in self.windows)

    def wait(self, now: float) -> tuple[float, Window | None]:
        """Seconds until one more request fits every window, and the window that binds."""
        while self._times and self._times[0] <= now - self._horizon:
            self._times.popleft()
        longest: tuple[float, Window | None] = (0.0, None)
        for window in self.windows:
            recent = sum(1 for t in self._times if t > now - window.seconds)
            if recent >= window.limit:
                # the request that must leave the window before another one fits
                oldest_needed = self._times[len(self._times) - window.limit]
                wait = oldest_needed + window.seconds - now
                if wait > longest[0]:
                    longest = (wait, window)
        return longest

    def take(self, now: float) -> None:
        """Record one request made at `now`."""
        self._times.append(now)


class Pacer:
    """The buckets of one API key: general, analytics (ClickHouse) and the recordings listing tier.

    Args:
        plan: `free` (default, the conservative one), `paid`, `enterprise`, or `none` to not pace
            (self-hosted PostHog throttles only when RATE_LIMIT_ENABLED is on).
        custom: overrides as {bucket: (per_minute, per_hour)} for `general`, `analytics`, `recordings_list`.
    """

    def __init__(self, plan: str = "free", custom: Mapping[str, Sequence[int]] | None = None) -> None:
        if plan != "none" and plan not in PLANS:
            raise ValueError(f"unknown rate limit plan {plan!r}; choose from {', '.join([*PLANS, 'none'])}")
        limits: dict[str, tuple[int, int]] = {**DEFAULT_LIMITS, "recordings_list": PLANS.get(plan, (0, 0))}
        for name, pair in (custom or {}).items():
            if name not in limits or len(pair) != 2:
                raise ValueError(f"rate_limits.{name}: expected one of {sorted(limits)} = [per_minute, per_hour]")
            limits[name] = (int(pair[0]), int(pair[1]))
        self.enabled = plan != "none"
        self.buckets = {
            name: Bucket(name, (Window(per_min, MINUTE), Window(per_hour, HOUR)))
            for name, (per_min, per_hour) in limits.items()
        }

    def buckets_for(self, path: str) -> list[Bucket]:
        """The buckets a GET of `path` counts against."""
        if not self.enabled:
            return []
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 4 and parts[3] == "session_recordings":
            if len(parts) == 4:
                return [self.buckets["analytics"], self.buckets["recordings_list"]]
            return [self.buckets["analytics"]]
        return [self.buckets["general"]]

    def wait(self, path: str, now: float) -> tuple[float, Window | None]:
        """Seconds to wait before GET `path` fits every bucket, and the binding window."""
        waits = [bucket.wait(now) for bucket in self.buckets_for(path)]
        return max(waits, key=lambda w: w[0], default=(0.0, None))

    def take(self, path: str, now: float) -> None:
        """Record a GET of `path` made at `now`."""
        for bucket in self.buckets_for(path):
            bucket.take(now)
