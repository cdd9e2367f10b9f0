"""The orchestrator recipes in docs/examples run for real against the fake PostHog into DuckDB.

Dagster needs the `dagster` extra: its tests skip without it, unless POSTHOG_EXPORT_REQUIRE_DAGSTER=1 (as in
CI), where the import error fails the file. The Airflow test runs only where `apache-airflow` is installed
(not in CI: see docs/recipes.md), in a child process with its own AIRFLOW_HOME.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest

from fake_posthog import FakePostHog
from pipelines.runner import SyncOptions
from sources.posthog import ENDPOINTS
from sources.posthog.sync import parse_time

from .conftest import PROJECTS, requests_to
from .test_sync import assert_matches_truth

try:
    import dagster as dg
except ImportError:
    if os.environ.get("POSTHOG_EXPORT_REQUIRE_DAGSTER") == "1":
        raise
    dg = None
needs_dagster = pytest.mark.skipif(dg is None, reason="dagster is not installed (the dagster extra)")

TABLES = sum(len(endpoint.tables) for endpoint in ENDPOINTS.values())  # a report row per table and project
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
RECIPE = EXAMPLES / "dagster_assets.py"


def asset_keys(*names: str) -> set[Any]:
    return {dg.AssetKey(["posthog", name]) for name in names or ENDPOINTS}


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


def dlt_env(tmp_path: Path, fake: FakePostHog, server: str) -> dict[str, str]:
    """dlt's config, as a deployment sets it: the fake, small pages, a DuckDB file under tmp_path."""
    return {
        "DESTINATION_TYPE": "duckdb",
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "out.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "POSTHOG_PERSONAL_API_KEY": fake.api_key,
        "SOURCES__POSTHOG__HOST": server,
        "SOURCES__POSTHOG__PROJECT_IDS": ",".join(map(str, PROJECTS)),
        "SOURCES__POSTHOG__RATE_LIMIT_PLAN": "none",
        "SOURCES__POSTHOG__BACKOFF_S": "0.01",
        "SOURCES__POSTHOG__PAGE_SIZES": '{"session_recordings": 40, "desktop_recordings": 4, "subscriptions": 4, '
                                        '"property_definitions": 10, "session_group_summaries": 10}',
    }


@pytest.fixture
def db(tmp_path: Path, fake: FakePostHog, server: str, recipe: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The DuckDB file the recipe loads into, with dlt's config set after the recipe loaded without it."""
    for name, value in dlt_env(tmp_path, fake, server).items():
        monkeypatch.setenv(name, value)
    return tmp_path / "out.duckdb"


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


@needs_dagster
def test_dagster_assets_land_the_truth_and_the_second_run_is_incremental(
    fake: FakePostHog, recipe: Any, db: Path
) -> None:
    first = materialize(recipe)

    assert first.success
    assert_matches_truth(fake, SyncOptions(output=str(db)))
    meta = materialized(first)
    assert set(meta) == asset_keys()
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
    assert set(materialized(second)) == asset_keys()
    sent = [r for r in requests_to(fake, "session_recordings") if r.path.startswith("/api/projects/1/")
            and "date_from" in r.params and "session_ids" not in r.params]
    assert sent and parse_time(sent[0].params["date_from"]) == cursor - timedelta(days=1)  # the lookback
    assert len(fake.requests) < first_requests
    runs = query(db, "SELECT run_started_at, count(*) FROM posthog._sync_report GROUP BY 1 ORDER BY 1")
    assert [count for _, count in runs] == [TABLES * len(PROJECTS)] * 2


@needs_dagster
def test_a_failing_dagster_table_fails_the_run_and_the_others_still_land(
    fake: FakePostHog, recipe: Any, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__POSTHOG__MAX_ATTEMPTS", "1")
    fake.inject("/subscriptions", 500, times=1000)

    result = materialize(recipe, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "subscriptions" in failure.event_specific_data.error.message
    assert set(materialized(result)) == asset_keys() - asset_keys("subscriptions")
    assert query(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'subscriptions'") == [(0,)]
    assert query(db, "SELECT count(*) FROM posthog.session_recordings")[0][0] == \
        sum(len(fake.truth(p, "session_recordings")) for p in PROJECTS)
    failed = query(db, "SELECT DISTINCT status FROM posthog._sync_report WHERE resource = 'subscriptions'")
    assert failed == [("failed",)]


AIRFLOW_RUN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("airflow_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
if sys.argv[2] == "test":
    run = module.posthog_export_dag.test()
    sys.exit(0 if str(run.state) == "success" else f"dag run ended {run.state}")
"""


@pytest.mark.skipif(importlib.util.find_spec("airflow") is None, reason="apache-airflow is not installed")
def test_airflow_dag_runs_against_the_fake(fake: FakePostHog, server: str, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    dag_file = Path(shutil.copy(EXAMPLES / "airflow_dag.py", dags))
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": str(EXAMPLES.parents[1])}

    def child(*args: str) -> None:
        done = subprocess.run([sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    child("-c", AIRFLOW_RUN, str(dag_file), "parse")  # parsing the DAG without any PostHog setting
    assert fake.requests == []
    child("-m", "airflow", "db", "migrate")
    env.update(dlt_env(tmp_path, fake, server))
    child("-c", AIRFLOW_RUN, str(dag_file), "test")
    assert_matches_truth(fake, SyncOptions(output=str(tmp_path / "out.duckdb")))
    assert query(tmp_path / "out.duckdb", "SELECT count(*) FROM posthog._sync_report") == \
        [(TABLES * len(PROJECTS),)]
