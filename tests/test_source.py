"""`posthog_source()` from a user's own dlt pipeline behaves as the CLI: same settings, pacing, report, rows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dlt
import duckdb
import pytest

import pipelines
from fake_posthog import FakePostHog
from pipelines.cli import build_parser, sync_options
from sources.posthog import posthog_source, session_of
from sources.posthog.settings import SettingsError
from tests.test_sync import assert_no_duplicates, landed_rows, truth_rows

RESOURCES = ["session_recordings", "subscriptions", "property_definitions"]


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch, fake: FakePostHog, server: str) -> str:
    """The fake as a user would configure it: dlt's environment variables and the conventional key."""
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    monkeypatch.setenv("SOURCES__POSTHOG__HOST", server)
    monkeypatch.setenv("SOURCES__POSTHOG__PROJECT_IDS", "[1, 2]")
    monkeypatch.setenv("SOURCES__POSTHOG__PAGE_SIZES", '{"session_recordings": 40, "subscriptions": 7}')
    monkeypatch.setenv("SOURCES__POSTHOG__BACKOFF_S", "0.01")
    monkeypatch.setenv("SOURCES__POSTHOG__MAX_WAIT_MINUTES", "7")
    return server


def _pipeline(tmp_path: Path, name: str) -> Any:
    return dlt.pipeline(name, destination=dlt.destinations.duckdb(str(tmp_path / f"{name}.duckdb")),
                        dataset_name="posthog", pipelines_dir=str(tmp_path / "dlt"))


def _rows(tmp_path: Path, name: str, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp_path / f"{name}.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_source_resolves_the_same_settings_and_client_as_the_cli(configured: str) -> None:
    args = build_parser().parse_args(["sync"])
    cli = sync_options(args).settings()
    source = posthog_source()
    library = session_of(source).settings
    assert dict(library) == dict(cli)
    assert library.project_ids == [1, 2] and library.page_sizes == {"session_recordings": 40, "subscriptions": 7}
    client, cli_client = session_of(source).client, cli.client()
    for attribute in ("host", "max_attempts", "max_wait_s", "backoff_s"):
        assert getattr(client, attribute) == getattr(cli_client, attribute), attribute
    assert client.max_wait_s == 7 * 60
    assert client.pacer.enabled is cli_client.pacer.enabled is False  # loopback: no published plan
    # an argument wins over the environment, for both
    assert session_of(posthog_source(project_ids="3", max_wait_minutes=1)).settings.project_ids == [3]
    cloud = posthog_source(host="eu")
    assert session_of(cloud).client.pacer.enabled and session_of(cloud).settings.rate_limit_plan == "free"


def test_building_a_source_sends_no_request_even_for_all_projects(
    configured: str, fake: FakePostHog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__POSTHOG__PROJECT_IDS", "all")
    source = posthog_source()
    assert session_of(source).settings.all_projects and fake.requests == []


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"host": "ftp://example.com"}, "host"),
    ({"host": "http://example.com"}, "allow_insecure_http"),
    ({"project_ids": "1,x"}, "project_ids"),
    ({"rate_limit_plan": "gold"}, "rate_limit_plan"),
    ({"page_sizes": {"recordings": 10}}, "page_sizes"),
])
def test_bad_settings_name_the_setting(configured: str, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SettingsError) as raised:
        posthog_source(**kwargs)
    assert raised.value.field == field


def test_plain_dlt_run_lands_rows_and_the_report_with_the_cli_pacing_and_retries(
    configured: str, fake: FakePostHog, tmp_path: Path
) -> None:
    fake.inject("/api/projects/1/subscriptions", 429, times=1, wait_s=1)
    fake.inject("/api/projects/1/subscriptions", 503, times=2)
    pipeline = _pipeline(tmp_path, "library")
    pipeline.run(posthog_source().with_resources(*RESOURCES), loader_file_format="parquet")

    landed = SimpleNamespace(output=str(tmp_path / "library.duckdb"))
    for resource in RESOURCES:
        assert_no_duplicates(landed, resource)  # type: ignore[arg-type]
        assert landed_rows(landed, resource) == truth_rows(fake, resource), resource  # type: ignore[arg-type]
    report = _rows(tmp_path, "library", "SELECT project_id, resource, requests, throttled, retries, status "
                                        "FROM posthog._sync_report ORDER BY 1, 2")
    assert {(p, r) for p, r, *_ in report} == {(p, r) for p in (1, 2) for r in RESOURCES}
    assert sum(n for _, _, n, *_ in report) == len(fake.requests)  # every request counted, to one resource
    for project_id, resource, requests, *_ in report:
        if resource != "property_definitions":  # which also asks for the project's group types
            logged = [q for q in fake.requests if q.path.startswith(f"/api/projects/{project_id}/{resource}/")]
            assert requests == len(logged), (project_id, resource)
    subscriptions_1 = next(row for row in report if row[:2] == (1, "subscriptions"))
    assert subscriptions_1[3:] == (1, 3, "ok")  # as the CLI counts them (test_sync: throttled and retried)


def test_pipelines_run_isolates_a_failing_resource_and_reports_it(
    configured: str, fake: FakePostHog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__POSTHOG__MAX_ATTEMPTS", "2")
    fake.inject("/api/projects/2/subscriptions", 503, times=50)
    pipeline = _pipeline(tmp_path, "isolated")
    result = pipelines.run(pipeline, posthog_source().with_resources(*RESOURCES))

    assert set(result.failures) == {"subscriptions"}
    assert not _rows(tmp_path, "isolated", "SELECT 1 FROM information_schema.tables "
                                           "WHERE table_name = 'subscriptions'")  # nothing half-loaded
    recordings = _rows(tmp_path, "isolated", "SELECT count(*) FROM posthog.session_recordings")[0][0]
    assert recordings == len(truth_rows(fake, "session_recordings"))
    report = _rows(tmp_path, "isolated", "SELECT project_id, resource, status FROM posthog._sync_report "
                                         "ORDER BY 1, 2")
    assert (2, "subscriptions", "failed") in report and (1, "subscriptions", "failed") in report
    assert (1, "session_recordings", "ok") in report and len(report) == 2 * len(RESOURCES)
    views = _rows(tmp_path, "isolated", "SELECT count(*) FROM information_schema.views "
                                        "WHERE table_name LIKE 'v_%'")[0][0]
    assert views > 0  # pipelines.run created the BI views
