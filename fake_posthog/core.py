"""`FakePostHog`: construction, the clock, schema drift, the truth, and the routing of one request."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import orjson

from . import server
from .base import (
    _GROUP_NAMES,
    _OID,
    _PEOPLE,
    EPOCH,
    RESOURCES,
    US,
    FakeRequest,
    _check,
    _err,
    _hh,
    _iso_us,
    _to_us,
    _uuid,
)
from .faults import Faults, _error_body
from .lists import Lists, _drf
from .playlists import Playlists
from .recordings import Recordings, _Page, _Stream
from .versions import Versions
from .vision import Vision

_ENV_ROUTES = {"session_recordings", "desktop_recordings", "subscriptions", "session_recording_playlists"}


class FakePostHog(Recordings, Lists, Playlists, Vision, Faults, Versions):
    """A deterministic, thread-safe PostHog API fake with a movable clock; ``serve()`` starts HTTP.

    Recordings behave like the newest servers by default (``keyset=True``: `next_cursor`, a tiebreaker,
    `session_ids` skipping the date window). ``keyset=False`` is an older server: offset paging only,
    no tiebreaker (equal start times, see ``tie_group``, come in a different order per query), and
    `session_ids` re-reads cut by the date window (default ``-3d``). See ``too_big`` and
    ``delete_recording`` for ClickHouse limits and deletions. ``transport()`` answers in process.
    ``versions`` picks per resource the row shape of a PostHog version (`versions.VARIANTS`, default the
    newest); ``removed`` names endpoints the server no longer has (404; with ``foss`` the summaries
    answer 501 as a build without ee/ does).
    ``playlist_tiebreaker=False`` lists playlists as older servers do (no id tiebreaker, no 500 cap).
    Replay Vision (``vision.py``): ``add_scanner``, ``delete_scanner``, ``retry_observation``,
    ``vision_enabled``.
    """

    def __init__(self, *, project_ids: Sequence[int] = (1, 2), recordings: int = 120,
                 desktop_recordings: int = 12, segments: int = 8, summaries: int = 25, subscriptions: int = 9,
                 property_definitions: int = 30, group_types: int = 2, seed: int = 0,
                 now: datetime | None = None, api_key: str = "phx_fake_personal_key",
                 recording_step_s: int = 600, keyset: bool = True, latency_s: float = 0.0,
                 retention_days: int = 365, tie_group: int = 1, subscription_order: str = "heap",
                 verified_first: bool = True, versions: Mapping[str, str] | None = None,
                 removed: Sequence[str] = (), foss: bool = False, playlists: int = 8,
                 playlist_tiebreaker: bool = True, vision_scanners: int = 4) -> None:
        self._lock = threading.RLock()
        self._now_us = _to_us(now or datetime.now(UTC).replace(microsecond=0))
        self.requests: list[FakeRequest] = []
        # called with each request after it was answered: mutations then show on the next page
        self.hooks = []
        self.project_ids = [int(p) for p in project_ids]
        self.api_key, self.seed, self.latency_s = api_key, seed, latency_s
        self.group_types = min(group_types, len(_GROUP_NAMES))
        self._extra = {r: {} for r in RESOURCES}
        self._users = [{"id": k + 1, "uuid": _uuid(_hh(seed, 10, k)), "distinct_id": _uuid(_hh(seed, 11, k)),
                        "first_name": n, "last_name": "Example", "email": f"{n.lower()}@example.com",
                        "is_email_verified": True, "hedgehog_config": None,
                        "role_at_organization": "engineering"}
                       for k, n in enumerate(_PEOPLE[:5])]
        self._init_faults()
        self._init_versions(versions, removed, foss)
        # every kind of object has a creation schedule base + k*step (+ jitter < step) that keeps
        # producing new objects as the clock advances; `count` of them exist at construction time
        self._init_recordings(recordings, recording_step_s, tie_group, keyset, retention_days)
        self._init_lists(max(self._now_us // US - self._rbase, 86400), summaries=summaries,
                         desktop_recordings=desktop_recordings, segments=segments, subscriptions=subscriptions,
                         property_definitions=property_definitions, subscription_order=subscription_order,
                         verified_first=verified_first)
        self._init_playlists(max(self._now_us // US - self._rbase, 86400), playlists, playlist_tiebreaker)
        self._init_vision(vision_scanners)

    # -- clock and schema drift ------------------------------------------------------------------

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

    def add_field(self, resource: str, field: str, value: object) -> None:
        """Schema drift: every row of ``resource`` (list and detail) gains ``field=value``."""
        with self._lock:
            self._extra[_check(resource)][field] = value

    def set_field(self, resource: str, field: str, value: object) -> None:
        """Override the value of an existing field in every row of ``resource``."""
        self.add_field(resource, field, value)

    def truth(self, project_id: int, resource: str) -> list[dict[str, Any]]:
        """Every current object of ``resource``, complete: its detail row merged onto its list row.

        ``session_recording_playlist_items``: every member of every listed collection (synthetic ones
        too), as (playlist_id, playlist_short_id, session_id), whether PostHog would return it or not.
        """
        with self._lock:
            p, now_us = project_id, self._now_us
            if resource == "session_recording_playlist_items":
                return self._playlist_items_truth(p)
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
            elif resource == "session_recording_playlists":
                rows = self._playlists_truth(p)
            elif resource.startswith("vision_"):
                rows = self._vision_truth(p, resource)
            else:
                rows = [{**r, "type": t, "group_type_index": g} for (t, g), defs in self._defs[p].items()
                        for r in self._defs_out(defs + self._virtual(t))]
            return orjson.loads(orjson.dumps(rows))

    # -- one request -----------------------------------------------------------------------------

    def _respond(self, method: str, target: str, auth: str | None,
                 host: str) -> tuple[int, bytes | Iterator[bytes], str, dict[str, str]]:
        """Answer and log one request: (status, body, content type, extra headers)."""
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        split = urlsplit(target)
        path, params = split.path, dict(parse_qsl(split.query, keep_blank_values=True))
        authorized, body, resource = auth == f"Bearer {self.api_key}", None, None
        with self._lock:
            fault = None
            if method != "GET":
                body = _err("invalid_request", "method_not_allowed", f'Method "{method}" not allowed.')
                status = 405
            elif not auth:
                status, body = 401, _err("authentication_error", "not_authenticated",
                                         "Authentication credentials were not provided.")
            elif not authorized:
                status = 401
            else:
                fault = self._fault(target, path)
            if fault is not None:
                status = fault.status
            elif authorized and method == "GET":
                status, body, resource = self._route(path, params, host)
            at = self._clock() if self._limits or self.competitors else 0.0
            self.requests.append(FakeRequest(method, path, params, status, authorized, at))
            for hook in self.hooks:
                hook(self.requests[-1])
            if isinstance(body, _Page):  # after the hooks, as a page of dicts is serialised after them
                return status, body.json(), "application/json", {}
        if fault is not None:
            return self._fault_answer(fault, path)
        if body is None:
            return status, *_error_body(status, resource), {}
        if isinstance(body, _Stream):
            return status, body.chunks(self._lock), "application/json", {}
        return status, orjson.dumps(body), "application/json", {}

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
            return 200, {"now": _iso_us(self._now_us)}, None
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
        if pid not in self.project_ids:
            return 404, _err("invalid_request", "not_found", "Project not found."), None
        if len(rest) == 1:
            return 200, self._project(pid), None
        resource = rest[1]
        if resource == "vision" and parts[1] == "projects":  # projects router only (§2)
            return self._vision(pid, rest[2:], params, url)
        if resource == "groups_types" and len(rest) == 2 and parts[1] == "projects":
            return 200, [{"group_type": _GROUP_NAMES[g], "group_type_index": g, "name_singular": None,
                          "name_plural": None} for g in range(self.group_types)], None
        if resource == "session_recording_playlists" and (pid, resource) not in self._disabled:
            return *self._playlists_route(pid, rest[2:], params, url), resource
        if resource not in RESOURCES or len(rest) > 3 or (
                parts[1] == "environments" and resource not in _ENV_ROUTES):
            return 404, not_found, None
        if (gone := self._gone(resource)) is not None:
            return *gone, resource
        if (pid, resource) in self._disabled:
            return self._disabled[(pid, resource)], None, resource
        if len(rest) == 3:
            row = self._detail(pid, resource, rest[2])
            if row is None:
                msg = "Recording not found" if resource == "session_recordings" else "Not found."
                return 404, _err("invalid_request", "not_found", msg), resource
            return 200, row, resource
        if resource == "session_recordings":
            return *self._recordings(pid, params, fast=True), resource
        if resource == "property_definitions":
            return *self._property_definitions(pid, params, url), resource
        handler = {"session_group_summaries": self._summaries, "desktop_recordings": self._desktops,
                   "subscriptions": self._subscriptions}[resource]
        keys, build = handler(pid, params)
        if isinstance(keys, int):  # a validation error
            return keys, build, resource
        return 200, _drf(keys, build, params, url), resource

    def _detail(self, p: int, resource: str, oid: str) -> dict[str, Any] | None:
        now_us = self._now_us
        if resource == "session_recordings":
            i = self._rec_index(p, oid, now_us)
            return None if i is None else self._rec_rows(p, ((i, None),), now_us, detail=True)[0]
        if resource == "subscriptions":
            return next((self._sub_row(r) for r in self._subs[p] if r is not None and str(r["id"]) == oid), None)
        if resource == "property_definitions":
            return next((self._shaped(resource, r) | self._extra[resource] for rows in self._defs[p].values()
                         for r in rows if r["id"] == oid), None)
        m = _OID.fullmatch(oid)
        idx = int(m[1], 16) if m else -1
        if resource == "session_group_summaries" and 0 <= idx < self._n_summaries(now_us):
            row = self._summary_row(p, idx, True)
        elif resource == "desktop_recordings" and 0 <= idx < self._n_desktop(now_us):
            row = self._desktop_row(p, idx, now_us)
        else:
            return None
        return row if row["id"] == oid else None

    def serve(self, port: int = 0) -> contextlib.AbstractContextManager[str]:
        """Serve on 127.0.0.1 (port 0 = any free one) in a daemon thread; yields the base URL."""
        return server.serve(self, port)

    def transport(self) -> httpx.MockTransport:
        """An in-process `httpx` transport answering as `serve()` does (same log, faults, throttles, headers)."""
        return server.transport(self)
