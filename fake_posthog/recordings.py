"""Session recordings: rows computed from their index, the date window's arithmetic, keyset and offset paging.

Recording i of a project starts at a fixed schedule (``_rs``); a listing is a window of indices plus the
partial rows at its lower edge, so a page of a million-row window costs only its own rows.
"""

from __future__ import annotations

import base64
import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .base import (
    _OID,
    _PEOPLE,
    M64,
    US,
    State,
    _cdiv,
    _hh,
    _invalid,
    _iso,
    _iso_day,
    _mix,
    _oid,
    _parse_when,
    _uuid,
)

PART_S = 900  # a recording is stored as 15-minute parts; date_from filters parts, not sessions
MAX_DUR = 4 * 3600
_STREAM_ROWS = 4000  # recordings pages larger than this are streamed in chunks of half that
_REC_PARAMS = {"date_from", "date_to", "limit", "offset", "order", "order_direction", "after", "session_ids"}
_REC_ORDERS = {"start_time", "end_time", "duration", "active_seconds", "inactive_seconds", "click_count",
               "keypress_count", "mouse_activity_count", "console_log_count", "console_warn_count",
               "console_error_count", "activity_score", "recording_ttl"}
_URLS = ("https://shop.example.com/", "https://shop.example.com/cart", "https://shop.example.com/checkout",
         "https://app.example.com/dashboard", "https://app.example.com/settings", "https://docs.example.com/")
# shared, never-mutated values: rows only leave the fake as JSON, and fewer allocations mean fewer GC passes
_NONE: list[Any] = []
_OUTCOMES = [{"description": "User completed checkout after retrying payment.", "success": ok}
             for ok in (True, False)]
_OUTCOMES_JSON = [orjson.dumps(o).decode() for o in _OUTCOMES]
_TOD = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400)]  # ISO time of day


class _Strings(dict[int, str]):
    """Values as JSON text, looked up: a table of the common ones, computed (not kept) for the others."""

    def __init__(self, keys: Iterable[int], text: Callable[[int], str], keep: bool = False) -> None:
        super().__init__((k, text(k)) for k in keys)
        self.text, self.keep = text, keep

    def __missing__(self, key: int) -> str:
        value = self.text(key)
        if self.keep:
            self[key] = value
        return value


_INT_JSON = _Strings(range(1 << 16), str)
# activity_score from its rate in hundredths, as orjson writes the float
_SCORE_JSON = _Strings(range(10001), lambda k: orjson.dumps(min(10000, k) / 100).decode())
_DAY_JSON = _Strings((), lambda d: _iso_day(d * 86400), keep=True)  # "YYYY-MM-DDT" of a day number


def _duration(h: int) -> int:
    """True length of a recording: mostly under an hour, ~10% between 1 h and 4 h."""
    v = (h >> 16) & 0xFFFF
    return 3600 + v * 10800 // 65536 if h & 0xFFFF < 6554 else 30 + v * v * 3570 // 4294967296


def _pydantic(attr: str, kind: str, msg: str, value: object) -> tuple[int, Any]:
    return _invalid(orjson.dumps([{"type": kind, "loc": [attr], "msg": msg, "input": value}]).decode(), attr)


class _PersonJson(dict[tuple[int, int], tuple[str, str]]):
    """`_rec_json`'s copies of the persons as JSON, made on first use; whatever changes a person clears it."""

    def __init__(self, dumps: Callable[[tuple[int, int]], tuple[str, str]]) -> None:
        super().__init__()
        self.dumps = dumps

    def __missing__(self, key: tuple[int, int]) -> tuple[str, str]:
        value = self[key] = self.dumps(key)
        return value


@dataclass
class _Stream:
    """A big recordings page, sent in chunks so the client reads while the rest is generated."""

    render: Callable[[int, int], bytes]  # the rows of ascending positions [lo, hi), in page order, as JSON
    lo: int
    hi: int
    desc: bool
    tail: dict[str, Any]

    def chunks(self, lock: threading.RLock) -> Iterator[bytes]:
        spans = [(x, min(x + _STREAM_ROWS // 2, self.hi)) for x in range(self.lo, self.hi, _STREAM_ROWS // 2)]
        yield b'{"results":['
        for n, (a, b) in enumerate(reversed(spans) if self.desc else spans):
            with lock:
                rows = self.render(a, b)
            yield (b"," if n else b"") + rows
        yield b"]," + orjson.dumps(self.tail)[1:]


@dataclass
class _Page:
    """A recordings page rendered straight to JSON; `FakePostHog._respond` renders it after the request's
    hooks ran, when a page of dicts would be serialised (a hook changing a person shows on that page)."""

    render: Callable[[], bytes]  # the rows, in page order, as JSON joined by commas
    tail: dict[str, Any]

    def json(self) -> bytes:
        """The page's body, byte for byte what `orjson.dumps({"results": rows} | tail)` writes."""
        return b'{"results":[' + self.render() + b"]," + orjson.dumps(self.tail)[1:]


class Recordings(State):
    """The session recordings listing and detail of `FakePostHog`."""

    # from Faults: ClickHouse refuses queries that are too big
    _query_too_big: Callable[[int, int | None, int | None, bool], tuple[int, Any] | None]
    _shaped: Callable[..., dict[str, Any]]  # Versions: a row as the chosen PostHog version sends it
    versions: dict[str, str]

    def _init_recordings(self, recordings: int, step_s: int, tie_group: int, keyset: bool,
                         retention_days: int) -> None:
        t0 = self._now_us // US
        self.keyset = keyset
        self.retention_days, self._retention_s = retention_days, retention_days * 86400
        self._step, self._tie = max(1, step_s), max(1, tie_group)
        self._rbase = t0 - recordings * self._step
        self._salt = {p: _hh(self.seed, 1, p) for p in self.project_ids}
        self._rid = {p: (f"-{p & 0xFFFF:04x}-7", f"-8{(p >> 16) & 0xFFF:03x}-") for p in self.project_ids}
        self._npersons = max(3, min(1000, recordings // 3))
        self._persons: dict[tuple[int, int], dict[str, Any]] = {}
        self._viewers = [[u["email"]] for u in self._users]
        self._viewers_json = [orjson.dumps(v).decode() for v in self._viewers]
        # `_rec_json`'s copies of `_persons` as JSON; whatever changes a person must clear it
        self._person_json = _PersonJson(self._person_dumps)
        self._edges: dict[tuple[Any, ...], tuple[int, int, list[tuple[int, int]], list[int]]] = {}
        self._deleted: dict[int, set[int]] = {}
        self._del_version = 0

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
                  cut_us: int | None = None, detail: bool = False) -> list[dict[str, Any]]:
        """Rows for (index, kept start | None) pairs; a kept start makes a partial lower-edge row, and
        parts starting after `cut_us` (a `date_to`) are left out: a partial upper-edge row. List rows
        load no recording metadata (§7.1): their `snapshot_source` is "web" and `snapshot_library`
        null, whatever the recording is; only `detail` rows have the real values."""
        # hot path (100k+ rows/s): locals hoisted, integer rates, table-based ISO formatting
        base, step, tie, salt, (rid, rid_tail) = self._rbase, self._step, self._tie, self._salt[p], self._rid[p]
        npersons, persons, viewers = self._npersons, self._persons, self._viewers
        retention_s = self._retention_s
        extra, now_s, out = self._extra["session_recordings"], now_us // US, []
        older = self.versions["session_recordings"] == "older"
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
                "snapshot_source": "mobile" if mobile and detail else "web",
                "snapshot_library": (("posthog-ios" if h & 1 else "posthog-android") if mobile else "web")
                if detail else None,
                "ongoing": end > now_s - 300,
                "activity_score": min(10000, (20 * clicks + 10 * keys + mouse) * 100 // (d or 1)) / 100,
                "has_summary": summary, "summary_outcome": _OUTCOMES[g & 1] if summary else None,
                "external_references": _NONE, "matches_filters": True,
            }
            if older:
                row = self._shaped("session_recordings", row)
            if extra:
                row.update(extra)
            out.append(row)
        return out

    def _rec_shape(self) -> bool | None:
        """Whether list rows are the older version's (True) or the newest (False), if `_rec_json` can
        write them; None where only `_rec_rows` can (schema drift, or a version it does not know)."""
        variant = self.versions["session_recordings"]
        if self._extra["session_recordings"] or variant not in ("newest", "older"):
            return None
        return variant == "older"

    def _rec_json(self, p: int, items: Iterable[tuple[int, int | None]], now_us: int, cut_us: int | None,
                  older: bool) -> bytes:
        """The list rows `_rec_rows(p, items, now_us, cut_us)` makes, as `orjson.dumps` writes them, joined
        by commas, without building a dict per row: the same arithmetic, written straight into JSON text.
        Values that need escaping (the person, the viewers) are serialised by orjson, once each."""
        # the big listings' hot path: _mix inlined, bytes unpacked instead of shifted, and numbers, days
        # and persons looked up as finished strings
        base, step, tie, salt, (rid, rid_tail) = self._rbase, self._step, self._tie, self._salt[p], self._rid[p]
        npersons, retention_s, days, tod, ints = self._npersons, self._retention_s, _DAY_JSON, _TOD, _INT_JSON
        persons, viewers, scores = self._person_json, self._viewers_json, _SCORE_JSON
        now_s, cut_s = now_us // US, None if cut_us is None else cut_us // US
        ended, days_json = now_s - 300, orjson.dumps(self.retention_days).decode()
        out = []
        for i, kept in items:
            s = base + (i - i % tie) * step
            x = ((salt + i) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & M64
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
            h = x ^ (x >> 31)
            af, rc, rk, rm, rl, rw, re_, g7 = ((h * 0xD1B54A32D192ED03 & M64) ^ (h >> 29)).to_bytes(8, "little")
            af += 120
            v = (h >> 16) & 0xFFFF
            end = s + (3600 + v * 10800 // 65536 if h & 0xFFFF < 6554 else 30 + v * v * 3570 // 4294967296)
            if end > now_s:
                end = now_s
            if cut_s is not None and end > cut_s:  # parts are PART_S long from the start
                end = min(end, s + ((cut_s - s) // PART_S + 1) * PART_S)
            x1 = end - s
            active, clicks, keys, mouse = af * x1 // 400, rc * x1 // 1200, rk * x1 // 600, rm * x1 // 90
            logs, warns_, errors = rl * x1 // 5000, rw * x1 // 25000, re_ * x1 // 50000
            expiry = s + retention_s
            if kept is None:
                d = x1
                day, r = divmod(s, 86400)
                clock = tod[r]
                start_iso = days[day] + clock
                expiry_iso = days[expiry // 86400] + clock
            else:  # partial row: counts of the kept parts only
                x0 = kept - s
                d = x1 - x0
                active, clicks, keys, mouse = (active - af * x0 // 400, clicks - rc * x0 // 1200,
                                               keys - rk * x0 // 600, mouse - rm * x0 // 90)
                logs, warns_, errors = (logs - rl * x0 // 5000, warns_ - rw * x0 // 25000,
                                        errors - re_ * x0 // 50000)
                day, r = divmod(kept, 86400)
                start_iso = days[day] + tod[r]
                day, r = divmod(expiry, 86400)
                expiry_iso = days[day] + tod[r]
            day, r = divmod(end, 86400)
            hx = h.to_bytes(8, "big").hex()
            did, person = persons[(p, (h >> 40) % npersons)]
            viewed = g7 % 10 < 3
            head = (f'{{"id":"{hx[:8]}{rid}{hx[8:11]}{rid_tail}{i.to_bytes(6, "big").hex()}","distinct_id":{did},'
                    f'"viewed":{"true" if viewed else "false"},"viewers":{viewers[(g7 >> 2) % 5] if viewed else "[]"},'
                    f'"recording_duration":{ints[d]},"active_seconds":{ints[active]},'
                    f'"inactive_seconds":{ints[d - active]},"start_time":"{start_iso}",'
                    f'"end_time":"{days[day]}{tod[r]}","click_count":{ints[clicks]},"keypress_count":{ints[keys]},'
                    f'"mouse_activity_count":{ints[mouse]},"console_log_count":{ints[logs]},'
                    f'"console_warn_count":{ints[warns_]},"console_error_count":{ints[errors]},'
                    f'"start_url":"{_URLS[(h >> 33) % 6]}","person":{person},')
            score = scores[(20 * clicks + 10 * keys + mouse) * 100 // (d or 1)]
            ongoing = "true" if end > ended else "false"
            if older:
                out.append(f'{head}"snapshot_source":"web","ongoing":{ongoing},"activity_score":{score},'
                           f'"storage":"{"object_storage_lts" if d > 1800 else "object_storage"}"}}')
            else:
                ttl = (expiry - now_s) // 86400
                summary = (h >> 52) % 10 == 0
                out.append(f'{head}"retention_period_days":{days_json},"expiry_time":"{expiry_iso}",'
                           f'"recording_ttl":{ints[ttl if ttl > 0 else 0]},"snapshot_source":"web",'
                           f'"snapshot_library":null,"ongoing":{ongoing},"activity_score":{score},'
                           f'"has_summary":{"true" if summary else "false"},'
                           f'"summary_outcome":{_OUTCOMES_JSON[af & 1] if summary else "null"},'
                           f'"external_references":[],"matches_filters":true}}')
        return ",".join(out).encode()

    def _person_dumps(self, key: tuple[int, int]) -> tuple[str, str]:
        """(distinct id, person) of person (project, k) as JSON."""
        person = self._persons.get(key) or self._person(*key)
        return orjson.dumps(person["distinct_ids"][0]).decode(), orjson.dumps(person).decode()

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

    def set_person_property(self, project_id: int, distinct_id: str, name: str, value: Any) -> None:
        """A person's property changes (PostHog's `$set`), e.g. its email: every recording of theirs shows it."""
        with self._lock:
            self.truth(project_id, "session_recordings")  # persons are made with their first recording
            found = [p for (q, _), p in self._persons.items() if q == project_id and distinct_id in p["distinct_ids"]]
            if not found:
                raise KeyError(f"no person with distinct id {distinct_id!r} in project {project_id}")
            for person in found:
                person["properties"][name] = value
            self._person_json.clear()

    def _rec_id_index(self, p: int, rid: object) -> int | None:
        """The index encoded in a recording id of project p, if the id is one of its recordings."""
        m = _OID.fullmatch(rid) if isinstance(rid, str) else None
        if m is None:
            return None
        i = int(m[1], 16)
        return i if self._rec_id(p, i) == rid else None

    def _rec_id(self, p: int, i: int) -> str:
        """The id of recording i of project p."""
        return _oid(0, p, i, _mix((self._salt[p] + i) & M64))

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

    def restore_recording(self, project_id: int, recording_id: str) -> None:
        """Undo `delete_recording`: a recording missing from one listing (a lagging replica) lists again."""
        with self._lock:
            i = self._rec_id_index(project_id, recording_id)
            self._deleted.get(project_id, set()).discard(-1 if i is None else i)
            self._del_version += 1

    def _by_ids(self, p: int, ids: list[str], dates: list[int | None],
                now_us: int) -> tuple[list[tuple[int, int | None]], set[int]]:
        """Items asked for by `session_ids`, and which of them come from Postgres (persisted): those come back
        even when deleted or expired, with the fields only ClickHouse computes null (§7.1)."""
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

    def _recordings(self, p: int, params: dict[str, str], fast: bool = False) -> tuple[int, Any]:
        """A recordings listing: (status, body). The body is a dict of plain rows, or a `_Stream` for a big
        page; with `fast` (as served) a start-time listing's rows are written as JSON by `_rec_json`
        instead (a `_Page`, or a `_Stream` of such chunks): the same bytes for less CPU."""
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
                    r.update({k: None for k in ("ongoing", "activity_score", "expiry_time", "recording_ttl") if k in r})
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
        fast = fast and order == "start_time" and "session_ids" not in q

        def render(lo: int, hi: int) -> bytes:
            """Rows of positions [lo, hi) in page order as JSON: written directly where `_rec_json` can."""
            older = self._rec_shape() if fast else None
            if older is None:
                rows = take(lo, hi)
                if desc:
                    rows.reverse()
                return orjson.dumps(rows)[1:-1]
            items = pairs(lo, hi)
            if desc:
                items.reverse()
            return self._rec_json(p, items, now_us, cut, older)

        if hi - lo > _STREAM_ROWS:
            return 200, _Stream(render, lo, hi, desc, tail)
        if fast and hi > lo and (older := self._rec_shape()) is not None:
            items = pairs(lo, hi)
            if desc:
                items.reverse()
            return 200, _Page(lambda: self._rec_json(p, items, now_us, cut, older), tail)
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
