"""The Dagster recipe (docs/examples/dagster_assets.py) run for real against the fake PostHog into DuckDB.

Needs the `dagster` extra; skips without it, unless POSTHOG_EXPORT_REQUIRE_DAGSTER=1 (as in CI), where the
import error fails the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest

from pipelines.runner import SyncOptions
from sources.posthog import ENDPOINTS
from sources.posthog.fake import FakePostHog
from sources.posthog.sync import parse_time

from .conftest import PROJECTS, requests_to
from .test_sync import assert_matches_truth

dg = importlib.import_module("dagster") if os.environ.get("POSTHOG_EXPORT_REQUIRE_DAGSTER") == "1" else \
    pytest.importorskip("dagster")

RECIPE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "dagster_assets.py"
KEYS = [dg.AssetKey(["posthog", name]) for name in ENDPOINTS]


def load_recipe() -> ModuleType:
    """Import the recipe from its file, as `dagster dev -f` does."""
    spec = importlib.util.spec_from_file_location("posthog_dagster_recipe", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def recipe(fake: FakePostHog, server: str) -> Any:
    """The recipe's definitions, loaded with no PostHog setting in the environment at all."""
    module = load_recipe()
    dg.Definitions.validate_loadable(module.defs)
    module.defs.resolve_job_def("posthog_sync_job")
    assert fake.requests == []  # loading the definitions sent nothing (and needed no key)
    yield module
    sys.modules.pop("posthog_dagster_recipe", None)


@pytest.fixture
def db(tmp_path: Path, fake: FakePostHog, server: str, recipe: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dlt's config, as a deployment sets it (after the recipe loaded without it): the fake, small pages, a
    DuckDB file under tmp_path."""
    output = tmp_path / "out.duckdb"
    env = {
        "DESTINATION_TYPE": "duckdb",
        "DESTINATION__DUCKDB__CREDENTIALS": str(output),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "POSTHOG_PERSONAL_API_KEY": fake.api_key,
        "SOURCES__POSTHOG__HOST": server,
        "SOURCES__POSTHOG__PROJECT_IDS": ",".join(map(str, PROJECTS)),
        "SOURCES__POSTHOG__RATE_LIMIT_PLAN": "none",
        "SOURCES__POSTHOG__BACKOFF_S": "0.01",
        "SOURCES__POSTHOG__PAGE_SIZES": '{"session_recordings": 40, "desktop_recordings": 4, "subscriptions": 4, '
                                        '"property_definitions": 10, "session_group_summaries": 10}',
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return output


def materialize(recipe: Any, **kwargs: Any) -> Any:
    """Run the recipe's scheduled job in process, as the hourly schedule would."""
    return recipe.defs.resolve_job_def("posthog_sync_job").execute_in_process(**kwargs)


def materialized(result: Any) -> dict[Any, dict[str, Any]]:
    """Per asset key, the metadata of its materialization in this run."""
    return {
        event.asset_key: {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_dagster_assets_land_the_truth_and_the_second_run_is_incremental(
    fake: FakePostHog, recipe: Any, db: Path
) -> None:
    first = materialize(recipe)

    assert first.success
    assert_matches_truth(fake, SyncOptions(output=str(db)))
    meta = materialized(first)
    assert set(meta) == set(KEYS)
    recordings = meta[dg.AssetKey(["posthog", "session_recordings"])]
    landed = query(db, "SELECT count(*) FROM posthog.session_recordings")[0][0]
    assert recordings["rows_loaded"] == landed == sum(len(fake.truth(p, "session_recordings")) for p in PROJECTS)
    assert recordings["status"] == "ok"
    assert {row[0] for row in query(db, "SELECT table_name FROM information_schema.tables WHERE "
                                        "table_type = 'VIEW' AND table_schema = 'posthog'")}  # BI views
    cursor = query(db, "SELECT max(start_time) FROM posthog.session_recordings WHERE project_id = 1")[0][0]
    first_requests = len(fake.requests)
    fake.soft_delete_subscription(1, next(s["id"] for s in fake.truth(1, "subscriptions") if not s["deleted"]))
    fake.advance(3 * 3600)  # new recordings, desktop transcripts grow, recordings finish
    fake.requests.clear()

    second = materialize(recipe)

    assert second.success
    assert_matches_truth(fake, SyncOptions(output=str(db)))
    assert set(materialized(second)) == set(KEYS)
    sent = [r for r in requests_to(fake, "session_recordings") if r.path.startswith("/api/projects/1/")
            and "date_from" in r.params and "session_ids" not in r.params]
    assert sent and parse_time(sent[0].params["date_from"]) == cursor - timedelta(days=1)  # the lookback
    assert len(fake.requests) < first_requests
    runs = query(db, "SELECT run_started_at, count(*) FROM posthog._sync_report GROUP BY 1 ORDER BY 1")
    assert [count for _, count in runs] == [len(ENDPOINTS) * len(PROJECTS)] * 2


def test_a_failing_table_fails_the_run_and_the_others_still_land(
    fake: FakePostHog, recipe: Any, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__POSTHOG__MAX_ATTEMPTS", "1")
    fake.inject("/subscriptions", 500, times=1000)

    result = materialize(recipe, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "subscriptions" in failure.event_specific_data.error.message
    assert set(materialized(result)) == set(KEYS) - {dg.AssetKey(["posthog", "subscriptions"])}
    assert query(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'subscriptions'") == [(0,)]
    assert query(db, "SELECT count(*) FROM posthog.session_recordings")[0][0] == \
        sum(len(fake.truth(p, "session_recordings")) for p in PROJECTS)
    failed = query(db, "SELECT DISTINCT status FROM posthog._sync_report WHERE resource = 'subscriptions'")
    assert failed == [("failed",)]
