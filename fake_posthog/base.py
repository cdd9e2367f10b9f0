"""What every part of the fake shares: hashing, ISO time, the error shape, the request log and the state fields."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000
M64 = (1 << 64) - 1
RESOURCES = ("session_recordings", "session_group_summaries", "desktop_recordings", "subscriptions",
             "property_definitions", "session_recording_playlists", "vision_scanners", "vision_observations")
_REL = re.compile(r"-?(\d+)([hdwmy])")
_REL_S = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}
_OID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-([0-9a-f]{12})")
_PEOPLE = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace")
_GROUP_NAMES = ("organization", "company", "instance", "project", "team")
_DAYS: dict[int, str] = {}
_HM = [f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440)]
_SS = [f"{x:02d}" for x in range(60)]


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


def _date_bounds(params: dict[str, str], now_us: int) -> tuple[int | None, int | None] | tuple[int, Any]:
    """(`date_from`, `date_to`) as epoch µs, None where not sent; a 400 answer (status, body) if one is invalid."""
    bounds = []
    for k in ("date_from", "date_to"):
        try:
            bounds.append(_parse_when(params[k], now_us) if k in params else None)
        except ValueError:
            return _invalid(f"Invalid date: {params[k]}", k)
    return bounds[0], bounds[1]


def _err(type_: str, code: str, detail: str, attr: str | None = None) -> dict[str, Any]:
    return {"type": type_, "code": code, "detail": detail, "attr": attr}


def _invalid(detail: str, attr: str | None) -> tuple[int, Any]:
    return 400, _err("validation_error", "invalid_input", detail, attr)


def _check(resource: str) -> str:
    if resource not in RESOURCES:
        raise ValueError(f"unknown resource {resource!r}; expected one of {RESOURCES}")
    return resource


@dataclass
class FakeRequest:
    """One request the fake answered (the Authorization header itself is never stored)."""

    method: str
    path: str
    params: dict[str, str]
    status: int
    authorized: bool
    at: float = 0.0  # the throttle clock when it was answered


class State:
    """The fields the fake's parts share; `FakePostHog.__init__` sets them."""

    _lock: threading.RLock
    _now_us: int  # the fake's clock
    requests: list[FakeRequest]
    hooks: list[Callable[[FakeRequest], None]]
    project_ids: list[int]
    seed: int
    group_types: int
    _users: list[dict[str, Any]]
    _extra: dict[str, dict[str, object]]  # schema drift: fields added to every row of a resource
