"""PostHog versions: subscriptions' fields per version and the active-subscriptions view, desktop `created_by`
changing type under an existing table, the recordings' snapshot placeholders, and endpoints PostHog removed."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from fake_posthog import FakePostHog
from pipelines.cli import main
from pipelines.runner import SyncOptions
from pipelines.status import read_status, status_document
from sources.posthog import ENDPOINTS
from sources.posthog.sync import parse_time

from .conftest import PROJECTS, query, requests_to, sync
from .test_views import VIEW_COLUMNS, _rows, expected_views

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
REMOVED = ("session_group_summaries", "desktop_recordings")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- subscriptions -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["newest", "mid_2026", "older"])
def test_subscriptions_of_every_version_land_and_the_view_keeps_only_live_deliveries(
    options: SyncOptions, version: str
) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, subscriptions=40, seed=5, versions={"subscriptions": version})
    truth = [s for p in PROJECTS for s in fake.truth(p, "subscriptions")]
    now = datetime.now(UTC)
    # the data holds every case the view must tell apart
    assert any(s["deleted"] for s in truth)
    assert any(s["until_date"] and parse_time(s["until_date"]) <= now for s in truth)
    assert any(s["count"] is not None and s["next_delivery_date"] is None for s in truth)  # all sent
    assert any(s["count"] is not None and s["next_delivery_date"] is not None for s in truth)
    if version != "older":
        assert any(s["enabled"] is False for s in truth) and any(s["enabled"] for s in truth)
        ai = [s for s in truth if s.get("resource_type", s.get("content_type")) == "ai_prompt"]
        assert ai and all(s["insight"] is None and s["dashboard"] is None and s["prompt"] for s in ai)
    options.resources = ["subscriptions"]
    with fake.serve() as url:
        options.host = url
        sync(options)
    columns = ("id", "enabled", "resource_type", "content_type", "ai_config", "prompt", "summary_enabled",
               "summary_prompt_guide", "deleted")
    landed = {(r[0], r[1]): dict(zip(columns, r[1:], strict=True))
              for r in query(options, f"SELECT project_id, {', '.join(columns)} FROM posthog.subscriptions")}
    assert len(landed) == len(truth)
    for p in PROJECTS:
        for s in fake.truth(p, "subscriptions"):
            row = landed[(p, s["id"])]
            for name in columns[1:]:
                value = row[name]
                sent = s.get(name)
                if name == "ai_config" and sent is not None:
                    value = json.loads(value)
                assert value == sent, (version, name, s["id"])  # absent on this version: null
    view = _rows(query(options, f"SELECT {VIEW_COLUMNS['v_active_subscriptions']} FROM posthog.v_active_subscriptions"))
    assert view == expected_views(fake)["v_active_subscriptions"]
    live = sum(row[2] for row in view)
    assert 0 < live < len([s for s in truth if not s["deleted"]])  # paused and ended ones left out


def test_newer_servers_never_gate_subscriptions_with_402() -> None:
    fake = FakePostHog(project_ids=[1], now=NOW)
    with pytest.raises(ValueError, match="older"):
        fake.disable(1, "subscriptions", 402)
    fake.versions["subscriptions"] = "older"
    fake.disable(1, "subscriptions", 402)  # older servers without the feature


# -- desktop created_by: json in tables made before, bigint now --------------------------------------


def _created_by(output: str) -> tuple[str, dict[tuple[int, str], Any]]:
    """The type of `desktop_recordings.created_by` in a DuckDB file, and its values as numbers."""
    with duckdb.connect(output, read_only=True) as con:
        kind = con.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = 'posthog' "
                           "AND table_name = 'desktop_recordings' AND column_name = 'created_by'").fetchone()
        rows = con.execute("SELECT project_id, id, CAST(created_by AS BIGINT) FROM posthog.desktop_recordings")
        return kind[0] if kind else "", {(p, i): c for p, i, c in rows.fetchall()}


def _created_by_truth(fake: FakePostHog) -> dict[tuple[int, str], Any]:
    return {(p, r["id"]): r["created_by"] for p in PROJECTS for r in fake.truth(p, "desktop_recordings")}


def test_created_by_is_bigint_in_a_new_table(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["desktop_recordings"]
    sync(options)
    assert _created_by(options.output) == ("BIGINT", _created_by_truth(fake))


def test_created_by_keeps_json_in_a_table_made_by_the_old_declaration(
    fake: FakePostHog, options: SyncOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    options.resources = ["desktop_recordings"]
    current = ENDPOINTS["desktop_recordings"]
    old = dataclasses.replace(current, columns={**current.columns, "created_by": "json"}, retyped={})
    monkeypatch.setitem(ENDPOINTS, "desktop_recordings", old)
    sync(options)
    before = query(options, "SELECT count(*) FROM posthog.desktop_recordings")[0][0]
    monkeypatch.setitem(ENDPOINTS, "desktop_recordings", current)  # the new release
    fake.advance(4 * 3600)  # new recordings, unfinished ones re-read
    result = sync(options)
    assert result.report.runs[(1, "desktop_recordings")].rows_loaded > 0
    kind, landed = _created_by(options.output)
    truth = _created_by_truth(fake)
    assert kind == "JSON" and landed == truth and len(landed) > before  # nothing lost, new rows in


def test_created_by_in_parquet_written_by_the_old_declaration_keeps_loading(
    fake: FakePostHog, options: SyncOptions, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options.resources = ["desktop_recordings"]
    options.destination, options.output = "parquet", str(tmp_path / "parquet")
    current = ENDPOINTS["desktop_recordings"]
    monkeypatch.setitem(ENDPOINTS, "desktop_recordings",
                        dataclasses.replace(current, columns={**current.columns, "created_by": "json"}, retyped={}))
    sync(options)
    monkeypatch.setitem(ENDPOINTS, "desktop_recordings", current)
    fake.advance(4 * 3600)
    sync(options)
    glob = f"{options.output}/posthog/desktop_recordings/*.parquet"
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT project_id, id, CAST(created_by AS BIGINT) FROM read_parquet('{glob}')").fetchall()
    truth = _created_by_truth(fake)
    assert len(rows) == len(truth) and {(p, i): c for p, i, c in rows} == truth


# -- recordings: list rows hold placeholders --------------------------------------------------------


def test_snapshot_placeholders_of_list_rows_are_stored_null(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["session_recordings"]
    sync(options)
    listed = [r for p in PROJECTS for r in fake.truth(p, "session_recordings")]
    assert {(r["snapshot_source"], r["snapshot_library"]) for r in listed} == {("web", None)}
    with fake.serve() as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {fake.api_key}"}) as api:
            details = [api.get(f"/api/projects/1/session_recordings/{r['id']}/").json() for r in listed[:60]]
    assert {d["snapshot_source"] for d in details} == {"web", "mobile"}  # the real values, by id only
    landed = query(options, "SELECT count(*), count(snapshot_source), count(snapshot_library) "
                            "FROM posthog.session_recordings")[0]
    assert landed[0] == len(listed) and landed[1:] == (0, 0)


# -- endpoints PostHog removed ----------------------------------------------------------------------


def _cli_sync(capsys: pytest.CaptureFixture[str], server: str, output: Path, *more: str) -> tuple[int, str, str]:
    return run_cli(capsys, "sync", "--project-id", "1", "--project-id", "2", "--host", server, "--output",
                   str(output), "--rate-limit-plan", "none", "--pipeline-name", f"removed_{output.stem}", *more)


def test_removed_endpoints_keep_their_rows_say_so_once_per_project_and_pass_strict(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake: FakePostHog, server: str,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    output = tmp_path / "kept.duckdb"
    resources = ("--resources", ",".join(REMOVED))
    code, out, err = _cli_sync(capsys, server, output, *resources)
    assert code == 0, err
    with duckdb.connect(str(output), read_only=True) as con:
        stored = {(r, p): n for r in REMOVED for p, n in con.execute(
            f"SELECT project_id, count(*) FROM posthog.{r} GROUP BY 1").fetchall()}
    assert all(stored.get((r, p), 0) > 0 for r in REMOVED for p in PROJECTS)
    fake.removed = set(REMOVED)
    fake.requests.clear()
    code, out, err = _cli_sync(capsys, server, output, *resources, "--strict")
    assert code == 0, out + err  # not a --strict failure: nothing to fix
    for resource in REMOVED:
        for p in PROJECTS:
            line = (f"{resource} project {p}: removed from PostHog in 2026; the {stored[(resource, p)]} rows "
                    "already exported are kept")
            assert (out + err).count(line) == 1, (line, out, err)
        assert len(requests_to(fake, resource)) == len(PROJECTS)  # one 404 each, never retried
    assert "warning" not in err
    with duckdb.connect(str(output), read_only=True) as con:
        after = {(r, p): n for r in REMOVED for p, n in con.execute(
            f"SELECT project_id, count(*) FROM posthog.{r} GROUP BY 1").fetchall()}
        report = con.execute("SELECT resource, project_id, status FROM posthog._sync_report WHERE run_started_at = "
                             "(SELECT max(run_started_at) FROM posthog._sync_report)").fetchall()
    assert after == stored  # nothing lost
    assert sorted(report) == sorted((r, p, "removed") for r in REMOVED for p in PROJECTS)
    # status shows it as what it is (a real skip still fails --strict: test_reliability's missing scope)
    code, out, err = run_cli(capsys, "status", "--output", str(output))
    assert code == 0, err
    assert re.search(r"session_group_summaries .* removed", out)
    assert "removed: session_group_summaries of project 1" in out and "rows already exported are kept" in out


def test_a_full_refresh_never_drops_the_only_copy_of_a_removed_endpoint(
    fake: FakePostHog, options: SyncOptions
) -> None:
    options.resources = ["session_group_summaries"]
    sync(options)
    before = query(options, "SELECT project_id, id, title FROM posthog.session_group_summaries ORDER BY 1, 2")
    fake.removed = {"session_group_summaries"}
    options.full_refresh = True
    result = sync(options)
    assert {r.status for r in result.report.runs.values()} == {"removed"}
    assert query(options, "SELECT project_id, id, title FROM posthog.session_group_summaries ORDER BY 1, 2") == before
    assert len(before) == sum(len(fake.truth(p, "session_group_summaries")) for p in PROJECTS)
    document = status_document(read_status("duckdb", options.output, pipeline_name=options.pipeline_name))
    assert document["last_run"]["removed"] == len(PROJECTS) and document["last_run"]["skipped"] == 0
    assert {(r["status"], r["rows"]) for r in document["resources"]} == {
        ("removed", len(fake.truth(p, "session_group_summaries"))) for p in PROJECTS}


@pytest.mark.parametrize("foss", [False, True], ids=["404", "foss-501"])
def test_a_first_sync_where_the_endpoints_are_gone_says_they_do_not_exist_here(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, foss: bool
) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, removed=REMOVED, foss=foss)
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    with fake.serve() as server:
        code, out, err = _cli_sync(capsys, server, tmp_path / f"first{int(foss)}.duckdb", "--resources",
                                   ",".join((*REMOVED, "subscriptions")), "--strict")
    assert code == 0, out + err
    for resource in REMOVED:
        for p in PROJECTS:
            line = f"{resource} project {p}: does not exist on this PostHog server (removed from PostHog in 2026)"
            assert (out + err).count(line) == 1, (line, out, err)
    statuses = {r.status for r in requests_to(fake, "session_group_summaries")}
    assert statuses == {501 if foss else 404} and len(requests_to(fake, "session_group_summaries")) == 2
