"""Airflow: sync PostHog hourly with dlt's Airflow helper, one task per project, then refresh the BI views.

Install posthog-export (with the extra of your warehouse, e.g. `pip install "posthog-export[postgres]"` from
your clone) into the Airflow environment and copy this file into the dags folder. dlt reads the key and the
warehouse credentials from the dags folder's `.dlt/secrets.toml`, environment variables
(`SOURCES__POSTHOG__PERSONAL_API_KEY`, `SOURCES__POSTHOG__HOST`, `DESTINATION__POSTGRES__CREDENTIALS`) or
the Airflow variable `dlt_secrets_toml`.

Each project has its own pipeline and so its own state (cursors), which dlt keeps in the warehouse: the
workers' local folders are thrown away after each task. All projects load into the same dataset; every row
carries `project_id`. A failing project does not stop the others (`trigger_rule="all_done"`).
"""

from __future__ import annotations

import dlt
import pendulum
from dlt.helpers.airflow_helper import PipelineTasksGroup

try:  # Airflow 3
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task

PROJECT_IDS = [12345, 67890]
DESTINATION = "postgres"
DATASET = "posthog"


@dag(
    schedule="17 * * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["posthog", "dlt"],
)
def posthog_export() -> None:
    """One task group (with one task) per PostHog project, then the BI views."""
    from sources.posthog import posthog_source

    groups = []
    for project_id in PROJECT_IDS:
        # the group must exist before its pipeline: it points dlt at a fresh working folder
        group = PipelineTasksGroup(f"posthog_{project_id}", use_data_folder=False, wipe_local_data=True)
        pipeline = dlt.pipeline(
            pipeline_name=f"posthog_{project_id}", destination=DESTINATION, dataset_name=DATASET
        )
        group.add_run(
            pipeline, posthog_source(project_ids=[project_id]), decompose="none", trigger_rule="all_done", retries=0
        )
        groups.append(group)

    @task(trigger_rule="all_done")
    def bi_views() -> list[str]:
        """Create or refresh the views of the README's "Views for BI" in the dataset."""
        from pipelines.views import create_views

        return create_views(dlt.pipeline(pipeline_name="posthog_views", destination=DESTINATION, dataset_name=DATASET))

    groups >> bi_views()


posthog_export()
