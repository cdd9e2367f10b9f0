"""The DRF lists: projects, session group summaries, desktop recordings, subscriptions, property definitions."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from .base import (
    _GROUP_NAMES,
    _PEOPLE,
    US,
    State,
    _cdiv,
    _date_bounds,
    _hh,
    _invalid,
    _iso,
    _iso_us,
    _mix,
    _oid,
    _uuid,
    parse_iso_s,
)

_WORDS = ("we", "should", "ship", "the", "new", "billing", "page", "before", "friday", "and", "check",
          "replay", "numbers", "with", "design", "team", "next", "sprint", "customer", "asked", "about",
          "export", "latency", "roadmap", "okay", "agreed", "let's", "review", "metrics", "tomorrow",
          "blocker", "onboarding")
_PLATFORMS = ("zoom", "teams", "meet", "desktop_audio", "slack")
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


def _n_before(a: int, step: int, t_of: Callable[[int], int], now: int) -> int:
    """How many k >= 0 have t_of(k) < now, given a + k*step <= t_of(k) < a + (k+1)*step."""
    k0 = max(0, (now - a) // step)
    return k0 + 1 if t_of(k0) < now else k0


def _pos_int(v: str | None, default: int, strict: bool = False) -> int:
    try:
        n = int(v) if v is not None else default
    except ValueError:
        return default
    return default if n < 0 or (strict and n == 0) else n


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


class Lists(State):
    """The DRF-paged lists of `FakePostHog`, and the mutations that make them move between pages."""

    # from the other parts: summaries name the recordings of their time; definitions can time out
    _rbase: int
    _step: int
    _rec_id: Callable[[int, int], str]
    _definitions_timeout: Callable[[str, int], tuple[int, Any] | None]
    _shaped: Callable[..., dict[str, Any]]  # Versions: a row as the chosen PostHog version sends it

    def _init_lists(self, span: int, *, summaries: int, desktop_recordings: int, segments: int, subscriptions: int,
                    property_definitions: int, subscription_order: str, verified_first: bool) -> None:
        """Creation schedules over the last `span` seconds; subscriptions and definitions are made now."""
        t0, seed = self._now_us // US, self.seed
        self.segments = segments
        self._sstep = max(1, span // max(1, summaries))
        self._sbase_us = (t0 - summaries * self._sstep) * US
        self._dstep = max(60, min(span // max(1, desktop_recordings), 1800))
        self._dbase = t0 - desktop_recordings * self._dstep
        self._org = _uuid(_hh(seed, 9))
        # subscriptions: "heap" = older servers, no ORDER BY (see `_subscriptions`); "ordering" = newer
        # servers, `?ordering=` honoured; "shuffle" = a different order on every request
        if subscription_order not in ("heap", "ordering", "shuffle"):
            raise ValueError(f"unknown subscription_order {subscription_order!r}")
        self.subscription_order, self._shuffle = subscription_order, random.Random(seed)
        # enterprise-taxonomy orgs sort definitions `verified DESC NULLS LAST, name ASC` (§7.5)
        self.verified_first = verified_first
        self._hidden: dict[tuple[int, str, int | None], int] = {}
        self._next_def = 0
        self._next_sub_id = 1
        # one project's subscriptions in physical (heap) order; None is a slot freed by an update or delete
        self._subs: dict[int, list[dict[str, Any] | None]] = {p: [] for p in self.project_ids}
        # made over two months at least, so some schedules have run out (`count`, `until_date`)
        sub_step = max(60, max(span, 60 * 86400) // max(1, subscriptions))
        for p in self.project_ids:
            for j in range(subscriptions):
                created = (t0 - (subscriptions - j) * sub_step) * US + _hh(seed, 12, p, j) % US
                self._new_sub(p, created, deleted=j % 3 == 2)
        self._defs = {p: self._make_defs(p, property_definitions) for p in self.project_ids}

    # -- mutations -------------------------------------------------------------------------------

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
            due = row["next_delivery_date"]  # null once the schedule has no delivery left
            self._update_sub(project_id, subscription_id,
                             next_delivery_date=due and _iso(parse_iso_s(due) + period))

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
    # -- projects --------------------------------------------------------------------------------

    def _project(self, p: int) -> dict[str, Any]:
        return {"id": p, "name": f"Project {p}", "created_at": _iso(self._rbase - 30 * 86400),
                "timezone": "UTC", "organization": self._org}
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
                "session_ids": [self._rec_id(p, i)
                                for i in range(i_hi - 1, max(-1, i_hi - 1 - 3 * n), -3)],
                "summary": {"patterns": [{"pattern_id": k + 1, "pattern_name": f"{topic} pattern {k + 1}",
                                          "severity": ("low", "medium", "high")[(h >> (4 + k)) % 3],
                                          "stats": {"sessions_affected": 1 + (h >> (8 + k)) % n}}
                                         for k in range(1 + (h >> 16) % 3)]},
                "extra_summary_context": {"focus_area": topic.lower()} if h & 16 else None,
                "run_metadata": {"model_used": "o3", "visual_confirmation": bool(h & 32)} if h & 64 else None,
                "team": p,
            }
        return self._shaped("session_group_summaries", row, detail) | self._extra["session_group_summaries"]

    def _summaries(self, p: int, params: dict[str, str]) -> tuple[Any, Any]:
        bounds = _date_bounds(params, self._now_us)
        if isinstance(bounds[1], dict):  # an invalid date: the 400 answer
            return bounds
        lo, hi = bounds  # both strict, on created_at
        keys = [j for j in range(self._n_summaries(self._now_us) - 1, -1, -1)
                for c in (self._summary_created_us(j),) if (lo is None or c > lo) and (hi is None or c < hi)]
        by, search = params.get("created_by"), params.get("search", "").lower()
        if by or search:
            keys = [j for j in keys for r in (self._summary_row(p, j, False),)
                    if by in (None, r["created_by"]["uuid"]) and search in r.get("title", r.get("name", "")).lower()]
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
        freq = ("daily", "weekly", "monthly")[h % 3]
        kind = ("ai_prompt", "insight", "dashboard", "insight", "dashboard")[(h >> 24) % 5]
        target = ("email", "slack", "webhook")[(h >> 4) % 3]
        start_s, period = created_us // US, {"daily": 1, "weekly": 7, "monthly": 30}[freq] * 86400
        now_s, interval = self._now_us // US, 1 + (h >> 8) % 2
        # a few have an end: `until_date` (some already past) or a `count` of deliveries (some all sent)
        ending = (h >> 28) % 6
        until = start_s + period * interval * 2 if ending == 1 else now_s + 90 * 86400 if ending == 2 else None
        count = 2 if ending == 3 else 50 if ending == 4 else None
        last = min(x for x in (until, None if count is None else start_s + period * interval * (count - 1),
                               now_s + 400 * 86400) if x is not None)
        step = period * interval
        after = start_s + step * (1 + max(0, now_s - start_s) // step)
        dashboard, insight = (100 + h % 50, None) if kind == "dashboard" else (None, 500 + h % 400) \
            if kind == "insight" else (None, None)  # AI-prompt rows have neither (§7.4)
        title = ("Weekly KPIs", "Revenue", "Signups", "Errors")[(h >> 16) % 4]
        row = {
            "id": sid, "resource_type": kind, "dashboard": dashboard, "insight": insight,
            "insight_short_id": f"ins{h % 99991:05d}" if insight else None,
            "resource_name": None if kind == "ai_prompt" else f"{title} {kind}",
            "dashboard_export_insights": [600 + (h >> k) % 300 for k in (3, 9)] if dashboard else [],
            "prompt": f"Summarise yesterday's {title.lower()} and flag anything unusual." if kind == "ai_prompt"
            else None,
            "target_type": target, "target_value": {"email": "team@example.com", "slack": "#alerts",
                                                    "webhook": "https://hooks.example.com/x"}[target],
            "frequency": freq, "interval": interval,
            "byweekday": ["monday"] if freq == "weekly" else None,
            "bysetpos": None, "count": count, "start_date": _iso(start_s),
            "until_date": None if until is None else _iso(until),
            "created_at": _iso_us(created_us), "created_by": self._users[(h >> 12) % 5], "deleted": deleted,
            # PostHog turns broken deliveries off itself (a disconnected Slack, §7.4)
            "enabled": (h >> 32) % 4 != 0,
            "title": f"{title} report",
            "summary": f"sent every {('day', 'week', 'month')[h % 3]}",
            # the schedule's next delivery, null once none is left (count or until_date reached)
            "next_delivery_date": _iso(after) if after <= last else None,
            "integration_id": 40 + h % 7 if target == "slack" else None,
            "invite_message": None, "summary_enabled": kind != "ai_prompt" and bool(h & 64),
            "summary_prompt_guide": "Focus on week-over-week changes." if h & 128 else "",
            "_created_us": created_us,
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
        shaped = self._shaped("subscriptions", {k: v for k, v in row.items() if k != "_created_us"})
        return shaped | self._extra["subscriptions"]

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
        rows = [self._shaped("property_definitions", r) for r in rows]
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
        if self.verified_first and self.versions["property_definitions"] == "enterprise":
            # verified DESC NULLS LAST, name ASC (plain orgs have no `verified`)
            real = sorted(real, key=lambda r: (r.get("verified") is not True, r.get("verified") is None))
        virt = self._virtual(type_) if (type_, gti) in self._defs[p] else []
        limit, offset = _pos_int(params.get("limit"), 100, strict=True), _pos_int(params.get("offset"), 0)
        if (timed_out := self._definitions_timeout(type_, offset)) is not None:
            return timed_out
        # hidden definitions (§7.5 property_access ⚠️) are counted, paged over, never returned
        paged = len(real) + self._hidden.get((p, type_, gti), 0)
        # virtual rows ride on the last real page and count in `count`, but `next` ignores them
        rows = real[offset:offset + limit] + (virt if offset + limit >= paged else [])
        return 200, _drf_body(paged + len(virt), paged, offset, limit, self._defs_out(rows), url)
