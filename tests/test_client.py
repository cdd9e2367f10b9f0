"""The client's paging and error handling against hostile-but-real server answers (httpx transport)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import orjson
import pytest

from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import SUBSCRIPTIONS
from sources.posthog.errors import (
    AuthError,
    NotPostHog,
    PagingError,
    PostHogError,
    ProjectNotFound,
    ResourceUnavailable,
)
from sources.posthog.report import SyncReport

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, seen: list[httpx.Request]) -> PostHogClient:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return PostHogClient(
        "http://127.0.0.1:9", "phx_test", transport=httpx.MockTransport(record), backoff_s=0.001, max_attempts=3
    )


def drf(request: httpx.Request, rows: list[int], next_url: str | None) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps({"count": 99, "next": next_url, "results": rows}))


def test_drf_next_pointing_back_at_the_same_page_continues_by_offset() -> None:
    data = list(range(7))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", 0))
        limit = int(request.url.params["limit"])
        page = data[offset : offset + limit]
        # a broken server whose `next` always repeats the first page while rows remain
        nxt = f"http://internal:8000{request.url.path}?limit={limit}&offset=0" if page else None
        return drf(request, page, nxt)

    client = client_for(handler, seen)
    rows = [r for page, _ in client.pages("/api/projects/1/subscriptions/", {"limit": 3}, "drf") for r in page]
    assert rows == data
    assert [r.url.params.get("offset", "0") for r in seen] == ["0", "3", "6", "7"]
    assert all(r.url.host == "127.0.0.1" for r in seen)  # never follows `next` to another host


def test_short_page_does_not_stop_has_next_paging() -> None:
    data = [{"id": str(i)} for i in range(10)]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", 0))
        # the server clamps the page to 2 rows whatever limit we ask for
        page = data[offset : offset + 2]
        body = {"results": page, "has_next": offset + 2 < len(data), "version": 4}
        return httpx.Response(200, content=orjson.dumps(body))

    client = client_for(handler, seen)
    rows = [r for page, _ in client.pages("/x/", {"limit": 5}, "has_next") for r in page]
    assert rows == data
    assert len(seen) == 5


def test_has_next_with_an_empty_page_is_an_error_not_a_loop() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=orjson.dumps({"results": [], "has_next": True}))

    with pytest.raises(PagingError):
        list(client_for(handler, []).pages("/x/", {"limit": 5}, "has_next"))


def test_keyset_cursor_is_used_when_the_server_offers_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        if after is None:
            return httpx.Response(200, content=orjson.dumps({"results": [{"id": "a"}], "has_next": True,
                                                             "next_cursor": "c1"}))
        return httpx.Response(200, content=orjson.dumps({"results": [{"id": "b"}], "has_next": False}))

    rows = [r["id"] for page, _ in client_for(handler, seen).pages("/x/", {"limit": 1}, "has_next") for r in page]
    assert rows == ["a", "b"]
    assert seen[1].url.params["after"] == "c1" and "offset" not in seen[1].url.params


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (401, {"detail": "Personal API key found in request Authorization header is invalid."}, AuthError,
         "region"),
        (404, {"detail": "Project not found."}, ProjectNotFound, "project 1 not found"),
        (402, {"detail": "Subscriptions is part of the premium PostHog offering."}, ResourceUnavailable,
         "premium"),
        (403, {"detail": "API key missing required scope 'subscription:read'"}, ResourceUnavailable,
         "lacks the scope subscription:read"),
        (400, {"detail": "bad", "attr": "limit"}, PostHogError, "400"),
    ],
)
def test_errors_become_one_clear_line(status: int, body: dict[str, str], error: type, words: str) -> None:
    seen: list[httpx.Request] = []
    client = client_for(lambda r: httpx.Response(status, content=orjson.dumps(body)), seen)
    job = SyncReport().job(SUBSCRIPTIONS, 1)
    with pytest.raises(error) as raised:
        client.get(job.path, job=job)
    assert words in str(raised.value)
    assert "\n" not in str(raised.value) and "phx_test" not in str(raised.value)
    assert len(seen) == 1  # not retried


def test_429_waits_for_the_time_in_the_body_then_retries() -> None:
    slept: list[float] = []
    answers = [
        httpx.Response(429, content=orjson.dumps(
            {"type": "throttled_error", "detail": "Request was throttled. Expected available in 7 seconds."})),
        httpx.Response(502, html="<html>Bad gateway</html>"),
        httpx.Response(200, text='{"results": [], "has'),  # truncated body
        httpx.Response(200, content=b'{"ok": 1}'),
    ]
    seen: list[httpx.Request] = []
    client = PostHogClient("http://127.0.0.1:9", "phx_test", backoff_s=0.5, max_attempts=5, sleep=slept.append,
                           transport=httpx.MockTransport(lambda r: seen.append(r) or answers[len(seen) - 1]))
    assert client.get("/x/") == {"ok": 1}
    assert len(seen) == 4
    assert slept[0] == pytest.approx(8.0, abs=0.05)  # the stated 7 s, plus a second for PostHog's rounding
    assert client.stats.throttled == 1 and client.stats.retries == 3


def test_retries_are_bounded() -> None:
    seen: list[httpx.Request] = []
    client = client_for(lambda r: httpx.Response(500, content=b'{"error": "An internal server error"}'), seen)
    with pytest.raises(Exception, match="HTTP 500"):
        client.get("/x/")
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (403, ResourceUnavailable, "forbidden (HTTP 403: 403 Forbidden)"),  # an edge's page: skip the resource
        (200, NotPostHog, "HTML page (HTTP 200)"),  # a web site, not the API: stop the run
        (404, NotPostHog, "HTML page (HTTP 404)"),  # PostHog's API 404s in JSON: a wrong host or path
    ],
)
def test_html_error_pages_are_judged_by_their_status(status: int, error: type, words: str) -> None:
    seen: list[httpx.Request] = []
    page = "<html><head><title>403 Forbidden</title></head><body>cloudflare</body></html>"
    client = client_for(lambda r: httpx.Response(status, html=page), seen)
    with pytest.raises(error, match=re.escape(words)):
        client.get("/api/projects/1/subscriptions/")
    assert len(seen) == 1


def test_an_html_429_from_the_edge_is_a_throttle_not_a_wrong_host() -> None:
    seen: list[httpx.Request] = []
    answers = [httpx.Response(429, html="<html><title>429 Too Many Requests</title></html>")] * 4 + [
        httpx.Response(200, content=b'{"results": []}')]
    client = client_for(lambda r: answers[len(seen) - 1], seen)  # 3 attempts: the 429s do not use them up
    assert client.get("/api/projects/1/subscriptions/") == {"results": []}
    assert len(seen) == 5 and client.stats.throttled == 4 and client.stats.buckets["general"].throttled == 4


def test_without_a_cursor_pages_start_at_the_last_start_and_grow_past_a_tie_group() -> None:
    starts = ["2026-01-01T00:00:00Z"] * 2 + ["2026-01-01T00:00:05Z"] * 5 + ["2026-01-01T00:00:09Z"]
    data = [{"id": str(i), "start_time": s} for i, s in enumerate(starts)]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert "offset" not in request.url.params
        since, limit = request.url.params["date_from"], int(request.url.params["limit"])
        rows = [r for r in data if r["start_time"] >= since][::-1]  # ties in another order each time
        rows.sort(key=lambda r: r["start_time"])
        body = {"results": rows[:limit], "has_next": len(rows) > limit, "version": 4}
        return httpx.Response(200, content=orjson.dumps(body))

    params = {"date_from": starts[0], "limit": 3, "order": "start_time", "order_direction": "ASC"}
    got = [r["id"] for page, _ in client_for(handler, seen).pages("/x/", params, "has_next") for r in page]
    assert set(got) == {r["id"] for r in data}
    assert [(r.url.params["date_from"][-3:], r.url.params["limit"]) for r in seen] == [
        ("00Z", "3"), ("05Z", "3"), ("05Z", "6")]
