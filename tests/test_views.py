"""BI views: every view's numbers against the fake server's truth, refresh after later syncs, skips."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fake_posthog import FakePostHog
from pipelines import views
from pipelines.runner import SyncOptions
from pipelines.views import VIEWS, View, create_views
from sources.posthog.sync import parse_time

from .conftest import PROJECTS, query, sync

VIEW_NAMES = [v.name for v in VIEWS]
Row = tuple[Any, ...]
# the columns each test compares, in the order `expected_views` builds them
VIEW_COLUMNS = {
    "v_recordings_per_day": "project_id, day, recordings, distinct_ids, median_duration_s, total_duration_s, "
    "active_seconds, sessions_with_console_errors",
    "v_top_start_urls": "project_id, start_url, recordings, sessions_with_console_errors, avg_active_seconds, "
    "url_rank",
    "v_desktop_meetings": "project_id, desktop_recording_id, meeting_title, platform, status, participants, "
    "transcript_segments, transcript_words, extracted_tasks",
    "v_active_subscriptions": "project_id, target_type, active_subscriptions, dashboard_subscriptions, "
    "insight_subscriptions, ai_prompt_subscriptions",
    "v_property_definitions_by_type": "project_id, type, group_type_index, property_type, definitions, "
    "verified_definitions, virtual_definitions, hidden_definitions",
    "v_vision_per_day": "project_id, day, scanner_id, scanner_type, sessions_observed, succeeded, failed, verdict_yes, "
    "verdict_no, verdict_inconclusive, tagged_sessions, tags, mean_score",
    "v_vision_tags_per_day": "project_id, day, scanner_id, tag, freeform, sessions",
}


def _norm(value: Any) -> Any:
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime):
        return value.astimezone(UTC).date()
    return value


def _rows(rows: Sequence[Sequence[Any]]) -> list[Row]:
    return sorted((tuple(_norm(v) for v in row) for row in rows), key=repr)


def expected_views(fake: FakePostHog, projects: Sequence[int] = PROJECTS) -> dict[str, list[Row]]:
    """What each view must hold, computed in Python from the fake's complete current objects."""
    daily: dict[tuple[int, date], list[dict[str, Any]]] = defaultdict(list)
    urls: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    meetings: list[Row] = []
    subs: Counter[tuple[int, str, str]] = Counter()
    defs: Counter[tuple[Any, ...]] = Counter()
    now = datetime.now(UTC)
    for p in projects:
        for r in fake.truth(p, "session_recordings"):
            daily[(p, parse_time(r["start_time"]).date())].append(r)
            urls[(p, r["start_url"])].append(r)
        for d in fake.truth(p, "desktop_recordings"):
            meetings.append((p, d["id"], d["meeting_title"], d["platform"], d["status"], len(d["participants"]),
                             len(d["transcript_segments"]), len((d["transcript_text"] or "").split()),
                             len(d["extracted_tasks"])))
        for s in fake.truth(p, "subscriptions"):
            # still delivering: enabled (older servers: no such field), not deleted, not ended
            ended = (s["until_date"] is not None and parse_time(s["until_date"]) <= now) or (
                s["count"] is not None and s["next_delivery_date"] is None)
            if not s["deleted"] and s.get("enabled") is not False and not ended:
                subs[(p, s["target_type"], "all")] += 1
                subs[(p, s["target_type"], "dashboard")] += s["dashboard"] is not None
                subs[(p, s["target_type"], "insight")] += s["insight"] is not None
                kind = s.get("resource_type", s.get("content_type"))
                subs[(p, s["target_type"], "ai_prompt")] += kind == "ai_prompt"
        for d in fake.truth(p, "property_definitions"):
            key = (p, d["type"], d["group_type_index"], d["property_type"])
            defs[(*key, "all")] += 1
            defs[(*key, "verified")] += bool(d.get("verified"))
            defs[(*key, "virtual")] += bool(d.get("virtual"))
            defs[(*key, "hidden")] += bool(d.get("hidden"))

    vision: dict[tuple[Any, ...], list[Any]] = {}
    tags: Counter[tuple[Any, ...]] = Counter()
    for p in projects:
        starts = {r["id"]: parse_time(r["start_time"]).date() for r in fake.truth(p, "session_recordings")}
        kinds = {s["id"]: s["scanner_type"] for s in fake.truth(p, "vision_scanners")}
        for o in fake.truth(p, "vision_observations"):
            key, out = (p, starts.get(o["session_id"]), o["scanner_id"]), (o["scanner_result"] or {}).get(
                "model_output") or {}
            row = vision.setdefault(key, [kinds[o["scanner_id"]], 0, 0, 0, 0, 0, 0, 0, 0, []])
            given = out.get("tags") or []
            for i, n in enumerate((1, o["status"] == "succeeded", o["status"] == "failed", out.get("verdict") == "yes",
                                   out.get("verdict") == "no", out.get("verdict") == "inconclusive", bool(given),
                                   len(given)), start=1):
                row[i] += n
            if out.get("score") is not None:
                row[9].append(out["score"])
            for freeform, names in ((False, given), (True, out.get("tags_freeform") or [])):
                for tag in names:
                    tags[(*key, tag, freeform)] += 1

    def errors(rows: list[dict[str, Any]]) -> int:
        return sum(1 for r in rows if r["console_error_count"] > 0)

    ranked: list[Row] = []
    for p in projects:
        mine = sorted(((k[1], v) for k, v in urls.items() if k[0] == p), key=lambda kv: (-len(kv[1]), kv[0]))
        ranked += [(p, url, len(rows), errors(rows), statistics.fmean(r["active_seconds"] for r in rows), rank)
                   for rank, (url, rows) in enumerate(mine, start=1)]
    return {
        "v_recordings_per_day": _rows([
            (p, day, len(rows), len({r["distinct_id"] for r in rows}),
             float(statistics.median(r["recording_duration"] for r in rows)),
             float(sum(r["recording_duration"] for r in rows)), float(sum(r["active_seconds"] for r in rows)),
             errors(rows))
            for (p, day), rows in daily.items()
        ]),
        "v_top_start_urls": _rows(ranked),
        "v_desktop_meetings": _rows(meetings),
        "v_active_subscriptions": _rows([
            (p, target, n, subs[(p, target, "dashboard")], subs[(p, target, "insight")],
             subs[(p, target, "ai_prompt")])
            for (p, target, kind), n in subs.items() if kind == "all"
        ]),
        "v_property_definitions_by_type": _rows([
            (*key[:4], n, defs[(*key[:4], "verified")], defs[(*key[:4], "virtual")], defs[(*key[:4], "hidden")])
            for key, n in defs.items() if key[4] == "all"
        ]),
        "v_vision_per_day": _rows([(*key, *row[:9], statistics.fmean(row[9]) if row[9] else None)
                                   for key, row in vision.items()]),
        "v_vision_tags_per_day": _rows([(*key, n) for key, n in tags.items()]),
    }


def landed_views(run_query: Callable[[str], Sequence[Sequence[Any]]], dataset: str = "posthog"
                 ) -> dict[str, list[Row]]:
    """What each view returns, read with `run_query` (DuckDB or Postgres)."""
    return {name: _rows(run_query(f"SELECT {columns} FROM {dataset}.{name}"))
            for name, columns in VIEW_COLUMNS.items()}


def assert_views_match(landed: dict[str, list[Row]], expected: dict[str, list[Row]]) -> None:
    """Every view holds exactly the expected rows (and none is empty)."""
    for name in VIEW_COLUMNS:
        assert landed[name], f"{name} is empty"
        missing = [r for r in expected[name] if r not in landed[name]]
        extra = [r for r in landed[name] if r not in expected[name]]
        assert not missing and not extra, (name, missing[:3], extra[:3])


def view_names(options: SyncOptions) -> list[str]:
    rows = query(options, "SELECT table_name FROM information_schema.tables "
                          "WHERE table_schema = 'posthog' AND table_type = 'VIEW' ORDER BY table_name")
    return [r[0] for r in rows]


def test_every_view_matches_the_fake_after_a_sync(fake: FakePostHog, options: SyncOptions) -> None:
    sync(options)
    assert view_names(options) == sorted(VIEW_NAMES)
    assert_views_match(landed_views(lambda sql: query(options, sql)), expected_views(fake))


def test_views_follow_later_syncs_and_a_full_refresh(fake: FakePostHog, options: SyncOptions) -> None:
    sync(options)
    live = next(s for s in fake.truth(1, "subscriptions") if not s["deleted"])
    fake.soft_delete_subscription(1, live["id"])
    fake.add_subscription(2)
    fake.advance(6 * 3600)  # new recordings, desktop transcripts grow, recordings finish
    sync(options)
    assert_views_match(landed_views(lambda sql: query(options, sql)), expected_views(fake))
    # DuckDB lets dlt drop tables under the views; the views are rebuilt after the reload
    options.full_refresh = True
    sync(options)
    assert_views_match(landed_views(lambda sql: query(options, sql)), expected_views(fake))


def test_views_without_source_tables_are_skipped_until_they_exist(options: SyncOptions) -> None:
    options.resources = ["subscriptions"]
    result = sync(options)
    assert view_names(options) == ["v_active_subscriptions"]
    options.resources = ["property_definitions"]
    sync(options)
    assert view_names(options) == ["v_active_subscriptions", "v_property_definitions_by_type"]
    assert create_views(result.pipeline) == ["v_active_subscriptions", "v_property_definitions_by_type"]


def test_missing_child_tables_read_as_empty(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["desktop_recordings"]
    result = sync(options)
    with result.pipeline.sql_client() as client:
        client.execute_sql("DROP TABLE posthog.desktop_recordings__extracted_tasks")
    assert create_views(result.pipeline) == ["v_desktop_meetings"]
    tasks = query(options, "SELECT sum(extracted_tasks), sum(transcript_segments) FROM posthog.v_desktop_meetings")
    assert tasks[0][0] == 0 and tasks[0][1] > 0


def test_parquet_output_gets_no_views(options: SyncOptions, tmp_path: Path) -> None:
    options.destination, options.output = "parquet", str(tmp_path / "parquet")
    options.resources = ["subscriptions"]
    result = sync(options)
    assert create_views(result.pipeline) == []
    assert not list((tmp_path / "parquet" / "posthog").glob("v_*"))


@pytest.mark.parametrize("view", VIEWS, ids=VIEW_NAMES)
def test_every_view_is_documented_in_the_readme(view: View) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"`{view.name}`" in readme


def test_a_broken_view_is_logged_and_the_others_still_come(
    options: SyncOptions, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    options.resources = ["subscriptions"]
    result = sync(options)
    broken = View("v_broken", "never builds", ("subscriptions",), "SELECT no_such_column FROM {subscriptions}")
    monkeypatch.setattr(views, "VIEWS", (broken, *VIEWS))
    assert create_views(result.pipeline) == ["v_active_subscriptions"]
    assert "view v_broken not created" in caplog.text
