"""Throttles the client does not know in advance: stricter than published, or a key shared with another tool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog, FakeRequest
from pipelines.runner import SyncOptions, SyncResult, print_rate_buckets, run_sync
from sources.posthog import ENDPOINTS
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import RECORDINGS, SUBSCRIPTIONS
from sources.posthog.errors import BudgetExhausted
from sources.posthog.pacing import GENERAL, Pacer
from sources.posthog.report import SyncReport

from .conftest import NOW, PROJECTS
from .test_reliability import FakeClock
from .test_sync import assert_matches_truth, landed_rows, truth_rows

# a quarter of PostHog's published free-plan limits (§5), unknown to the client
QUARTER = {
    "recordings_list": [(3, 60.0), (15, 3600.0)],
    "analytics": [(60, 60.0), (300, 3600.0)],
    "general": [(120, 60.0), (1200, 3600.0)],
}
PAGES = {**{name: 40 for name in ENDPOINTS}, "session_recordings": 10, "property_definitions": 2}


def make_fake(recordings: int = 150) -> FakePostHog:
    return FakePostHog(project_ids=PROJECTS, now=NOW, seed=7, recordings=recordings, desktop_recordings=12,
                       segments=6, recording_step_s=3000)


def run(fake: FakePostHog, folder: Path, clock: FakeClock, *, plan: str = "none", resources: list[str] | None = None,
        max_wait_s: float = 6 * 3600) -> SyncResult:
    with fake.serve() as url:
        options = SyncOptions(
            project_ids=PROJECTS, api_key=fake.api_key, host=url, resources=resources or list(ENDPOINTS),
            output=str(folder / "out.duckdb"), pipelines_dir=str(folder / "pipelines"), pipeline_name="throttle",
            backoff_s=0.01, rate_limit_plan=plan, page_sizes=PAGES, quiet=True, max_wait_s=max_wait_s,
            max_attempts=3,
        )
        result = run_sync(options, clock=(lambda: clock.now, clock.sleep))
    result.options = options  # type: ignore[attr-defined]
    return result


def buckets_of(request: FakeRequest) -> tuple[str, ...]:
    """The rate buckets a request the fake saw spends: those of the endpoint it lists (or reads a row of)."""
    parts = [p for p in request.path.split("/") if p]
    named = [e.buckets for e in ENDPOINTS.values() if len(parts) > 3 and parts[3] == e.path]
    return named[0] if named else GENERAL


def bucket_of(request: FakeRequest) -> str:
    return buckets_of(request)[-1]


def assert_counts_match_the_fake(result: SyncResult, fake: FakePostHog) -> None:
    runs = result.report.runs.values()
    throttled = sum(r.status == 429 for r in fake.requests)
    assert sum(r.requests for r in runs) == len(fake.requests)
    assert sum(r.throttled for r in runs) == throttled
    assert result.client_stats is not None
    for name, bucket in result.client_stats.buckets.items():
        mine = [r for r in fake.requests if name in buckets_of(r)]
        assert bucket.requests == len(mine), name
        assert bucket.throttled == sum(r.status == 429 for r in fake.requests if bucket_of(r) == name), name


def assert_settles(fake: FakePostHog, bucket: str) -> None:
    """From a bucket's first 429 on, the second half of its requests sees far fewer 429s than the first."""
    statuses = [r.status for r in fake.requests if bucket_of(r) == bucket]
    since = statuses[statuses.index(429):]
    assert len(since) > 60, len(since)
    first, second = (sum(s == 429 for s in half) for half in (since[: len(since) // 2], since[len(since) // 2:]))
    assert second <= min(2, first // 3), (bucket, first, second)


@pytest.mark.parametrize("plan", ["none", "free"])
def test_a_server_stricter_than_published_still_gives_every_row(tmp_path: Path, plan: str) -> None:
    fake, clock = make_fake(), FakeClock()
    fake.throttle(QUARTER, clock=lambda: clock.now)
    result = run(fake, tmp_path, clock, plan=plan)
    assert result.ok, result.failures
    assert all(r.status == "ok" for r in result.report.runs.values()), result.warnings()
    assert_matches_truth(fake, result.options)  # type: ignore[attr-defined]
    assert_counts_match_the_fake(result, fake)
    stats = result.client_stats
    assert stats is not None
    listing = stats.buckets["recordings_list"]
    assert listing.throttled > 0 and listing.rate_per_min is not None
    assert listing.rate_per_min <= 15 / 60  # learned: below the server's 15 an hour, not the published 60
    # the 15-an-hour listing limit decides the run's length: ~70 listing calls need hours, not days
    assert 3600 < clock.now - 1000 < 12 * 3600


def test_the_pace_settles_below_the_limit(tmp_path: Path) -> None:
    fake, clock = make_fake(), FakeClock()
    fake.throttle({"general": [(20, 60.0)]}, clock=lambda: clock.now)
    result = run(fake, tmp_path, clock, resources=["property_definitions", "session_group_summaries"])
    assert result.ok and all(r.status == "ok" for r in result.report.runs.values())
    assert_counts_match_the_fake(result, fake)
    assert_settles(fake, "general")
    general = result.client_stats.buckets["general"]  # type: ignore[union-attr]
    assert general.rate_per_min is not None and 8 <= general.rate_per_min <= 20.5  # below the 20 allowed


def test_a_competing_client_on_the_key_shrinks_our_share_and_nothing_is_lost(tmp_path: Path) -> None:
    fake, clock = make_fake(), FakeClock()
    fake.throttle({**QUARTER, "general": [(30, 60.0)]}, clock=lambda: clock.now)
    other = fake.compete(12, ["general"])  # another tool spends 12 of the 30 a minute
    listing = fake.compete(1 / 12, ["analytics", "recordings_list"])  # and 5 of the 15 listing calls an hour
    result = run(fake, tmp_path, clock)
    assert result.ok and all(r.status == "ok" for r in result.report.runs.values()), result.warnings()
    assert_matches_truth(fake, result.options)  # type: ignore[attr-defined]
    assert_counts_match_the_fake(result, fake)
    assert other.sent > 0 and listing.sent > 0
    general = result.client_stats.buckets["general"]  # type: ignore[union-attr]
    assert general.throttled > 0 and general.rate_per_min is not None and general.rate_per_min < 30 - 12 + 1
    assert_settles(fake, "general")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    general=st.tuples(st.integers(4, 60), st.sampled_from([30.0, 60.0, 600.0])),
    listing=st.tuples(st.integers(2, 12), st.sampled_from([60.0, 3600.0])),
    competing=st.sampled_from([0.0, 0.25, 0.5]),
    plan=st.sampled_from(["none", "free"]),
    retry_after=st.booleans(),
)
def test_random_throttles_never_fail_a_resource(
    tmp_path_factory: pytest.TempPathFactory, general: tuple[int, float], listing: tuple[int, float],
    competing: float, plan: str, retry_after: bool,
) -> None:
    fake, clock = make_fake(recordings=60), FakeClock()
    fake.throttle({"general": [general], "recordings_list": [listing]}, clock=lambda: clock.now,
                  recordings_429="plan" if retry_after else "drf")
    if competing:  # another tool spending that share of each limit
        fake.compete(competing * general[0] * 60 / general[1], ["general"])
        fake.compete(competing * listing[0] * 60 / listing[1], ["recordings_list"])
    resources = ["session_recordings", "subscriptions"]
    result = run(fake, tmp_path_factory.mktemp("run"), clock, plan=plan, resources=resources, max_wait_s=10**7)
    assert result.ok, result.failures
    assert all(r.status == "ok" for r in result.report.runs.values()), result.warnings()
    for resource in resources:
        assert landed_rows(result.options, resource) == truth_rows(fake, resource)  # type: ignore[attr-defined]
    assert_counts_match_the_fake(result, fake)


def test_a_429_wait_beyond_max_wait_stops_the_resource_cleanly_keeping_its_rows(tmp_path: Path) -> None:
    fake, clock = make_fake(), FakeClock()
    fake.throttle({"recordings_list": [(3, 3600.0)]}, clock=lambda: clock.now)
    result = run(fake, tmp_path, clock, resources=["session_recordings", "subscriptions"], max_wait_s=600)
    assert result.ok  # stopping on the budget is not a failure
    for project in PROJECTS:
        run_ = result.report.runs[(project, "session_recordings")]
        assert run_.status == "incomplete" and "(max_wait)" in (run_.reason or "")
    loaded = landed_rows(result.options, "session_recordings")  # type: ignore[attr-defined]
    assert 0 < len(loaded) < len(truth_rows(fake, "session_recordings"))
    assert landed_rows(result.options, "subscriptions") == truth_rows(fake, "subscriptions")  # type: ignore
    assert clock.now - 1000 < 2 * 600  # gave up once the wait was known to be too long, without waiting


def json_429(seconds: int | None, retry_after: str | None = None) -> httpx.Response:
    detail = "Request was throttled." + (f" Expected available in {seconds} seconds." if seconds else "")
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(429, headers=headers, content=orjson.dumps(
        {"type": "throttled_error", "code": "throttled", "detail": detail, "attr": None}))


OK = httpx.Response(200, content=b'{"results": [], "next": null}')


def test_one_429_holds_every_thread_until_its_time(tmp_path: Path) -> None:
    clock, lock = FakeClock(), threading.Lock()
    sent: list[tuple[float, str]] = []
    throttled_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            sent.append((clock.now, request.url.path))
            if not throttled_at:
                throttled_at.append(clock.now)
                return json_429(30)
        return OK

    client = PostHogClient("http://127.0.0.1:9", "phx_k", transport=httpx.MockTransport(handler), max_attempts=2,
                           clock=lambda: clock.now, sleep=clock.sleep, backoff_s=0.01)
    paths = [f"/api/projects/{p}/{r}/" for p in (1, 2) for r in ("subscriptions", "property_definitions")] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(body == {"results": [], "next": None} for body in pool.map(client.get, paths))
    assert len(sent) == len(paths) + 1
    t0 = throttled_at[0]
    # only requests already in flight when the 429 came (at most the other 5 slots) went out at its time;
    # every other one, from any thread, waited its 30 s (+1 s for PostHog's rounding)
    assert sum(when == t0 for when, _ in sent[1:]) <= 5
    assert all(when >= t0 + 31 for when, _ in sent[1:] if when != t0)
    assert client.stats.throttled == 1 and client.stats.buckets["general"].throttled == 1


def test_429s_are_not_attempts_but_their_total_wait_is_bounded() -> None:
    clock, seen = FakeClock(), []
    answers = [json_429(20)] * 5 + [OK]
    client = PostHogClient("http://127.0.0.1:9", "phx_k", max_attempts=2, max_wait_s=300, clock=lambda: clock.now,
                           sleep=clock.sleep,
                           transport=httpx.MockTransport(lambda r: seen.append(r) or answers[len(seen) - 1]))
    assert client.get("/api/projects/1/subscriptions/") == {"results": [], "next": None}  # 6 requests, 2 attempts
    assert client.stats.throttled == 5 and clock.now - 1000 >= 5 * 21
    seen.clear()
    answers = [json_429(50)] * 20
    client.max_wait_s = 120
    with pytest.raises(BudgetExhausted, match=r"\(max_wait\)"):
        client.get("/api/projects/1/subscriptions/")
    assert len(seen) == 3  # waited 51 s twice; a third wait would pass 120 s


def test_a_numberless_429_backs_off_exponentially_bounded_by_time_not_attempts() -> None:
    clock, seen = FakeClock(), []
    answers = [httpx.Response(429, html="<html><title>429 Too Many Requests</title></html>")] * 6 + [OK]
    client = PostHogClient("http://127.0.0.1:9", "phx_k", max_attempts=2, backoff_s=1, clock=lambda: clock.now,
                           sleep=clock.sleep,
                           transport=httpx.MockTransport(lambda r: seen.append(r) or answers[len(seen) - 1]))
    assert client.get("/api/projects/1/subscriptions/") == {"results": [], "next": None}
    waits = [w for w in clock.slept if w > 0.5]
    assert len(waits) == 6 and all(b > a for a, b in zip(waits, waits[1:], strict=False))
    assert 2**5 <= waits[-1] <= 2**5 + 1


def test_retry_after_is_honoured_when_the_body_has_no_number() -> None:
    clock, seen = FakeClock(), []
    answers = [json_429(None, retry_after="41"), OK]
    client = PostHogClient("http://127.0.0.1:9", "phx_k", clock=lambda: clock.now, sleep=clock.sleep,
                           transport=httpx.MockTransport(lambda r: seen.append(r) or answers[len(seen) - 1]))
    job = SyncReport().job(RECORDINGS, 1)
    client.get(job.path, job=job)
    assert clock.slept == [pytest.approx(42, abs=0.01)]


def test_the_fake_answers_recordings_429s_in_either_wording(fake: FakePostHog, server: str) -> None:
    clock = FakeClock()
    api = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {fake.api_key}"})
    fake.throttle({"recordings_list": [(1, 60.0)], "general": [(1, 60.0)]}, clock=lambda: clock.now)
    for path in ("/api/projects/1/session_recordings/", "/api/projects/1/subscriptions/"):
        assert api.get(path).status_code == 200
        refused = api.get(path)
        assert refused.status_code == 429 and "Retry-After" not in refused.headers
        assert refused.json()["detail"] == "Request was throttled. Expected available in 60 seconds."
    fake.throttle({"recordings_list": [(1, 3600.0)]}, clock=lambda: clock.now, recordings_429="plan")
    api.get("/api/projects/1/session_recordings/")
    clock.now += 1000
    refused = api.get("/api/projects/1/session_recordings/")
    assert refused.headers["Retry-After"] == "2600"
    assert refused.json()["detail"] == ("Rate limit exceeded. Recording list requests are limited to 1 per hour on "
                                        "the free plan. Expected available in 2600 seconds.")


def test_a_competitor_spends_the_same_budget(fake: FakePostHog, server: str) -> None:
    clock = FakeClock()
    api = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {fake.api_key}"})
    fake.throttle({"general": [(10, 60.0)]}, clock=lambda: clock.now)
    other = fake.compete(6, ["general"])
    clock.now += 59.5  # the other tool made 6 requests this minute (t = 0, 10, ..., 50)
    assert [api.get("/api/projects/1/subscriptions/").status_code for _ in range(5)] == [200] * 4 + [429]
    assert other.sent == 6 and other.throttled == 0
    assert len(fake.requests) == 5  # its requests are not ours


def test_the_summary_names_the_buckets_that_were_throttled(capsys: pytest.CaptureFixture[str]) -> None:
    pacer = Pacer("free")
    pacer.take(SUBSCRIPTIONS.buckets, 0.0)
    for t in range(5):
        pacer.take(RECORDINGS.buckets, float(t))
        if t < 4:
            pacer.answered(RECORDINGS.buckets, float(t))
    pacer.throttled(RECORDINGS.buckets, 4.0, 4.5, 60.0)
    stats = PostHogClient("http://127.0.0.1:9", "phx_k", pacer=pacer).stats
    print_rate_buckets(stats)
    out = capsys.readouterr().out
    assert "recordings_list" in out and "learned from 429s" in out and "general" not in out
    assert stats.buckets["recordings_list"].throttled == 1
    # 4 accepted over the 4.5 s seen plus the 60 s wait, at 0.8 of that: 2.98 a minute
    assert stats.buckets["recordings_list"].rate_per_min == pytest.approx(0.8 * 4 / 64.5 * 60)


def test_a_429_holds_its_own_bucket_not_the_others() -> None:
    # PostHog's buckets are separate (§5): an hour's wait on the recordings listing must not stall subscriptions
    slept: list[float] = []
    answers = {"session_recordings": [json_429(600), OK, OK], "subscriptions": [OK]}
    client = PostHogClient(
        "http://127.0.0.1:9", "phx_k", clock=lambda: 1000.0, sleep=slept.append,  # time stands still
        transport=httpx.MockTransport(lambda r: answers[r.url.path.split("/")[4]].pop(0)))
    report = SyncReport()
    recordings, subscriptions = report.job(RECORDINGS, 1), report.job(SUBSCRIPTIONS, 1)
    client.get(recordings.path, job=recordings)
    assert slept == [pytest.approx(601)]
    client.get(subscriptions.path, job=subscriptions)
    assert slept == [pytest.approx(601)]  # general went out at once
    client.get(recordings.path, job=recordings)
    assert len(slept) == 2 and slept[1] == pytest.approx(601)  # the listing still waits for its 429
    assert client.stats.buckets["recordings_list"].throttled == 1 and client.stats.buckets["general"].throttled == 0
    assert (recordings.run.requests, recordings.run.throttled, subscriptions.run.requests) == (3, 1, 1)
