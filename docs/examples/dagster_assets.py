"""Dagster: the PostHog tables as assets with `dagster-dlt`, materialized hourly, then the BI views.

`pip install dagster dagster-dlt` plus posthog-export with your warehouse's extra, then point Dagster at
this file (`dagster dev -f dagster_assets.py`). The key and the warehouse credentials come from dlt's
config (`.dlt/secrets.toml` or `SOURCES__POSTHOG__PERSONAL_API_KEY`, `DESTINATION__POSTGRES__CREDENTIALS`);
the key must be set where Dagster loads this file, because the source is built at load time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import dlt
from dagster_dlt import DagsterDltResource, dlt_assets

from pipelines.views import create_views
from sources.posthog import posthog_source

PROJECT_IDS = [12345, 67890]
PIPELINE = dlt.pipeline(pipeline_name="posthog", destination="postgres", dataset_name="posthog")


@dlt_assets(
    dlt_source=posthog_source(project_ids=PROJECT_IDS),  # one asset per table (resource)
    dlt_pipeline=PIPELINE,
    name="posthog",
    group_name="posthog",
)
def posthog_tables(context: dg.AssetExecutionContext, dlt: DagsterDltResource) -> Iterator[Any]:
    """Sync the selected PostHog resources of every project (incremental, state kept by dlt)."""
    yield from dlt.run(context=context)


@dg.asset(deps=[posthog_tables], group_name="posthog")
def posthog_bi_views() -> dg.MaterializeResult:
    """The README's "Views for BI", created or refreshed after the tables."""
    return dg.MaterializeResult(metadata={"views": ", ".join(create_views(PIPELINE))})


posthog_hourly = dg.ScheduleDefinition(
    job=dg.define_asset_job("posthog_sync", selection=dg.AssetSelection.groups("posthog")),
    cron_schedule="17 * * * *",
)

defs = dg.Definitions(
    assets=[posthog_tables, posthog_bi_views],
    resources={"dlt": DagsterDltResource()},
    schedules=[posthog_hourly],
)
