"""`posthog-export demo`: the real sync against the built-in fake PostHog, into a local DuckDB file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb

from fake_posthog import FakePostHog
from sources.posthog import ENDPOINTS

from .output import echo, print_table
from .runner import SyncOptions, run_sync

DEMO_PROJECTS = [1, 2]
SAMPLE_QUERY = """SELECT project_id,
       date_trunc('day', start_time) AS day,
       count(*) AS recordings,
       round(median(recording_duration)) AS median_seconds,
       sum(console_error_count) AS console_errors
FROM posthog.session_recordings
GROUP BY ALL ORDER BY day DESC, project_id LIMIT 5"""


def run_demo(output: Path) -> bool:
    """Sync two fake projects, advance the fake clock an hour, sync again, then show the tables."""
    fake = FakePostHog(project_ids=DEMO_PROJECTS, recordings=600, desktop_recordings=15)
    with fake.serve() as url, tempfile.TemporaryDirectory() as pipelines_dir:
        options = SyncOptions(
            project_ids=DEMO_PROJECTS,
            api_key=fake.api_key,
            host=url,
            resources=list(ENDPOINTS),
            output=str(output),
            pipeline_name="posthog_demo",
            pipelines_dir=pipelines_dir,
            full_refresh=True,
            rate_limit_plan="none",  # the fake does not throttle
        )
        echo(f"Demo: syncing fake PostHog projects {DEMO_PROJECTS} from {url} into {output}")
        echo("\nFirst sync (all history):")
        first = run_sync(options)
        fake.advance(3600)
        options.full_refresh = False
        echo("\nSecond sync, one simulated hour later (incremental):")
        second = run_sync(options)
    if not (first.ok and second.ok):
        return False
    with duckdb.connect(str(output), read_only=True) as con:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'posthog' "
            "AND table_name NOT LIKE '\\_dlt%' ESCAPE '\\' ORDER BY table_name"
        ).fetchall()
        counts = [
            (name, con.execute(f'SELECT count(*) FROM posthog."{name}"').fetchone()[0])  # type: ignore[index]
            for (name,) in tables
        ]
        echo(f"\nTables in {output} (schema posthog):")
        print_table(["table", "rows"], counts)
        echo(f"\nSample query:\n{SAMPLE_QUERY}\n")
        cursor = con.execute(SAMPLE_QUERY)
        print_table([d[0] for d in cursor.description], cursor.fetchall())
    echo(f"\nExplore it yourself, e.g.: python -c \"import duckdb; print(duckdb.connect('{output}')"
         ".sql('FROM posthog.subscriptions LIMIT 5'))\"")
    return True
