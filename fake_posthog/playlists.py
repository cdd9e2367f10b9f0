"""Session recording playlists: saved filters and collections over time, the six synthetic playlists,
PostHog's own limit/offset paging, and `/:short_id/recordings/` (shared/posthog-api.md §7.7).

Playlists appear on a creation schedule as the clock moves (some are modified every few hours); each
collection's members are stored apart from the playlist, so adding or removing one never moves its
`last_modified_at`. Members are recordings of the recordings fake, a third of them persisted to
long-term storage, plus ids of sessions older than the fake's history (older than a year, unpersisted).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .base import US, State, _date_bounds, _hh, _iso_us, _uuid
from .lists import _drf_body, _n_before

YEAR_US = 365 * 86400 * US
_MAX_LIMIT = 500
_OTHERS = 50  # collections: members not persisted come from one ClickHouse query of this many (§7.7)
_ORDERS = ("last_modified_at", "created_at", "name")
# the six virtual playlists, in the order PostHog lists them; how often a recording is in each
_SYNTHETIC = (("watch-history", "Watch history", 4), ("commented", "Commented recordings", 20),
              ("shared", "Shared recordings", 25), ("exported", "Exported recordings", 30),
              ("expiring", "Expiring soon", 15), ("frustrated", "Frustrated users", 10))
_SYNTHETIC_SCAN = 2000  # synthetic members are drawn from this many of the newest recordings
_NAMES = ("Checkout bugs", "Onboarding", "Power users", "Rage clicks", "Mobile Safari", "Pricing page",
          "Support escalations", "Sales demos")
# members of the collection made k-th: cycles; the 90 need more than one answer (persisted + 50)
_SIZES = (5, 12, 0, 90, 30, 7)
_EMPTY_SAVED = {"count": None, "has_more": None, "watched_count": None, "increased": None,
                "last_refreshed_at": None}


class Playlists(State):
    """Recording playlists of `FakePostHog` and their members."""

    # from Recordings: ids, the visible window, persistence, rows
    _rbase: int
    _step: int
    _rec_id: Callable[[int, int], str]
    _rec_id_index: Callable[[int, object], int | None]
    _first_at: Callable[[int], int]
    _rs: Callable[[int], int]
    _listed: Callable[[int, int, int], bool]
    _persisted: Callable[[int, int, int], bool]
    _rec_rows: Callable[..., list[dict[str, Any]]]

    def _init_playlists(self, span: int, playlists: int, tiebreaker: bool) -> None:
        """`playlists` per project created over the last `span` seconds, and more as the clock moves.

        `tiebreaker=False` is an older server: raw `order` without an id tiebreaker (ties in any order
        per request) and DRF's default paging (no 500 cap).
        """
        t0 = self._now_us // US
        self.playlist_tiebreaker = tiebreaker
        self._plstep = max(60, span // max(1, playlists))
        self._plbase = t0 - playlists * self._plstep
        self._pls: dict[int, list[dict[str, Any]]] = {p: [] for p in self.project_ids}
        self._plmade = dict.fromkeys(self.project_ids, 0)  # scheduled playlists made so far
        # members per (project, playlist id): (session id, added at µs), newest added first
        self._members: dict[tuple[int, int], list[tuple[str, int]]] = {}
        self._pl_ties = random.Random(self.seed)

    # -- mutations (tests) -------------------------------------------------------------------------

    def add_playlist(self, project_id: int, type: str = "collection", name: str | None = "New playlist") -> str:
        """Create a playlist (`collection` or `filters`) at the current clock time; returns its short_id."""
        with self._lock:
            self._pl_sync(project_id)
            return self._new_playlist(project_id, self._now_us, type, name, period_s=None)["short_id"]

    def delete_playlist(self, project_id: int, short_id: str) -> None:
        """Soft-delete a playlist: never listed again, its members answer 404."""
        with self._lock:
            self._pl(project_id, short_id)["deleted"] = True

    def modify_playlist(self, project_id: int, short_id: str) -> None:
        """Edit a playlist (its name): `last_modified_at` moves to now."""
        with self._lock:
            row = self._pl(project_id, short_id)
            row["name"] = f"{row['name'] or 'Untitled'} (edited)"
            row["_modified_us"] = self._now_us

    def add_members(self, project_id: int, short_id: str, session_ids: list[str]) -> None:
        """Add recordings to a playlist; its `last_modified_at` does not move (§7.7)."""
        with self._lock:
            items = self._members.setdefault((project_id, self._pl(project_id, short_id)["id"]), [])
            known = {s for s, _ in items}
            items[:0] = [(s, self._now_us) for s in reversed(session_ids) if s not in known]

    def remove_members(self, project_id: int, short_id: str, session_ids: list[str]) -> None:
        """Remove recordings from a playlist (the item is hard-deleted); `last_modified_at` does not move."""
        with self._lock:
            key = (project_id, self._pl(project_id, short_id)["id"])
            gone = set(session_ids)
            self._members[key] = [(s, t) for s, t in self._members.get(key, []) if s not in gone]

    def playlist_short_ids(self, project_id: int, type: str | None = "collection") -> list[str]:
        """Short ids of the listed (not deleted, not synthetic) playlists of a type (None: any), oldest first."""
        with self._lock:
            self._pl_sync(project_id)
            return [r["short_id"] for r in self._pls[project_id]
                    if not r["deleted"] and type in (None, r["type"])]

    def playlist_members(self, project_id: int, short_id: str) -> list[str]:
        """Every member's session id, newest added first (synthetic ones too), returned or not."""
        with self._lock:
            row = self._pl(project_id, short_id) if not short_id.startswith("synthetic-") else None
            if row is None:
                return self._synthetic_ids(project_id, short_id.removeprefix("synthetic-"))
            return [s for s, _ in self._members.get((project_id, row["id"]), [])]

    # -- the playlist rows -------------------------------------------------------------------------

    def _pl(self, p: int, short_id: str) -> dict[str, Any]:
        self._pl_sync(p)
        for row in self._pls[p]:
            if row["short_id"] == short_id:
                return row
        raise KeyError(short_id)

    def _pl_created_us(self, k: int) -> int:
        return (self._plbase + k * self._plstep) * US + _hh(self.seed, 40, k) % (self._plstep * US // 2)

    def _pl_sync(self, p: int) -> None:
        """Make the scheduled playlists created up to now, in creation order."""
        due = _n_before(self._plbase * US, self._plstep * US, self._pl_created_us, self._now_us)
        while self._plmade[p] < due:
            k = self._plmade[p]
            self._plmade[p] += 1
            h = _hh(self.seed, 41, p, k)
            type_ = "filters" if k % 3 == 2 else "collection"
            name = None if h % 7 == 0 else _NAMES[k % len(_NAMES)]
            # every other playlist is edited every few hours after it was made
            period = 3600 * (2 + h % 5) if k % 2 == 0 else None
            row = self._new_playlist(p, self._pl_created_us(k), type_, name, period)
            if type_ == "collection":
                self._members[(p, row["id"])] = self._initial_members(p, k, row["_created_us"])

    def _new_playlist(self, p: int, created_us: int, type_: str, name: str | None,
                      period_s: int | None) -> dict[str, Any]:
        n = len(self._pls[p])
        h = _hh(self.seed, 42, p, n)
        row = {"id": p * 100_000 + n + 1, "short_id": f"{h:016x}"[:8], "name": name,
               "description": "" if h & 1 else "Recordings worth a look.", "pinned": h % 5 == 0,
               "created_by": self._users[(h >> 8) % len(self._users)], "deleted": False, "type": type_,
               "_created_us": created_us, "_modified_us": created_us, "_period_us": period_s and period_s * US,
               "_editor": self._users[(h >> 16) % len(self._users)] if h & 2 else None}
        self._pls[p].append(row)
        return row

    def _initial_members(self, p: int, k: int, created_us: int) -> list[tuple[str, int]]:
        size = _SIZES[k % len(_SIZES)]
        hi = self._first_at(created_us)  # the recordings that existed when it was made
        stride = max(1, hi // (size + 1))
        ids = [self._rec_id(p, i) for i in range(hi - 1, -1, -stride)][:size]
        if k % 4 == 1:  # two sessions older than a year, never persisted: PostHog never returns them
            ids += [_uuid(_hh(self.seed, 43, p, k, j)) for j in range(2)]
        return [(s, created_us) for s in ids]

    def _modified_us(self, row: dict[str, Any]) -> int:
        period, made = row["_period_us"], row["_created_us"]
        scheduled = made + (self._now_us - made) // period * period if period else made
        return max(row["_modified_us"], scheduled)

    def _pl_row(self, p: int, row: dict[str, Any]) -> dict[str, Any]:
        members = self._members.get((p, row["id"]), [])
        modified = self._modified_us(row)
        saved = _EMPTY_SAVED
        if row["type"] == "filters" and not members:  # a Redis cache, for empty collections only (§7.7)
            h = _hh(self.seed, 44, p, row["id"])
            saved = {"count": h % 40, "has_more": h % 40 == 39, "watched_count": h % 7, "increased": bool(h & 8),
                     "last_refreshed_at": _iso_us(modified)}
        filters = ({"date_from": "-7d", "filter_test_accounts": True,
                    "duration": [{"key": "active_seconds", "type": "recording", "value": 5, "operator": "gt"}]}
                   if row["type"] == "filters" else {})
        out = {"id": row["id"], "short_id": row["short_id"], "name": row["name"],
               "derived_name": None if row["name"] else "Recordings with active time over 5 s",
               "description": row["description"], "pinned": row["pinned"], "created_at": _iso_us(row["_created_us"]),
               "created_by": row["created_by"], "deleted": row["deleted"], "filters": filters,
               "last_modified_at": _iso_us(modified),
               "last_modified_by": row["_editor"] if modified > row["_created_us"] else row["created_by"],
               "recordings_counts": {"collection": {"count": len(members) if row["type"] == "collection" else None,
                                                    "watched_count": len(members) // 3},
                                     "saved_filters": saved},
               "type": row["type"], "is_synthetic": False}
        return out | self._extra["session_recording_playlists"]

    def _synthetic_ids(self, p: int, kind: str) -> list[str]:
        """A synthetic playlist's members (the key's user's watch history, ...), newest first."""
        every = next(n for key, _, n in _SYNTHETIC if key == kind)
        hi = self._first_at(self._now_us)
        return [self._rec_id(p, i) for i in range(hi - 1, max(-1, hi - 1 - _SYNTHETIC_SCAN), -1)
                if _hh(self.seed, 45, p, every, i) % every == 0]

    def _synthetic_rows(self, p: int) -> list[dict[str, Any]]:
        rows = []
        for n, (key, name, _) in enumerate(_SYNTHETIC):
            count = len(self._synthetic_ids(p, key))
            rows.append({"id": -(n + 1), "short_id": f"synthetic-{key}", "name": name, "derived_name": None,
                         "description": "", "pinned": False, "created_at": None, "created_by": None,
                         "deleted": False, "filters": {}, "last_modified_at": None, "last_modified_by": None,
                         "recordings_counts": {"collection": {"count": count, "watched_count": count // 4},
                                               "saved_filters": _EMPTY_SAVED},
                         "type": "collection", "is_synthetic": True} | self._extra["session_recording_playlists"])
        return rows

    def _playlists_truth(self, p: int) -> list[dict[str, Any]]:
        self._pl_sync(p)
        return [self._pl_row(p, r) for r in self._pls[p] if not r["deleted"]] + self._synthetic_rows(p)

    def _playlist_items_truth(self, p: int) -> list[dict[str, Any]]:
        out = []
        for row in self._playlists_truth(p):
            if row["type"] == "collection":
                out += [{"playlist_id": row["id"], "playlist_short_id": row["short_id"], "session_id": s}
                        for s in self.playlist_members(p, row["short_id"])]
        return out

    # -- requests ----------------------------------------------------------------------------------

    def _playlists_route(self, p: int, rest: list[str], params: dict[str, str],
                         url: Callable[..., str]) -> tuple[int, Any]:
        """`rest` after the resource: [] lists, [short_id] retrieves, [short_id, "recordings"] lists members."""
        self._pl_sync(p)
        if not rest:
            return self._playlists_list(p, params, url)
        synthetic = {r["short_id"]: r for r in self._synthetic_rows(p)}
        row = synthetic.get(rest[0]) or next(
            (self._pl_row(p, r) for r in self._pls[p] if r["short_id"] == rest[0] and not r["deleted"]), None)
        if row is None or len(rest) > 2 or (len(rest) == 2 and rest[1] != "recordings"):
            return 404, {"type": "invalid_request", "code": "not_found", "detail": "Not found.", "attr": None}
        if len(rest) == 1:
            return 200, row
        return 200, self._playlist_recordings(p, row, params)

    def _playlists_list(self, p: int, params: dict[str, str], url: Callable[..., str]) -> tuple[int, Any]:
        bounds = _date_bounds(params, self._now_us)
        if isinstance(bounds[1], dict):  # an invalid date: the 400 answer
            return bounds
        lo, hi = bounds
        rows = []
        for r in self._pls[p]:
            modified = self._modified_us(r)
            if r["deleted"] or (lo is not None and modified <= lo) or (hi is not None and modified >= hi):
                continue  # soft-deleted rows are never listed; date filters are strict (§7.7)
            rows.append(self._pl_row(p, r))
        synthetic = self._synthetic_rows(p)
        # created_by, user, pinned, type=filters and collection_type=custom exclude the synthetic rows
        if any(k in params for k in ("created_by", "user", "pinned")) or params.get("type") == "filters" \
                or params.get("collection_type") == "custom":
            synthetic = []
        want = {k: params[k] for k in ("type", "short_id") if k in params}
        if params.get("collection_type") in ("synthetic", "custom"):
            rows = [] if params["collection_type"] == "synthetic" else rows
        if "created_by" in params:
            rows = [r for r in rows if str((r["created_by"] or {}).get("id")) == params["created_by"]]
        if params.get("user", "").lower() in ("true", "1"):  # the key's user's own
            rows = [r for r in rows if (r["created_by"] or {}).get("id") == self._users[0]["id"]]
        if "pinned" in params:
            rows = [r for r in rows if r["pinned"] == (params["pinned"].lower() in ("true", "1"))]
        if "session_recording_id" in params:
            sid = params["session_recording_id"]
            rows = [r for r in rows if any(s == sid for s, _ in self._members.get((p, r["id"]), []))]
            synthetic = [r for r in synthetic if sid in self.playlist_members(p, r["short_id"])]
        both = [r for r in rows + synthetic if all(r[k] == v for k, v in want.items())]
        if "search" in params:
            needle = params["search"].lower()
            both = [r for r in both if needle in (r["name"] or r["derived_name"] or "").lower()]
        order = params.get("order", "-last_modified_at")
        field = order.removeprefix("-")
        if field not in _ORDERS:
            order, field = "-last_modified_at", "last_modified_at"
        desc = order.startswith("-")
        real = [r for r in both if not r["is_synthetic"]]
        synthetic = [r for r in both if r["is_synthetic"]]

        def value(r: dict[str, Any]) -> Any:
            return (r[field] or "").lower() if field == "name" else r[field]

        if self.playlist_tiebreaker:
            real.sort(key=lambda r: r["id"])  # the id tiebreaker, ascending
            real.sort(key=value, reverse=desc)
        else:  # older servers: raw `order`, equal values in any order per request
            self._pl_ties.shuffle(real)
            real.sort(key=value, reverse=desc)
        # the synthetic rows have no timestamps: first under descending orders, last under ascending
        listing = synthetic + real if desc else real + synthetic
        limit = _limit(params.get("limit"), None if not self.playlist_tiebreaker else _MAX_LIMIT)
        try:
            offset = max(0, int(params.get("offset", "0")))
        except ValueError:
            offset = 0
        return 200, _drf_body(len(listing), len(listing), offset, limit, listing[offset:offset + limit], url)

    def _playlist_recordings(self, p: int, row: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        """`/:short_id/recordings/` as §7.7 says: the recordings list shape (§7.1)."""
        now_us = self._now_us
        if row["is_synthetic"]:  # limit (default 50) and offset page the id list, then the query runs
            ids = self._synthetic_ids(p, row["short_id"].removeprefix("synthetic-"))
            limit, offset = _limit(params.get("limit"), None, 50), max(0, _int(params.get("offset"), 0))
            rows, _ = self._member_rows(p, ids[offset:offset + limit], now_us, None)
            return {"results": rows, "has_next": offset + limit < len(ids), "version": 4}
        # collections: every item as session_ids with date_from=-1y; limit, offset, after and filters
        # are ignored. Persisted ones come from Postgres, at most 50 others from ClickHouse. Saved filters
        # run their (normally empty) item list the same way
        ids = [s for s, _ in self._members.get((p, row["id"]), [])]
        rows, more = self._member_rows(p, ids, now_us, _OTHERS)
        return {"results": rows, "has_next": more, "version": 4}

    def _member_rows(self, p: int, ids: list[str], now_us: int,
                     others: int | None) -> tuple[list[dict[str, Any]], bool]:
        """Recording rows for member ids: persisted ones from Postgres (no date, retention or deletion
        filter), the others from ClickHouse within the last year, newest first, at most `others`."""
        persisted, recent = [], []
        vis_hi = self._first_at(now_us)
        for sid in dict.fromkeys(ids):
            i = self._rec_id_index(p, sid)
            if i is None:
                continue  # older than the fake's history: older than a year, never persisted
            if i < vis_hi and self._persisted(p, i, now_us):
                persisted.append(i)
            elif self._listed(p, i, now_us) and self._rs(i) * US >= now_us - YEAR_US:
                recent.append(i)
        recent.sort(key=lambda i: -self._rs(i))
        more = others is not None and len(recent) > others
        recent = recent[:others] if others is not None else recent
        rows = self._rec_rows(p, [(i, None) for i in recent], now_us)
        stored = self._rec_rows(p, [(i, None) for i in persisted], now_us)
        for r in stored:  # straight from Postgres: fields only the ClickHouse query computes are null
            r.update(ongoing=None, activity_score=None, expiry_time=None, recording_ttl=None)
        out = sorted(rows + stored, key=lambda r: r["start_time"], reverse=True)
        return out, more


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _limit(value: str | None, cap: int | None, default: int = 100) -> int:
    """The page size asked for: `limit <= 0` or no number is the default, more than `cap` is clipped."""
    n = _int(value, default)
    n = default if n <= 0 else n
    return min(n, cap) if cap else n
