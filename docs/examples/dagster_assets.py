"""Dagster: one asset per PostHog table, materialized hourly by `pipelines.run`, the CLI's sync.

`pip install -e ".[dagster]"` in your clone (add your warehouse's extra, e.g. `".[dagster,postgres]"`), then
`dagster dev -f docs/examples/dagster_assets.py`. Everything is read from dlt's config when the assets run
(loading these definitions reads no setting and sends no request): `.dlt/config.toml` and `.dlt/secrets.toml`
in Dagster's working folder, or the environment variables named on the right::

    destination_type = "postgres"       # DESTINATION_TYPE: duckdb, postgres, bigquery, snowflake, ...
    [sources.posthog]
    project_ids = [12345, 67890]        # SOURCES__POSTHOG__PROJECT_IDS ("12345,67890", or "all")
    host = "eu"                         # SOURCES__POSTHOG__HOST
    personal_api_key = "phx_..."        # secrets.toml, or POSTHOG_PERSONAL_API_KEY
    [destination.postgres]
    credentials = "postgresql://..."    # secrets.toml, or DESTINATION__POSTGRES__CREDENTIALS

A run syncs the selected tables of every project: each table is its own dlt load, incremental from the
cursors dlt keeps (locally and in the destination), so a failed table leaves the others loaded and fails the
run; then the BI views are refreshed and `_sync_report` gets the run's counters. Never run two syncs at
once: the asset takes a slot of the pool `posthog`; limit it to one with `dagster instance concurrency set
posthog 1`.
"""

# no `from __future__ import annotations`: Dagster checks the `context` annotation at definition time
from collections.abc import Iterator

import dagster as dg
import dlt

import pipelines
from sources.posthog import ENDPOINTS, posthog_source

PIPELINE_NAME = "posthog_dagster"  # dlt's working folder and state; on DuckDB also the file name
DATASET = "posthog"


@dg.multi_asset(
    specs=[dg.AssetSpec(["posthog", name], kinds={"dlt", "posthog"}, skippable=True) for name in ENDPOINTS],
    name="posthog_sync",
    group_name="posthog",
    can_subset=True,
    pool="posthog",
)
def posthog_tables(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
    """Sync the selected PostHog tables (one dlt load each) and report what each loaded."""
    selected = [name for name in ENDPOINTS if dg.AssetKey(["posthog", name]) in context.selected_asset_keys]
    # built here, not at import: the settings (and the key) are read when the run starts
    pipeline = dlt.pipeline(pipeline_name=PIPELINE_NAME, dataset_name=DATASET)
    result = pipelines.run(pipeline, posthog_source(resources=selected))
    for warning in result.warnings():
        context.log.warning(warning)
    for name in selected:
        if name in result.failures:
            continue
        runs = [run for run in result.report.runs.values() if run.resource == name]
        yield dg.MaterializeResult(
            asset_key=["posthog", name],
            metadata={
                "rows_loaded": sum(run.rows_loaded for run in runs),
                "rows_fetched": sum(run.rows_fetched for run in runs),
                "requests": sum(run.requests for run in runs),
                "status": ", ".join(sorted({run.status for run in runs})),
                "projects": {str(run.project_id): f"{run.rows_loaded} rows, {run.status}" for run in runs},
            },
        )
    if result.failures:
        raise dg.Failure(
            description="PostHog tables failed: " + "; ".join(f"{k}: {v}" for k, v in result.failures.items()),
            metadata=dict(result.failures),
        )


posthog_hourly = dg.ScheduleDefinition(
    job=dg.define_asset_job("posthog_sync_job", selection=[posthog_tables]),
    cron_schedule="17 * * * *",
)

defs = dg.Definitions(assets=[posthog_tables], schedules=[posthog_hourly])
