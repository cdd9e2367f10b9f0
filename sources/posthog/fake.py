"""Stateful, deterministic fake of the PostHog API endpoints the exporter reads (stdlib + orjson only).

Behaviour follows the real server (see the project's PostHog API notes): DRF paging, the recordings
list's own paging with partial rows at a window edge, virtual property definitions, soft-deleted
subscriptions in Postgres storage order (older servers; `subscription_order="ordering"` for newer ones),
detail rows shaped like PostHog's retrieve serializers and the real error bodies. Rows are generated on
demand from their index, so a million recordings cost no memory up front.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

__all__ = ["UTC", "FakePostHog", "FakeRequest", "main"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000
M64 = (1 << 64) - 1
PART_S = 900  # a recording is stored as 15-minute parts; date_from filters parts, not sessions
MAX_DUR = 4 * 3600
_STREAM_ROWS = 4000  # recordings pages larger than this are streamed in chunks of half that
RESOURCES = ("session_recordings", "session_group_summaries", "desktop_recordings", "subscriptions",
             "property_definitions")
SCOPES = {"session_recordings": "session_recording:read", "session_group_summaries": "session_recording:read",
          "desktop_recordings": "desktop_recording:read", "subscriptions": "subscription:read",
          "property_definitions": "property_definition:read"}
_ENV_ROUTES = {"session_recordings", "desktop_recordings", "subscriptions"}
_REC_PARAMS = {"date_from", "date_to", "limit", "offset", "order", "order_direction", "after", "session_ids"}
_REC_ORDERS = {"start_time", "end_time", "duration", "active_seconds", "inactive_seconds", "click_count",
               "keypress_count", "mouse_activity_count", "console_log_count", "console_warn_count",
               "console_error_count", "activity_score", "recording_ttl"}
_REL = re.compile(r"-?(\d+)([hdwmy])")
_REL_S = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}
_OID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-([0-9a-f]{12})")
_URLS = ("https://shop.example.com/", "https://shop.example.com/cart", "https://shop.example.com/checkout",
         "https://app.example.com/dashboard", "https://app.example.com/settings", "https://docs.example.com/")
_WORDS = ("we", "should", "ship", "the", "new", "billing", "page", "before", "friday", "and", "check",
          "replay", "numbers", "with", "design", "team", "next", "sprint", "customer", "asked", "about",
          "export", "latency", "roadmap", "okay", "agreed", "let's", "review", "metrics", "tomorrow",
          "blocker", "onboarding")
_PEOPLE = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace")
_PLATFORMS = ("zoom", "teams", "meet", "desktop_audio", "slack")
_GROUP_NAMES = ("organization", "company", "instance", "project", "team")
_PROPS = {
    "event": ("$browser", "$browser_version", "$current_url", "$device_type", "$host", "$lib", "$os",
              "$pathname", "$referrer", "$referring_domain", "$screen_height", "$screen_width", "plan",
              "revenue"),
    "person": ("$initial_browser", "$initial_os", "company", "email", "name", "plan", "signup_date"),
    "session": ("$channel_type", "$end_current_url", "$entry_current_url", "$entry_pathname", "$is_bounce",
                "$pageview_count", "$session_duration"),
    "group": ("created_at", "employees", "industry", "mrr", "name", "plan"),
}
_VIRTUAL = {"person": ("$virt_initial_channel_type", "$virt_initial_referring_domain_type", "$virt_revenue"),
            "group": ("$virt_mrr", "$virt_revenue", "$virt_revenue_last_30_days")}
_DAYS: dict[int, str] = {}
_HM = [f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440)]
_SS = [f"{x:02d}" for x in range(60)]
# shared, never-mutated values: rows only leave the fake as JSON, and fewer allocations mean fewer GC passes
_NONE: list[Any] = []
_OUTCOMES = [{"description": "User completed checkout after retrying payment.", "success": ok}
             for ok in (True, False)]


def _mix(x: int) -> int:
    x = (x * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _hh(*xs: int) -> int:
    x = 0
    for v in xs:
        x = _mix(x ^ (v & M64))
    return x


def _uuid(h: int) -> str:
    x = f"{h:016x}{_mix(h):016x}"
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{'89ab'[h & 3]}{x[17:20]}-{x[20:]}"


def _oid(kind: int, p: int, idx: int, h: int) -> str:
    # uuid-shaped, but encodes (kind, project, index) so detail lookups need no table
    x = f"{h:016x}"
    return f"{x[:8]}-{p & 0xFFFF:04x}-7{x[8:11]}-{8 + kind:x}{(p >> 16) & 0xFFF:03x}-{idx:012x}"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _iso_day(sec: int) -> str:
    d = sec // 86400
    day = _DAYS.get(d)
    if day is None:
        day = _DAYS[d] = (EPOCH + timedelta(days=d)).strftime("%Y-%m-%dT")
    return day


def _iso(sec: int, us: int = 0) -> str:
    d, r = divmod(sec, 86400)
    m, r = divmod(r, 60)
    return (_DAYS.get(d) or _iso_day(sec)) + _HM[m] + _SS[r] + (f".{us:06d}Z" if us else "Z")


def _iso_us(us: int) -> str:
    return _iso(*divmod(us, US))


def parse_iso_s(value: str) -> int:
    """Epoch seconds of one of the fake's ISO timestamps."""
    return _to_us(datetime.fromisoformat(value.replace("Z", "+00:00"))) // US


def _to_us(dt: datetime) -> int:
    return ((dt if dt.tzinfo else dt.replace(tzinfo=UTC)) - EPOCH) // timedelta(microseconds=1)


def _parse_when(v: object, now_us: int) -> int | None:
    """A date param as epoch microseconds: ISO (naive = UTC) or relative like ``-3d``; None for ``all``."""
    if not isinstance(v, str):
        raise ValueError(f"invalid date {v!r}")
    m = _REL.fullmatch(v)
    if m:
        return now_us - int(m[1]) * _REL_S[m[2]] * US
    return None if v == "all" else _to_us(datetime.fromisoformat(v))


def _duration(h: int) -> int:
    """True length of a recording: mostly under an hour, ~10% between 1 h and 4 h."""
    v = (h >> 16) & 0xFFFF
    return 3600 + v * 10800 // 65536 if h & 0xFFFF < 6554 else 30 + v * v * 3570 // 4294967296


def _n_before(a: int, step: int, t_of: Callable[[int], int], now: int) -> int:
    """How many k >= 0 have t_of(k) < now, given a + k*step <= t_of(k) < a + (k+1)*step."""
    k0 = max(0, (now - a) // step)
    return k0 + 1 if t_of(k0) < now else k0


def _err(type_: str, code: str, detail: str, attr: str | None = None) -> dict[str, Any]:
    return {"type": type_, "code": code, "detail": detail, "attr": attr}


def _invalid(detail: str, attr: str | None) -> tuple[int, Any]:
    return 400, _err("validation_error", "invalid_input", detail, attr)


def _pydantic(attr: str, kind: str, msg: str, value: object) -> tuple[int, Any]:
    return _invalid(orjson.dumps([{"type": kind, "loc": [attr], "msg": msg, "input": value}]).decode(), attr)


def _pos_int(v: str | None, default: int, strict: bool = False) -> int:
    try:
        n = int(v) if v is not None else default
    except ValueError:
        return default
    return default if n < 0 or (strict and n == 0) else n


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
class FakeRequest:
    """One request the fake answered (the Authorization header itself is never stored)."""

    method: str
    path: str
    params: dict[str, str]
    status: int
    authorized: bool
    at: float = 0.0  # the throttle clock when it was answered


@dataclass
class _Stream:
    """A big recordings page, sent in chunks so the client reads while the rest is generated."""

    take: Callable[[int, int], list[dict[str, Any]]]
    lo: int
    hi: int
    desc: bool
    tail: dict[str, Any]

    def chunks(self, lock: threading.RLock) -> Iterator[bytes]:
        spans = [(x, min(x + _STREAM_ROWS // 2, self.hi)) for x in range(self.lo, self.hi, _STREAM_ROWS // 2)]
        yield b'{"results":['
        for n, (a, b) in enumerate(reversed(spans) if self.desc else spans):
            with lock:
                rows = self.take(a, b)
            if self.desc:
                rows.reverse()
            yield (b"," if n else b"") + orjson.dumps(rows)[1:-1]
        yield b"]," + orjson.dumps(self.tail)[1:]


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


class FakePostHog:
    """A deterministic, thread-safe PostHog API fake with a movable clock; ``serve()`` starts HTTP.

    Recordings behave like the newest servers by default (``keyset=True``: `next_cursor`, a tiebreaker,
    `session_ids` skipping the date window). ``keyset=False`` is an older server: offset paging only,
    no tiebreaker (equal start times, see ``tie_group``, come in a different order per query), and
    `session_ids` re-reads cut by the date window (default ``-3d``). See ``too_big`` and
    ``delete_recording`` for ClickHouse limits and deletions.
    """

    def __init__(self, *, project_ids: Sequence[int] = (1, 2), recordings: int = 120,
                 desktop_recordings: int = 12, segments: int = 8, summaries: int = 25, subscriptions: int = 9,
                 property_definitions: int = 30, group_types: int = 2, seed: int = 0,
                 now: datetime | None = None, api_key: str = "phx_fake_personal_key",
                 recording_step_s: int = 600, keyset: bool = True, latency_s: float = 0.0,
                 retention_days: int = 365, tie_group: int = 1, subscription_order: str = "heap",
                 verified_first: bool = True) -> None:
        self._lock = threading.RLock()
        self._now_us = _to_us(now or datetime.now(UTC).replace(microsecond=0))
        self.requests: list[FakeRequest] = []
        self.project_ids = [int(p) for p in project_ids]
        self.api_key, self.seed, self.keyset, self.latency_s = api_key, seed, keyset, latency_s
        self.group_types, self.segments = min(group_types, len(_GROUP_NAMES)), segments
        self.retention_days, self._retention_s = retention_days, retention_days * 86400
        t0 = self._now_us // US
        # every kind of object has a creation schedule base + k*step (+ jitter < step) that keeps
        # producing new objects as the clock advances; `count` of them exist at construction time
        self._step, self._tie = max(1, recording_step_s), max(1, tie_group)
        self._rbase = t0 - recordings * self._step
        span = max(recordings * self._step, 86400)
        self._sstep = max(1, span // max(1, summaries))
        self._sbase_us = (t0 - summaries * self._sstep) * US
        self._dstep = max(60, min(span // max(1, desktop_recordings), 1800))
        self._dbase = t0 - desktop_recordings * self._dstep
        self._salt = {p: _hh(seed, 1, p) for p in self.project_ids}
        self._rid = {p: (f"-{p & 0xFFFF:04x}-7", f"-8{(p >> 16) & 0xFFF:03x}-") for p in self.project_ids}
        self._npersons = max(3, min(1000, recordings // 3))
        self._persons: dict[tuple[int, int], dict[str, Any]] = {}
        self._edges: dict[tuple[Any, ...], tuple[int, int, list[tuple[int, int]], list[int]]] = {}
        self._deleted: dict[int, set[int]] = {}
        self._del_version = 0
        self._too_big: tuple[int | None, float | None, tuple[int | str, ...], random.Random] | None = None
        self._extra: dict[str, dict[str, object]] = {r: {} for r in RESOURCES}
        self._disabled: dict[tuple[int, str], int] = {}
        self._injections: list[_Injection] = []
        # called with each request after it was answered: mutations then show on the next page
        self.hooks: list[Callable[[FakeRequest], None]] = []
        self._chaos: tuple[float, random.Random] | None = None
        self._limits: dict[str, list[tuple[int, float]]] = {}
        self._history: dict[str, deque[float]] = {}
        self._clock: Callable[[], float] = time.monotonic
        self._recordings_429 = "drf"
        self.competitors: list[_Competitor] = []
        self._org = _uuid(_hh(seed, 9))
        self._users = [{"id": k + 1, "uuid": _uuid(_hh(seed, 10, k)), "distinct_id": _uuid(_hh(seed, 11, k)),
                        "first_name": n, "last_name": "Example", "email": f"{n.lower()}@example.com",
                        "is_email_verified": True, "hedgehog_config": None,
                        "role_at_organization": "engineering"}
                       for k, n in enumerate(_PEOPLE[:5])]
        self._viewers = [[u["email"]] for u in self._users]
        # subscriptions: "heap" = older servers, no ORDER BY (see `_subscriptions`); "ordering" = newer
        # servers, `?ordering=` honoured; "shuffle" = a different order on every request
        if subscription_order not in ("heap", "ordering", "shuffle"):
            raise ValueError(f"unknown subscription_order {subscription_order!r}")
        self.subscription_order, self._shuffle = subscription_order, random.Random(seed)
        # enterprise-taxonomy orgs sort definitions `verified DESC NULLS LAST, name ASC` (§7.5)
        self.verified_first = verified_first
        self._hidden: dict[tuple[int, str, int | None], int] = {}
        self._def_timeouts: list[list[Any]] = []
        self._next_def = 0  # [type, from_offset, times left (-1 = always)]
        self._next_sub_id = 1
        # one project's subscriptions in physical (heap) order; None is a slot freed by an update or delete
        self._subs: dict[int, list[dict[str, Any] | None]] = {p: [] for p in self.project_ids}
        sub_step = max(60, span // max(1, subscriptions))
        for p in self.project_ids:
            for j in range(subscriptions):
                created = (t0 - (subscriptions - j) * sub_step) * US + _hh(seed, 12, p, j) % US
                self._new_sub(p, created, deleted=j % 3 == 2)
        self._defs = {p: self._make_defs(p, property_definitions) for p in self.project_ids}

    # -- clock and mutations ---------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The fake's clock (UTC)."""
        return EPOCH + timedelta(microseconds=self._now_us)

    @now.setter
    def now(self, value: datetime) -> None:
        with self._lock:
            self._now_us = _to_us(value)

    def advance(self, seconds: float) -> None:
        """Move the clock: new objects appear, ongoing recordings and desktop transcripts grow."""
        with self._lock:
            self._now_us += round(seconds * US)

    def soft_delete_subscription(self, project_id: int, subscription_id: int) -> None:
        """Set ``deleted=true`` on a subscription (hidden from the default listing from now on)."""
        with self._lock:
            self._update_sub(project_id, subscription_id, deleted=True)

    def add_subscription(self, project_id: int) -> int:
        """Create a subscription at the current clock time and return its id."""
        with self._lock:
            return self._new_sub(project_id, self._now_us, deleted=False)["id"]

    def touch_subscription(self, project_id: int, subscription_id: int) -> None:
        """Update a subscription as a delivery does (`next_delivery_date` moves on): it moves in heap order."""
        with self._lock:
            row = self._sub(project_id, subscription_id)
            period = {"daily": 1, "weekly": 7, "monthly": 30}[row["frequency"]] * 86400
            self._update_sub(project_id, subscription_id,
                             next_delivery_date=_iso(parse_iso_s(row["next_delivery_date"]) + period))

    def delete_subscription(self, project_id: int, subscription_id: int) -> None:
        """Hard-delete a subscription (the API answers 405, but deleting its insight cascades)."""
        with self._lock:
            heap = self._subs[project_id]
            heap[heap.index(self._sub(project_id, subscription_id))] = None

    def live_subscriptions(self, project_id: int) -> list[int]:
        """Ids of the subscriptions the default listing holds now (not soft-deleted)."""
        with self._lock:
            return [r["id"] for r in self._subs[project_id] if r is not None and not r["deleted"]]

    def add_property_definition(self, project_id: int, type: str, name: str,
                                group_type_index: int | None = None) -> str:
        """Create a property definition (it lands at its sorted place) and return its id."""
        with self._lock:
            gti = group_type_index if type == "group" else None
            rows = self._defs[project_id][(type, gti)]
            self._next_def += 1
            row = {"description": None, "tags": [], "is_numerical": False, "updated_at": None, "updated_by": None,
                   "is_seen_on_filtered_events": None, "property_type": "String", "hidden": False,
                   "id": _uuid(_hh(self.seed, 14, project_id, self._next_def)),
                   "name": name, "verified": False, "verified_at": None, "verified_by": None}
            rows.append(row)
            rows.sort(key=lambda r: r["name"])
            return row["id"]

    def verify_property_definition(self, project_id: int, type: str, name: str, verified: bool = True,
                                   group_type_index: int | None = None) -> None:
        """Mark a definition verified (or not): with `verified_first` it moves to the other block."""
        with self._lock:
            gti = group_type_index if type == "group" else None
            row = next(r for r in self._defs[project_id][(type, gti)] if r["name"] == name)
            row["verified"] = verified

    def hide_property_definitions(self, project_id: int, type: str, hidden: int,
                                  group_type_index: int | None = None) -> None:
        """Count `hidden` more definitions than any page returns (hidden from the key's user, §7.5)."""
        with self._lock:
            self._hidden[(project_id, type, group_type_index if type == "group" else None)] = hidden

    def time_out_property_definitions(self, type: str, *, from_offset: int = 0, times: int = -1) -> None:
        """Answer listings of that type from `from_offset` on with the 25 s timeout's 503 (-1: always)."""
        with self._lock:
            self._def_timeouts.append([type, from_offset, times])

    def remove_property_definition(self, project_id: int, type: str, name: str,
                                   group_type_index: int | None = None) -> None:
        """Delete one property definition (KeyError if it does not exist)."""
        with self._lock:
            rows = self._defs[project_id][(type, group_type_index if type == "group" else None)]
            for row in rows:
                if row["name"] == name:
                    rows.remove(row)
                    return
            raise KeyError(name)

    def add_field(self, resource: str, field: str, value: object) -> None:
        """Schema drift: every row of ``resource`` (list and detail) gains ``field=value``."""
        with self._lock:
            self._extra[_check(resource)][field] = value

    def set_field(self, resource: str, field: str, value: object) -> None:
        """Override the value of an existing field in every row of ``resource``."""
        self.add_field(resource, field, value)

    def disable(self, project_id: int, resource: str, status: int) -> None:
        """Make that resource (list and detail) answer ``status`` (402, 403, 404, ...) for that project."""
        with self._lock:
            self._disabled[(project_id, _check(resource))] = status

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

    def truth(self, project_id: int, resource: str) -> list[dict[str, Any]]:
        """Every current object of ``resource``, complete: its detail row merged onto its list row."""
        with self._lock:
            p, now_us = project_id, self._now_us
            if _check(resource) == "session_recordings":
                a, b, _, dels = self._rec_window(p, None, None, now_us)
                rows: list[Any] = self._rec_rows(p, self._rec_take(a, b, [], dels, 0, b - a - len(dels)), now_us)
            elif resource == "session_group_summaries":  # list row and detail row together
                rows = [self._summary_row(p, j, False) | self._summary_row(p, j, True)
                        for j in range(self._n_summaries(now_us))]
            elif resource == "desktop_recordings":
                rows = [self._desktop_row(p, k, now_us) for k in range(self._n_desktop(now_us))]
            elif resource == "subscriptions":
                rows = [self._sub_row(r) for r in self._subs[p] if r is not None]
            else:
                rows = [{**r, "type": t, "group_type_index": g} for (t, g), defs in self._defs[p].items()
                        for r in self._defs_out(defs + self._virtual(t))]
            return orjson.loads(orjson.dumps(rows))

    # -- session recordings ----------------------------------------------------------------------

    def _rs(self, i: int) -> int:
        """Start (s) of recording i; groups of `tie_group` consecutive recordings share one."""
        return self._rbase + (i - i % self._tie) * self._step

    def _first_at(self, t_us: int) -> int:
        """The smallest index whose start is at or after t_us."""
        return _cdiv(max(0, _cdiv(t_us - self._rbase * US, self._step * US)), self._tie) * self._tie

    def _count_upto(self, t_us: int) -> int:
        """How many indices start at or before t_us."""
        m = (t_us - self._rbase * US) // (self._step * US)
        return 0 if m < 0 else (m // self._tie + 1) * self._tie

    def _rec_window(self, p: int, df: int | None, dt: int | None,
                    now_us: int) -> tuple[int, int, list[tuple[int, int]], list[int]]:
        """Complete rows are indices [a, b) minus the deleted ones (sorted, last item); edge rows are
        sorted (effective start, index) pairs."""
        key = (p, df, dt, now_us, self._del_version)
        if key in self._edges:
            return self._edges[key]
        vis_lo = self._first_at(now_us - self._retention_s * US)  # expired before
        vis_hi = max(vis_lo, self._first_at(now_us))  # not started yet from here on
        a_raw = vis_lo if df is None else self._first_at(df)
        a = min(max(a_raw, vis_lo), vis_hi)
        b = vis_hi if dt is None else min(max(self._count_upto(dt), a), vis_hi)
        deleted = self._deleted.get(p, ())
        parts: list[tuple[int, int]] = []
        if df is not None:  # only recordings started < MAX_DUR before date_from can reach past it
            now_s, salt = now_us // US, self._salt[p]
            for i in range(max(vis_lo, self._first_at(df - MAX_DUR * US)), min(a_raw, vis_hi)):
                s = self._rs(i)
                first = s + PART_S * _cdiv(df - s * US, PART_S * US)
                end = min(s + _duration(_mix((salt + i) & M64)), now_s)
                if first < end and (dt is None or first * US <= dt) and i not in deleted:
                    parts.append((first, i))
            parts.sort()
        dels = sorted(i for i in deleted if a <= i < b)
        if len(self._edges) > 64:
            self._edges.clear()
        self._edges[key] = (a, b, parts, dels)
        return a, b, parts, dels

    def _complete_before(self, a: int, b: int, dels: list[int], x: int) -> int:
        """How many complete (undeleted) window rows have an index below x."""
        x = min(max(x, a), b)
        return x - a - (bisect.bisect_left(dels, x) if dels else 0)

    def _rec_take(self, a: int, b: int, parts: list[tuple[int, int]], dels: list[int], lo: int,
                  hi: int) -> list[tuple[int, int | None]]:
        """(index, kept start | None) for ascending positions [lo, hi) of the merged window."""
        ppos = [j + self._complete_before(a, b, dels, self._first_at(e * US)) for j, (e, _) in enumerate(parts)]
        j = bisect.bisect_left(ppos, lo)
        fi, out = a + lo - j, []
        if dels:  # the (lo - j)-th undeleted index
            k = 0
            while (k2 := bisect.bisect_right(dels, fi)) != k:
                fi, k = a + lo - j + k2, k2
        d = bisect.bisect_left(dels, fi) if dels else 0
        for pos in range(lo, hi):
            if j < len(ppos) and ppos[j] == pos:
                out.append((parts[j][1], parts[j][0]))
                j += 1
            else:
                while d < len(dels) and dels[d] <= fi:
                    fi += dels[d] == fi
                    d += 1
                out.append((fi, None))
                fi += 1
        return out

    def _rec_rank(self, a: int, b: int, parts: list[tuple[int, int]], dels: list[int], e: int, i: int) -> int:
        """How many window rows sort at or before the key (effective start e, index i)."""
        lo_e, hi_e = self._first_at(e * US), self._count_upto(e * US)
        return self._complete_before(a, b, dels, min(max(i + 1, lo_e), hi_e)) + bisect.bisect_right(parts, (e, i))

    def _rstart(self, i: int, kept: int | None) -> int:
        return self._rs(i) if kept is None else kept

    def _rec_rows(self, p: int, items: Iterable[tuple[int, int | None]], now_us: int,
                  cut_us: int | None = None) -> list[dict[str, Any]]:
        """Rows for (index, kept start | None) pairs; a kept start makes a partial lower-edge row, and
        parts starting after `cut_us` (a `date_to`) are left out: a partial upper-edge row."""
        # hot path (100k+ rows/s): locals hoisted, integer rates, table-based ISO formatting
        base, step, tie, salt, (rid, rid_tail) = self._rbase, self._step, self._tie, self._salt[p], self._rid[p]
        npersons, persons, viewers = self._npersons, self._persons, self._viewers
        retention_s = self._retention_s
        extra, now_s, out = self._extra["session_recordings"], now_us // US, []
        cut_s = None if cut_us is None else cut_us // US
        for i, kept in items:
            s = base + (i - i % tie) * step
            h = _mix((salt + i) & M64)
            g = (h * 0xD1B54A32D192ED03 & M64) ^ (h >> 29)
            true_end = s + _duration(h)
            end = true_end if true_end < now_s else now_s
            if cut_s is not None and end > cut_s:  # parts are PART_S long from the start
                end = min(end, s + ((cut_s - s) // PART_S + 1) * PART_S)
            x1 = end - s
            af, rc, rk, rm = 120 + (g & 0xFF), (g >> 8) & 0xFF, (g >> 16) & 0xFF, (g >> 24) & 0xFF
            rl, rw, re_ = (g >> 32) & 0xFF, (g >> 40) & 0xFF, (g >> 48) & 0xFF
            active, clicks, keys, mouse = af * x1 // 400, rc * x1 // 1200, rk * x1 // 600, rm * x1 // 90
            logs, warns_, errors = rl * x1 // 5000, rw * x1 // 25000, re_ * x1 // 50000
            expiry = s + retention_s
            if kept is None:
                start, d = s, x1
                start_iso = _iso(s)
                expiry_iso = _iso_day(expiry) + start_iso[11:]
            else:  # partial row: counts of the kept parts only
                start, x0 = kept, kept - s
                d = x1 - x0
                active, clicks, keys, mouse = (active - af * x0 // 400, clicks - rc * x0 // 1200,
                                               keys - rk * x0 // 600, mouse - rm * x0 // 90)
                logs, warns_, errors = (logs - rl * x0 // 5000, warns_ - rw * x0 // 25000,
                                        errors - re_ * x0 // 50000)
                start_iso, expiry_iso = _iso(start), _iso(expiry)
            pk = (h >> 40) % npersons
            person = persons.get((p, pk)) or self._person(p, pk)
            viewed, mobile, summary = (g >> 56) % 10 < 3, (h >> 36) % 10 == 0, (h >> 52) % 10 == 0
            x = f"{h:016x}"
            row = {
                "id": f"{x[:8]}{rid}{x[8:11]}{rid_tail}{i:012x}", "distinct_id": person["distinct_ids"][0],
                "viewed": viewed, "viewers": viewers[(g >> 58) % 5] if viewed else _NONE,
                "recording_duration": d, "active_seconds": active, "inactive_seconds": d - active,
                "start_time": start_iso, "end_time": _iso(end), "click_count": clicks, "keypress_count": keys,
                "mouse_activity_count": mouse, "console_log_count": logs, "console_warn_count": warns_,
                "console_error_count": errors, "start_url": _URLS[(h >> 33) % 6], "person": person,
                "retention_period_days": self.retention_days, "expiry_time": expiry_iso,
                "recording_ttl": max(0, (expiry - now_s) // 86400),
                "snapshot_source": "mobile" if mobile else "web",
                "snapshot_library": ("posthog-ios" if h & 1 else "posthog-android") if mobile else "web",
                "ongoing": end > now_s - 300,
                "activity_score": min(10000, (20 * clicks + 10 * keys + mouse) * 100 // (d or 1)) / 100,
                "has_summary": summary, "summary_outcome": _OUTCOMES[g & 1] if summary else None,
                "external_references": _NONE, "matches_filters": True,
            }
            if extra:
                row.update(extra)
            out.append(row)
        return out

    def _person(self, p: int, k: int) -> dict[str, Any]:
        h = _hh(self.seed, 4, p, k)
        name = f"{_PEOPLE[h % len(_PEOPLE)].lower()}.{k}@example.com"
        person = self._persons[(p, k)] = {
            "id": p * 1_000_000 + k + 1, "name": name, "distinct_ids": [_uuid(h)],
            "properties": {"email": name, "$os": ("Mac OS X", "Windows", "iOS", "Android")[(h >> 8) % 4]},
            "created_at": _iso(self._rbase - 86400 * (1 + h % 90)), "uuid": _uuid(_mix(h)),
            "last_seen_at": _iso(self._rbase),
        }
        return person

    def _rec_id_index(self, p: int, rid: object) -> int | None:
        """The index encoded in a recording id of project p, if the id is one of its recordings."""
        m = _OID.fullmatch(rid) if isinstance(rid, str) else None
        if m is None:
            return None
        i = int(m[1], 16)
        return i if _oid(0, p, i, _mix((self._salt[p] + i) & M64)) == rid else None

    def _rec_index(self, p: int, rid: object, now_us: int) -> int | None:
        """Index of a listed (started, unexpired, undeleted) recording of project p with that id, else None."""
        i = self._rec_id_index(p, rid)
        return i if i is not None and self._listed(p, i, now_us) else None

    def _listed(self, p: int, i: int, now_us: int) -> bool:
        a, b, _, _ = self._rec_window(p, None, None, now_us)
        return a <= i < b and i not in self._deleted.get(p, ())

    def _persisted(self, p: int, i: int, now_us: int) -> bool:
        """A third of the finished recordings were persisted to long-term storage (Postgres)."""
        h = _mix((self._salt[p] + i) & M64)
        return (h >> 45) % 3 == 0 and self._rs(i) + _duration(h) < now_us // US - 300

    def delete_recording(self, project_id: int, recording_id: str) -> None:
        """Delete a recording: it drops out of lists at once, and its detail answers 404 (§7.1)."""
        with self._lock:
            i = self._rec_id_index(project_id, recording_id)
            if i is None:
                raise KeyError(recording_id)
            self._deleted.setdefault(project_id, set()).add(i)
            self._del_version += 1

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

    def _by_ids(self, p: int, ids: list[str], dates: list[int | None],
                now_us: int) -> tuple[list[tuple[int, int | None]], set[int]]:
        """Items asked for by `session_ids`, and which of them come from Postgres (persisted)."""
        items: list[tuple[int, int | None]] = []
        persisted: set[int] = set()
        a, b, parts, dels = self._rec_window(p, *dates, now_us) if not self.keyset else (0, 0, [], [])
        kept = {i: e for e, i in parts}
        vis_hi = self._first_at(now_us)
        for i in sorted({x for x in map(lambda r: self._rec_id_index(p, r), ids) if x is not None}):
            if i < vis_hi and self._persisted(p, i, now_us):  # no date, retention or deletion filter
                items.append((i, None))
                persisted.add(i)
            elif self.keyset:  # newer servers skip the window (bound: now - 5 y) (changed 2026)
                if self._listed(p, i, now_us):
                    items.append((i, None))
            elif a <= i < b and i not in dels:  # older servers apply the window (default -3d)
                items.append((i, None))
            elif i in kept:
                items.append((i, kept[i]))
        return items, persisted

    def _recordings(self, p: int, params: dict[str, str]) -> tuple[int, Any]:
        q: dict[str, Any] = {}
        for k, v in params.items():  # the real endpoint JSON-decodes every value, then validates strictly
            if k not in _REC_PARAMS or (k == "after" and not self.keyset):
                return _pydantic(k, "extra_forbidden", "Extra inputs are not permitted", v)
            try:
                q[k] = orjson.loads(v)
            except orjson.JSONDecodeError:
                q[k] = v
        for k in ("limit", "offset"):
            if k in q and (type(q[k]) is not int or q[k] < 0):
                return _pydantic(k, "int_parsing", "Input should be a valid integer", q[k])
        limit, offset = q.get("limit", 50), q.get("offset", 0)
        order, direction = q.get("order", "start_time"), q.get("order_direction", "DESC")
        if order not in _REC_ORDERS:
            return _pydantic("order", "literal_error", "Input should be a valid order field", order)
        if direction not in ("ASC", "DESC"):
            return _pydantic("order_direction", "literal_error", "Input should be 'ASC' or 'DESC'", direction)
        now_us, cursor = self._now_us, None
        if "after" in q:
            try:
                c = orjson.loads(base64.urlsafe_b64decode(str(q["after"]).encode()))
                cursor = (c[0], int(c[1]))
            except (ValueError, TypeError, IndexError, KeyError):
                return _pydantic("after", "value_error", "Invalid cursor", q["after"])
        dates: list[int | None] = []
        for k, default in (("date_from", "-3d"), ("date_to", None)):
            try:
                dates.append(None if q.get(k, default) is None else _parse_when(q.get(k, default), now_us))
            except ValueError:
                return _pydantic(k, "value_error", "Invalid date", q[k])
        if (too_big := self._query_too_big(limit, dates[0], dates[1], "session_ids" in q)) is not None:
            return too_big
        persisted: set[int] = set()
        cut = dates[1]
        if "session_ids" in q:
            ids = q["session_ids"]
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                return _pydantic("session_ids", "list_type", "Input should be a valid list", ids)
            items, persisted = self._by_ids(p, ids, dates, now_us)
            if self.keyset:
                cut = None
        else:
            a, b, parts, dels = self._rec_window(p, dates[0], dates[1], now_us)
            items = []  # start_time order is served by index arithmetic below
            if order != "start_time":
                items = self._rec_take(a, b, parts, dels, 0, b - a - len(dels) + len(parts))
        if order != "start_time" or "session_ids" in q:  # small or unusual: materialise and sort
            field = "recording_duration" if order == "duration" else order
            if persisted:
                rows = [self._rec_rows(p, (it,), now_us, None if it[0] in persisted else cut)[0] for it in items]
            else:
                rows = self._rec_rows(p, items, now_us, cut)
            for (i, _), r in zip(items, rows, strict=True):
                if i in persisted:  # straight from Postgres: fields only the ClickHouse query computes are null
                    r.update(ongoing=None, activity_score=None, expiry_time=None, recording_ttl=None)
            keyed = sorted(((self._rstart(i, kept) if order == "start_time" else r[field] or 0, i), r)
                           for (i, kept), r in zip(items, rows, strict=True))
            total, keys = len(keyed), [k for k, _ in keyed]

            def rank(e: Any, i: int) -> int:
                return bisect.bisect_right(keys, (e, i))

            def take(lo: int, hi: int) -> list[dict[str, Any]]:
                return [r for _, r in keyed[lo:hi]]

            def key(pos: int) -> tuple[Any, int]:
                return keys[pos]
        else:  # the window by index arithmetic; only the edge rows were sorted
            total = b - a - len(dels) + len(parts)

            def rank(e: Any, i: int) -> int:
                return self._rec_rank(a, b, parts, dels, e, i)

            def pairs(lo: int, hi: int) -> list[tuple[int, int | None]]:
                return self._rec_take(a, b, parts, dels, lo, hi)

            if not self.keyset:  # older servers: no tiebreaker, equal start times come in any order
                pairs = self._shuffled_ties(pairs, total, len(parts))

            def take(lo: int, hi: int) -> list[dict[str, Any]]:
                return self._rec_rows(p, pairs(lo, hi), now_us, cut)

            def key(pos: int) -> tuple[Any, int]:
                i, kept = pairs(pos, pos + 1)[0]
                return self._rstart(i, kept), i
        desc = direction == "DESC"
        if cursor is not None:  # keyset: rows strictly beyond the cursor's (order value, index) key
            hi = rank(cursor[0], cursor[1] - 1) if desc else rank(*cursor) + limit
        else:
            hi = total - offset if desc else offset + limit
        lo, hi = max(0, min(hi - limit, total)), max(0, min(hi, total))
        has_next = lo > 0 if desc else hi < total
        tail: dict[str, Any] = {"has_next": has_next, "version": 4}
        if self.keyset and has_next and hi > lo:
            tail["next_cursor"] = base64.urlsafe_b64encode(orjson.dumps(key(lo if desc else hi - 1))).decode()
        if hi - lo > _STREAM_ROWS:
            return 200, _Stream(take, lo, hi, desc, tail)
        page = take(lo, hi) if hi > lo else []
        if desc:
            page.reverse()
        return 200, {"results": page} | tail

    def _shuffled_ties(self, pairs: Callable[[int, int], list[tuple[int, int | None]]], total: int,
                       n_parts: int) -> Callable[[int, int], list[tuple[int, int | None]]]:
        """Positions as a server without a tiebreaker serves them: ties in an order that changes per query."""
        nonce, width = _hh(self.seed, 77, len(self.requests)), self._tie + n_parts  # no tie group is wider

        def shuffled(lo: int, hi: int) -> list[tuple[int, int | None]]:
            x0, x1 = max(0, lo - width), min(total, hi + width)
            items = pairs(x0, x1)
            items.sort(key=lambda it: (self._rstart(*it), _mix(nonce ^ it[0])))
            return items[lo - x0:hi - x0]

        return shuffled

    # -- session group summaries -----------------------------------------------------------------

    def _summary_created_us(self, j: int) -> int:
        return self._sbase_us + j * self._sstep * US + _hh(self.seed, 2, j) % US

    def _n_summaries(self, now_us: int) -> int:
        return _n_before(self._sbase_us, self._sstep * US, self._summary_created_us, now_us)

    def _summary_row(self, p: int, j: int, detail: bool) -> dict[str, Any]:
        h = _hh(self.seed, 5, p, j)
        created, n = self._summary_created_us(j), 2 + h % 7
        topic = ("Checkout drop-off", "Onboarding friction", "Search usage", "Billing errors", "Mobile UX")[
            h % 5]
        row: dict[str, Any] = {"id": _oid(1, p, j, h), "title": f"{topic} ({n} sessions)", "session_count": n,
                               "created_at": _iso_us(created), "created_by": self._users[(h >> 8) % 5]}
        if detail:  # the retrieve serializer has no session_count (shared/posthog-api.md §7.2)
            del row["session_count"]
            i_hi = max(0, _cdiv(created - self._rbase * US, self._step * US))
            row |= {
                "session_ids": [_oid(0, p, i, _mix((self._salt[p] + i) & M64))
                                for i in range(i_hi - 1, max(-1, i_hi - 1 - 3 * n), -3)],
                "summary": {"patterns": [{"pattern_id": k + 1, "pattern_name": f"{topic} pattern {k + 1}",
                                          "severity": ("low", "medium", "high")[(h >> (4 + k)) % 3],
                                          "stats": {"sessions_affected": 1 + (h >> (8 + k)) % n}}
                                         for k in range(1 + (h >> 16) % 3)]},
                "extra_summary_context": {"focus_area": topic.lower()} if h & 16 else None,
                "run_metadata": {"model_used": "o3", "visual_confirmation": bool(h & 32)} if h & 64 else None,
                "team": p,
            }
        return row | self._extra["session_group_summaries"]

    def _summaries(self, p: int, params: dict[str, str]) -> tuple[Any, Any]:
        bounds = []
        for k in ("date_from", "date_to"):
            try:
                bounds.append(_parse_when(params[k], self._now_us) if k in params else None)
            except ValueError:
                return _invalid(f"Invalid date: {params[k]}", k)
        lo, hi = bounds  # both strict, on created_at
        keys = [j for j in range(self._n_summaries(self._now_us) - 1, -1, -1)
                for c in (self._summary_created_us(j),) if (lo is None or c > lo) and (hi is None or c < hi)]
        by, search = params.get("created_by"), params.get("search", "").lower()
        if by or search:
            keys = [j for j in keys for r in (self._summary_row(p, j, False),)
                    if by in (None, r["created_by"]["uuid"]) and search in r["title"].lower()]
        return keys, lambda j: self._summary_row(p, j, False)

    # -- desktop recordings ----------------------------------------------------------------------

    def _desktop_start(self, k: int) -> int:
        return self._dbase + k * self._dstep + _hh(self.seed, 7, k) % max(1, self._dstep // 2)

    def _n_desktop(self, now_us: int) -> int:
        return _n_before(self._dbase * US, self._dstep * US, lambda k: self._desktop_start(k) * US, now_us)

    def _desktop_meta(self, p: int, k: int, now_s: int) -> tuple[int, int, int, int, str]:
        """(hash, started, recording end, final time, status at now_s) of desktop recording k."""
        h, start = _hh(self.seed, 6, p, k), self._desktop_start(k)
        end = start + 900 + (h >> 16) % 4500
        final = end + 120 + (h >> 32) % 480
        status = "recording" if now_s < end else "processing" if now_s < final else (
            "error" if (h >> 48) % 10 == 0 else "ready")
        return h, start, end, final, status

    def _desktop_row(self, p: int, k: int, now_us: int) -> dict[str, Any]:
        now_s = now_us // US
        h, start, end, final, status = self._desktop_meta(p, k, now_s)
        people = [f"{_PEOPLE[(h >> (3 * m)) % len(_PEOPLE)]} {m + 1}" for m in range(2 + h % 4)]
        platform = _PLATFORMS[(h >> 8) % 5]
        seg_s = 3600 / self.segments if self.segments > 0 else math.inf
        segments = []
        for m in range(int((min(now_s, end) - start) / seg_s)):  # one segment per seg_s while recording
            x = _mix(h + m)
            text = " ".join(_WORDS[(x >> (5 * t)) & 31] for t in range(3 + x % 8))
            ts = None if x % 13 == 0 else float(int(m * seg_s * 1000) + (x >> 40) % 997)
            segments.append({"timestamp": ts, "speaker": people[(x >> 50) % len(people)],
                             "text": text.capitalize() + ".",
                             "confidence": round(0.75 + ((x >> 20) & 0xFF) / 1020, 3), "is_final": True})
        ready, ended = status == "ready", now_s >= end
        title = ("Weekly sync", "Customer call", "Design review", "Sprint planning", "1:1")[(h >> 12) % 5]
        last_segment = start + int(len(segments) * seg_s) if segments else start
        updated = final if status in ("ready", "error") else end if ended else last_segment
        url = None if platform == "desktop_audio" else f"https://{platform}.example.com/{h % 997}"
        row = {
            "id": _oid(2, p, k, h), "team": p, "created_by": 1 + (h >> 20) % 5,
            "sdk_upload_id": _uuid(_mix(h ^ 1)), "recall_recording_id": _uuid(_mix(h ^ 2)),
            "platform": platform, "meeting_title": title, "meeting_url": url,
            "duration_seconds": end - start if ended else None, "status": status,
            "notes": "Follow up next week." if h & 4 else None,
            "error_message": "Transcription provider timed out." if status == "error" else None,
            "video_url": f"https://storage.example.com/desktop/{h:016x}.mp4" if ready else None,
            "video_size_bytes": (end - start) * 250_000 if ready else None, "participants": people,
            "transcript_text": " ".join(s["text"] for s in segments), "transcript_segments": segments,
            "summary": f"{title}: {people[0]} and {people[1]} agreed on next steps." if ready else None,
            "extracted_tasks": [{"title": f"Task {t + 1} from {title.lower()}", "description": "Follow up.",
                                 "assignee": people[t % len(people)]} for t in range(1 + h % 3) if ready],
            "tasks_generated_at": _iso(final) if ready else None,
            "summary_generated_at": _iso(final) if ready else None, "started_at": _iso(start),
            "completed_at": _iso(end) if ended else None, "created_at": _iso(start),
            "updated_at": _iso(updated),
        }
        return row | self._extra["desktop_recordings"]

    def _desktops(self, p: int, params: dict[str, str]) -> tuple[Any, Any]:
        now_us, now_s = self._now_us, self._now_us // US
        keys = list(range(self._n_desktop(now_us) - 1, -1, -1))
        want = [(f, params[f]) for f in ("status", "platform", "user_id") if f in params]
        if want:
            def facts(k: int) -> dict[str, str]:
                h, *_, status = self._desktop_meta(p, k, now_s)
                return {"status": status, "platform": _PLATFORMS[(h >> 8) % 5],
                        "user_id": str(1 + (h >> 20) % 5)}
            keys = [k for k in keys for f in (facts(k),) if all(f[n] == v for n, v in want)]
        if "search" in params:
            needle = params["search"].lower()
            keys = [k for k in keys if needle in self._desktop_row(p, k, now_us)["transcript_text"].lower()]
        return keys, lambda k: self._desktop_row(p, k, now_us)

    # -- subscriptions ---------------------------------------------------------------------------

    def _new_sub(self, p: int, created_us: int, deleted: bool) -> dict[str, Any]:
        sid, self._next_sub_id = self._next_sub_id, self._next_sub_id + 1
        h = _hh(self.seed, 8, p, sid)
        freq, insight = ("daily", "weekly", "monthly")[h % 3], bool(h & 8)
        target = ("email", "slack", "webhook")[(h >> 4) % 3]
        start_s, period = created_us // US, {"daily": 1, "weekly": 7, "monthly": 30}[freq] * 86400
        row = {
            "id": sid, "dashboard": None if insight else 100 + h % 50,
            "insight": 500 + h % 400 if insight else None,
            "target_type": target, "target_value": {"email": "team@example.com", "slack": "#alerts",
                                                    "webhook": "https://hooks.example.com/x"}[target],
            "frequency": freq, "interval": 1 + (h >> 8) % 2,
            "byweekday": ["monday"] if freq == "weekly" else None,
            "bysetpos": None, "count": None, "start_date": _iso(start_s), "until_date": None,
            "created_at": _iso_us(created_us), "created_by": self._users[(h >> 12) % 5], "deleted": deleted,
            "title": f"{('Weekly KPIs', 'Revenue', 'Signups', 'Errors')[(h >> 16) % 4]} report",
            "summary": f"sent every {('day', 'week', 'month')[h % 3]}",
            "next_delivery_date": _iso(start_s + period * (1 + (self._now_us // US - start_s) // period)),
            "invite_message": None, "_created_us": created_us,
        }
        self._place(p, row)
        return row

    def _place(self, p: int, row: dict[str, Any]) -> None:
        # a new tuple goes to the first free slot a vacuum left, else to the end of the heap
        heap = self._subs[p]
        hole = next((k for k, r in enumerate(heap) if r is None), None)
        if hole is None:
            heap.append(row)
        else:
            heap[hole] = row

    def _update_sub(self, p: int, sid: int, **changes: Any) -> None:
        # Postgres MVCC: an UPDATE writes a new row version elsewhere and frees the old slot afterwards
        old = self._sub(p, sid)
        heap, slot = self._subs[p], self._subs[p].index(old)
        self._place(p, old | changes)
        heap[slot] = None

    def _sub(self, p: int, sid: int) -> dict[str, Any]:
        for row in self._subs[p]:
            if row is not None and row["id"] == sid:
                return row
        raise KeyError(sid)

    def _sub_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k != "_created_us"} | self._extra["subscriptions"]

    def _subscriptions(self, p: int, params: dict[str, str]) -> tuple[Any, Any]:
        # soft-deleted rows are hidden unless a `deleted` param is sent; deleted=true lists only them
        want = params.get("deleted", "false").lower() in ("true", "1")
        # Older servers have no ORDER BY (§7.4): Postgres returns rows in physical order (a seq scan, a
        # bitmap scan, or a btree scan on team_id, whose equal keys are in heap order since PG 12). That
        # order is stable between requests, but every UPDATE (a soft delete, or the next_delivery_date
        # bump after each delivery) writes a new row version into a freed slot or at the end, and
        # inserts fill freed slots: rows move, also back into pages already read.
        rows = [r for r in self._subs[p] if r is not None and r["deleted"] == want]
        if self.subscription_order == "shuffle":
            self._shuffle.shuffle(rows)
        elif self.subscription_order == "ordering":
            field = params.get("ordering", "-created_at")
            name = field.removeprefix("-")
            if name not in ("created_at", "next_delivery_date", "title", "created_by__email"):
                name, field = "created_at", "-created_at"  # DRF's OrderingFilter drops unknown fields
            # no id tiebreaker: equal values stay in heap order (Python's sort is stable)
            rows.sort(key=lambda r: (r["created_by"] or {}).get("email") or "" if name == "created_by__email"
                      else r["_created_us"] if name == "created_at" else r[name] or "",
                      reverse=field.startswith("-"))
        return rows, self._sub_row

    # -- property definitions --------------------------------------------------------------------

    def _make_defs(self, p: int, n: int) -> dict[tuple[str, int | None], list[dict[str, Any]]]:
        kinds = [("event", None, n), ("person", None, max(1, n // 2)), ("session", None, min(7, n))]
        kinds += [("group", g, max(1, n // 3)) for g in range(self.group_types)]
        out: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        for t, (type_, gti, size) in enumerate(kinds):
            names = sorted([*_PROPS[type_], *(f"custom_{type_}_prop_{k:03d}" for k in range(size))][:size])
            out[(type_, gti)] = rows = []
            for k, name in enumerate(names):
                h = _hh(self.seed, 13, p, t, k)
                verified = h % 4 == 0
                ptype = ("String", "String", "Numeric", "DateTime", "Boolean")[(h >> 4) % 5]
                updated = _iso(self._rbase - (h >> 8) % (30 * 86400))
                rows.append({
                    "id": _uuid(h), "name": name, "description": f"The {name} property." if h & 32 else None,
                    "tags": ["core"] if h & 64 else [], "is_numerical": ptype == "Numeric",
                    "updated_at": updated,
                    "updated_by": self._users[(h >> 12) % 5] if h & 128 else None,
                    "is_seen_on_filtered_events": None, "property_type": ptype, "verified": verified,
                    "verified_at": updated if verified else None,
                    "verified_by": self._users[0] if verified else None,
                    "hidden": False,
                })
        return out

    def _virtual(self, type_: str) -> list[dict[str, Any]]:
        return [{"id": f"$builtin_{key}", "name": key, "description": "Virtual property computed by PostHog.",
                 "tags": [], "is_numerical": "type" not in key, "updated_at": None, "updated_by": None,
                 "is_seen_on_filtered_events": None,
                 "property_type": "String" if "type" in key else "Numeric", "verified": False,
                 "verified_at": None, "verified_by": None, "hidden": False, "virtual": True}
                for key in _VIRTUAL.get(type_, ())]

    def _defs_out(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        extra = self._extra["property_definitions"]
        return [r | extra for r in rows] if extra else rows

    def _property_definitions(self, p: int, params: dict[str, str], url: Callable) -> tuple[int, Any]:
        type_, raw = params.get("type", "event"), params.get("group_type_index")
        if type_ not in ("event", "person", "group", "session"):
            return _invalid(f'"{type_}" is not a valid choice.', "type")
        if type_ != "group" and raw is not None:
            return _invalid("group_type_index can only be set for type=group", "group_type_index")
        if type_ == "group" and (raw is None or not raw.isdigit() or int(raw) >= len(_GROUP_NAMES)):
            return _invalid("group_type_index must be an integer between 0 and 4 for type=group",
                            "group_type_index")
        gti = None if raw is None else int(raw)
        real = self._defs[p].get((type_, gti), [])
        if self.verified_first:  # verified DESC NULLS LAST, name ASC
            real = sorted(real, key=lambda r: (r.get("verified") is not True, r.get("verified") is None))
        virt = self._virtual(type_) if (type_, gti) in self._defs[p] else []
        limit, offset = _pos_int(params.get("limit"), 100, strict=True), _pos_int(params.get("offset"), 0)
        for timeout in self._def_timeouts:
            if timeout[0] == type_ and offset >= timeout[1] and timeout[2] != 0:
                timeout[2] -= timeout[2] > 0
                # newer servers stop a listing after 25 s (`definition_listing.py`, §7.5) ⚠️ body wording
                return 503, _err("server_error", "service_unavailable",
                                 "Listing property definitions took too long. Please try again.")
        # hidden definitions (§7.5 property_access ⚠️) are counted, paged over, never returned
        paged = len(real) + self._hidden.get((p, type_, gti), 0)
        # virtual rows ride on the last real page and count in `count`, but `next` ignores them
        rows = real[offset:offset + limit] + (virt if offset + limit >= paged else [])
        return 200, _drf_body(paged + len(virt), paged, offset, limit, self._defs_out(rows), url)

    # -- HTTP ------------------------------------------------------------------------------------

    def _respond(self, method: str, target: str, auth: str | None,
                 host: str) -> tuple[int, bytes | Iterator[bytes], str, dict[str, str]]:
        """Answer and log one request: (status, body, content type, extra headers)."""
        split = urlsplit(target)
        path, params = split.path, dict(parse_qsl(split.query, keep_blank_values=True))
        authorized, headers, body, resource = auth == f"Bearer {self.api_key}", {}, None, None
        with self._lock:
            inj = None
            if method != "GET":
                body = _err("invalid_request", "method_not_allowed", f'Method "{method}" not allowed.')
                status = 405
            elif not auth:
                status, body = 401, _err("authentication_error", "not_authenticated",
                                         "Authentication credentials were not provided.")
            elif not authorized:
                status = 401
            else:
                inj = next((x for x in self._injections if x.path_contains in target), None)
                if inj is None and self._chaos and self._chaos[1].random() < self._chaos[0]:
                    inj = self._chaos_fault()
                if inj is None and (self._limits or self.competitors):
                    inj = self._throttled(path)
            if inj is not None:
                status, inj.times = inj.status, inj.times - 1
                self._injections = [x for x in self._injections if x.times > 0]
            elif authorized and method == "GET":
                status, body, resource = self._route(path, params, host)
            at = self._clock() if self._limits or self.competitors else 0.0
            self.requests.append(FakeRequest(method, path, params, status, authorized, at))
            for hook in self.hooks:
                hook(self.requests[-1])
        if inj is not None:
            if status == 503:
                headers["Retry-After"] = "1"
            headers.update(inj.headers)
            if inj.body is not None:
                json_like = inj.body.lstrip()[:1] in (b"{", b"[")
                return status, inj.body, "application/json" if json_like else "text/html", headers
            res = next((r for r in RESOURCES if f"/{r}" in path), None)
            listing = path.rstrip("/").endswith(f"/{res}")
            return status, *_error_body(status, res, inj.wait_s, listing, inj.detail), headers
        if body is None:
            return status, *_error_body(status, resource), headers
        if isinstance(body, _Stream):
            return status, body.chunks(self._lock), "application/json", headers
        return status, orjson.dumps(body), "application/json", headers

    def _route(self, path: str, params: dict[str, str], host: str) -> tuple[int, Any, str | None]:
        parts = [x for x in path.split("/") if x]
        not_found = _err("invalid_request", "not_found", "Not found.")
        if path == "/_fake/requests":  # not PostHog: answered requests per path, for the benchmark
            counts: dict[str, int] = {}
            for r in self.requests:
                counts[r.path] = counts.get(r.path, 0) + 1
            return 200, counts, None
        if path == "/_fake/advance":  # not PostHog: move the clock (the benchmark's second sync)
            self.advance(float(params.get("seconds", "0")))
            return 200, {"now": _iso(self._now_us // US)}, None
        if len(parts) < 2 or parts[0] != "api" or parts[1] not in ("projects", "environments"):
            return 404, not_found, None

        def url(**changes: int | None) -> str:  # DRF keeps the other params, sorted
            q = {k: v for k, v in params.items() if k not in changes}
            q |= {k: str(v) for k, v in changes.items() if v is not None}
            return f"http://{host}{path}" + (f"?{urlencode(sorted(q.items()))}" if q else "")

        rest = parts[2:]
        if not rest:
            return (200, _drf(self.project_ids, self._project, params, url), None) if parts[1] == "projects" \
                else (404, not_found, None)
        pid = self.project_ids[0] if rest[0] == "@current" else int(rest[0]) if rest[0].isdigit() else -1
        if pid not in self._salt:
            return 404, _err("invalid_request", "not_found", "Project not found."), None
        if len(rest) == 1:
            return 200, self._project(pid), None
        resource = rest[1]
        if resource == "groups_types" and len(rest) == 2 and parts[1] == "projects":
            return 200, [{"group_type": _GROUP_NAMES[g], "group_type_index": g, "name_singular": None,
                          "name_plural": None} for g in range(self.group_types)], None
        if resource not in RESOURCES or len(rest) > 3 or (
                parts[1] == "environments" and resource not in _ENV_ROUTES):
            return 404, not_found, None
        if (pid, resource) in self._disabled:
            return self._disabled[(pid, resource)], None, resource
        if len(rest) == 3:
            row = self._detail(pid, resource, rest[2])
            if row is None:
                msg = "Recording not found" if resource == "session_recordings" else "Not found."
                return 404, _err("invalid_request", "not_found", msg), resource
            return 200, row, resource
        if resource == "session_recordings":
            return *self._recordings(pid, params), resource
        if resource == "property_definitions":
            return *self._property_definitions(pid, params, url), resource
        handler = {"session_group_summaries": self._summaries, "desktop_recordings": self._desktops,
                   "subscriptions": self._subscriptions}[resource]
        keys, build = handler(pid, params)
        if isinstance(keys, int):  # a validation error
            return keys, build, resource
        return 200, _drf(keys, build, params, url), resource

    def _project(self, p: int) -> dict[str, Any]:
        return {"id": p, "name": f"Project {p}", "created_at": _iso(self._rbase - 30 * 86400),
                "timezone": "UTC", "organization": self._org}

    def _detail(self, p: int, resource: str, oid: str) -> dict[str, Any] | None:
        now_us = self._now_us
        if resource == "session_recordings":
            i = self._rec_index(p, oid, now_us)
            return None if i is None else self._rec_rows(p, ((i, None),), now_us)[0]
        if resource == "subscriptions":
            return next((self._sub_row(r) for r in self._subs[p] if r is not None and str(r["id"]) == oid), None)
        if resource == "property_definitions":
            return next((r | self._extra[resource] for rows in self._defs[p].values() for r in rows
                         if r["id"] == oid), None)
        m = _OID.fullmatch(oid)
        idx = int(m[1], 16) if m else -1
        if resource == "session_group_summaries" and 0 <= idx < self._n_summaries(now_us):
            row = self._summary_row(p, idx, True)
        elif resource == "desktop_recordings" and 0 <= idx < self._n_desktop(now_us):
            row = self._desktop_row(p, idx, now_us)
        else:
            return None
        return row if row["id"] == oid else None

    @contextlib.contextmanager
    def serve(self, port: int = 0) -> Iterator[str]:
        """Serve on 127.0.0.1 (port 0 = any free one) in a daemon thread; yields the base URL."""
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def _check(resource: str) -> str:
    if resource not in RESOURCES:
        raise ValueError(f"unknown resource {resource!r}; expected one of {RESOURCES}")
    return resource


def _drf_body(count: int, paged: int, offset: int, limit: int, results: list[Any],
              url: Callable) -> dict[str, Any]:
    """DRF LimitOffsetPagination envelope; ``paged`` is the row count that drives ``next``."""
    nxt = url(offset=offset + limit, limit=limit) if offset + limit < paged else None
    prev = None if offset <= 0 else url(offset=offset - limit if offset > limit else None, limit=limit)
    return {"count": count, "next": nxt, "previous": prev, "results": results}


def _drf(keys: Sequence[Any], build: Callable[[Any], dict[str, Any]], params: dict[str, str],
         url: Callable) -> dict[str, Any]:
    limit, offset = _pos_int(params.get("limit"), 100, strict=True), _pos_int(params.get("offset"), 0)
    rows = [build(k) for k in keys[offset:offset + limit]]
    return _drf_body(len(keys), len(keys), offset, limit, rows, url)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive + separate header/body writes would hit delayed-ACK stalls
    timeout = 120

    def _answer(self) -> None:
        fake: FakePostHog = self.server.fake  # type: ignore[attr-defined]
        if length := int(self.headers.get("Content-Length") or 0):
            self.rfile.read(length)
        if fake.latency_s > 0:
            time.sleep(fake.latency_s)
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        auth = self.headers.get("Authorization")
        status, body, ctype, headers = fake._respond(self.command, self.path, auth, host)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in body:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: serve a fake until killed, printing ``READY <url>`` once listening."""
    ap = argparse.ArgumentParser(prog="python -m sources.posthog.fake", description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--projects", default="1,2", help="comma-separated project ids")
    for flag, default in (("recordings", 120), ("desktop-recordings", 12), ("segments", 8), ("summaries", 25),
                          ("subscriptions", 9), ("property-definitions", 30), ("group-types", 2),
                          ("recording-step-s", 600), ("retention-days", 365), ("seed", 0)):
        ap.add_argument(f"--{flag}", type=int, default=default)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--api-key", default="phx_fake_personal_key")
    ap.add_argument("--keyset", action=argparse.BooleanOptionalAction, default=True,
                    help="a newer server (next_cursor, a tiebreaker); --no-keyset: an older one")
    ap.add_argument("--tie-group", type=int, default=1, help="recordings sharing one start time")
    ap.add_argument("--subscription-order", choices=("heap", "ordering", "shuffle"), default="heap",
                    help="heap: older servers (no ORDER BY); ordering: newer servers honour ?ordering=")
    a = ap.parse_args(argv)
    fake = FakePostHog(
        project_ids=[int(x) for x in a.projects.split(",") if x.strip()], recordings=a.recordings,
        desktop_recordings=a.desktop_recordings, segments=a.segments, summaries=a.summaries,
        subscriptions=a.subscriptions, property_definitions=a.property_definitions, group_types=a.group_types,
        seed=a.seed, api_key=a.api_key, recording_step_s=a.recording_step_s, keyset=a.keyset, tie_group=a.tie_group,
        latency_s=a.latency_ms / 1000, retention_days=a.retention_days, subscription_order=a.subscription_order,
    )
    with fake.serve(port=a.port) as url:
        print(f"READY {url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
