"""When a failed request is tried again, and for how long: the retry policy, 429 waits and the max-wait budget.

Attempts bound 5xx answers, transport errors and broken bodies; 429s are not attempts: they are waited
out for as long as the server says (shared/posthog-api.md §4), within the request's wait budget (max_wait).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from .errors import BudgetExhausted, TransientError

# PostHog states a 429's wait in the body; only newer recordings servers add Retry-After (§4)
_WAIT_RE = re.compile(r"available in (\d+) second", re.IGNORECASE)
MAX_BACKOFF_S = 300.0


def retrying(max_attempts: int, backoff_s: float, sleep: Callable[[float], None]) -> Retrying:
    """The tenacity policy for a request: `TransientError`s retried with jittered exponential backoff.

    Copy it per request with that request's `before_sleep` (where its retries are counted).
    """
    backoff = wait_exponential_jitter(multiplier=backoff_s, max=60.0, jitter=backoff_s)

    def wait(retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, TransientError) and error.wait_s is not None:
            return error.wait_s
        return backoff(retry_state)

    return Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(max_attempts),
        wait=wait,
        sleep=sleep,
        reraise=True,
    )


def stated_wait(response: httpx.Response, reason: str) -> float | None:
    """The seconds a 429 says to wait (its body, else Retry-After), or None when it names none."""
    match = _WAIT_RE.search(reason)
    header = response.headers.get("Retry-After", "").strip()
    return float(match.group(1)) if match else float(header) if header.isdigit() else None


@dataclass
class Throttled:
    """One request's 429s: when the first came, and how many had no stated wait."""

    first_at: float | None = None
    numberless: int = 0

    def wait(self, stated: float | None, now: float, backoff_s: float) -> float:
        """How long to wait after a 429 that came at `now` stating `stated` seconds (or none)."""
        if stated is None:  # no number (an edge's page, say): back off exponentially, bounded by time
            wait = min(MAX_BACKOFF_S, backoff_s * 2**self.numberless) + random.uniform(0, backoff_s)
            self.numberless += 1
        else:
            wait = stated + 1  # PostHog rounds the wait, and coming back a moment early costs another 429
        self.first_at = now if self.first_at is None else self.first_at
        return wait

    def check(self, until: float, max_wait_s: float, what: str) -> None:
        """Raise `BudgetExhausted` when waiting until `until` would exceed the request's wait budget."""
        waited = until - (self.first_at if self.first_at is not None else until)
        if waited > max_wait_s:
            raise BudgetExhausted(
                f"{what}: rate limited for {duration(waited)}, more than the {duration(max_wait_s)} a request may "
                "wait (max_wait): stopped, rerun later to continue"
            )


def check_pace(wait: float, max_wait_s: float, what: str, why: str) -> None:
    """Raise `BudgetExhausted` when the key's budget allows the next request only after more than max_wait."""
    if wait > max_wait_s:
        raise BudgetExhausted(
            f"{what}: {why or 'request limit reached'}; the next request is allowed in {duration(wait)}, more "
            f"than the {duration(max_wait_s)} a request may wait (max_wait): stopped, rerun later to continue"
        )


def duration(seconds: float) -> str:
    """`45 s` or `12 min`, for messages."""
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
