"""Fast tests of the fake PostHog itself (paging, window edges, errors, clock, its in-process transport)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from fake_posthog import FakePostHog
from fake_posthog.recordings import _Page, _Stream

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
KEY = {"Authorization": "Bearer phx_fake_personal_key"}


@pytest.fixture
def fake() -> FakePostHog:
    return FakePostHog(now=NOW, seed=3, recordings=400, desktop_recordings=10, summaries=12, keyset=True)


def in_process(fake: FakePostHog, headers: dict[str, str] = KEY) -> httpx.Client:
    """A client of `fake` through its in-process transport (the tests below need no socket)."""
    return httpx.Client(base_url="http://fake.test", headers=headers, transport=fake.transport())


@pytest.fixture
def api(fake: FakePostHog) -> Iterator[httpx.Client]:
    with in_process(fake) as client:
        yield client


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def recordings(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every row of a recordings listing, paged by offset until has_next is false."""
    rows: list[dict[str, Any]] = []
    while True:
        body = api.get("/api/projects/1/session_recordings/", params={**params, "offset": len(rows)}).json()
        rows += body["results"]
        if not body["has_next"]:
            return rows


def expected_window(fake: FakePostHog, date_from: datetime) -> list[tuple[str, datetime]]:
    """(id, effective start) from truth(): 15-minute parts starting >= date_from are kept."""
    out = []
    for row in fake.truth(1, "session_recordings"):
        start, end = ts(row["start_time"]), ts(row["end_time"])
        if start >= date_from:
            out.append((row["id"], start))
            continue
        first = start + timedelta(minutes=15) * -(-(date_from - start) // timedelta(minutes=15))
        if first < end:
            out.append((row["id"], first))
    return sorted(out, key=lambda x: x[1])


def test_drf_paging_follows_next_and_keeps_params(fake: FakePostHog, api: httpx.Client) -> None:
    url = "/api/projects/1/session_group_summaries/"
    body = api.get(url, params={"limit": 5, "date_from": "-30d"}).json()
    assert body["count"] == 12 and len(body["results"]) == 5 and body["previous"] is None
    assert body["next"].startswith(f"http://fake.test{url}?") and "date_from=-30d" in body["next"]
    seen = body["results"]
    while body["next"]:
        body = api.get(body["next"]).json()
        seen += body["results"]
    assert body["previous"] is not None
    created = [ts(r["created_at"]) for r in seen]
    assert created == sorted(created, reverse=True)
    assert {r["id"] for r in seen} == {r["id"] for r in fake.truth(1, "session_group_summaries")}
    assert set(seen[0]) == {"id", "title", "session_count", "created_at", "created_by"}
    detail = api.get(f"{url}{seen[0]['id']}/").json()
    assert detail["session_ids"] and detail["team"] == 1
    # strict created_at bounds
    cut = seen[3]["created_at"]
    newer = api.get(url, params={"date_from": cut}).json()
    assert [r["id"] for r in newer["results"]] == [r["id"] for r in seen[:3]]


def test_recordings_defaults_and_body_shape(fake: FakePostHog, api: httpx.Client) -> None:
    body = api.get("/api/projects/1/session_recordings").json()
    assert set(body) == {"results", "has_next", "version", "next_cursor"} and body["version"] == 4
    assert len(body["results"]) == 50 and body["has_next"]
    starts = [ts(r["start_time"]) for r in body["results"]]
    assert starts == sorted(starts, reverse=True)  # start_time DESC
    rows = recordings(api)  # default date_from is -3d
    assert len(rows) == len(expected_window(fake, NOW - timedelta(days=3)))
    bad = api.get("/api/projects/1/session_recordings", params={"ordering": "x"})
    assert bad.status_code == 400 and bad.json()["attr"] == "ordering"
    both = fake.truth(1, "session_recordings") + fake.truth(2, "session_recordings")
    assert len(both) == len({r["id"] for r in both}) == 800


def test_window_edge_rows_are_partial_and_ordered(fake: FakePostHog, api: httpx.Client) -> None:
    date_from = NOW - timedelta(hours=40, minutes=7)
    date_to = NOW - timedelta(hours=5)
    params = {"date_from": date_from.isoformat(), "order": "start_time", "order_direction": "ASC",
              "limit": 17}
    rows = recordings(api, **params)
    assert [(r["id"], ts(r["start_time"])) for r in rows] == expected_window(fake, date_from)
    truth = {r["id"]: r for r in fake.truth(1, "session_recordings")}
    partial = [r for r in rows if r["start_time"] != truth[r["id"]]["start_time"]]
    assert partial, "some sessions should cross the lower edge"
    for row in partial:
        full = truth[row["id"]]
        assert ts(row["start_time"]) >= date_from > ts(full["start_time"])
        assert row["end_time"] == full["end_time"]
        assert row["recording_duration"] < full["recording_duration"]
        assert row["click_count"] <= full["click_count"]
    by_id = api.get("/api/projects/1/session_recordings/",
                    params={"session_ids": json.dumps([r["id"] for r in partial])}).json()["results"]
    assert sorted(by_id, key=lambda r: r["id"]) == sorted((truth[r["id"]] for r in partial),
                                                          key=lambda r: r["id"])
    # date_to bounds the effective start and cuts sessions running past it (parts starting later are left
    # out); DESC is the exact reverse; keyset pages agree with offsets
    bounded = recordings(api, **params, date_to=date_to.isoformat())
    inside = [r for r in rows if ts(r["start_time"]) <= date_to]
    assert [r["id"] for r in bounded] == [r["id"] for r in inside]
    cut = [(r, whole) for r, whole in zip(bounded, inside, strict=True) if r != whole]
    assert cut, "some sessions should cross the upper edge"
    for r, whole in cut:
        assert r["start_time"] == whole["start_time"] and ts(whole["end_time"]) > ts(r["end_time"]) > date_to
        assert r["recording_duration"] < whole["recording_duration"] and r["click_count"] <= whole["click_count"]
    assert all(ts(r["end_time"]) <= date_to + timedelta(minutes=15) for r in bounded)
    desc = recordings(api, **{**params, "order_direction": "DESC"}, date_to=date_to.isoformat())
    assert [r["id"] for r in desc] == [r["id"] for r in reversed(bounded)]
    keyset, after = [], None
    while True:
        body = api.get("/api/projects/1/session_recordings/",
                       params={**params, **({"after": after} if after else {})}).json()
        keyset += body["results"]
        if not body["has_next"]:
            break
        after = body["next_cursor"]
    assert keyset == rows


def test_advance_grows_ongoing_recordings_and_adds_new_rows(fake: FakePostHog, api: httpx.Client) -> None:
    before = {r["id"]: r for r in fake.truth(1, "session_recordings")}
    ongoing = [r for r in before.values() if r["ongoing"]]
    desk = {r["id"]: r for r in fake.truth(1, "desktop_recordings")}
    assert ongoing and any(r["status"] in ("recording", "processing") for r in desk.values())
    fake.advance(3 * 3600)
    after = {r["id"]: r for r in fake.truth(1, "session_recordings")}
    assert len(after) == len(before) + 18 and fake.now == NOW + timedelta(hours=3)
    assert any(after[r["id"]]["recording_duration"] > r["recording_duration"] for r in ongoing)
    assert all(not r["ongoing"] for r in after.values() if r["id"] in before and ts(r["end_time"]) < fake.now
               - timedelta(minutes=5))
    recording = next(r for r in desk.values() if r["status"] == "recording")
    later = api.get(f"/api/projects/1/desktop_recordings/{recording['id']}/").json()
    assert len(later["transcript_segments"]) > len(recording["transcript_segments"])
    assert later["status"] in ("ready", "error") and later["updated_at"] > recording["updated_at"]
    grown = later["transcript_segments"]
    assert grown[:len(recording["transcript_segments"])] == recording["transcript_segments"]
    assert len(fake.truth(1, "session_group_summaries")) > 12


def test_property_definitions_virtual_rows(fake: FakePostHog, api: httpx.Client) -> None:
    url = "/api/projects/1/property_definitions/"
    real = [r for r in fake.truth(1, "property_definitions")
            if r["type"] == "person" and not r.get("virtual")]
    first = api.get(url, params={"type": "person", "limit": 10}).json()
    assert first["count"] == len(real) + 3 and len(first["results"]) == 10 and first["next"]
    last = api.get(first["next"]).json()
    assert last["next"] is None and len(last["results"]) == len(real) - 10 + 3
    assert [r["id"] for r in last["results"][-3:]] == [f"$builtin_{r['name']}" for r in last["results"][-3:]]
    again = api.get(url, params={"type": "person", "limit": 10, "offset": 20}).json()
    assert [r["id"] for r in again["results"]] == [r["id"] for r in last["results"][-3:]]
    # enterprise-shaped rows: verified DESC NULLS LAST, name ASC (shared/posthog-api.md §7.5)
    order = [(not r["verified"], r["name"]) for r in first["results"]]
    assert order == sorted(order) and "type" not in first["results"][0]
    assert api.get(url, params={"type": "group"}).json()["attr"] == "group_type_index"
    assert api.get(url, params={"group_type_index": 0}).status_code == 400
    assert api.get(url, params={"type": "group", "group_type_index": 4}).json()["count"] == 0
    assert len(api.get("/api/projects/1/groups_types/").json()) == 2
    fake.remove_property_definition(1, "person", real[0]["name"])
    assert api.get(url, params={"type": "person"}).json()["count"] == len(real) + 2


def test_subscriptions_soft_delete_and_drift(fake: FakePostHog, api: httpx.Client) -> None:
    url = "/api/projects/2/subscriptions/"
    live, gone = api.get(url).json(), api.get(url, params={"deleted": "true"}).json()
    assert live["count"] + gone["count"] == len(fake.truth(2, "subscriptions")) and gone["count"] > 0
    new_id = fake.add_subscription(2)
    fake.soft_delete_subscription(2, live["results"][-1]["id"])
    fake.add_field("subscriptions", "content_type", "insight")
    fake.set_field("subscriptions", "interval", "1")
    rows = api.get(url).json()["results"]
    # older servers have no order (§7.4): storage order, a new row fills the end of the heap
    assert rows[-1]["id"] == new_id and rows[0]["content_type"] == "insight" and rows[0]["interval"] == "1"
    assert live["results"][-1]["id"] not in {r["id"] for r in rows}
    assert api.get(f"{url}{new_id}/").json()["content_type"] == "insight"


def test_error_bodies(fake: FakePostHog, api: httpx.Client) -> None:
    with in_process(fake, headers={}) as anonymous:
        none = anonymous.get("/api/projects/")
        bad = anonymous.get("/api/projects/", headers={"Authorization": "Bearer phc_project_token"})
    assert none.status_code == 401 and none.json()["code"] == "not_authenticated"
    assert bad.status_code == 401 and bad.json()["code"] == "authentication_failed"
    assert api.get("/api/projects/99/subscriptions/").json()["detail"] == "Project not found."
    assert api.get("/api/projects/abc/").json()["detail"] == "Project not found."
    assert api.get("/api/nothing/").json() == {"type": "invalid_request", "code": "not_found",
                                               "detail": "Not found.", "attr": None}
    assert api.get("/api/projects/1/session_recordings/nope/").json()["detail"] == "Recording not found"
    fake.inject("session_recordings", 429, times=2, wait_s=37)
    fake.inject("/subscriptions", 429)
    fake.inject("session_recordings", 500)
    for _ in range(2):
        r = api.get("/api/projects/1/session_recordings/")
        assert r.status_code == 429 and "Retry-After" not in r.headers
        # the harsher, older wording (§4): DRF's, the wait only in the body
        assert r.json()["detail"] == "Request was throttled. Expected available in 37 seconds."
    assert api.get("/api/projects/1/subscriptions/").json()["detail"] == \
        "Request was throttled. Expected available in 1 second."
    assert api.get("/api/projects/1/session_recordings/").json() == {
        "error": "An internal server error occurred. Please try again later."}
    assert api.get("/api/projects/1/session_recordings/").status_code == 200
    fake.versions["subscriptions"] = "older"  # the 402 gate is gone from newer servers
    fake.disable(1, "subscriptions", 402)
    fake.disable(1, "desktop_recordings", 403)
    paid = api.get("/api/projects/1/subscriptions/")
    assert paid.status_code == 402 and paid.json()["code"] == "payment_required"
    assert api.get("/api/projects/1/desktop_recordings/").json()["detail"] == \
        "API key missing required scope 'desktop_recording:read'"
    assert api.get("/api/projects/2/subscriptions/").status_code == 200
    statuses = [(r.status, r.authorized) for r in fake.requests[:2]]
    assert statuses == [(401, False), (401, False)]
    assert fake.requests[-1].params == {} and fake.requests[-1].path == "/api/projects/2/subscriptions/"


def test_deterministic_and_lazy() -> None:
    a = FakePostHog(now=NOW, seed=5, recordings=1_000_000, recording_step_s=30)
    b = FakePostHog(now=NOW, seed=5, recordings=1_000_000, recording_step_s=30)
    status, body = a._recordings(1, {"date_from": "-1d", "limit": "2000"})
    assert status == 200 and len(body["results"]) == 2000 and body["has_next"]
    assert body == b._recordings(1, {"date_from": "-1d", "limit": "2000"})[1]
    assert a.truth(1, "desktop_recordings") == b.truth(1, "desktop_recordings")
    other = FakePostHog(now=NOW, seed=6, recordings=1_000_000, recording_step_s=30)
    assert other._recordings(1, {"limit": "1"})[1]["results"][0]["id"] != body["results"][0]["id"]


def test_big_pages_are_streamed_and_equal_small_pages() -> None:
    fake = FakePostHog(now=NOW, seed=2, recordings=1_000_000, recording_step_s=30, keyset=True)
    with fake.serve() as url, httpx.Client(base_url=url, headers=KEY) as api:  # chunked over a real socket
        for direction in ("ASC", "DESC"):
            params = {"date_from": "-2d", "order_direction": direction}
            big = api.get("/api/projects/1/session_recordings/", params={**params, "limit": 4800})
            assert big.headers["transfer-encoding"] == "chunked"
            small = [api.get("/api/projects/1/session_recordings/",
                             params={**params, "limit": 2400, "offset": k * 2400}).json() for k in range(2)]
            assert "content-length" in api.get("/api/projects/1/session_recordings/", params=params).headers
            assert big.json()["results"] == [r for page in small for r in page["results"]]
            assert big.json()["next_cursor"] and big.json()["has_next"] is True


def test_older_servers_have_no_cursor_and_no_tiebreaker() -> None:
    fake = FakePostHog(now=NOW, seed=3, recordings=400, keyset=False, tie_group=4)
    with in_process(fake) as api:
        params = {"date_from": "-30d", "order": "start_time", "order_direction": "ASC"}
        body = api.get("/api/projects/1/session_recordings/", params={**params, "limit": 10}).json()
        assert "next_cursor" not in body and body["has_next"]
        assert api.get("/api/projects/1/session_recordings/", params={**params, "after": "x"}).status_code == 400
        truth = sorted((r["start_time"], r["id"]) for r in fake.truth(1, "session_recordings"))
        assert len({s for s, _ in truth}) == len(truth) // 4  # groups of 4 share a start time
        orders = {tuple(r["id"] for r in api.get("/api/projects/1/session_recordings/",
                                                 params={**params, "limit": 400}).json()["results"])
                  for _ in range(5)}
        assert len(orders) > 1  # the same query, ties in another order
        assert all(sorted(o) == sorted(i for _, i in truth) for o in orders)
        paged = recordings(api, **params, limit=6)  # offset pages over ties: rows skipped and repeated
        assert len(paged) == len(truth) and set(paged_ids := [r["id"] for r in paged]) != {i for _, i in truth}
        assert len(set(paged_ids)) < len(paged_ids)


@pytest.mark.parametrize("keyset", [True, False])
def test_session_ids_on_older_servers_apply_the_window_and_persisted_rows_have_nulls(keyset: bool) -> None:
    fake = FakePostHog(now=NOW, seed=3, recordings=400, recording_step_s=1800, keyset=keyset)
    old = [r for r in fake.truth(1, "session_recordings") if ts(r["start_time"]) < NOW - timedelta(days=4)]
    persisted = [r for r in old if fake._persisted(1, int(r["id"][-12:], 16), fake._now_us)]  # noqa: SLF001
    assert persisted and len(persisted) < len(old)
    with in_process(fake) as api:
        def by_ids(**params: Any) -> dict[str, dict[str, Any]]:
            body = api.get("/api/projects/1/session_recordings/",
                           params={"session_ids": json.dumps([r["id"] for r in old]), "limit": 400, **params})
            return {r["id"]: r for r in body.json()["results"]}

        default, explicit = by_ids(), by_ids(date_from=(NOW - timedelta(days=30)).isoformat())
    assert set(explicit) == {r["id"] for r in old}
    assert set(default) == set(explicit) if keyset else set(default) == {r["id"] for r in persisted}
    for row in old:
        got = explicit[row["id"]]
        nulls = {k for k in ("ongoing", "activity_score", "expiry_time", "recording_ttl") if got[k] is None}
        assert nulls == (set() if row not in persisted else {"ongoing", "activity_score", "expiry_time",
                                                              "recording_ttl"})
        assert got["start_time"] == row["start_time"] and got["click_count"] == row["click_count"]


def test_deleted_recordings_drop_out_at_once(fake: FakePostHog, api: httpx.Client) -> None:
    before = fake.truth(1, "session_recordings")
    params = {"date_from": "-30d", "order": "start_time", "order_direction": "ASC"}
    gone = [before[0]["id"], before[5]["id"], before[6]["id"], before[-1]["id"]]
    for ident in gone:
        fake.delete_recording(1, ident)
    listed = recordings(api, **params, limit=7)
    assert [r["id"] for r in listed] == [r["id"] for r in before if r["id"] not in gone]
    keyset, after = [], None
    while True:
        body = api.get("/api/projects/1/session_recordings/",
                       params={**params, "limit": 7, **({"after": after} if after else {})}).json()
        keyset += body["results"]
        if not body["has_next"]:
            break
        after = body["next_cursor"]
    assert keyset == listed
    assert {r["id"] for r in fake.truth(1, "session_recordings")} == {r["id"] for r in listed}
    assert api.get(f"/api/projects/1/session_recordings/{gone[1]}/").json()["detail"] == "Recording not found"


def test_too_big_queries_answer_like_clickhouse(fake: FakePostHog, api: httpx.Client) -> None:
    fake.too_big(100, max_span_s=86400, statuses=(504, 512, 513, "timeout", "capacity", "simultaneous"), seed=1)
    url = "/api/projects/1/session_recordings/"
    seen = {}
    for _ in range(30):
        r = api.get(url, params={"date_from": "-1h", "limit": 101})
        seen[r.status_code, r.json()["detail"]] = r.json()
    assert {s for s, _ in seen} == {504, 512, 513, 429}
    assert {d for s, d in seen if s == 429} == {"Query timeout exceeded. Try again later.",
                                                 "ClickHouse is at capacity. Try again later.",
                                                 "Too many simultaneous queries. Try again later."}
    assert all("Expected available" not in d for _, d in seen)
    assert api.get(url, params={"date_from": "-1h", "limit": 100}).status_code == 200
    assert api.get(url, params={"date_from": "-2d", "limit": 5}).status_code != 200  # the window is too long
    assert api.get(url, params={"date_from": "-2d", "date_to": "-1d", "limit": 5}).status_code == 200
    ids = json.dumps([r["id"] for r in fake.truth(1, "session_recordings")[:5]])
    assert api.get(url, params={"session_ids": ids, "limit": 5}).status_code == 200  # by id: no window cost


# -- the in-process transport answers as the HTTP server does -------------------------------------

def _scenario(fake: FakePostHog, api: httpx.Client) -> list[httpx.Response]:
    """Lists, paging (DRF `next`, keyset cursor, a streamed page), errors, faults and 429s, in one order."""
    out = [api.get("/api/projects/"), api.get("/api/projects/@current/"), api.get("/api/projects/1/groups_types/")]
    out.append(api.get("/api/projects/1/subscriptions/", params={"limit": 3}))
    out.append(api.get(out[-1].json()["next"]))
    out.append(api.get("/api/projects/1/property_definitions/", params={"type": "person", "limit": 4, "offset": 4}))
    out.append(api.get("/api/projects/2/session_group_summaries/", params={"limit": 5, "date_from": "-30d"}))
    out.append(api.get("/api/environments/1/desktop_recordings/", params={"limit": 4, "offset": 2}))
    first = api.get("/api/projects/1/session_recordings/", params={"limit": 20, "date_from": "-2d"})
    out += [first, api.get("/api/projects/1/session_recordings/",
                           params={"limit": 20, "date_from": "-2d", "after": first.json()["next_cursor"]})]
    out.append(api.get("/api/projects/1/session_recordings/", params={"limit": 4500, "order_direction": "ASC"}))
    recording = first.json()["results"][0]["id"]
    out += [api.get(f"/api/projects/1/session_recordings/{recording}/"),
            api.get("/api/projects/1/session_recordings/0189a1b2-0001-7000-8000-000000000000/"),
            api.get("/api/projects/1/session_recordings/", params={"limit": "x"}),
            api.get("/api/projects/1/session_group_summaries/", params={"date_from": "soon"}),
            api.get("/api/projects/99/subscriptions/"), api.get("/nothing"),
            api.get("/api/projects/1/subscriptions/", headers={"Authorization": ""}),
            api.get("/api/projects/1/subscriptions/", headers={"Authorization": "Bearer phx_wrong"}),
            api.post("/api/projects/1/subscriptions/", json={"title": "x"})]
    fake.versions["subscriptions"] = "older"  # the 402 gate is gone from newer servers
    fake.disable(2, "subscriptions", 402)
    fake.inject("desktop_recordings", 503)
    fake.inject("summaries", 502)
    fake.too_big(100)
    out += [api.get("/api/projects/2/subscriptions/"), api.get("/api/projects/1/desktop_recordings/"),
            api.get("/api/projects/1/session_group_summaries/"),
            api.get("/api/projects/1/session_recordings/", params={"limit": 500})]
    fake.chaos(0.5, seed=3)
    out += [api.get("/api/projects/1/property_definitions/", params={"offset": k}) for k in range(8)]
    fake.chaos(0)
    fake.throttle({"recordings_list": [(2, 60.0)], "general": [(3, 60.0)]}, clock=lambda: 100.0,
                  recordings_429="plan")
    out += [api.get("/api/projects/1/session_recordings/", params={"limit": 5}) for _ in range(3)]
    out += [api.get("/api/projects/1/subscriptions/") for _ in range(4)]
    return out


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    # the HTTP server alone adds `Date` and `Server`
    headers = [(k.lower(), v) for k, v in response.headers.multi_items() if k.lower() not in ("date", "server")]
    return response.status_code, headers, response.content


def test_the_transport_answers_and_records_exactly_as_the_http_server() -> None:
    def make() -> FakePostHog:
        return FakePostHog(now=NOW, seed=5, recordings=6000, recording_step_s=30, keyset=True)

    served, in_process = make(), make()
    with served.serve() as url, httpx.Client(base_url=url, headers=KEY) as api:
        over_http = [_answer(r) for r in _scenario(served, api)]
    with httpx.Client(base_url=url, headers=KEY, transport=in_process.transport()) as api:
        without_socket = [_answer(r) for r in _scenario(in_process, api)]

    assert without_socket == over_http
    assert in_process.requests == served.requests
    statuses = {status for status, _, _ in over_http}
    assert {200, 400, 401, 402, 404, 405, 429, 502, 503} <= statuses  # the scenario reached every kind
    assert ("transfer-encoding", "chunked") in over_http[10][1]  # the big page was streamed
    assert any(("retry-after", "60") in headers for _, headers, _ in over_http)  # the plan-worded 429


def plain_page(fake: FakePostHog, params: dict[str, str]) -> bytes:
    """A recordings page's body from the straightforward path: plain row dicts, serialised by orjson."""
    status, body = fake._recordings(1, params)
    assert status == 200
    return b"".join(body.chunks(fake._lock)) if isinstance(body, _Stream) else orjson.dumps(body)


@pytest.mark.parametrize("server", [{}, {"keyset": False, "tie_group": 3},
                                    {"versions": {"session_recordings": "older"}},
                                    {"tie_group": 4, "retention_days": 5}])
def test_served_recordings_pages_are_byte_for_byte_the_plain_rows(server: dict[str, Any]) -> None:
    # served pages are written as JSON text directly (`_rec_json`); they must be the plain rows' exact bytes
    fake = FakePostHog(now=NOW, seed=4, recordings=4700, recording_step_s=60, **server)
    fake.delete_recording(1, fake.truth(1, "session_recordings")[-40]["id"])
    windows = [{}, {"date_from": "2026-03-07T08:07:00Z"}, {"date_from": "2026-03-05T00:00:00", "date_to": "-2d"}]
    compared, streamed = 0, False
    with in_process(fake) as api:
        for step in ("first", "advanced", "person changed", "schema drift"):
            if step == "advanced":
                fake.advance(3 * 3600 + 17)  # new rows arrive, ongoing ones grow
            elif step == "person changed":
                person = fake.truth(1, "session_recordings")[-1]["person"]
                fake.set_person_property(1, person["distinct_ids"][0], "email", "Zoë <z@example.com>")
            elif step == "schema drift":
                fake.add_field("session_recordings", "new_field", {"x": 1})
            # small pages over every window; pages big enough to be streamed over the one with partial rows
            cases = [(w, d, n) for d in ("ASC", "DESC") for w, n in [*((w, 7) for w in windows), (windows[1], 4100)]]
            for window, direction, limit in cases:
                params = {**window, "order": "start_time", "order_direction": direction, "limit": str(limit)}
                for page in range(2):  # keyset paging where the server has it, offset paging too
                    plain = plain_page(fake, params)
                    served = api.get("/api/projects/1/session_recordings/", params=params)
                    assert served.status_code == 200 and served.content == plain, (step, params)
                    body = orjson.loads(served.content)
                    assert ("chunked" in served.headers.get("transfer-encoding", "")) == (len(body["results"]) > 4000)
                    compared += len(body["results"])
                    streamed |= len(body["results"]) > 4000
                    if not body["has_next"]:
                        break
                    if page == 0 and "next_cursor" in body:
                        params = {**params, "after": body["next_cursor"]}
                    else:
                        params = {k: v for k, v in params.items() if k != "after"}
                        params["offset"] = str(int(params.get("offset", "0")) + len(body["results"]))
    assert compared > 20_000 and streamed
    fake._extra["session_recordings"].clear()  # what is compared above is the direct writer's, not plain rows
    assert isinstance(fake._recordings(1, {"limit": "7"}, fast=True)[1], _Page)
    assert "Zoë" in fake.truth(1, "session_recordings")[-1]["person"]["properties"]["email"]
