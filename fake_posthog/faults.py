"""Failures on demand: injected statuses, chaos, disabled resources, ClickHouse limits and DRF's throttles."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .base import RESOURCES, US, State, _check, _err

SCOPES = {"session_recordings": "session_recording:read", "session_group_summaries": "session_recording:read",
          "desktop_recordings": "desktop_recording:read", "subscriptions": "subscription:read",
          "property_definitions": "property_definition:read",
          "session_recording_playlists": "session_recording_playlist:read", "vision_scanners": "replay_scanner:read",
          # the observations also need replay_scanner:read; a key with that but no recordings scope gets this
          "vision_observations": "session_recording:read"}


def _error_body(status: int, resource: str | None = None, wait_s: int = 1, listing: bool = False,
                detail: str | None = None) -> tuple[bytes, str]:
    """The body PostHog (or its edge) sends for an error status: (bytes, content type)."""
    if status == 429:
        # DRF's Throttled wording (§4); `detail` carries the newer recordings wording when chosen
        unit = "second" if wait_s == 1 else "seconds"
        body: Any = _err("throttled_error", "throttled",
                         detail or f"Request was throttled. Expected available in {wait_s} {unit}.")
    elif status == 401:
        body = _err("authentication_error", "authentication_failed",
                    "Personal API key found in request Authorization header is invalid.")
    elif status == 402:
        feature = (resource or "this feature").replace("_", " ").capitalize()
        body = _err("server_error", "payment_required", f"{feature} is part of the premium PostHog offering. "
                    "Self-hosted licenses are no longer available for purchase. Please contact "
                    "sales@posthog.com to discuss options.")
    elif status == 403:
        body = _err("authentication_error", "permission_denied",
                    f"API key missing required scope '{SCOPES.get(resource or '', '')}'")
    elif status == 404:
        body = _err("invalid_request", "not_found", "Not found.")
    elif status == 400:
        body = _err("validation_error", "invalid_input", "Invalid input.")
    elif status in (502, 504):  # the edge answers these with HTML, not JSON
        return f"<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>".encode(), \
            "text/html"
    elif status == 503:
        body = _err("server_error", "service_unavailable", "Database is unavailable. Please try again later.")
    elif status == 500 and resource == "session_recordings" and listing:
        body = {"error": "An internal server error occurred. Please try again later."}
    else:
        body = _err("server_error", "error", "A server error occurred.")
    return orjson.dumps(body), "application/json"


@dataclass
class _Injection:
    path_contains: str
    status: int
    times: int
    body: bytes | None
    wait_s: int
    detail: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Competitor:
    """Another tool spending the same key's buckets: one request every 60/rate seconds of the fake's clock."""

    interval_s: float
    scopes: tuple[str, ...]
    next_at: float | None = None
    sent: int = 0
    throttled: int = 0


class Faults(State):
    """How `FakePostHog` fails: what answers a request instead of the API, and with which body."""

    _rbase: int  # the first recording's start (Recordings)
    _payment_gate: Callable[[str, int], None]  # Versions: refuses a 402 the chosen version never sends

    def _init_faults(self) -> None:
        self._injections: list[_Injection] = []
        self._chaos: tuple[float, random.Random] | None = None
        self._disabled: dict[tuple[int, str], int] = {}
        self._too_big: tuple[int | None, float | None, tuple[int | str, ...], random.Random] | None = None
        self._def_timeouts: list[list[Any]] = []  # [type, from_offset, times left (-1 = always)]
        self._limits: dict[str, list[tuple[int, float]]] = {}
        self._history: dict[str, deque[float]] = {}
        self._clock: Callable[[], float] = time.monotonic
        self._recordings_429 = "drf"
        self.competitors: list[_Competitor] = []

    def disable(self, project_id: int, resource: str, status: int) -> None:
        """Make that resource (list and detail) answer ``status`` (402, 403, 404, ...) for that project."""
        with self._lock:
            self._payment_gate(_check(resource), status)
            self._disabled[(project_id, resource)] = status

    def inject(self, path_contains: str, status: int, *, times: int = 1, body: bytes | None = None,
               wait_s: int = 1) -> None:
        """Answer the next ``times`` requests whose URL contains ``path_contains`` with ``status``."""
        with self._lock:
            self._injections.append(_Injection(path_contains, status, times, body, wait_s))

    def chaos(self, rate: float, seed: int = 0) -> None:
        """Fail a random share of requests (seeded): 429s, 5xx (some as HTML) and truncated bodies."""
        with self._lock:
            self._chaos = (rate, random.Random(seed)) if rate > 0 else None

    def throttle(self, limits: dict[str, list[tuple[int, float]]], clock: Callable[[], float] = time.monotonic,
                 recordings_429: str = "drf") -> None:
        """Throttle like PostHog: DRF's sliding log per scope, 429 with the wait only in the body.

        `limits` maps `recordings_list` (the recordings listing), `analytics` (any recordings path) and
        `general` (everything else) to [(requests, seconds), ...]; `clock` may be a test's virtual time.
        `recordings_429="plan"` answers recordings like the newest servers: the limit and plan named,
        and a `Retry-After` header (§4); the default is DRF's wording without it (older servers).
        """
        if recordings_429 not in ("drf", "plan"):
            raise ValueError(f"recordings_429 must be 'drf' or 'plan', not {recordings_429!r}")
        with self._lock:
            self._limits, self._history, self._clock = dict(limits), {}, clock
            self._recordings_429 = recordings_429

    def compete(self, rate_per_minute: float, scopes: Sequence[str] = ("general",)) -> _Competitor:
        """Add another client on the same key, spending `scopes`' budget at `rate_per_minute` on the fake's clock.

        Its requests are refused like ours once a limit is reached (and then not counted, as in DRF);
        they are not in `requests`. Scopes: `general`, `analytics`, `recordings_list`. Call after `throttle`.
        """
        unknown = set(scopes) - {"general", "analytics", "recordings_list"}
        if unknown or rate_per_minute <= 0:
            raise ValueError(f"compete: a positive rate and scopes of general/analytics/recordings_list, not {unknown}")
        with self._lock:
            competitor = _Competitor(60.0 / rate_per_minute, tuple(scopes), next_at=self._clock())
            self.competitors.append(competitor)
        return competitor

    def _wait_for(self, scopes: Sequence[str], now: float) -> tuple[float, tuple[int, float] | None]:
        """DRF: seconds until every scope has room (the longest), and the limit that binds."""
        wait, binding = 0.0, None
        for scope in scopes:
            history = self._history.setdefault(scope, deque())
            limits = self._limits.get(scope, [])
            horizon = max((seconds for _, seconds in limits), default=0.0)
            while history and history[0] <= now - horizon:
                history.popleft()
            for count, seconds in limits:
                recent = [t for t in history if t > now - seconds]
                if len(recent) >= count and seconds - (now - recent[0]) > wait:
                    # DRF: wait until the oldest request in the window expires
                    wait, binding = seconds - (now - recent[0]), (count, seconds)
        return wait, binding

    def _run_competitors(self, now: float) -> None:
        for c in self.competitors:
            c.next_at = now if c.next_at is None else c.next_at
            horizon = max((s for scope in c.scopes for _, s in self._limits.get(scope, [])), default=0.0)
            if now - c.next_at > horizon + c.interval_s:  # what it did long ago no longer counts
                c.next_at += (now - c.next_at - horizon) // c.interval_s * c.interval_s
            while c.next_at <= now:
                c.sent += 1
                if self._wait_for(c.scopes, c.next_at)[0] > 0:
                    c.throttled += 1
                else:
                    for scope in c.scopes:
                        self._history[scope].append(c.next_at)
                c.next_at += c.interval_s

    def _throttled(self, path: str) -> _Injection | None:
        parts = [p for p in path.split("/") if p]
        recordings = len(parts) >= 4 and parts[3] == "session_recordings"
        scopes = (["analytics", "recordings_list"] if len(parts) == 4 else ["analytics"]) if recordings \
            else ["general"]
        if len(parts) >= 4 and parts[3] == "session_recording_playlists":
            scopes = ["analytics"]  # ClickHouse only, no listing tier, list and /recordings/ (§5)
        now = self._clock()
        self._run_competitors(now)
        wait, binding = self._wait_for(scopes, now)
        if wait > 0:
            seconds = math.ceil(wait)
            if not recordings or self._recordings_429 == "drf" or binding is None:
                return _Injection("", 429, 1, None, seconds)
            count, window = binding
            per = {60.0: "minute", 3600.0: "hour"}.get(window, f"{window:.0f} seconds")
            what = "Recording list" if len(parts) == 4 else "Recording"
            detail = (f"Rate limit exceeded. {what} requests are limited to {count} per {per} on the free plan. "
                      f"Expected available in {seconds} seconds.")
            return _Injection("", 429, 1, None, seconds, detail, {"Retry-After": str(seconds)})
        for scope in scopes:
            self._history[scope].append(now)
        return None

    def _chaos_fault(self) -> _Injection:
        assert self._chaos is not None
        kind = self._chaos[1].choice([429, 500, 502, 503, 504, 200])
        truncated = b'{"results": [{"id": "trunc' if kind == 200 else None
        return _Injection("", kind, 1, truncated, 1)

    def too_big(self, max_limit: int | None = None, *, max_span_s: float | None = None,
                statuses: Sequence[int | str] = (504, 512, 513, "timeout", "capacity", "simultaneous"),
                seed: int = 0) -> None:
        """Answer recordings list queries asking for more than `max_limit` rows, or (listings only) over
        a window longer than `max_span_s`, like PostHog's ClickHouse limits (§6): a seeded choice of
        504/512/513 and the wait-less 429s (`timeout` = older servers' "Query timeout exceeded")."""
        with self._lock:
            self._too_big = (max_limit, max_span_s, tuple(statuses), random.Random(seed))

    def _query_too_big(self, limit: int, df: int | None, dt: int | None, by_ids: bool) -> tuple[int, Any] | None:
        if self._too_big is None:
            return None
        max_limit, max_span_s, statuses, rng = self._too_big
        span_s = ((self._now_us if dt is None else dt) - (df if df is not None else self._rbase * US)) / US
        if not ((max_limit is not None and limit > max_limit) or (
                not by_ids and max_span_s is not None and span_s > max_span_s)):
            return None
        kind = rng.choice(statuses)
        if kind == 504:
            return 504, _err("server_error", "timeout", "Query has hit the max execution time before completing.")
        if kind == 512:
            return 512, _err("server_error", "estimated_query_execution_time_too_long",
                             "Estimated query execution time is too long. Try reducing its scope.")
        if kind == 513:
            return 513, _err("server_error", "clickhouse_memory_limit_exceeded",
                             "Query exceeds memory limits. Try reducing its scope.")
        detail = {"timeout": "Query timeout exceeded. Try again later.",
                  "capacity": "ClickHouse is at capacity. Try again later.",
                  "simultaneous": "Too many simultaneous queries. Try again later."}[str(kind)]
        return 429, _err("throttled_error", "throttled", detail)

    def time_out_property_definitions(self, type: str, *, from_offset: int = 0, times: int = -1) -> None:
        """Answer listings of that type from `from_offset` on with the 25 s timeout's 503 (-1: always)."""
        with self._lock:
            self._def_timeouts.append([type, from_offset, times])

    def _definitions_timeout(self, type_: str, offset: int) -> tuple[int, Any] | None:
        """The 503 a timed-out definitions listing answers, if `time_out_property_definitions` asked for one."""
        for timeout in self._def_timeouts:
            if timeout[0] == type_ and offset >= timeout[1] and timeout[2] != 0:
                timeout[2] -= timeout[2] > 0
                # newer servers stop a listing after 25 s (`definition_listing.py`, §7.5) ⚠️ body wording
                return 503, _err("server_error", "service_unavailable",
                                 "Listing property definitions took too long. Please try again.")
        return None

    def _fault(self, target: str, path: str) -> _Injection | None:
        """What answers this authorized request instead of the API (injected, chaos, throttled), if anything."""
        inj = next((x for x in self._injections if x.path_contains in target), None)
        if inj is None and self._chaos and self._chaos[1].random() < self._chaos[0]:
            inj = self._chaos_fault()
        if inj is None and (self._limits or self.competitors):
            inj = self._throttled(path)
        if inj is not None:
            inj.times -= 1
            self._injections = [x for x in self._injections if x.times > 0]
        return inj

    def _fault_answer(self, inj: _Injection, path: str) -> tuple[int, bytes, str, dict[str, str]]:
        """(status, body, content type, extra headers) of a fault's answer."""
        headers = {"Retry-After": "1"} if inj.status == 503 else {}
        headers.update(inj.headers)
        if inj.body is not None:
            json_like = inj.body.lstrip()[:1] in (b"{", b"[")
            return inj.status, inj.body, "application/json" if json_like else "text/html", headers
        res = next((r for r in RESOURCES if f"/{r}" in path), None)
        listing = path.rstrip("/").endswith(f"/{res}")
        return inj.status, *_error_body(inj.status, res, inj.wait_s, listing, inj.detail), headers
