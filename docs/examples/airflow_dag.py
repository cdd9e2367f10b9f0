"""Airflow: sync PostHog hourly with `pipelines.run`, the CLI's sync, in one task.

Install posthog-export (with the extra of your warehouse, e.g. `pip install -e ".[postgres]"` from your clone)
into the Airflow environment and copy this file into the dags folder. Everything is read from dlt's config
when the task runs (parsing the DAG reads no setting and sends no request): the dags folder's
`.dlt/config.toml` and `.dlt/secrets.toml`, the Airflow variable `dlt_secrets_toml`, or the environment
variables named on the right::

    destination_type = "postgres"       # DESTINATION_TYPE: duckdb, postgres, bigquery, snowflake, ...
    [sources.posthog]
    project_ids = [12345, 67890]        # SOURCES__POSTHOG__PROJECT_IDS ("12345,67890", or "all")
    host = "eu"                         # SOURCES__POSTHOG__HOST
    personal_api_key = "phx_..."        # secrets.toml, or POSTHOG_PERSONAL_API_KEY
    [destination.postgres]
    credentials = "postgresql://..."    # secrets.toml, or DESTINATION__POSTGRES__CREDENTIALS

One task syncs every project, so they share the key's one rate budget (PostHog limits per key, not per
project); every row carries `project_id`. Each table is its own dlt load: a failed table leaves the others
loaded and fails the task, and the next run retries it from its last committed state. dlt keeps the cursors
in the warehouse too, so a worker's local folder may be thrown away between runs. The task also refreshes
the BI views and appends the run's counters to `_sync_report`. `max_active_runs=1`: never two syncs at once.
"""

from __future__ import annotations

import logging

import pendulum

try:  # Airflow 3
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task

PIPELINE_NAME = "posthog_airflow"  # dlt's working folder and state; on DuckDB also the file name
DATASET = "posthog"


@dag(
    schedule="17 * * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["posthog", "dlt"],
)
def posthog_export() -> None:
    """Sync the PostHog tables of every project into the warehouse."""

    @task(retries=0)  # the next hourly run continues where this one stopped
    def sync() -> dict[str, int]:
        """Run the sync; rows loaded per table, or fail when a table failed."""
        import dlt

        import pipelines
        from sources.posthog import posthog_source

        pipeline = dlt.pipeline(pipeline_name=PIPELINE_NAME, dataset_name=DATASET)
        result = pipelines.run(pipeline, posthog_source())
        for warning in result.warnings():
            logging.getLogger("posthog_export").warning(warning)
        if result.failures:
            raise RuntimeError("; ".join(f"{name} failed: {reason}" for name, reason in result.failures.items()))
        loaded: dict[str, int] = {}
        for run in result.report.runs.values():
            loaded[run.resource] = loaded.get(run.resource, 0) + run.rows_loaded
        return loaded

    sync()


posthog_export_dag = posthog_export()
