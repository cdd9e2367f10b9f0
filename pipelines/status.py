"""`posthog-export status`: per project and resource, what the DuckDB output holds and how the last runs went.

Reads only the output file: cursors from the dlt pipeline state stored in the dataset
(`_dlt_pipeline_state` of the newest completed load), run history from `_sync_report`, and row counts
from the tables themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from dlt.common.versioned_state import decompress_state

from sources.posthog import ENDPOINTS

from .output import echo, print_table
from .query import open_output

SOURCE_NAME = "posthog"  # the dlt source whose state holds the cursors


@dataclass
class ResourceStatus:
    """One project's resource: last success, cursor, rows held, and the last run's outcome."""

    project_id: int
    resource: str
    last_success: datetime | None = None
    cursor: str | None = None
    pending: int = 0  # desktop recordings to re-read until they are final
    rows: int | None = None
    last_run: datetime | None = None
    last_status: str | None = None
    last_reason: str | None = None


@dataclass
class Status:
    """Everything `status` shows for one output file."""

    output: str
    dataset: str
    pipeline_name: str
    resources: list[ResourceStatus] = field(default_factory=list)
    state_found: bool = False
    other_pipelines: list[str] = field(default_factory=list)


def _tables(con: duckdb.DuckDBPyConnection, dataset: str) -> set[str]:
    rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [dataset])
    return {r[0] for r in rows.fetchall()}


def _stored_state(con: duckdb.DuckDBPyConnection, dataset: str, pipeline_name: str) -> dict[str, Any] | None:
    """The pipeline state committed with the newest completed load, as dlt stores it in the dataset."""
    row = con.execute(
        f'SELECT s.state FROM "{dataset}"._dlt_pipeline_state AS s '
        f'JOIN "{dataset}"._dlt_loads AS l ON l.load_id = s._dlt_load_id '
        "WHERE s.pipeline_name = ? AND l.status = 0 ORDER BY l.load_id DESC LIMIT 1",
        [pipeline_name],
    ).fetchall()
    return decompress_state(row[0][0]) if row else None


def read_status(output: str | Path, *, dataset: str = "posthog", pipeline_name: str = "posthog") -> Status:
    """Collect the status of every project and resource found in the DuckDB output.

    Raises FileNotFoundError when the file does not exist and LookupError when it holds no such dataset.
    """
    status = Status(str(output), dataset, pipeline_name)
    found: dict[tuple[int, str], ResourceStatus] = {}

    def entry(project_id: Any, resource: str) -> ResourceStatus:
        key = (int(project_id), resource)
        if key not in found:
            found[key] = ResourceStatus(*key)
        return found[key]

    with open_output(output) as con:
        tables = _tables(con, dataset)
        if not tables:
            raise LookupError(f"no dataset {dataset!r} in {str(output)!r}: check --output and --dataset")
        if {"_dlt_pipeline_state", "_dlt_loads"} <= tables:
            state = _stored_state(con, dataset, pipeline_name)
            status.state_found = state is not None
            if state is None:
                names = con.execute(f'SELECT DISTINCT pipeline_name FROM "{dataset}"._dlt_pipeline_state')
                status.other_pipelines = sorted(r[0] for r in names.fetchall())
            resources = ((state or {}).get("sources", {}).get(SOURCE_NAME, {}).get("resources", {}))
            for resource, resource_state in resources.items():
                if resource not in ENDPOINTS:
                    continue
                for project_id, project_state in (resource_state.get("projects") or {}).items():
                    item = entry(project_id, resource)
                    item.cursor = project_state.get("cursor")
                    item.pending = len(project_state.get("pending") or ())
        for resource in ENDPOINTS:
            if resource in tables:
                counts = con.execute(f'SELECT project_id, count(*) FROM "{dataset}"."{resource}" GROUP BY 1')
                for project_id, rows in counts.fetchall():
                    entry(project_id, resource).rows = rows
        if "_sync_report" in tables:
            history = con.execute(
                "SELECT project_id, resource, max(run_started_at) FILTER (WHERE status = 'ok'), "
                "max(run_started_at), arg_max(status, run_started_at), arg_max(reason, run_started_at) "
                f'FROM "{dataset}"._sync_report GROUP BY 1, 2'
            )
            for project_id, resource, last_success, last_run, last_status, reason in history.fetchall():
                if resource in ENDPOINTS:
                    item = entry(project_id, resource)
                    item.last_success, item.last_run = last_success, last_run
                    item.last_status, item.last_reason = last_status, reason
    order = list(ENDPOINTS)
    status.resources = sorted(found.values(), key=lambda r: (r.project_id, order.index(r.resource)))
    return status


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


def _cursor(item: ResourceStatus) -> str:
    if ENDPOINTS[item.resource].sync == "full":
        return "full scan"
    if not item.cursor:
        return ""
    shown = _when(datetime.fromisoformat(item.cursor.replace("Z", "+00:00")))
    return f"{shown} (+{item.pending} pending)" if item.pending else shown


def print_status(status: Status) -> None:
    """Print one line per project and resource, then the last run's errors and skips."""
    if not status.state_found:
        others = f" (pipelines found: {', '.join(status.other_pipelines)}; use --pipeline-name)" \
            if status.other_pipelines else ""
        echo(f"warning: no dlt state of pipeline {status.pipeline_name!r} in {status.output}{others}; "
             "cursors not shown", err=True)
    if not status.resources:
        echo(f"nothing synced yet into {status.output} (dataset {status.dataset})")
        return
    print_table(
        ["project", "resource", "last success", "cursor", "rows", "last run", "status"],
        [(str(r.project_id), r.resource, _when(r.last_success), _cursor(r), r.rows, _when(r.last_run),
          r.last_status or "") for r in status.resources],
    )
    for r in status.resources:
        if r.last_status and r.last_status != "ok":
            echo(f"{r.last_status}: {r.resource} of project {r.project_id} at {_when(r.last_run)}: "
                 f"{r.last_reason or 'no reason recorded'}")
