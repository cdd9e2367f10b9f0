"""dlt source for PostHog replay and metadata objects.

Use it from your own dlt pipeline::

    import dlt
    from sources.posthog import posthog_source

    pipeline = dlt.pipeline("posthog", destination="duckdb", dataset_name="posthog")
    pipeline.run(posthog_source(project_ids=[12345]))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import dlt
from dlt.common.typing import TSecretStrValue
from dlt.extract import DltResource

from .arrow import Drift
from .client import PostHogClient
from .endpoints import ENDPOINTS, MERGE, Endpoint
from .report import SyncReport
from .sync import Context, read_endpoint, start_feeds

__all__ = ["ENDPOINTS", "posthog_source", "resolve_api_key", "PostHogClient", "SyncReport"]

DEFAULT_HOST = "https://us.posthog.com"


def resolve_api_key(explicit: str | None = None) -> str | None:
    """The personal API key: given, else dlt config (`sources.posthog.personal_api_key`), else the
    conventional `POSTHOG_PERSONAL_API_KEY` environment variable."""
    if explicit:
        return explicit
    configured = dlt.secrets.get("sources.posthog.personal_api_key")
    return str(configured) if configured else os.environ.get("POSTHOG_PERSONAL_API_KEY") or None


def schema_contract(evolve: bool) -> dict[str, str]:
    """The dlt schema contract: declared columns only, unless new ones may evolve in."""
    return {"tables": "evolve", "columns": "evolve" if evolve else "discard_value", "data_type": "freeze"}


def endpoint_resource(endpoint: Endpoint, ctx: Context, project_ids: Sequence[int]) -> DltResource:
    """A dlt resource for one endpoint of the endpoint table."""

    def rows() -> Any:
        yield from read_endpoint(endpoint, ctx, project_ids)

    return dlt.resource(
        rows,
        name=endpoint.name,
        write_disposition=MERGE,  # type: ignore[arg-type]
        primary_key=list(endpoint.key),
        schema_contract=schema_contract(ctx.evolve),  # type: ignore[arg-type]
    )


@dlt.source(name="posthog", max_table_nesting=0)
def posthog_source(
    project_ids: list[int] = dlt.config.value,
    personal_api_key: TSecretStrValue | None = dlt.secrets.value,
    host: str = DEFAULT_HOST,
    resources: list[str] | None = None,
    lookback_days: float = 1.0,
    initial_date_from: str = "2020-01-01T00:00:00Z",
    evolve_schema: bool = False,
    page_sizes: dict[str, int] | None = None,
    client: Any = None,
    report: Any = None,
    read_ahead: Any = None,
) -> list[DltResource]:
    """PostHog session recordings, group summaries, desktop recordings, subscriptions and property
    definitions of one or more projects, synced incrementally.

    Args:
        project_ids: PostHog project ids; rows of all of them share the tables, keyed by `project_id`.
        personal_api_key: a personal API key (`phx_…`); also read from `POSTHOG_PERSONAL_API_KEY`.
        host: `https://us.posthog.com`, `https://eu.posthog.com` or a self-hosted URL (`us`/`eu` work).
        resources: endpoint names to sync (default: all).
        lookback_days: how far before the last cursor each incremental run re-reads.
        initial_date_from: where a first recordings/summaries sync starts (before any PostHog data).
        evolve_schema: let fields PostHog adds become new columns instead of leaving them out.
        page_sizes: page size per endpoint name, overriding the endpoint table.
        client: a ready `PostHogClient` (tests, shared pacing); built from host and key otherwise.
        report: a `SyncReport` that collects counters for the run summary.
        read_ahead: `(states, cancelled)` to start reading at once, before dlt reaches the resources:
            `states` is the pipeline's committed resource state (`{resource: {project_id: state}}`),
            `cancelled` a `threading.Event` that stops readers when the run ends.
    """
    if client is None:
        key = resolve_api_key(personal_api_key)
        if not key:
            raise ValueError(
                "no PostHog personal API key: set POSTHOG_PERSONAL_API_KEY or "
                "sources.posthog.personal_api_key in .dlt/secrets.toml"
            )
        client = PostHogClient(host, key)
    unknown = sorted(set(resources or ()) - ENDPOINTS.keys())
    if unknown:
        raise ValueError(f"unknown resources {unknown}; choose from {sorted(ENDPOINTS)}")
    ctx = Context(
        client=client,
        report=report if report is not None else SyncReport(),
        lookback=timedelta(days=lookback_days),
        initial_date_from=initial_date_from,
        evolve=evolve_schema,
        page_sizes=page_sizes or {},
    )
    ids = [int(p) for p in project_ids]
    selected = [e for e in ENDPOINTS.values() if not resources or e.name in resources]
    built = []
    for endpoint in selected:
        own = replace(ctx, drift=Drift(), feeds={})
        if read_ahead is not None:
            states, own.cancelled = read_ahead
            start_feeds(endpoint, own, ids, states.get(endpoint.name, {}))
        built.append(endpoint_resource(endpoint, own, ids))
    return built
