"""End-to-end syncs against the fake PostHog: what landed in DuckDB and which requests went out."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fake_posthog import FakePostHog
from pipelines.runner import SyncOptions, run_sync
from sources.posthog import ENDPOINTS
from sources.posthog.sync import parse_time

from .conftest import NOW, PROJECTS, SERVERS, both_servers, query, requests_to, sync

COMPARED = {
    "session_recordings": ["id", "start_time", "end_time", "recording_duration", "click_count", "ongoing",
                           "console_error_count"],
    "session_group_summaries": ["id", "title", "session_count", "created_at"],
    "desktop_recordings": ["id", "status", "started_at", "updated_at", "transcript_text", "summary"],
    "subscriptions": ["id", "deleted", "title", "target_type"],
    "property_definitions": ["type", "group_type_index", "id", "name"],
    "session_recording_playlists": ["id", "short_id", "name", "type", "is_synthetic", "last_modified_at"],
    "vision_scanners": ["id", "name", "scanner_type", "observations_this_month"],
    "vision_observations": ["scanner_id", "session_id", "id", "status", "completed_at", "created_at"],
}
TIMESTAMPS = {"start_time", "end_time", "created_at", "started_at", "updated_at", "last_modified_at", "completed_at"}


def _norm(column: str, value: Any) -> Any:
    if column in TIMESTAMPS and isinstance(value, str):
        return parse_time(value)
    if isinstance(value, datetime):
        return value.astimezone(parse_time("2020-01-01T00:00:00Z").tzinfo)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def truth_rows(fake: FakePostHog, resource: str) -> set[tuple[Any, ...]]:
    columns = COMPARED[resource]
    return {
        (p, *(_norm(c, row.get(c)) for c in columns)) for p in PROJECTS for row in fake.truth(p, resource)
    }


def landed_rows(options: SyncOptions, resource: str) -> set[tuple[Any, ...]]:
    columns = COMPARED[resource]
    rows = query(options, f"SELECT project_id, {', '.join(columns)} FROM posthog.{resource}")
    return {(row[0], *(_norm(c, v) for c, v in zip(columns, row[1:], strict=True))) for row in rows}


def assert_no_duplicates(options: SyncOptions, resource: str) -> None:
    key = "project_id, type, coalesce(group_type_index, -1), id" if resource == "property_definitions" else \
        "project_id, id"
    total, distinct = query(options, f"SELECT count(*), count(DISTINCT ({key})) FROM posthog.{resource}")[0]
    assert total == distinct > 0


def assert_matches_truth(fake: FakePostHog, options: SyncOptions) -> None:
    for resource in ENDPOINTS:
        assert_no_duplicates(options, resource)
        expected, landed = truth_rows(fake, resource), landed_rows(options, resource)
        assert landed == expected, (resource, sorted(landed ^ expected)[:4])


@both_servers
def test_first_sync_lands_everything_the_api_holds(fake: FakePostHog, options: SyncOptions) -> None:
    sync(options)
    assert_matches_truth(fake, options)
    # all history, not PostHog's default of the last 3 days
    oldest = query(options, "SELECT min(start_time) FROM posthog.session_recordings")[0][0]
    assert fake.now - oldest > timedelta(days=3)
    types = query(options, "SELECT typeof(start_time), typeof(click_count), typeof(ongoing), typeof(person) "
                           "FROM posthog.session_recordings LIMIT 1")[0]
    assert types == ("TIMESTAMP WITH TIME ZONE", "BIGINT", "BOOLEAN", "JSON")


@both_servers
def test_recordings_requests_page_to_the_end_with_explicit_date_from(
    fake: FakePostHog, options: SyncOptions
) -> None:
    options.resources = ["session_recordings"]
    sync(options)
    sent = [r for r in requests_to(fake, "session_recordings") if r.params.get("date_from")]
    project_1 = [r for r in sent if r.path.startswith("/api/projects/1/")]
    assert len(project_1) >= 4  # 150 recordings, pages of 40
    assert project_1[0].params["date_from"] == options.initial_date_from
    assert all(r.params["order"] == "start_time" and r.params["order_direction"] == "ASC" for r in project_1)
    assert not any("offset" in r.params for r in sent)  # offset=0 would switch newer servers off keyset
    if fake.keyset:  # keyset pages: one date_from, each page after the previous page's cursor
        assert {r.params["date_from"] for r in project_1} == {options.initial_date_from}
        assert [("after" in r.params) for r in project_1] == [False] + [True] * (len(project_1) - 1)
    else:  # no cursor: each page starts at the last start read, never by offset (rows shift, §7.1)
        starts = [parse_time(r.params["date_from"]) for r in project_1]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(set(r.params) <= {"date_from", "order", "order_direction", "limit", "after"} for r in sent)


@both_servers
def test_second_sync_is_incremental_and_equals_the_current_state(
    fake: FakePostHog, options: SyncOptions
) -> None:
    sync(options)
    cursor = query(options, "SELECT max(start_time) FROM posthog.session_recordings WHERE project_id = 1")[0][0]
    segments_before = query(options, "SELECT count(*) FROM posthog.desktop_recordings__transcript_segments")[0][0]
    deleted_sub = next(s["id"] for s in fake.truth(1, "subscriptions") if not s["deleted"])
    removed = next(d for d in fake.truth(1, "property_definitions") if d["type"] == "person" and
                   not d.get("virtual"))
    fake.soft_delete_subscription(1, deleted_sub)
    fake.remove_property_definition(1, "person", removed["name"])
    fake.advance(2 * 3600)
    fake.requests.clear()

    sync(options)

    assert_matches_truth(fake, options)
    sent = [r for r in requests_to(fake, "session_recordings") if r.path.startswith("/api/projects/1/")
            and "date_from" in r.params and "session_ids" not in r.params]
    assert parse_time(sent[0].params["date_from"]) == cursor - timedelta(days=1)
    if fake.keyset:
        assert {parse_time(r.params["date_from"]) for r in sent} == {cursor - timedelta(days=1)}
    assert query(options, f"SELECT deleted FROM posthog.subscriptions WHERE project_id = 1 AND id = {deleted_sub}") \
        == [(True,)]
    assert query(options, "SELECT count(*) FROM posthog.property_definitions WHERE project_id = 1 AND "
                          f"name = '{removed['name']}' AND type = 'person'") == [(0,)]
    segments_after = query(options, "SELECT count(*) FROM posthog.desktop_recordings__transcript_segments")[0][0]
    expected_segments = sum(len(r["transcript_segments"] or []) for p in PROJECTS
                            for r in fake.truth(p, "desktop_recordings"))
    assert segments_after == expected_segments > segments_before
    dupes = query(options, "SELECT count(*) - count(DISTINCT (project_id, desktop_recording_id, position)) "
                           "FROM posthog.desktop_recordings__transcript_segments")
    assert dupes == [(0,)]


@both_servers
def test_partial_rows_at_the_window_edge_never_replace_complete_ones(
    fake: FakePostHog, options: SyncOptions
) -> None:
    options.resources = ["session_recordings"]
    sync(options)
    cursor = query(options, "SELECT max(start_time) FROM posthog.session_recordings WHERE project_id = 1")[0][0]
    edge = cursor - timedelta(days=1)
    crossing = [r for r in fake.truth(1, "session_recordings")
                if parse_time(r["start_time"]) < edge < parse_time(r["end_time"]) - timedelta(minutes=15)]
    assert crossing, "the fake data should hold sessions crossing the next window's lower edge"
    fake.advance(600)
    fake.requests.clear()

    sync(options)

    by_id = [r for r in requests_to(fake, "session_recordings") if "session_ids" in r.params]
    asked = {i for r in by_id for i in json.loads(r.params["session_ids"])}
    assert {r["id"] for r in crossing} <= asked
    assert_no_duplicates(options, "session_recordings")
    expected = {(p, *(_norm(c, row.get(c)) for c in COMPARED["session_recordings"]))
                for p in PROJECTS for row in fake.truth(p, "session_recordings")}
    assert landed_rows(options, "session_recordings") == expected


def test_property_definitions_are_tagged_with_type_and_group_index(
    fake: FakePostHog, options: SyncOptions
) -> None:
    options.resources = ["property_definitions"]
    sync(options)
    landed = query(options, "SELECT type, group_type_index, count(*) FROM posthog.property_definitions "
                            "WHERE project_id = 1 GROUP BY ALL ORDER BY ALL")
    expected: dict[tuple[str, int | None], int] = {}
    for row in fake.truth(1, "property_definitions"):
        key = (row["type"], row["group_type_index"])
        expected[key] = expected.get(key, 0) + 1
    assert {(t, g): n for t, g, n in landed} == expected
    assert {t for t, _, _ in landed} == {"event", "person", "session", "group"}
    assert query(options, "SELECT count(*) FROM posthog.property_definitions WHERE type <> 'group' "
                          "AND group_type_index IS NOT NULL") == [(0,)]
    virtual = query(options, "SELECT count(*) FROM posthog.property_definitions WHERE id LIKE '$builtin%'")
    assert virtual[0][0] > 0


def test_parquet_has_no_duplicates_after_two_syncs(fake: FakePostHog, options: SyncOptions) -> None:
    import duckdb

    options.destination = "parquet"
    options.output = str(options.pipelines_dir) + "_parquet"
    sync(options)
    fake.soft_delete_subscription(2, next(s["id"] for s in fake.truth(2, "subscriptions") if not s["deleted"]))
    fake.advance(3 * 3600)
    sync(options)
    con = duckdb.connect()
    for resource in ENDPOINTS:
        columns = COMPARED[resource]
        glob = f"{options.output}/posthog/{resource}/*.parquet"
        rows = con.execute(f"SELECT project_id, {', '.join(columns)} FROM read_parquet('{glob}')").fetchall()
        landed = [(r[0], *(_norm(c, v) for c, v in zip(columns, r[1:], strict=True))) for r in rows]
        assert len(landed) == len(set(landed))
        assert set(landed) == truth_rows(fake, resource), resource
    segments = con.execute(
        f"SELECT count(*), count(DISTINCT (project_id, desktop_recording_id, position)) FROM read_parquet("
        f"'{options.output}/posthog/desktop_recordings__transcript_segments/*.parquet')").fetchone()
    assert segments is not None and segments[0] == segments[1] > 0


def test_recordings_not_final_are_refetched_until_they_are(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["desktop_recordings"]
    options.lookback_days = 0  # only the re-read of unfinished recordings can bring their updates
    sync(options)
    unfinished = query(options, "SELECT project_id, id FROM posthog.desktop_recordings WHERE status NOT IN "
                                "('ready', 'error') AND started_at < (SELECT max(started_at) "
                                "FROM posthog.desktop_recordings d WHERE d.project_id = project_id)")
    assert unfinished  # older than the cursor: the newest-first scan stops before reaching them
    fake.advance(6 * 3600)
    fake.requests.clear()
    sync(options)
    detail_paths = {r.path.rstrip("/") for r in fake.requests}
    for project_id, ident in unfinished:
        assert f"/api/projects/{project_id}/desktop_recordings/{ident}" in detail_paths
    assert landed_rows(options, "desktop_recordings") == truth_rows(fake, "desktop_recordings")


@pytest.mark.parametrize(("resource", "status"), [("subscriptions", 402), ("desktop_recordings", 403)])
def test_unavailable_resources_are_skipped_and_others_load(
    fake: FakePostHog, options: SyncOptions, resource: str, status: int
) -> None:
    fake.versions["subscriptions"] = "older"  # only older servers gate subscriptions with 402 (§7.4)
    fake.disable(1, resource, status)
    result = sync(options)
    skipped = result.report.runs[(1, resource)]
    assert skipped.status == "skipped" and str(status) in (skipped.reason or "")
    assert query(options, f"SELECT DISTINCT project_id FROM posthog.{resource}") == [(2,)]
    assert query(options, "SELECT count(*) FROM posthog.session_recordings WHERE project_id = 1")[0][0] > 0


def test_throttled_and_failing_requests_are_retried(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["subscriptions"]
    fake.inject("/api/projects/1/subscriptions", 429, times=1, wait_s=1)
    fake.inject("/api/projects/1/subscriptions", 503, times=2)
    result = sync(options)
    assert landed_rows(options, "subscriptions") == truth_rows(fake, "subscriptions")
    run = result.report.runs[(1, "subscriptions")]
    assert (run.throttled, run.retries) == (1, 3)
    statuses = [r.status for r in requests_to(fake, "subscriptions") if r.path.startswith("/api/projects/1/")]
    assert statuses[:4] == [429, 503, 503, 200]
    report = query(options, "SELECT resource, throttled, retries FROM posthog._sync_report "
                            "WHERE project_id = 1 AND resource = 'subscriptions'")
    assert report == [("subscriptions", 1, 3)]


@both_servers
def test_full_refresh_rebuilds_the_selected_tables(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["subscriptions", "session_recordings"]
    sync(options)
    fake.requests.clear()
    options.full_refresh = True
    options.resources = ["session_recordings"]
    sync(options)
    sent = requests_to(fake, "session_recordings")
    firsts = {r.path: r.params.get("date_from") for r in reversed(sent)}  # each project's first request
    assert set(firsts.values()) == {options.initial_date_from}
    if fake.keyset:
        assert {r.params.get("date_from") for r in sent} == {options.initial_date_from}
    assert landed_rows(options, "session_recordings") == truth_rows(fake, "session_recordings")
    assert landed_rows(options, "subscriptions") == truth_rows(fake, "subscriptions")


def test_new_fields_are_reported_not_loaded_unless_evolving(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["subscriptions"]
    fake.add_field("subscriptions", "delivery_channel", {"model": "gpt"})
    result = sync(options)
    assert result.report.drift == {"subscriptions": {"delivery_channel"}}
    columns_sql = "SELECT column_name FROM information_schema.columns WHERE table_name = 'subscriptions'"
    assert ("delivery_channel",) not in query(options, columns_sql)
    options.evolve = True
    sync(options)
    assert ("delivery_channel",) in query(options, columns_sql)
    assert query(options, "SELECT DISTINCT delivery_channel::VARCHAR FROM posthog.subscriptions") == [
        ('{"model":"gpt"}',)]


# a string Arrow refuses; a fraction Arrow would truncate into the integer column
@pytest.mark.parametrize(("value", "sent"), [("every other week", "str"), (1.5, "float 1.5")])
def test_a_type_contradiction_fails_that_table_only_and_loads_nothing_of_it(
    fake: FakePostHog, options: SyncOptions, value: object, sent: str
) -> None:
    options.resources = ["subscriptions", "property_definitions"]
    sync(options)
    before = landed_rows(options, "subscriptions")
    fake.soft_delete_subscription(1, next(s["id"] for s in fake.truth(1, "subscriptions") if not s["deleted"]))
    fake.set_field("subscriptions", "interval", value)
    fake.remove_property_definition(2, "event", fake.truth(2, "property_definitions")[0]["name"])

    result = run_sync(options)

    assert not result.ok
    message = result.failures["subscriptions"]
    assert "subscriptions.interval" in message and "bigint" in message and sent in message
    assert landed_rows(options, "subscriptions") == before  # the soft delete did not half-land
    assert landed_rows(options, "property_definitions") == truth_rows(fake, "property_definitions")


@pytest.mark.parametrize("server", list(SERVERS))
def test_recordings_expired_in_posthog_stay_in_the_destination(
    tmp_path: Path, options: SyncOptions, server: str
) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, recordings=100, recording_step_s=3000,
                       retention_days=4, **{**SERVERS[server], "seed": 3})
    with fake.serve() as url:
        options.host, options.resources = url, ["session_recordings"]
        sync(options)
        first = landed_rows(options, "session_recordings")
        fake.advance(86400)
        sync(options)
    ids_now = {r["id"] for p in PROJECTS for r in fake.truth(p, "session_recordings")}
    expired = {row[1] for row in first} - ids_now
    assert expired, "some recordings should have expired in the fake"
    landed_ids = {row[1] for row in landed_rows(options, "session_recordings")}
    assert expired <= landed_ids and ids_now <= landed_ids


def test_a_first_load_appends_and_later_loads_merge(fake: FakePostHog, options: SyncOptions) -> None:
    """A table with no rows in the destination is loaded straight into place (no staging copy, no merge
    job); later runs merge, so a re-read row replaces its stored one, and so does a pipeline of another
    name over the same tables (its own state knows nothing of them)."""
    options.resources = ["session_recordings"]

    def merged(result: Any) -> bool:
        packages = result.pipeline.last_trace.last_load_info.load_packages
        jobs = [j.job_file_info for p in packages for j in p.jobs["completed_jobs"]]
        assert any(j.table_name == "session_recordings" for j in jobs)
        return any(j.table_name == "session_recordings" and j.file_format == "sql" for j in jobs)

    assert not merged(sync(options))
    fake.advance(2 * 3600)
    assert merged(sync(options))
    assert_no_duplicates(options, "session_recordings")
    assert landed_rows(options, "session_recordings") == truth_rows(fake, "session_recordings")
    options.pipeline_name = "another"
    assert merged(sync(options))
    assert_no_duplicates(options, "session_recordings")
    assert landed_rows(options, "session_recordings") == truth_rows(fake, "session_recordings")
