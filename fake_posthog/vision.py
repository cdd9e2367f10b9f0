"""Replay Vision: scanners and their observations over the fake's session recordings (§7.6).

Observations follow a schedule computed from the clock, like the recordings: a sampled recording gets one
observation per scanner after it ended, which runs `pending` → `running` → `succeeded|failed|ineligible`.
Some failed ones are retried: the failed row is deleted and a new one (new id, new `created_at`) takes
its place. Scanners are state: `add_scanner` and `delete_scanner` (which cascades) change them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .base import M64, US, State, _err, _hh, _invalid, _iso_us, _mix, _to_us, _uuid
from .lists import _drf
from .recordings import _duration

SCANNER_TYPES = ("monitor", "classifier", "scorer", "summarizer")
FINAL = ("succeeded", "failed", "ineligible")
_TAGS = ("checkout", "onboarding", "search", "billing", "settings", "support")
_FREEFORM = ("pricing confusion", "mobile layout", "slow load", "coupon", "dark mode")
_FRICTION = ("form validation error", "slow page load", "dead click on submit", "confusing navigation",
             "payment declined", "modal would not close")
_KEYWORDS = ("checkout", "cart", "signup", "pricing", "dashboard", "export", "invite", "search", "error")
_CONFIGS: dict[str, dict[str, Any]] = {
    "monitor": {"prompt": "Did the user hit an error they could not recover from?", "allow_inconclusive": True},
    "classifier": {"prompt": "What was the user trying to do?", "tags": list(_TAGS[:5]), "multi_label": True,
                   "allow_freeform_tags": True},
    "scorer": {"prompt": "How frustrated was the user?", "scale": {"min": 1, "max": 5, "label": "frustration"}},
    "summarizer": {"prompt": "Summarize what the user did and where they struggled.", "length": "short"},
}
_NAMES = {"monitor": "Checkout errors", "classifier": "User intent", "scorer": "Frustration score",
          "summarizer": "Session summaries"}
_SCANNER_ORDER = ("name", "created_at", "updated_at", "scanner_type", "enabled", "sampling_rate", "created_by",
                  "credits_this_month")
_OBS_ORDER = ("created_at", "started_at", "completed_at", "status", "recording_subject_email", "result_score",
              "result_verdict", "scanner_version")
BACKFILL_S = 86400  # a new scanner also sweeps the recordings of the day before it was created


@dataclass
class _Scanner:
    k: int  # index: seeds every hash of the scanner and its observations
    row: dict[str, Any]
    created_us: int
    rate_permille: int
    forced: dict[int, list[int]] = field(default_factory=dict)  # recording index → retry times (µs)
    cache: tuple[Any, list[dict[str, Any]]] | None = None  # the observations at one clock time


class Vision(State):
    """`vision/scanners/` and `vision/scanners/:id/observations/` of `FakePostHog` (§7.6)."""

    # from the recordings part: which recordings exist, when they start and end, whose they are
    _rbase: int
    _step: int
    _salt: dict[int, int]
    _rs: Callable[[int], int]
    _rec_id: Callable[[int, int], str]
    _rec_id_index: Callable[[int, object], int | None]
    _count_upto: Callable[[int], int]
    _person: Callable[[int, int], dict[str, Any]]
    _persons: dict[tuple[int, int], dict[str, Any]]
    _npersons: int
    _disabled: dict[tuple[int, str], int]

    def _init_vision(self, scanners: int) -> None:
        # the `replay-vision` flag: off, every vision path answers 404 (§7.6)
        self.vision_enabled = True
        self._scanners: dict[int, list[_Scanner]] = {p: [] for p in self.project_ids}
        self._next_scanner = 0
        t0 = self._now_us // US
        first = max(self._rbase, t0 - 3 * 86400)
        for p in self.project_ids:
            for j in range(scanners):
                kind = SCANNER_TYPES[j % 4]
                created = (first + j * 3 * 3600) * US + _hh(self.seed, 23, p, j) % US
                self._new_scanner(p, kind, created, rate=(1.0, 0.5, 1.0, 0.5)[j % 4] if j < 4 else 0.25,
                                  name=_NAMES[kind] if j < 4 else f"{_NAMES[kind]} {j // 4 + 1}")

    # -- mutations -------------------------------------------------------------------------------

    def add_scanner(self, project_id: int, scanner_type: str, *, name: str | None = None,
                    sampling_rate: float = 1.0, enabled: bool = True) -> str:
        """Create a scanner now (it sweeps the last day's recordings from now on); returns its id."""
        with self._lock:
            if scanner_type not in SCANNER_TYPES:
                raise ValueError(f"scanner_type must be one of {SCANNER_TYPES}")
            s = self._new_scanner(project_id, scanner_type, self._now_us, rate=sampling_rate,
                                  name=name or f"{_NAMES[scanner_type]} (new)", enabled=enabled)
            return str(s.row["id"])

    def delete_scanner(self, project_id: int, scanner_id: str) -> None:
        """Hard-delete a scanner; its observations go with it (cascade, §7.6)."""
        with self._lock:
            self._scanners[project_id].remove(self._scanner(project_id, scanner_id))

    def scanner_ids(self, project_id: int) -> list[str]:
        """Ids of the project's scanners, in list order (`name, id`)."""
        with self._lock:
            return [r["id"] for r in self._scanner_rows(project_id, {})]

    def retry_observation(self, project_id: int, scanner_id: str, session_id: str) -> None:
        """Retry a failed observation now: the failed row is deleted, a new pending one created (§7.6)."""
        with self._lock:
            s = self._scanner(project_id, scanner_id)
            i = self._rec_id_index(project_id, session_id)
            current = None if i is None else self._observation(project_id, s, i, self._now_us)
            if current is None or current["status"] != "failed":
                raise ValueError(f"no failed observation of {session_id} by scanner {scanner_id}")
            s.forced.setdefault(i, []).append(self._now_us)

    # -- scanners --------------------------------------------------------------------------------

    def _new_scanner(self, p: int, kind: str, created_us: int, *, rate: float, name: str,
                     enabled: bool = True) -> _Scanner:
        k, self._next_scanner = self._next_scanner, self._next_scanner + 1
        h = _hh(self.seed, 21, p, k)
        provider, model = (("openai", "gpt-4.1-mini"), ("anthropic", "claude-sonnet-4-5"))[h & 1]
        emits = kind == "monitor" or bool(h & 2)
        row = {
            "id": _uuid(h), "name": name, "description": f"{name}: {_CONFIGS[kind]['prompt']}",
            "scanner_type": kind, "scanner_config": _CONFIGS[kind],
            "query": {"kind": "RecordingsQuery", "filter_test_accounts": True, "date_from": "-7d"} if h & 4 else None,
            "sampling_rate": rate, "sampling_mode": "random", "provider": provider, "model": model,
            "enabled": enabled, "emits_signals": emits, "scanner_version": 1 + (h >> 8) % 3,
            "credits_per_observation": 1 + (h >> 12) % 4,
            "created_at": _iso_us(created_us), "created_by": self._users[(h >> 16) % len(self._users)],
            "updated_at": _iso_us(created_us), "feedback_themes": None, "user_access_level": "editor",
        }
        s = _Scanner(k, row, created_us, round(rate * 1000) if enabled else 0)
        self._scanners[p].append(s)
        return s

    def _scanner(self, p: int, scanner_id: str) -> _Scanner:
        for s in self._scanners[p]:
            if s.row["id"] == scanner_id:
                return s
        raise KeyError(scanner_id)

    def _scanner_row(self, p: int, s: _Scanner, now_us: int) -> dict[str, Any]:
        # the counters and last_swept_at move with every sweep, updated_at does not (§7.6)
        now = datetime.fromtimestamp(now_us / US, UTC)
        month_us = _to_us(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
        month = sum(1 for o in self._observations(p, s, now_us) if self._created_us(o) >= month_us)
        per_day = 86400 // self._step * s.rate_permille // 1000
        young = now_us - s.created_us < 86400 * US
        swept = max(s.created_us, now_us - now_us % (900 * US))
        return s.row | {
            "estimated_monthly_observations": None if young else 30 * per_day,
            "estimated_monthly_credits": None if young else 30 * per_day * s.row["credits_per_observation"],
            "credits_this_month": month * s.row["credits_per_observation"], "observations_this_month": month,
            "last_swept_at": _iso_us(swept),
        } | self._extra["vision_scanners"]

    def _scanner_rows(self, p: int, params: dict[str, str]) -> list[dict[str, Any]]:
        rows = [self._scanner_row(p, s, self._now_us) for s in self._scanners[p]]
        if "enabled" in params:
            rows = [r for r in rows if r["enabled"] == (params["enabled"].lower() in ("true", "1"))]
        if "scanner_type" in params:
            kinds = set(params["scanner_type"].split(","))
            rows = [r for r in rows if r["scanner_type"] in kinds]
        if "search" in params:
            rows = [r for r in rows if params["search"].lower() in r["name"].lower()]
        order = params.get("order_by", "name")
        name = order.removeprefix("-")

        def value(r: dict[str, Any]) -> Any:
            v = r[name]
            return (v or {}).get("email") or "" if name == "created_by" else v

        rows.sort(key=lambda r: r["id"])  # the id tiebreaker, always ascending
        rows.sort(key=value, reverse=order.startswith("-"))
        return rows

    # -- observations ----------------------------------------------------------------------------

    def _observations(self, p: int, s: _Scanner, now_us: int) -> list[dict[str, Any]]:
        """Every observation of scanner s that exists at now_us (unsorted; shared: do not change them)."""
        # every page of a listing (and every scanner row's counters) asks again at the same clock
        key = (now_us, sum(map(len, s.forced.values())))
        if s.cache is None or s.cache[0] != key:
            s.cache = (key, self._compute_observations(p, s, now_us))
        extra = self._extra["vision_observations"]
        return [r | extra for r in s.cache[1]] if extra else s.cache[1]

    def _compute_observations(self, p: int, s: _Scanner, now_us: int) -> list[dict[str, Any]]:
        if not s.rate_permille:
            return []
        first = max(0, -(-(s.created_us // US - BACKFILL_S - self._rbase) // self._step))
        out = []
        for i in range(first, self._count_upto(now_us)):
            row = self._observation(p, s, i, now_us)
            if row is not None:
                out.append(row)
        return out

    def _observation(self, p: int, s: _Scanner, i: int, now_us: int) -> dict[str, Any] | None:
        """Scanner s's observation of recording i at now_us, or None (not sampled, not created yet)."""
        x = _hh(self.seed, 22, p, s.k, i)
        if x % 1000 >= s.rate_permille:
            return None
        h = _mix((self._salt[p] + i) & M64)
        start = self._rs(i)
        end = start + _duration(h)  # the recording's true end
        created = max((end + 120 + x % 900) * US, s.created_us + (x >> 44) % 3600 * US) + (x >> 20) % US
        attempt, retries = 0, sorted([*s.forced.get(i, [])])
        outcome = _outcome(x, 0)
        done = _done(x, 0, created)
        if outcome == "failed" and (x >> 32) % 3 == 0:
            retries = sorted([*retries, done + (600 + (x >> 36) % 3000) * US])
        if now_us < created:
            return None
        for at in retries:  # each retry deletes the failed row and creates the next attempt's
            if at > now_us or at < done or outcome != "failed":
                break
            attempt, created = attempt + 1, at
            outcome, done = _outcome(x, attempt), _done(x, attempt, at)
        started = created + _queued(x, attempt) * US
        status = "pending" if now_us < started else "running" if now_us < done else outcome
        pk = (h >> 40) % self._npersons
        person = self._persons.get((p, pk)) or self._person(p, pk)
        oid = _uuid(_hh(self.seed, 24, p, s.k, i, attempt))
        on_demand = attempt > 0 and bool(s.forced.get(i)) or (x >> 50) % 10 == 0
        row = {
            "id": oid, "scanner_id": s.row["id"], "session_id": self._rec_id(p, i), "status": status,
            "error_reason": {"failed": "model_error:The model returned no valid output",
                             "ineligible": "too_short:The recording has under 5 seconds of activity"}.get(
                                 status, ""),
            "workflow_id": "" if status == "pending" else f"replay-observation-{oid}",
            "scanner_snapshot": None if status == "pending" else {
                k: s.row[k] for k in ("name", "scanner_type", "scanner_version", "model", "provider",
                                      "emits_signals", "scanner_config")},
            "scanner_result": _result(s.row, x ^ attempt) if status == "succeeded" else None,
            "triggered_by": "on_demand" if on_demand else "schedule",
            "triggered_by_user": self._users[(x >> 56) % len(self._users)] if on_demand else None,
            "distinct_id": person["distinct_ids"][0] if x & 8 else None,
            "recording_subject_email": person["name"] if x & 8 else None,
            "previous_observation_id": None, "next_observation_id": None,
            # edited by a user some minutes after it completed; the row has no timestamp for it
            "label": {"is_correct": bool(x & 16), "feedback": "" if x & 32 else "Spot on."}
            if status == "succeeded" and (x >> 54) % 5 == 0 and now_us >= done + 900 * US else None,
            "started_at": None if status == "pending" else _iso_us(started),
            "completed_at": _iso_us(done) if status in FINAL else None,
            "created_at": _iso_us(created),
        }
        return row

    @staticmethod
    def _created_us(row: dict[str, Any]) -> int:
        return _to_us(datetime.fromisoformat(row["created_at"].replace("Z", "+00:00")))

    def _observation_rows(self, p: int, s: _Scanner, params: dict[str, str]) -> list[dict[str, Any]] | tuple:
        rows = list(self._observations(p, s, self._now_us))
        for name in ("status", "session_id", "triggered_by"):
            if name in params:
                wanted = set(params[name].split(","))
                rows = [r for r in rows if r[name] in wanted]
        if "verdict" in params:
            rows = [r for r in rows if _output(r).get("verdict") == params["verdict"]]
        order = params.get("order_by", "-created_at")
        name = order.removeprefix("-")
        if name not in _OBS_ORDER:
            return _invalid(f'"{name}" is not a valid choice.', "order_by")

        def value(r: dict[str, Any]) -> Any:
            if name == "result_score":
                return _output(r).get("score")
            if name == "result_verdict":
                return _output(r).get("verdict")
            if name == "scanner_version":
                return (r["scanner_snapshot"] or {}).get("scanner_version")
            return self._created_us(r) if name == "created_at" else r[name]

        rows.sort(key=lambda r: r["id"])  # id tiebreaker, ascending
        present = [r for r in rows if value(r) is not None]
        present.sort(key=value, reverse=order.startswith("-"))
        return present + [r for r in rows if value(r) is None]  # nulls last either way

    def _vision_truth(self, p: int, resource: str) -> list[dict[str, Any]]:
        if resource == "vision_scanners":
            return self._scanner_rows(p, {})
        return [o for s in self._scanners[p] for o in self._observations(p, s, self._now_us)]

    def _vision(self, p: int, rest: list[str], params: dict[str, str], url: Callable) -> tuple[int, Any, str | None]:
        """Route `vision/...` below a project: (status, body, resource)."""
        not_found = 404, _err("invalid_request", "not_found", "Not found."), None
        resource = "vision_observations" if len(rest) == 3 else "vision_scanners"
        if not self.vision_enabled or not rest or rest[0] != "scanners" or len(rest) not in (1, 3) or (
                len(rest) == 3 and rest[2] != "observations"):
            return not_found
        if (p, resource) in self._disabled:
            return self._disabled[(p, resource)], None, resource
        if len(rest) == 1:
            if params.get("order_by", "name").removeprefix("-") not in _SCANNER_ORDER:
                return (*_invalid(f'"{params["order_by"]}" is not a valid choice.', "order_by"), resource)
            return 200, _drf(self._scanner_rows(p, params), lambda r: r, params, url), resource
        try:
            s = self._scanner(p, rest[1])
        except KeyError:
            return 404, not_found[1], resource
        rows = self._observation_rows(p, s, params)
        if isinstance(rows, tuple):
            return (*rows, resource)
        return 200, _drf(rows, lambda r: r, params, url), resource


def _outcome(x: int, attempt: int) -> str:
    if attempt:
        return "failed" if _mix(x + attempt) % 4 == 0 else "succeeded"
    r = (x >> 24) % 20
    return "failed" if r < 2 else "ineligible" if r == 2 else "succeeded"


def _queued(x: int, attempt: int) -> int:
    """Seconds an attempt waits as `pending`: minutes, or hours for one in ten first attempts (a backlog)."""
    backlog = 3600 + (x >> 4) % 10800 if attempt == 0 and (x >> 60) % 10 == 0 else 0
    return 30 + (x >> (8 + attempt)) % 300 + backlog


def _done(x: int, attempt: int, created_us: int) -> int:
    """When attempt `attempt` (created at created_us) reaches its final status (µs)."""
    y = _mix(x + attempt)
    return created_us + (_queued(x, attempt) + 20 + y % 200) * US + y % US


def _output(row: dict[str, Any]) -> dict[str, Any]:
    return ((row.get("scanner_result") or {}).get("model_output")) or {}


def _segments(text: str, y: int) -> list[dict[str, Any]]:
    return [{"kind": "text", "value": text}, {"kind": "chip", "timestamp_ms": 1000 * (5 + y % 600)}]


def _result(scanner: dict[str, Any], x: int) -> dict[str, Any]:
    """`scanner_result` of a succeeded observation: `model_output` by scanner type (§7.6)."""
    kind, config, y = scanner["scanner_type"], scanner["scanner_config"], _mix(x)
    out: dict[str, Any] = {"scanner_type": kind, "confidence": round(0.5 + (y % 500) / 1000, 3)}
    if kind == "monitor":
        verdicts = ("yes", "no", "inconclusive") if config.get("allow_inconclusive") else ("yes", "no")
        verdict = verdicts[(y >> 10) % len(verdicts)]
        reasoning = {"yes": "The user saw a payment error twice and left.", "no": "Checkout completed.",
                     "inconclusive": "The recording ends before checkout."}[verdict]
        out |= {"verdict": verdict, "reasoning": reasoning, "reasoning_segments": _segments(reasoning, y)}
    elif kind == "classifier":
        vocabulary = config["tags"]
        n = 1 + (y >> 10) % 3 if config.get("multi_label") else 1
        first = (y >> 12) % len(vocabulary)
        tags = [vocabulary[(first + t) % len(vocabulary)] for t in range(n)]
        free = [_FREEFORM[(y >> (14 + 3 * t)) % len(_FREEFORM)] for t in range((y >> 20) % 3)] \
            if config.get("allow_freeform_tags") else []
        reasoning = f"The user mostly worked on {tags[0]}."
        out |= {"tags": tags, "tags_freeform": list(dict.fromkeys(free)), "reasoning": reasoning,
                "reasoning_segments": _segments(reasoning, y)}
    elif kind == "scorer":
        scale = config.get("scale") or {"min": 1, "max": 5}
        score = scale["min"] + (y >> 10) % (scale["max"] - scale["min"] + 1)
        reasoning = f"Rated {score}: {('few', 'some', 'many')[min(2, score // 2)]} rage clicks."
        out |= {"score": score, "label": None if (y >> 14) % 4 == 0 else ("low", "medium", "high")[min(2, score // 2)],
                "reasoning": reasoning, "reasoning_segments": _segments(reasoning, y)}
    else:
        facets = (y >> 10) % 10 != 0  # the optional facet turn failed: empty facets
        topic = _KEYWORDS[(y >> 12) % len(_KEYWORDS)]
        summary = f"The user browsed to {topic}, retried a form and finished after a detour."
        out |= {"title": f"Session around {topic}"[:120], "summary": summary,
                "summary_segments": _segments(summary, y), "intent": f"Use {topic}",
                "outcome": ("completed", "abandoned", "unclear")[(y >> 16) % 3],
                "friction_points": list(dict.fromkeys(_FRICTION[(y >> (18 + 3 * t)) % len(_FRICTION)]
                                                     for t in range(1 + (y >> 30) % 3))) if facets else [],
                "keywords": list(dict.fromkeys(_KEYWORDS[(y >> (34 + 4 * t)) % len(_KEYWORDS)] for t in range(3)))
                if facets else []}
    signals = (y >> 40) % 3 if scanner["emits_signals"] else 0
    return {"model_output": out, "signals_count": signals}
