"""dlt source for PostHog replay and metadata objects.

Use it from your own dlt pipeline::

    import dlt
    import pipelines
    from sources.posthog import posthog_source

    pipeline = dlt.pipeline("posthog", destination="duckdb", dataset_name="posthog")
    pipelines.run(pipeline, posthog_source(project_ids=[12345]))  # or pipeline.run(...): one load for all

Settings come from the arguments, then `SOURCES__POSTHOG__*`, then `[sources.posthog]` in `.dlt/*.toml`
(`settings.py`); the source builds the same paced, retrying client the CLI uses, and each resource writes
its counters to the `_sync_report` table in the same load as its rows.
"""

from __future__ import annotations

from typing import Any

import dlt
from dlt.common.typing import TSecretStrValue
from dlt.extract import DltResource

from .client import PostHogClient
from .endpoints import ENDPOINTS, MERGE, Endpoint
from .report import REPORT_COLUMNS, REPORT_TABLE, SyncReport
from .session import Session
from .settings import DEFAULT_HOST, PostHogSettings, SettingsError, resolve_settings
from .sync import read_endpoint

__all__ = [
    "ENDPOINTS", "posthog_source", "session_of", "PostHogClient", "PostHogSettings", "SettingsError", "Session",
    "SyncReport", "resolve_settings",
]


def schema_contract(evolve: bool) -> dict[str, str]:
    """The dlt schema contract: declared columns only, unless new ones may evolve in."""
    return {"tables": "evolve", "columns": "evolve" if evolve else "discard_value", "data_type": "freeze"}


def _report_hints() -> Any:
    return dlt.mark.make_hints(
        table_name=REPORT_TABLE, write_disposition="append", primary_key=[], columns=REPORT_COLUMNS
    )


def endpoint_resource(endpoint: Endpoint, session: Session) -> DltResource:
    """A dlt resource for one endpoint of the endpoint table; its last item is its `_sync_report` rows."""
    ctx = session.contexts[endpoint.name]

    def rows() -> Any:
        yield from read_endpoint(endpoint, ctx, session.project_ids())
        report = session.report.written(*endpoint.tables)
        if report:  # in the same load as the rows they count (a table variant: append, its own columns)
            yield dlt.mark.with_hints(report, _report_hints(), create_table_variant=True)

    resource = dlt.resource(
        rows,
        name=endpoint.name,
        write_disposition=MERGE,  # type: ignore[arg-type]
        primary_key=list(endpoint.key),
        schema_contract=schema_contract(ctx.evolve),  # type: ignore[arg-type]
    )
    resource.posthog_session = session  # type: ignore[attr-defined]  # see `session_of`
    return resource


def session_of(source: Any) -> Session:
    """The `Session` (client, report, settings) behind a `posthog_source()`, for `pipelines.run`."""
    for resource in source.resources.values():
        session = getattr(resource, "posthog_session", None)
        if session is not None:
            return session  # type: ignore[no-any-return]
    raise TypeError("not a posthog_source(): its resources carry no PostHog session")


@dlt.source(name="posthog", max_table_nesting=0, spec=PostHogSettings)
def posthog_source(
    project_ids: Any = None,
    personal_api_key: TSecretStrValue | None = None,
    host: str = DEFAULT_HOST,
    allow_insecure_http: bool = False,
    lookback_days: float = 1.0,
    initial_date_from: str = "2020-01-01T00:00:00Z",
    evolve_schema: bool = False,
    page_sizes: dict[str, int] | None = None,
    rate_limit_plan: str | None = None,
    rate_limits: dict[str, list[int]] | None = None,
    max_wait_minutes: float = 60.0,
    max_attempts: int = 6,
    backoff_s: float = 1.0,
    all_projects: bool = False,
    settings: PostHogSettings = None,  # type: ignore[assignment]  # dlt: an argument of the spec's type
    resources: list[str] | None = None,
    client: PostHogClient | None = None,
    report: SyncReport | None = None,
) -> list[DltResource]:
    """PostHog session recordings, group summaries, desktop recordings, subscriptions, property
    definitions, recording playlists and Replay Vision scanners and observations of one or more projects,
    synced incrementally.

    Every setting argument (see `PostHogSettings`) is resolved by dlt: given here, else
    `SOURCES__POSTHOG__<NAME>`, else `[sources.posthog]` in `.dlt/*.toml`, else the default.

    Args:
        project_ids: PostHog project ids (`[1, 2]`, `"1,2"`), or `"all"` for every project the key can read;
            rows of all of them share the tables, keyed by `project_id`.
        personal_api_key: a personal API key (`phx_…`); also read from `POSTHOG_PERSONAL_API_KEY`.
        host: `https://us.posthog.com`, `https://eu.posthog.com` or a self-hosted URL (`us`/`eu` work).
        allow_insecure_http: allow a plain http:// host that is not loopback (the key travels in clear text).
        lookback_days: how far before the last cursor each incremental run re-reads.
        initial_date_from: where a first recordings/summaries sync starts (before any PostHog data).
        evolve_schema: let fields PostHog adds become new columns instead of leaving them out.
        page_sizes: page size per resource name, overriding the endpoint table.
        rate_limit_plan: `free`, `paid`, `enterprise` or `none`: whose published limits to pace by (default
            `free` on PostHog Cloud, `none` elsewhere); 429s are honoured either way.
        rate_limits: per rate bucket `[per_minute, per_hour]`, overriding the plan's.
        max_wait_minutes: the longest wait for the rate budget per request before the resource stops.
        max_attempts: attempts per request on 5xx and network errors (429s do not count).
        backoff_s: the first retry's wait, doubling per attempt.
        all_projects: every project the key can read (as `project_ids="all"`).
        settings: ready `PostHogSettings` (the other setting arguments are then ignored).
        resources: resource names to sync (default: all).
        client: a ready `PostHogClient` (tests, a shared rate budget); built from the settings otherwise.
        report: a `SyncReport` that collects the run's counters (a fresh one otherwise).
    """
    assert settings is not None  # dlt resolved it from the arguments and the config providers
    session = Session.create(settings, resources, client, report)
    return [endpoint_resource(endpoint, session) for endpoint in session.endpoints]
