"""Fixtures: a fake PostHog on 127.0.0.1 and sync options pointing at it, writing under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from dlt.common.configuration.container import Container
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext
from hypothesis import settings

from fake_posthog import FakePostHog
from pipelines.runner import SyncOptions, SyncResult, run_sync
from sources.posthog import ENDPOINTS

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PROJECTS = [1, 2]

# CI and the README's test command replay the same examples every run, so a failure can be reproduced;
# `HYPOTHESIS_PROFILE=explore` draws new ones (and more) to look for the next one
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=200, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_dlt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep dlt's config lookup and any real key out of the tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSTHOG_PERSONAL_API_KEY", raising=False)
    monkeypatch.setenv("RUNTIME__LOG_LEVEL", "ERROR")
    reload_dlt_config(tmp_path)


def reload_dlt_config(folder: Path) -> None:
    """dlt reads `.dlt/*.toml` of the run dir once per process: point it at `folder` and read again."""
    Container()[PluggableRunContext].reload(str(folder))


# recordings differ by PostHog version (shared/posthog-api.md §7.1): newer servers page by keyset with a
# tiebreaker; older ones by offset only, without a tiebreaker (ties come in any order), and apply the date
# window to `session_ids` re-reads
# (seed 2: the older variant's data also holds sessions crossing an incremental run's lower edge)
SERVERS: dict[str, dict[str, Any]] = {"newer": {"seed": 7}, "older": {"keyset": False, "tie_group": 3, "seed": 2}}
# for recordings tests: `@both_servers` runs them against both (the `fake` fixture, parametrized)
both_servers = pytest.mark.parametrize("fake", list(SERVERS), indirect=True)


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> FakePostHog:
    return FakePostHog(project_ids=PROJECTS, now=NOW, recordings=150, desktop_recordings=12, segments=6,
                       recording_step_s=3000, **SERVERS[getattr(request, "param", "newer")])


@pytest.fixture
def server(fake: FakePostHog) -> Iterator[str]:
    with fake.serve() as url:
        yield url


@pytest.fixture
def options(tmp_path: Path, server: str, fake: FakePostHog) -> SyncOptions:
    return SyncOptions(
        project_ids=PROJECTS,
        api_key=fake.api_key,
        host=server,
        resources=list(ENDPOINTS),
        output=str(tmp_path / "out.duckdb"),
        pipelines_dir=str(tmp_path / "pipelines"),
        pipeline_name="test_posthog",
        backoff_s=0.01,
        rate_limit_plan="none",
        initial_date_from="2020-01-01T00:00:00Z",
        # small pages so every listing takes several requests
        page_sizes={name: 40 for name in ENDPOINTS},
        quiet=True,
    )


def sync(options: SyncOptions, transport: httpx.BaseTransport | None = None) -> SyncResult:
    result = run_sync(options, transport=transport)
    assert result.ok, result.failures
    return result


def query(options: SyncOptions, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(options.output, read_only=True) as con:
        return con.execute(sql).fetchall()


def requests_to(fake: FakePostHog, resource: str) -> list[Any]:
    return [r for r in fake.requests if r.path.rstrip("/").endswith(resource)]
