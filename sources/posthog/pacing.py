"""Client-side pacing per API key: PostHog's published limits, and the rate its 429s reveal (shared/posthog-api.md §5).

PostHog throttles with DRF-style sliding logs keyed by the API key: a request is allowed while fewer than
N requests were made in the last minute/hour. Mirroring the published numbers lets a run wait before it
would be refused. A server may throttle harder than published, or another tool may spend the same key's
budget: then 429s tell the rest. Each 429 sets a "not before" time for its bucket (every thread waits for
it) and lowers the bucket's allowed rate (multiplicative decrease); requests sent at that pace raise it
again a little (additive increase), so a run settles just below what the server actually allows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MINUTE, HOUR = 60.0, 3600.0
GENERAL: tuple[str, ...] = ("general",)  # the buckets of requests no endpoint claims (project lists, probes)
ANALYTICS: tuple[str, ...] = ("analytics",)  # ClickHouse-backed endpoints without a listing tier (playlists)
# per key: the listing tier of session recordings depends on the organisation's plan
PLANS: dict[str, tuple[int, int]] = {"free": (12, 60), "paid": (60, 300), "enterprise": (100, 400)}
DEFAULT_LIMITS: dict[str, tuple[int, int]] = {"general": (480, 4800), "analytics": (240, 1200)}
DECREASE = 0.8  # a 429 sets the allowed rate to this share of the rate the server granted
INCREASE = 0.02  # each request sent at the allowed pace adds this share of the rate set by the last 429...
SETTLE = 0.95  # ...up to this share of the granted rate; beyond, it probes for more budget slowly:
PROBE = 0.001  # this share of the rate per request sent at the allowed pace


@dataclass(frozen=True)
class Window:
    """At most `limit` requests in any `seconds`."""

    limit: int
    seconds: float

    @property
    def name(self) -> str:
        """`minute` or `hour` (or the window length) for messages."""
        return {MINUTE: "minute", HOUR: "hourly"}.get(self.seconds, f"{self.seconds:.0f} s")


@dataclass
class BucketStats:
    """What one bucket of the key saw in a run, for the summary."""

    name: str
    requests: int = 0
    throttled: int = 0
    paced_s: float = 0.0
    # the allowed rate learned from 429s (requests/min); None while no 429 was seen
    rate_per_min: float | None = None
    published: str | None = None  # the published limits paced to, e.g. "12/min + 60/h"


class Bucket:
    """One rate bucket of the key: published windows, the learned rate and the shared "not before" time."""

    def __init__(self, name: str, windows: Sequence[Window]) -> None:
        self.name = name
        self.windows = tuple(windows)
        self.stats = BucketStats(name, published=" + ".join(
            f"{w.limit}/{'min' if w.seconds == MINUTE else 'h' if w.seconds == HOUR else f'{w.seconds:.0f}s'}"
            for w in self.windows) or None)
        self._times: deque[float] = deque()  # requests sent and not refused (a 429 is not logged, as in DRF)
        self._answered: deque[float] = deque()  # send times of requests answered with something but a 429
        self._first: float | None = None
        self.not_before = float("-inf")
        self.rate: float | None = None  # requests/s the server allows us; None = not learned yet
        self._step = self._granted = 0.0
        self._last = float("-inf")
        self._lowered_at = float("-inf")

    def _expire(self, now: float) -> None:
        for log in (self._times, self._answered):
            while log and log[0] <= now - HOUR:
                log.popleft()

    def wait(self, now: float) -> tuple[float, Window | None]:
        """Seconds until one more request fits every published window, and the window that binds."""
        self._expire(now)
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

    def delay(self, now: float) -> tuple[float, str]:
        """Seconds until a request may go out (published windows, a 429's wait, the learned rate), and why."""
        wait, window = self.wait(now)
        found = (wait, f"{window.name} request limit reached" if window else "")
        if self.not_before - now > found[0]:
            found = (self.not_before - now, "throttled by PostHog (429)")
        if self.rate and self._last + 1 / self.rate - now > found[0]:
            found = (self._last + 1 / self.rate - now, f"pacing to the {self.rate * MINUTE:.3g}/min 429s allowed")
        return found

    def take(self, now: float) -> None:
        """Record one request sent at `now`."""
        if self.rate and now - self._last < 1.5 / self.rate:
            # sent at the allowed pace, and no 429 since: go a little faster
            self.rate += self._step if self.rate < SETTLE * self._granted else PROBE * self.rate
        self._first = now if self._first is None else self._first
        self._last = max(self._last, now)
        self._times.append(now)
        self.stats.requests += 1
        self._publish()

    def throttled(self, sent_at: float, now: float, wait_s: float) -> None:
        """A request sent at `sent_at` got a 429 at `now` saying to wait `wait_s`: slow the whole bucket."""
        self.stats.throttled += 1
        self.not_before = max(self.not_before, now + wait_s)
        if sent_at <= self._lowered_at:
            return  # sent at the old pace, before the last 429 lowered it: no new evidence
        # PostHog's windows are a minute and an hour (§5); over the stretch of that window we have seen,
        # the server let `accepted` requests through and will take the next only after `wait_s`
        window = MINUTE if wait_s <= MINUTE + 1 else HOUR
        span = min(window, now - (self._first if self._first is not None else now))
        self._expire(now)
        accepted = sum(1 for t in self._answered if t >= now - span)
        if accepted < 2 or span + wait_s < MINUTE / 2:
            # too little to tell a rate from (our requests cannot have filled even a minute's window: a
            # stray 429, or another client's older requests): the wait alone will do
            return
        self._granted = accepted / (span + wait_s)
        # never so slow that the pace alone waits longer than the server asked to
        self.rate = max(DECREASE * self._granted, 1 / max(wait_s, MINUTE))
        self._step = INCREASE * self.rate
        self._lowered_at = now
        self._publish()

    def answered(self, sent_at: float) -> None:
        """The request sent at `sent_at` got past the throttle."""
        self._answered.append(sent_at)

    def forget(self, sent_at: float) -> None:
        """Drop a request the server refused from the log of accepted ones."""
        try:
            self._times.remove(sent_at)
        except ValueError:
            pass

    def _publish(self) -> None:
        self.stats.rate_per_min = None if self.rate is None else self.rate * MINUTE


class Pacer:
    """The buckets of one API key: general, analytics (ClickHouse) and the recordings listing tier.

    Args:
        plan: `free` (default, the conservative one), `paid`, `enterprise`, or `none` to not pace to
            published limits (self-hosted PostHog throttles only when RATE_LIMIT_ENABLED is on); the
            rate 429s reveal is learned with every plan.
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
            name: Bucket(name, (Window(per_min, MINUTE), Window(per_hour, HOUR)) if self.enabled else ())
            for name, (per_min, per_hour) in limits.items()
        }

    @property
    def stats(self) -> dict[str, BucketStats]:
        """Per bucket: requests, 429s, pacing time and the rate learned (live objects)."""
        return {name: bucket.stats for name, bucket in self.buckets.items()}

    def buckets_for(self, names: Sequence[str]) -> list[Bucket]:
        """The buckets named (an endpoint's `buckets`); the last one is the one its 429s are blamed on."""
        return [self.buckets[name] for name in names]

    def wait(self, names: Sequence[str], now: float) -> tuple[float, Window | None]:
        """Seconds to wait before a request on these buckets fits every published window, and the binding window."""
        waits = [bucket.wait(now) for bucket in self.buckets_for(names)]
        return max(waits, key=lambda w: w[0], default=(0.0, None))

    def delay(self, names: Sequence[str], now: float) -> tuple[float, str]:
        """Seconds to wait before a request on these buckets may go out, for any reason, and the reason."""
        return max((bucket.delay(now) for bucket in self.buckets_for(names)), key=lambda d: d[0])

    def take(self, names: Sequence[str], now: float) -> None:
        """Record a request on these buckets sent at `now`."""
        for bucket in self.buckets_for(names):
            bucket.take(now)

    def answered(self, names: Sequence[str], sent_at: float) -> None:
        """A request on these buckets sent at `sent_at` was answered with something other than a 429."""
        for bucket in self.buckets_for(names):
            bucket.answered(sent_at)

    def throttled(self, names: Sequence[str], sent_at: float, now: float, wait_s: float) -> None:
        """A request on these buckets sent at `sent_at` got a 429 at `now` saying to wait `wait_s`."""
        buckets = self.buckets_for(names)
        for bucket in buckets:
            bucket.forget(sent_at)
        # the body does not name the bucket: blame the narrowest one (the recordings listing tier)
        buckets[-1].throttled(sent_at, now, wait_s)
