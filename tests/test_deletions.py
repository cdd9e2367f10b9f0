"""Recordings deleted in PostHog get `deleted_at` (rows kept): inside the re-read window after a complete
incremental read, older ones with `--verify-deletions`; expired ones never (shared/posthog-api.md §7.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from fake_posthog import FakePostHog
from pipelines import runner
from pipelines.cli import build_parser, sync_options
from pipelines.runner import SyncOptions, SyncResult, UsageError, run_sync
from tests.conftest import NOW, PROJECTS, SERVERS, both_servers, query
from tests.test_postgres import cli_sync, pg_query
from tests.test_postgres import pg as pg  # noqa: F401  (fixtures)
from tests.test_postgres import postgres_url as postgres_url  # noqa: F401

LOOKBACK = timedelta(days=1)


def run(options: SyncOptions, fake: FakePostHog, *, verify: bool = False) -> SyncResult:
    options.resources, options.verify_deletions = ["session_recordings"], verify
    result = run_sync(options, transport=fake.transport())
    assert result.ok, result.failures
    return result


def stored(options: SyncOptions, project_id: int = 1) -> dict[str, tuple[datetime, datetime | None]]:
    """id: (start_time, deleted_at) of the stored recordings of a project, from DuckDB or the Parquet folder."""
    sql = "SELECT id, start_time, deleted_at FROM {} WHERE project_id = " + str(project_id)
    if options.destination == "parquet":
        with duckdb.connect() as con:
            rows = con.execute(sql.format(f"read_parquet('{options.output}/posthog/session_recordings/*.parquet')"))
            rows = rows.fetchall()
    else:
        rows = query(options, sql.format("posthog.session_recordings"))
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "one row per recording"
    return {r[0]: (r[1], r[2]) for r in rows}


def marked(options: SyncOptions, project_id: int = 1) -> set[str]:
    return {i for i, (_, at) in stored(options, project_id).items() if at is not None}


def starts(fake: FakePostHog, project_id: int = 1) -> dict[str, datetime]:
    return {r["id"]: datetime.fromisoformat(r["start_time"].replace("Z", "+00:00"))
            for r in fake.truth(project_id, "session_recordings")}


@pytest.fixture(autouse=True)
def marking(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests the fake had answered when each run began marking (the listing may re-read rows cut
    by the window edge by `session_ids` too: those are not verification)."""
    starts: list[int] = []
    real = runner.mark_deletions

    def spy(pipeline: Any, session: Any, *args: Any, **kwargs: Any) -> bool:
        starts.append(session.client.stats.requests)
        return real(pipeline, session, *args, **kwargs)

    monkeypatch.setattr(runner, "mark_deletions", spy)
    return starts


def session_id_batches(fake: FakePostHog, since: int, project_id: int = 1) -> list[list[str]]:
    """The `session_ids` lists of a project's verification, from request `since` on."""
    return [orjson.loads(r.params["session_ids"]) for r in fake.requests[since:]
            if r.path == f"/api/projects/{project_id}/session_recordings/" and "session_ids" in r.params]


def _options(options: SyncOptions, tmp_path: Path, destination: str) -> SyncOptions:
    if destination == "parquet":
        options.destination, options.output = "parquet", str(tmp_path / "parquet_out")
    return options


@pytest.mark.parametrize("fake", list(SERVERS), indirect=True)
@pytest.mark.parametrize("destination", ["duckdb", "parquet"])
def test_deleted_in_the_window_are_marked_by_the_next_sync(
    fake: FakePostHog, options: SyncOptions, tmp_path: Path, destination: str
) -> None:
    options = _options(options, tmp_path, destination)
    first = run(options, fake)
    assert not marked(options) and not any(r.resource.endswith("_deletions") for r in first.report.runs.values())
    times = starts(fake)
    recent = sorted((i for i, s in times.items() if s > fake.now - timedelta(hours=12)), key=times.__getitem__)[:2]
    old = min(times, key=times.__getitem__)
    for ident in (*recent, old):
        fake.delete_recording(1, ident)
    before = datetime.now(UTC)
    fake.advance(600)
    result = run(options, fake)
    rows = stored(options)
    assert marked(options) == set(recent), "the old one lies before the window: only --verify-deletions sees it"
    assert all(before <= rows[i][1] <= datetime.now(UTC) for i in recent)  # type: ignore[operator]
    assert set(rows) >= set(times), "marked rows are kept"
    assert not marked(options, 2)
    runs = {(r.project_id, r.resource): r for r in result.report.runs.values()}
    assert runs[(1, "session_recordings_deletions")].deleted_marked == 2
    assert (2, "session_recordings_deletions") not in runs, "nothing to report for project 2"
    if destination == "duckdb":
        report = query(options, "SELECT project_id, deleted_marked FROM posthog._sync_report "
                                "WHERE resource = 'session_recordings_deletions'")
        assert report == [(1, 2)]
    run(options, fake)
    assert marked(options) == set(recent), "a mark stays while PostHog does not list the row"


def sync_then_delete_the_newest(options: SyncOptions, fake: FakePostHog) -> str:
    """Sync, then delete project 1's newest recording in PostHog and let ten minutes pass; its id."""
    run(options, fake)
    times = starts(fake)
    ident = max(times, key=times.__getitem__)
    fake.delete_recording(1, ident)
    fake.advance(600)
    return ident


def test_an_incomplete_sync_marks_nothing(fake: FakePostHog, options: SyncOptions) -> None:
    ident = sync_then_delete_the_newest(options, fake)
    # one listing request a minute and no waiting: the window's second page is not read
    options.rate_limit_plan, options.rate_limits, options.max_wait_s = "free", {"recordings_list": [1, 100]}, 0.5
    options.resources, options.page_sizes = ["session_recordings"], {"session_recordings": 10}
    result = run_sync(options, transport=fake.transport())
    assert {r.status for r in result.report.runs.values() if r.resource == "session_recordings"} == {"incomplete"}
    assert not marked(options)
    options.rate_limit_plan, options.rate_limits, options.max_wait_s = "none", None, None
    run(options, fake)
    assert marked(options) == {ident}


def test_a_first_sync_marks_nothing(fake: FakePostHog, options: SyncOptions) -> None:
    ident = sync_then_delete_the_newest(options, fake)
    options.pipeline_name = "another"  # no state of its own: a first sync over rows already stored
    result = run(options, fake)
    assert ident in stored(options) and not marked(options)
    assert not any(r.resource.endswith("_deletions") for r in result.report.runs.values())


def test_a_listed_again_row_loses_its_mark(fake: FakePostHog, options: SyncOptions) -> None:
    ident = sync_then_delete_the_newest(options, fake)
    run(options, fake)
    assert marked(options) == {ident}
    fake.restore_recording(1, ident)  # missing from one listing only (a lagging replica)
    fake.advance(600)
    run(options, fake)
    assert not marked(options) and stored(options)[ident][1] is None


@both_servers
def test_expired_rows_are_not_marked(options: SyncOptions, fake: FakePostHog) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, recordings=150, recording_step_s=1200, retention_days=2,
                       **SERVERS["newer" if fake.keyset else "older"])
    run(options, fake)
    fake.advance(36 * 3600)  # rows started more than half a day before the last sync expire
    alive = starts(fake)
    window_from = max(s for s, _ in stored(options).values()) - LOOKBACK
    expired = {i for i, (s, _) in stored(options).items() if i not in alive and s >= window_from}
    assert expired, "some rows of the window should have expired"
    deleted = max(set(alive) & set(stored(options)), key=alive.__getitem__)  # far from its expiry
    fake.delete_recording(1, deleted)
    run(options, fake, verify=True)
    assert marked(options) == {deleted}


def test_the_fake_returns_deleted_persisted_recordings_by_session_ids(fake: FakePostHog) -> None:
    """§7.1: persisted recordings come from Postgres without a deletion filter; retrieve says 404."""
    now_us = int(fake.now.timestamp() * 1_000_000)
    index = next(i for i in range(100) if fake._persisted(1, i, now_us))
    ident = fake._rec_id(1, index)
    fake.delete_recording(1, ident)
    status, body = fake._recordings(1, {"session_ids": orjson.dumps([ident]).decode(), "date_from": "-30d"})
    assert status == 200 and [r["id"] for r in body["results"]] == [ident]
    assert body["results"][0]["expiry_time"] is None
    assert fake._route(f"/api/projects/1/session_recordings/{ident}/", {}, "x")[0] == 404


@both_servers
def test_verify_marks_old_deleted_ones_with_persisted_ones_confirmed_by_retrieve(
    fake: FakePostHog, options: SyncOptions, marking: list[int]
) -> None:
    run(options, fake)
    now_us = int(fake.now.timestamp() * 1_000_000)
    times = starts(fake)
    old = sorted((i for i, s in times.items() if s < fake.now - 2 * LOOKBACK), key=times.__getitem__)
    index = {i: fake._rec_id_index(1, i) for i in old}
    persisted = [i for i in old if fake._persisted(1, index[i], now_us)]
    plain = [i for i in old if i not in persisted]
    gone = {persisted[0], persisted[-1], plain[0], plain[-1]}
    for ident in gone:
        fake.delete_recording(1, ident)
    fake.advance(600)
    since = len(fake.requests)
    result = run(options, fake, verify=True)
    since += marking[-1]
    assert marked(options) == gone
    batches = session_id_batches(fake, since)
    checked = [i for b in batches for i in b]
    assert all(len(b) <= 100 for b in batches) and len(checked) == len(set(checked))
    assert set(old) <= set(checked) and not set(checked) & set(times) - set(stored(options)), "stored rows only"
    rows = stored(options)
    for r in fake.requests[since:]:
        if r.path == "/api/projects/1/session_recordings/":  # older servers apply the window: it starts before
            first = min(rows[i][0] for i in orjson.loads(r.params["session_ids"]))
            assert datetime.fromisoformat(r.params["date_from"].replace("Z", "+00:00")) < first
    retrieved = {r.path.rstrip("/").rsplit("/", 1)[1] for r in fake.requests[since:]
                 if r.path.startswith("/api/projects/1/session_recordings/") and r.path.count("/") == 6}
    from_postgres = {i for i in checked if fake._persisted(1, fake._rec_id_index(1, i), now_us)}
    assert set(persisted) <= from_postgres
    assert retrieved == from_postgres, "only rows from Postgres (expiry_time null) are retrieved"
    run_1 = result.report.runs[(1, "session_recordings_deletions")]
    assert run_1.deleted_marked == 4 and run_1.status == "ok"


def test_verify_stops_on_the_budget_and_resumes_next_run(options: SyncOptions, marking: list[int]) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, recordings=1500, recording_step_s=300, seed=7)
    options.page_sizes = {"session_recordings": 1000}  # one listing request per project
    run(options, fake)
    rows = stored(options)
    window_from = max(s for s, _ in rows.values()) - LOOKBACK
    old = sorted((i for i, (s, _) in rows.items() if s < window_from), key=lambda i: (rows[i][0], i))
    assert len(old) > 1000
    fake.delete_recording(1, old[250])
    fake.delete_recording(1, old[-1])
    # eight listing requests a minute, no waiting: the listings (and their edge re-reads), then a few batches
    options.rate_limit_plan, options.max_wait_s = "free", 0.5
    options.rate_limits = {"recordings_list": [8, 100]}
    checked: list[str] = []
    for number in range(1, 3):
        since = len(fake.requests)
        result = run(options, fake, verify=True)
        since += marking[-1]
        batches = session_id_batches(fake, since)
        assert batches and {len(b) for b in batches} == {100}, "full batches while the round lasts"
        assert not session_id_batches(fake, since, 2), "the budget ended in project 1"
        checked += [i for b in batches for i in b]
        assert checked == old[: len(checked)], f"run {number}: oldest first, each row once"
        deletions = result.report.runs[(1, "session_recordings_deletions")]
        assert deletions.status == "incomplete" and "next --verify-deletions run goes on" in (deletions.reason or "")
    assert marked(options) == {old[250]}
    options.rate_limit_plan = "none"  # the rest of the round in one run, then it starts over
    while len(checked) < len(old):
        since = len(fake.requests)
        run(options, fake, verify=True)
        since += marking[-1]
        checked += [i for b in session_id_batches(fake, since) for i in b]
    assert checked == old and marked(options) == {old[250], old[-1]}
    since = len(fake.requests)
    run(options, fake, verify=True)
    since += marking[-1]
    assert session_id_batches(fake, since)[0][0] == old[0], "a full round starts over"


@hsettings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_exactly_the_deleted_unexpired_recordings_end_up_marked(tmp_path_factory: Any, data: st.DataObject) -> None:
    """Deletions anywhere (in the window, before it), some rows expiring meanwhile: after a sync with
    verification exactly the deleted, unexpired stored rows are marked."""
    tmp = tmp_path_factory.mktemp("prop")
    server = data.draw(st.sampled_from(list(SERVERS)))
    fake = FakePostHog(project_ids=[1], now=NOW, recordings=80, recording_step_s=3000, retention_days=4,
                       **SERVERS[server])
    options = SyncOptions(
        project_ids=[1], api_key=fake.api_key, host="http://127.0.0.1:9", output=str(tmp / "out.duckdb"),
        pipelines_dir=str(tmp / "pipelines"), pipeline_name="prop", backoff_s=0.01, rate_limit_plan="none",
        page_sizes={"session_recordings": 30}, quiet=True,
    )
    run(options, fake)
    ids = sorted(starts(fake))
    deleted = data.draw(st.sets(st.sampled_from(ids), max_size=10))
    for ident in deleted:
        fake.delete_recording(1, ident)
    fake.advance(data.draw(st.integers(60, 2 * 86400)))  # some rows expire meanwhile
    run(options, fake, verify=True)
    expiry = {r[0]: r[1] for r in query(options, "SELECT id, expiry_time FROM posthog.session_recordings")}
    # expired by PostHog's clock, or within the hour of margin: gone, but not (provably) deleted
    cutoff = fake.now + timedelta(hours=1)
    assert marked(options) == {i for i in deleted if expiry[i] > cutoff}


def test_marks_on_postgres(fake: FakePostHog, server: str, pg: dict[str, str]) -> None:  # noqa: F811
    """Candidates found, read back and merged again through a SQL destination: JSON stays JSON."""
    cli_sync(pg, server, "--resources", "session_recordings")
    times = starts(fake)
    recent, old = max(times, key=times.__getitem__), min(times, key=times.__getitem__)
    fake.delete_recording(1, recent)
    fake.delete_recording(1, old)
    fake.advance(600)
    cli_sync(pg, server, "--resources", "session_recordings", "--verify-deletions")
    rows = pg_query(pg["url"], "SELECT id, deleted_at, jsonb_typeof(person), jsonb_typeof(viewers) "
                               f"FROM {pg['dataset']}.session_recordings WHERE project_id = 1")
    assert {r[0] for r in rows if r[1] is not None} == {recent, old}
    assert {(r[2], r[3]) for r in rows} == {("object", "array")}
    assert len(rows) == len({r[0] for r in rows}) and set(times) <= {r[0] for r in rows}


def test_the_cli_flag_reaches_the_sync_options() -> None:
    parse = build_parser().parse_args
    assert sync_options(parse(["sync", "--project-id", "1", "--verify-deletions"])).verify_deletions is True
    assert sync_options(parse(["sync", "--project-id", "1"])).verify_deletions is False


def test_verify_deletions_without_the_recordings_resource_is_a_usage_error(options: SyncOptions) -> None:
    options.resources, options.verify_deletions = ["subscriptions"], True
    with pytest.raises(UsageError, match="--verify-deletions checks session_recordings: add it to --resources"):
        run_sync(options)
