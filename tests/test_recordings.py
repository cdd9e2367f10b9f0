"""Recordings as PostHog really serves them: too-big queries, offset pages without a tiebreaker, rows
expiring, deleted and arriving while a sync pages, partial rows at both window edges, null re-reads."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog, FakeRequest
from pipelines.runner import SyncOptions
from sources.posthog import sync as sync_module
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import RECORDINGS
from sources.posthog.errors import QueryTooBig, TransientError
from sources.posthog.report import SyncReport
from sources.posthog.sync import Context, parse_time, read_date_from

from .conftest import PROJECTS, SERVERS, both_servers, query, requests_to, sync
from .test_sync import COMPARED, _norm, assert_no_duplicates, landed_rows

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TOO_BIG = (504, 512, 513, 429)
LIST = "/api/projects/1/session_recordings/"


def compared(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_norm(c, row.get(c)) for c in COMPARED["session_recordings"])


def is_listing(request: FakeRequest) -> bool:
    return request.path == LIST and "session_ids" not in request.params


def read(fake: FakePostHog, state: dict[str, Any], page_size: int) -> tuple[list[dict[str, Any]], Context]:
    """One run of the recordings reader for project 1 (in process): the rows it hands to dlt, and its context."""
    client = PostHogClient("http://fake.test", fake.api_key, backoff_s=0.001, max_attempts=3,
                           transport=fake.transport())
    start = min(parse_time(r["start_time"]) for r in fake.truth(1, "session_recordings")) - timedelta(hours=1)
    ctx = Context(client=client, report=SyncReport(), lookback=timedelta(days=1),
                  initial_date_from=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  page_sizes={"session_recordings": page_size})
    rows: list[dict[str, Any]] = []
    try:
        for item in read_date_from(ctx.report.job(RECORDINGS, 1, state), ctx):
            if item.meta.hints["table_name"] == RECORDINGS.name:
                rows.extend(item.data.to_pylist())
    finally:
        client.close()
    for row in rows:  # Arrow gives datetimes; compare like the landed rows
        row["start_time"], row["end_time"] = row["start_time"].isoformat(), row["end_time"].isoformat()
    return rows, ctx


def oversized_sent_once(fake: FakePostHog) -> None:
    sent = [(r.path, tuple(sorted(r.params.items()))) for r in fake.requests]
    for request, ident in zip(fake.requests, sent, strict=True):
        if request.status in TOO_BIG:
            assert sent.count(ident) == 1, f"sent twice after a too-big answer: {request.params}"


def check_run(fake: FakePostHog, rows: list[dict[str, Any]], ctx: Context, live: set[str],
              landed: dict[str, dict[str, Any]]) -> None:
    """Each recording live throughout landed once and whole; requests counted like the fake logged them.

    `landed` is the destination before the run; it is updated like dlt merges on id.
    """
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a recording was handed to dlt twice in one run"
    landed.update((r["id"], r) for r in rows)
    assert live <= set(landed), f"missing: {sorted(live - set(landed))[:3]}"
    truth = {r["id"]: r for r in fake.truth(1, "session_recordings")}
    for row in rows:
        whole = truth.get(row["id"])
        assert row["ongoing"] is not None and row["activity_score"] is not None, "a null re-read overwrote a value"
        if whole is None:
            continue  # expired or deleted since: the export keeps it as read
        assert row["start_time"] and parse_time(row["start_time"]) == parse_time(whole["start_time"]), row["id"]
        if not row["ongoing"]:  # finished when read: must be the whole recording, not one cut at an edge
            assert compared(row) == compared(whole), row["id"]
        else:
            assert parse_time(row["end_time"]) <= parse_time(whole["end_time"])
    run = ctx.report.run(1, RECORDINGS.name)
    assert run.requests == ctx.client.stats.requests == len(fake.requests)
    oversized_sent_once(fake)


@contextlib.contextmanager
def mutator(fake: FakePostHog, steps: list[tuple[int, int | None]]) -> Iterator[None]:
    """After each listing page: move the clock (rows expire at the head, new ones arrive), delete one."""
    todo = list(steps)

    def hook(request: FakeRequest) -> None:
        if not todo or not is_listing(request) or request.status != 200:
            return
        advance_s, delete = todo.pop(0)
        fake.advance(advance_s)
        current = fake.truth(1, "session_recordings")
        if delete is not None and current:
            fake.delete_recording(1, current[delete % len(current)]["id"])

    fake.hooks.append(hook)
    try:
        yield
    finally:
        fake.hooks.remove(hook)


statuses = st.lists(st.sampled_from([504, 512, 513, "timeout", "capacity", "simultaneous"]), min_size=1,
                    max_size=3, unique=True)
steps = st.lists(st.tuples(st.integers(0, 4 * 3600), st.one_of(st.none(), st.integers(0, 10_000))), max_size=10)


@pytest.mark.parametrize("server", list(SERVERS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    page_size=st.integers(10, 150),
    max_limit=st.one_of(st.none(), st.integers(10, 120)),
    max_span_h=st.one_of(st.none(), st.integers(3, 36)),
    kinds=statuses,
    first=steps,
    second=steps,
    gap_h=st.integers(0, 30),
    tie=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 1000),
)
def test_every_recording_lands_once_and_whole_through_limits_and_mutations(
    server: str, page_size: int, max_limit: int | None, max_span_h: int | None, kinds: list[Any],
    first: list[tuple[int, int | None]], second: list[tuple[int, int | None]], gap_h: int, tie: int, seed: int,
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sync_module, "SEEN_KEEP", 16)  # forget read rows early, as a big sync does
        check_two_runs(server, page_size, max_limit, max_span_h, kinds, first, second, gap_h, tie, seed)


def check_two_runs(
    server: str, page_size: int, max_limit: int | None, max_span_h: int | None, kinds: list[Any],
    first: list[tuple[int, int | None]], second: list[tuple[int, int | None]], gap_h: int, tie: int, seed: int,
) -> None:
    variant = {**SERVERS[server], "tie_group": tie if server == "older" else 1, "seed": seed}
    fake = FakePostHog(project_ids=[1], now=NOW, recordings=500, recording_step_s=300, retention_days=2,
                       desktop_recordings=0, **variant)
    fake.too_big(max_limit, max_span_s=max_span_h and max_span_h * 3600, statuses=kinds, seed=seed)
    state: dict[str, Any] = {}
    landed: dict[str, dict[str, Any]] = {}
    for run_steps in (first, second):
        fake.requests.clear()
        before = {r["id"] for r in fake.truth(1, "session_recordings")}
        stored = state.get("page_size")
        with mutator(fake, run_steps):
            rows, ctx = read(fake, state, page_size)
        live = before & {r["id"] for r in fake.truth(1, "session_recordings")}
        check_run(fake, rows, ctx, live, landed)
        listing = [r for r in fake.requests if is_listing(r)]
        if stored:  # the size the last run settled at is where this one starts
            assert int(listing[0].params["limit"]) == stored
        if any(r.status in TOO_BIG for r in listing):
            assert state["page_size"] < page_size or "date_to" in "".join(str(r.params) for r in listing)
        fake.advance(gap_h * 3600)
    truth = {r["id"]: r for r in fake.truth(1, "session_recordings")}
    for ident, row in landed.items():
        if ident in truth and not row["ongoing"]:
            assert compared(row) == compared(truth[ident])


def test_a_page_too_big_is_halved_never_repeated_and_remembered_for_all_projects_and_the_next_run(
    options: SyncOptions,
) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, seed=4, recordings=600, recording_step_s=600)
    fake.too_big(70, statuses=(504, 512, 513, "timeout"), seed=1)
    options.resources, options.page_sizes = ["session_recordings"], {"session_recordings": 300}
    with fake.serve() as url:
        options.host = url
        first = sync(options)
        sizes = [int(r.params["limit"]) for r in requests_to(fake, "session_recordings")
                 if "session_ids" not in r.params]
        assert sorted({s for s in sizes}, reverse=True)[:3] == [300, 150, 75]
        assert max(sizes[-5:]) == 37  # settled below the limit, for both projects
        oversized_sent_once(fake)
        for p in PROJECTS:  # each size fails at most once per project (both start at once), then never again
            failed = [int(r.params["limit"]) for r in fake.requests if r.status in TOO_BIG and f"/{p}/" in r.path]
            assert failed == sorted(set(failed), reverse=True) and set(failed) <= {300, 150, 75}
        run = first.report.runs[(1, "session_recordings")]
        assert run.status == "ok" and run.retries >= 1
        state = first.pipeline.state["sources"]["posthog"]["resources"]["session_recordings"]["projects"]
        assert {p: state[str(p)]["page_size"] for p in PROJECTS} == {1: 37, 2: 37}
        fake.requests.clear()
        fake.advance(3600)
        sync(options)
        assert {int(r.params["limit"]) for r in requests_to(fake, "session_recordings")
                if "session_ids" not in r.params} == {37}
        assert not any(r.status in TOO_BIG for r in fake.requests)
    assert landed_rows(options, "session_recordings") == {
        (p, *compared(r)) for p in PROJECTS for r in fake.truth(p, "session_recordings")}


@both_servers
def test_windows_cut_at_date_to_land_whole(fake: FakePostHog, options: SyncOptions) -> None:
    """At the smallest page the window narrows (date_to): sessions running past it are re-read whole."""
    fake.too_big(10, max_span_s=12 * 3600, statuses=(504, 513), seed=3)
    options.resources, options.page_sizes = ["session_recordings"], {"session_recordings": 20}
    options.initial_date_from = "2026-11-10T00:00:00Z"
    result = sync(options)
    listing = [r for r in requests_to(fake, "session_recordings") if r.path.startswith("/api/projects/1/")]
    bounded = [r for r in listing if "date_to" in r.params and r.status == 200]
    assert bounded, "the window should have been narrowed"
    truth = fake.truth(1, "session_recordings")
    cut = {r["id"] for q in bounded for r in truth
           if parse_time(r["start_time"]) <= parse_time(q.params["date_to"])
           < parse_time(r["end_time"]) - timedelta(minutes=15)}
    assert cut, "some sessions should run past a window's date_to"
    asked = {i for r in listing if "session_ids" in r.params for i in json.loads(r.params["session_ids"])}
    assert cut <= asked
    assert result.report.runs[(1, "session_recordings")].status == "ok"
    assert_no_duplicates(options, "session_recordings")
    assert landed_rows(options, "session_recordings") == {
        (p, *compared(r)) for p in PROJECTS for r in fake.truth(p, "session_recordings")}
    oversized_sent_once(fake)


@pytest.mark.parametrize("server", list(SERVERS))
def test_re_reads_of_persisted_recordings_keep_the_list_rows_values(options: SyncOptions, server: str) -> None:
    # many sessions running at once, so many cross the next run's lower edge
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, recordings=1500, recording_step_s=120, **SERVERS[server])
    options.resources, options.page_sizes = ["session_recordings"], {"session_recordings": 300}
    with fake.serve() as url:
        options.host = url
        sync(options)
        fake.advance(600)
        fake.requests.clear()
        sync(options)
        reread = [r for r in requests_to(fake, "session_recordings") if "session_ids" in r.params]
        assert reread and all("date_from" in r.params for r in reread)  # older servers window session_ids
        ids = [i for r in reread for i in json.loads(r.params["session_ids"])]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {fake.api_key}"}) as api:
            rows = [row for r in reread for row in api.get(r.path, params=r.params).json()["results"]]
    assert {r["id"] for r in rows} == set(ids)  # whole, not cut by a -3d window on older servers
    nulls = [r["id"] for r in rows if r["ongoing"] is None]
    assert nulls, "some re-read recordings should come from Postgres with nulls"
    landed = query(options, "SELECT id, ongoing, activity_score, expiry_time, recording_ttl FROM "
                            "posthog.session_recordings WHERE id IN (" + ",".join(f"'{i}'" for i in ids) + ")")
    assert len(landed) == len(set(ids)) and all(None not in row for row in landed)
    assert landed_rows(options, "session_recordings") == {
        (p, *compared(r)) for p in PROJECTS for r in fake.truth(p, "session_recordings")}


def test_504_elsewhere_stays_a_transient_retry() -> None:
    answers = [httpx.Response(504, html="<html>504</html>"), httpx.Response(200, content=b'{"ok": 1}')]
    seen: list[httpx.Request] = []
    client = PostHogClient("http://127.0.0.1:9", "phx_t", backoff_s=0.001, max_attempts=3,
                           transport=httpx.MockTransport(lambda r: seen.append(r) or answers[len(seen) - 1]))
    assert client.get("/api/projects/1/subscriptions/", {"limit": 100}) == {"ok": 1}
    assert [str(r.url) for r in seen][0] == str(seen[1].url)  # the same request again: a proxy hiccup
    body = orjson.dumps({"type": "throttled_error", "detail": "Query timeout exceeded. Try again later."})
    recordings = PostHogClient("http://127.0.0.1:9", "phx_t", max_attempts=3, backoff_s=0.001,
                               transport=httpx.MockTransport(lambda r: httpx.Response(429, content=body)))
    job = SyncReport().job(RECORDINGS, 1)
    with pytest.raises(QueryTooBig):
        recordings.get(job.path, {"limit": 100}, job)
    assert recordings.stats.requests == 1  # not retried as it is
    with pytest.raises(TransientError):  # the same answer elsewhere is retried
        recordings.get("/api/projects/1/subscriptions/", {"limit": 100})
    assert recordings.stats.requests == 4


@pytest.mark.parametrize("server", list(SERVERS))
def test_long_sessions_cut_by_narrowed_windows_land_once(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On older servers every `date_from` page inside a long session returns it again, partial."""
    monkeypatch.setattr(sync_module, "SEEN_KEEP", 16)
    fake = FakePostHog(project_ids=[1], now=NOW, recordings=6000, recording_step_s=30, retention_days=30,
                       **{**SERVERS[server], "seed": 1})
    fake.too_big(2500, max_span_s=86400, statuses=(504, 512), seed=0)
    rows, ctx = read(fake, {}, 10_000)
    assert any("date_to" in r.params for r in fake.requests)
    check_run(fake, rows, ctx, {r["id"] for r in fake.truth(1, "session_recordings")}, {})
    assert len(rows) == len(fake.truth(1, "session_recordings"))
