"""SQL views for BI tools, created or refreshed in the dataset after each load (DuckDB and Postgres).

Each view is one portable SELECT over the exported tables; `{table}` placeholders become the
table's qualified name. A view whose source tables do not exist yet is skipped (and created by a
later run), and optional child tables that do not exist yet read as empty. Views are only created
on SQL destinations that speak DuckDB's or Postgres' dialect (duckdb, motherduck, postgres).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("posthog_export")

DIALECTS = ("duckdb", "postgres")
# stand-in for a child table that has not been created yet (no row ever had that list)
_NO_CHILD_ROWS = (
    "(SELECT CAST(NULL AS BIGINT) AS project_id, CAST(NULL AS VARCHAR) AS desktop_recording_id WHERE 1 = 0)"
)


@dataclass(frozen=True)
class View:
    """One documented view: its name, what a row is, and its SELECT."""

    name: str
    description: str
    tables: tuple[str, ...]  # source tables that must exist
    sql: str
    optional: tuple[str, ...] = ()  # child tables that read as empty while they do not exist
    dialect_sql: Mapping[str, str] = field(default_factory=dict)  # per-dialect variants of `sql`
    stand_ins: Mapping[str, str] = field(default_factory=dict)  # optional tables' empty stand-ins, if not
    # the desktop children's

    def render(self, dialect: str, qualify: Mapping[str, str]) -> str:
        """The SELECT for a dialect with every `{table}` replaced by its qualified name (or stand-in)."""
        names = {t: qualify.get(t, self.stand_ins.get(t, _NO_CHILD_ROWS)) for t in (*self.tables, *self.optional)}
        return self.dialect_sql.get(dialect, self.sql).format(**names)


_NO_TAGS = (
    "(SELECT CAST(NULL AS BIGINT) AS project_id, CAST(NULL AS VARCHAR) AS scanner_id, "
    "CAST(NULL AS VARCHAR) AS session_id, CAST(NULL AS VARCHAR) AS tag WHERE 1 = 0)"
)
_TAG_TABLES = {"vision_observations__tags": _NO_TAGS, "vision_observations__tags_freeform": _NO_TAGS}

VIEWS: tuple[View, ...] = (
    View(
        name="v_recordings_per_day",
        description="One row per project and UTC day of `start_time`: recordings, distinct persons, "
        "median and total duration, active seconds, and recordings with at least one console error.",
        tables=("session_recordings",),
        sql="""SELECT
    project_id,
    CAST(start_time AT TIME ZONE 'UTC' AS DATE) AS day,
    count(*) AS recordings,
    count(DISTINCT distinct_id) AS distinct_ids,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY recording_duration) AS median_duration_s,
    sum(recording_duration) AS total_duration_s,
    sum(active_seconds) AS active_seconds,
    count(*) FILTER (WHERE console_error_count > 0) AS sessions_with_console_errors
FROM {session_recordings}
GROUP BY 1, 2""",
    ),
    View(
        name="v_top_start_urls",
        description="One row per project and `start_url`: recordings, recordings with console errors, "
        "average active seconds, and `url_rank` (1 = most recordings in the project).",
        tables=("session_recordings",),
        sql="""SELECT
    project_id,
    start_url,
    count(*) AS recordings,
    count(*) FILTER (WHERE console_error_count > 0) AS sessions_with_console_errors,
    avg(active_seconds) AS avg_active_seconds,
    row_number() OVER (PARTITION BY project_id ORDER BY count(*) DESC, start_url) AS url_rank
FROM {session_recordings}
WHERE start_url IS NOT NULL
GROUP BY 1, 2""",
    ),
    View(
        name="v_desktop_meetings",
        description="One row per desktop recording (meeting): title, platform, status, start, duration, "
        "and counts of participants, transcript segments, transcript words and extracted tasks.",
        tables=("desktop_recordings",),
        optional=(
            "desktop_recordings__participants",
            "desktop_recordings__transcript_segments",
            "desktop_recordings__extracted_tasks",
        ),
        # words: whitespace runs collapsed to one space, then spaces + 1
        sql="""WITH meetings AS (
    SELECT d.*, trim(regexp_replace(coalesce(d.transcript_text, ''), '\\s+', ' ', 'g')) AS words_text
    FROM {desktop_recordings} AS d
)
SELECT
    m.project_id,
    m.id AS desktop_recording_id,
    m.meeting_title,
    m.platform,
    m.status,
    m.started_at,
    m.duration_seconds,
    coalesce(p.n, 0) AS participants,
    coalesce(s.n, 0) AS transcript_segments,
    CASE WHEN m.words_text = '' THEN 0
         ELSE length(m.words_text) - length(replace(m.words_text, ' ', '')) + 1 END AS transcript_words,
    coalesce(t.n, 0) AS extracted_tasks
FROM meetings AS m
LEFT JOIN (SELECT project_id, desktop_recording_id, count(*) AS n
           FROM {desktop_recordings__participants} GROUP BY 1, 2) AS p
    ON p.project_id = m.project_id AND p.desktop_recording_id = m.id
LEFT JOIN (SELECT project_id, desktop_recording_id, count(*) AS n
           FROM {desktop_recordings__transcript_segments} GROUP BY 1, 2) AS s
    ON s.project_id = m.project_id AND s.desktop_recording_id = m.id
LEFT JOIN (SELECT project_id, desktop_recording_id, count(*) AS n
           FROM {desktop_recordings__extracted_tasks} GROUP BY 1, 2) AS t
    ON t.project_id = m.project_id AND t.desktop_recording_id = m.id""",
    ),
    View(
        name="v_active_subscriptions",
        description="One row per project and `target_type` (email, slack, webhook): subscriptions that still "
        "deliver (enabled, not soft-deleted, not ended), and how many are on dashboards, on insights and AI "
        "prompts. Ended: `until_date` passed, or a `count`-limited schedule with no `next_delivery_date` left "
        "(PostHog clears it once the schedule has no delivery left). Older servers send no `enabled` (they "
        "cannot pause a delivery): null counts as enabled.",
        tables=("subscriptions",),
        sql="""SELECT
    project_id,
    target_type,
    count(*) AS active_subscriptions,
    count(dashboard) AS dashboard_subscriptions,
    count(insight) AS insight_subscriptions,
    count(*) FILTER (WHERE coalesce(resource_type, content_type) = 'ai_prompt') AS ai_prompt_subscriptions
FROM {subscriptions}
WHERE coalesce(deleted, FALSE) = FALSE
    AND coalesce(enabled, TRUE)
    AND (until_date IS NULL OR until_date > current_timestamp)
    AND ("count" IS NULL OR next_delivery_date IS NOT NULL)
GROUP BY 1, 2""",
    ),
    View(
        name="v_property_definitions_by_type",
        description="One row per project, definition `type` (event, person, group, session), "
        "`group_type_index` and `property_type`: definitions, and how many are verified, virtual, hidden.",
        tables=("property_definitions",),
        sql="""SELECT
    project_id,
    type,
    group_type_index,
    property_type,
    count(*) AS definitions,
    count(*) FILTER (WHERE verified) AS verified_definitions,
    count(*) FILTER (WHERE "virtual") AS virtual_definitions,
    count(*) FILTER (WHERE hidden) AS hidden_definitions
FROM {property_definitions}
GROUP BY 1, 2, 3, 4""",
    ),
)


VISION_VIEWS: tuple[View, ...] = (
    View(
        name="v_vision_observations",
        description="The Replay Vision observations of scanners that still exist: PostHog deletes a "
        "scanner's observations with it (§7.6), the table keeps them.",
        tables=("vision_observations", "vision_scanners"),
        sql="""SELECT o.*
FROM {vision_observations} AS o
WHERE EXISTS (SELECT 1 FROM {vision_scanners} AS s WHERE s.project_id = o.project_id AND s.id = o.scanner_id)""",
    ),
    View(
        name="v_vision_per_day",
        description="One row per project, UTC day of the recording's `start_time` (null: recording not "
        "exported) and existing scanner: sessions observed, succeeded and failed, monitor verdicts (yes, "
        "no, inconclusive), classifier sessions tagged and tags given, and the scorer's mean score.",
        tables=("vision_observations", "vision_scanners", "session_recordings"),
        optional=("vision_observations__tags",),
        stand_ins=_TAG_TABLES,
        sql="""WITH tagged AS (
    SELECT project_id, scanner_id, session_id, count(*) AS tags
    FROM {vision_observations__tags} GROUP BY 1, 2, 3
)
SELECT
    o.project_id,
    CAST(r.start_time AT TIME ZONE 'UTC' AS DATE) AS day,
    o.scanner_id,
    s.name AS scanner_name,
    s.scanner_type,
    count(*) AS sessions_observed,
    count(*) FILTER (WHERE o.status = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE o.status = 'failed') AS failed,
    count(*) FILTER (WHERE o.result_verdict = 'yes') AS verdict_yes,
    count(*) FILTER (WHERE o.result_verdict = 'no') AS verdict_no,
    count(*) FILTER (WHERE o.result_verdict = 'inconclusive') AS verdict_inconclusive,
    count(t.tags) AS tagged_sessions,
    coalesce(sum(t.tags), 0) AS tags,
    avg(o.result_score) AS mean_score
FROM {vision_observations} AS o
JOIN {vision_scanners} AS s ON s.project_id = o.project_id AND s.id = o.scanner_id
LEFT JOIN {session_recordings} AS r ON r.project_id = o.project_id AND r.id = o.session_id
LEFT JOIN tagged AS t
    ON t.project_id = o.project_id AND t.scanner_id = o.scanner_id AND t.session_id = o.session_id
GROUP BY 1, 2, 3, 4, 5""",
    ),
    View(
        name="v_vision_tags_per_day",
        description="One row per project, UTC day of the recording's `start_time`, existing scanner and "
        "classifier tag (`freeform`: a tag outside the scanner's vocabulary): sessions given that tag.",
        tables=("vision_scanners", "session_recordings"),
        optional=("vision_observations__tags", "vision_observations__tags_freeform"),
        stand_ins=_TAG_TABLES,
        sql="""SELECT
    t.project_id,
    CAST(r.start_time AT TIME ZONE 'UTC' AS DATE) AS day,
    t.scanner_id,
    t.tag,
    t.freeform,
    count(*) AS sessions
FROM (SELECT project_id, scanner_id, session_id, tag, FALSE AS freeform FROM {vision_observations__tags}
      UNION ALL
      SELECT project_id, scanner_id, session_id, tag, TRUE AS freeform FROM {vision_observations__tags_freeform}
     ) AS t
JOIN {vision_scanners} AS s ON s.project_id = t.project_id AND s.id = t.scanner_id
LEFT JOIN {session_recordings} AS r ON r.project_id = t.project_id AND r.id = t.session_id
GROUP BY 1, 2, 3, 4, 5""",
    ),
)
VIEWS += VISION_VIEWS


def view_dialect(pipeline: Any) -> str | None:
    """The SQL dialect views are written for at this pipeline's destination, None where they are skipped."""
    destination = pipeline.destination
    if destination is None or str(destination.destination_type).endswith(".filesystem"):
        return None  # Parquet/filesystem: no database to hold views
    dialect = destination.capabilities().sqlglot_dialect
    return dialect if dialect in DIALECTS else None


def _existing_tables(client: Any) -> set[str]:
    dataset = client.capabilities.casefold_identifier(client.dataset_name)
    rows = client.execute_sql(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = %s AND table_type = 'BASE TABLE'",
        dataset,
    )
    return {str(row[0]) for row in rows or ()}


def create_views(pipeline: Any) -> list[str]:
    """Create or refresh every view whose source tables exist; returns the names of the views created.

    Does nothing on destinations without views (Parquet, non-DuckDB/Postgres warehouses). A view that
    fails to build is logged and skipped: views never fail a sync.
    """
    dialect = view_dialect(pipeline)
    if dialect is None:
        return []
    created: list[str] = []
    try:
        with pipeline.sql_client() as client:
            existing = _existing_tables(client)
            qualified = {t: client.make_qualified_table_name(t) for t in existing}
            for view in VIEWS:
                if _create_view(client, view, dialect, existing, qualified):
                    created.append(view.name)
    except Exception as error:  # noqa: BLE001 - views never fail a sync
        logger.warning("views not refreshed: %s", _first_line(error))
    return created


def _create_view(client: Any, view: View, dialect: str, existing: set[str], qualified: Mapping[str, str]) -> bool:
    missing = [t for t in view.tables if t not in existing]
    if missing:
        logger.debug("view %s skipped: no table %s yet", view.name, ", ".join(missing))
        return False
    name = client.make_qualified_table_name(view.name)
    try:
        with client.begin_transaction():
            # drop + create, not CREATE OR REPLACE: Postgres cannot replace a view whose columns changed
            client.execute_sql(f"DROP VIEW IF EXISTS {name}")
            client.execute_sql(f"CREATE VIEW {name} AS\n{view.render(dialect, qualified)}")
    except Exception as error:  # noqa: BLE001 - one broken view must not stop the others
        logger.warning("view %s not created: %s", view.name, _first_line(error))
        return False
    return True


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def drop_views(pipeline: Any) -> list[str]:
    """Drop the views; returns their names. Postgres refuses to drop a table a view depends on, so a
    full refresh (which drops the tables) must drop the views first; the run creates them again."""
    if view_dialect(pipeline) is None:
        return []
    with pipeline.sql_client() as client:
        if not client.has_dataset():
            return []
        for view in VIEWS:
            client.execute_sql(f"DROP VIEW IF EXISTS {client.make_qualified_table_name(view.name)}")
    return [view.name for view in VIEWS]


