"""Faults, throttling, crashes and bad input: nothing lost, nothing duplicated, clear messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from fake_posthog import FakePostHog, FakeRequest
from pipelines.cli import main
from pipelines.runner import SyncOptions, run_sync
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import RECORDINGS, SUBSCRIPTIONS
from sources.posthog.errors import BudgetExhausted, NotPostHog
from sources.posthog.pacing import Pacer
from sources.posthog.report import SyncReport

from .conftest import query, requests_to, sync
from .test_sync import assert_matches_truth, assert_no_duplicates, landed_rows, truth_rows


class FakeClock:
    """Time that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_mirrors_the_free_plan_recordings_limits() -> None:
    pacer, now = Pacer("free"), 0.0
    waits = []
    for _ in range(61):
        wait, window = pacer.wait(RECORDINGS.buckets, now)
        waits.append((round(wait), window.name if window else None))
        now += wait
        pacer.take(RECORDINGS.buckets, now)
    assert waits[:12] == [(0, None)] * 12
    assert waits[12] == (60, "minute")  # the 13th call of the first minute waits for it to pass
    assert waits[60][1] == "hourly" and now >= 3600  # the 61st of the hour waits for the hour
    assert pacer.wait(SUBSCRIPTIONS.buckets, now)[0] == 0  # other endpoints: their own bucket


def test_client_waits_for_the_budget_and_stops_cleanly_past_the_maximum(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    body = orjson.dumps({"results": [{"id": "a"}], "has_next": True})
    client = PostHogClient("http://127.0.0.1:9", "phx_k", pacer=Pacer("free"), clock=lambda: clock.now,
                           sleep=clock.sleep, max_wait_s=7200,
                           transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)))
    job = SyncReport().job(RECORDINGS, 1)
    for _ in range(61):
        client.get(job.path, {"limit": 1}, job)
    assert client.stats.requests == job.run.requests == 61 and clock.now - 1000 >= 3600
    assert "session_recordings: hourly request limit reached, waiting" in caplog.text
    client.max_wait_s = 120
    for _ in range(12):
        client.get(job.path, job=job)
    with pytest.raises(BudgetExhausted, match="rerun later to continue"):
        for _ in range(60):
            client.get(job.path, job=job)


def test_a_paced_run_stops_cleanly_and_the_next_run_continues(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["session_recordings", "subscriptions"]
    options.rate_limit_plan, options.max_wait_s = "free", 1
    options.page_sizes = {"session_recordings": 10}
    first = run_sync(options)
    assert first.ok  # stopping on the budget is not a failure...
    runs = [first.report.runs[(p, "session_recordings")] for p in (1, 2)]
    assert runs[0].status == "incomplete" and "request limit reached" in (runs[0].reason or "")
    assert any("incomplete" in w for w in first.warnings())  # ...but a warning (exit 1 with --strict)
    loaded = query(options, "SELECT count(*) FROM posthog.session_recordings")[0][0]
    assert 0 < loaded < len(truth_rows(fake, "session_recordings"))
    assert landed_rows(options, "subscriptions") == truth_rows(fake, "subscriptions")  # its own bucket
    assert sum(r.status == 429 for r in fake.requests) == 0  # paced, never throttled
    options.rate_limit_plan = "none"
    sync(options)
    assert landed_rows(options, "session_recordings") == truth_rows(fake, "session_recordings")
    assert_no_duplicates(options, "session_recordings")


def test_a_run_through_random_faults_lands_exactly_the_truth(fake: FakePostHog, options: SyncOptions) -> None:
    fake.chaos(0.15, seed=11)
    options.max_attempts = 10
    result = sync(options)
    assert_matches_truth(fake, options)
    runs = result.report.runs.values()
    throttled = sum(r.status == 429 for r in fake.requests)
    failed = sum(r.status != 200 for r in fake.requests)  # truncated bodies come with a 200: retried too
    assert sum(r.requests for r in runs) == len(fake.requests)
    assert sum(r.throttled for r in runs) == throttled > 0
    assert sum(r.retries for r in runs) >= failed > throttled
    stored = query(options, "SELECT sum(requests), sum(throttled) FROM posthog._sync_report")[0]
    assert stored == (len(fake.requests), throttled)


def test_rows_inserted_or_deleted_while_paging_are_not_lost(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["subscriptions", "property_definitions"]
    options.page_sizes = {"subscriptions": 2, "property_definitions": 5}
    first_pages: set[str] = set()
    removed = next(d for d in fake.truth(1, "property_definitions") if d["type"] == "event")["name"]

    def mutate(request: FakeRequest) -> None:
        page = f"{request.path}?{request.params.get('type')}"
        if request.params.get("offset") or page in first_pages or not request.path.startswith("/api/projects/1/"):
            return
        first_pages.add(page)
        if request.path.endswith("/subscriptions/"):
            fake.add_subscription(1)  # lands at the head of a newest-first list: rows shift back
        elif request.params.get("type") == "event":
            fake.remove_property_definition(1, "event", removed)  # rows shift forward

    before = {s["id"] for s in fake.truth(1, "subscriptions")}
    fake.hooks.append(mutate)
    sync(options)
    fake.hooks.clear()
    landed = {row[1] for row in landed_rows(options, "subscriptions") if row[0] == 1}
    assert before <= landed
    assert_no_duplicates(options, "subscriptions")
    assert landed_rows(options, "property_definitions") == truth_rows(fake, "property_definitions")
    sync(options)
    assert landed_rows(options, "subscriptions") == truth_rows(fake, "subscriptions")


def test_exhausted_retries_fail_one_resource_by_name_and_the_rest_loads(
    fake: FakePostHog, options: SyncOptions
) -> None:
    options.max_attempts = 3
    fake.inject("/api/projects/2/desktop_recordings", 503, times=3)
    result = run_sync(options)
    assert list(result.failures) == ["desktop_recordings"]
    message = result.failures["desktop_recordings"]
    assert "desktop_recordings project 2" in message and "limit=" in message and "503" in message
    tables = query(options, "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'desktop%'")
    assert tables == [] or query(options, "SELECT count(*) FROM posthog.desktop_recordings") == [(0,)]
    assert landed_rows(options, "subscriptions") == truth_rows(fake, "subscriptions")
    fake.requests.clear()
    sync(options)
    assert_matches_truth(fake, options)


def test_missing_scope_skips_the_resource_naming_the_scope_and_strict_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake: FakePostHog, server: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    fake.disable(1, "subscriptions", 403)
    args = ["sync", "--project-id", "1", "--host", server, "--resources", "subscriptions,property_definitions",
            "--output", str(tmp_path / "s.duckdb"), "--rate-limit-plan", "none"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "subscriptions project 1 skipped: the key lacks the scope subscription:read" in err
    assert main([*args, "--strict"]) == 1


@pytest.mark.parametrize(
    ("host", "inject", "words"),
    [
        ("http://posthog.example.com", False, "refusing plain http://"),
        ("ftp://x", False, "is not a URL"),
        (None, True, "HTML page"),
        ("https://no-such-host.invalid", False, "cannot find host"),
    ],
)
def test_hosts_that_are_not_posthog_get_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake: FakePostHog, server: str,
    tmp_path: Path, host: str | None, inject: bool, words: str,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    if inject:
        fake.inject("/api/", 200, times=50, body=b"<html><body>Welcome to nginx</body></html>")
    code = main(["sync", "--project-id", "1", "--host", host or server, "--resources", "subscriptions",
                 "--output", str(tmp_path / "h.duckdb")])
    err = capsys.readouterr().err
    assert code in (1, 2) and words in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_project_token_gets_its_own_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", "phc_project_token_abc")
    code = main(["sync", "--project-id", "1", "--host", server, "--output", str(tmp_path / "t.duckdb")])
    err = capsys.readouterr().err
    assert code == 1 and "project API key (phc_" in err and "phc_project_token_abc" not in err


def test_the_key_never_appears_in_anything_a_run_writes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake: FakePostHog, server: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_home"))
    monkeypatch.setenv("SOURCES__POSTHOG__PERSONAL_API_KEY", fake.api_key)
    output = tmp_path / "k.duckdb"
    fake.inject("/api/projects/1/subscriptions", 500, times=20)
    code = main(["sync", "--project-id", "1", "--host", server, "--output", str(output), "--verbose",
                 "--rate-limit-plan", "none", "--resources", "subscriptions,property_definitions"])
    out, err = capsys.readouterr()
    assert code == 1 and "subscriptions failed" in err
    secret = fake.api_key.encode()
    assert secret not in (out + err).encode()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".toml"]
    assert any(p.suffix == ".duckdb" for p in written) and any("dlt_home" in str(p) for p in written)
    leaking = [str(p) for p in written if secret in p.read_bytes()]
    assert leaking == []


def test_kill_minus_9_mid_sync_then_rerun_lands_everything_once(tmp_path: Path) -> None:
    fake = FakePostHog(project_ids=[1, 2], seed=5, recordings=400, recording_step_s=1200, latency_s=0.02)
    env = {**os.environ, "POSTHOG_PERSONAL_API_KEY": fake.api_key, "DLT_DATA_DIR": str(tmp_path / "dlt"),
           "SOURCES__POSTHOG__PAGE_SIZES": '{"session_recordings": 20, "desktop_recordings": 3}'}
    output = tmp_path / "crash.duckdb"
    with fake.serve() as url:
        args = [sys.executable, "-m", "pipelines.cli", "sync", "--project-id", "1", "--project-id", "2",
                "--host", url, "--output", str(output), "--rate-limit-plan", "none"]
        cwd = Path(__file__).resolve().parents[1]
        victim = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill once the first resource's load is committed, while the others are still being read
        loaded = tmp_path / "dlt" / "pipelines" / "posthog" / "load" / "loaded"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (loaded.exists() and any(loaded.iterdir())):
            time.sleep(0.01)
        assert victim.poll() is None, "the sync finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert victim.returncode == -signal.SIGKILL
        fake.latency_s = 0
        rerun = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
    options = SyncOptions(project_ids=[1, 2], api_key="-", host="-", resources=[], output=str(output))
    for resource in ("session_recordings", "session_group_summaries", "desktop_recordings", "subscriptions",
                     "property_definitions"):
        assert_no_duplicates(options, resource)
        assert landed_rows(options, resource) == {
            (p, *row[1:]) for p in (1, 2) for row in truth_rows_for(fake, resource, p)
        }, resource


def truth_rows_for(fake: FakePostHog, resource: str, project: int) -> set[tuple[object, ...]]:
    return {row for row in truth_rows(fake, resource) if row[0] == project}


def test_dns_failure_is_not_retried() -> None:
    seen: list[httpx.Request] = []

    def fail(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    client = PostHogClient("https://nowhere.invalid", "phx_k", transport=httpx.MockTransport(fail))
    with pytest.raises(NotPostHog):
        client.get("/api/projects/1/subscriptions/")
    assert len(seen) == 1


def test_request_log_matches_requests_to(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["subscriptions"]
    result = sync(options)
    assert result.report.runs[(1, "subscriptions")].requests == len(
        [r for r in requests_to(fake, "subscriptions") if r.path.startswith("/api/projects/1/")])


POSTHOG_FREE_LIMITS = {
    "recordings_list": [(12, 60.0), (60, 3600.0)],
    "analytics": [(240, 60.0), (1200, 3600.0)],
    "general": [(480, 60.0), (4800, 3600.0)],
}


@pytest.mark.parametrize("plan", ["free", "none"])
def test_a_throttled_run_lands_everything_and_pacing_avoids_429s(
    fake: FakePostHog, options: SyncOptions, plan: str
) -> None:
    clock = FakeClock()  # virtual time shared by the fake's throttle and the client: hours pass instantly
    fake.throttle(POSTHOG_FREE_LIMITS, clock=lambda: clock.now)
    options.resources = ["session_recordings", "subscriptions"]
    options.page_sizes = {"session_recordings": 4}  # 2 × 38 listing pages: more than 60 an hour
    options.rate_limit_plan, options.max_wait_s = plan, 7200
    result = run_sync(options, clock=(lambda: clock.now, clock.sleep))
    assert result.ok
    assert landed_rows(options, "session_recordings") == truth_rows(fake, "session_recordings")
    throttled = sum(r.status == 429 for r in fake.requests)
    assert throttled == sum(r.throttled for r in result.report.runs.values())
    assert clock.now - 1000 > 3600  # the hourly listing limit was reached and waited out
    if plan == "free":
        assert throttled == 0
    else:
        assert throttled > 0  # without pacing PostHog refuses, and its stated waits are honoured
