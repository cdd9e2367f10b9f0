"""`posthog-export status`: per project and resource, what the destination holds and how the last runs went.

Reads everything through dlt from the destination `sync` wrote to (DuckDB, Parquet, Postgres, any
destination dlt can read back with `pipeline.dataset()`): cursors from the pipeline state dlt stored with
the newest completed load, run history from `_sync_report`, and row counts from the tables themselves.
The pipeline is attached in a throwaway working folder, so status needs no local pipeline folder and
never touches the one a running sync uses.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt

from sources.posthog import ENDPOINTS
from sources.posthog.sync import state_cursor, state_pending

from .output import echo, print_table
from .runner import REPORT_COLUMNS, destination_for

SOURCE_NAME = "posthog"  # the dlt source whose state holds the cursors
LOCAL = ("duckdb", "parquet", "filesystem")  # destinations whose `--output` is a path here (or a bucket URL)
# the counters of one `_sync_report` row (a resource of a project in one run), summed for a run's totals
COUNTERS = ("requests", "throttled", "retries", "pages", "rows_fetched", "rows_loaded", "unproven", "duration_s")
JSON_VERSION = 1


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
    run: dict[str, Any] = field(default_factory=dict)  # the last run's `_sync_report` counters


@dataclass
class Status:
    """Everything `status` shows for one destination dataset."""

    destination: str
    output: str | None
    dataset: str
    pipeline_name: str
    resources: list[ResourceStatus] = field(default_factory=list)
    state_found: bool = False
    other_pipelines: list[str] = field(default_factory=list)
    last_run: list[dict[str, Any]] = field(default_factory=list)  # `_sync_report` rows of the newest run

    @property
    def where(self) -> str:
        """The destination as the user named it: the output path or URL, else destination and dataset."""
        return self.output if self.output else f"{self.destination} dataset {self.dataset}"


def _check_local_output(destination: str, output: str) -> None:
    """Refuse a local output that does not exist, before dlt would create an empty one."""
    if destination not in LOCAL or "://" in output:
        return
    path = Path(output)
    if destination == "duckdb" and not path.is_file():
        raise FileNotFoundError(f"no DuckDB file at {output!r}: run `posthog-export sync` first or pass --output")
    if destination != "duckdb" and not path.is_dir():
        raise FileNotFoundError(
            f"no Parquet folder at {output!r}: run `posthog-export sync --destination parquet` first or pass --output"
        )


def read_status(
    destination: str = "duckdb", output: str | None = None, *, dataset: str = "posthog", pipeline_name: str = "posthog"
) -> Status:
    """Collect the status of every project and resource found in the destination dataset.

    Raises FileNotFoundError when a local output does not exist and LookupError when the destination holds
    no such dataset; destination errors (unreachable, no credentials) come from dlt.
    """
    output = output if destination in LOCAL else None
    if output is not None:
        _check_local_output(destination, output)
    status = Status(destination, output, dataset, pipeline_name)
    target = destination_for(destination, output or "", dataset, read_only=True)
    with tempfile.TemporaryDirectory(prefix="posthog-export-status-") as workdir:
        pipeline = dlt.pipeline(pipeline_name, destination=target, dataset_name=dataset, pipelines_dir=workdir)
        pipeline.sync_destination()  # restores state and schema of the newest completed load, if any
        status.state_found = SOURCE_NAME in pipeline.state.get("sources", {})
        with pipeline.dataset() as data:  # one connection for every query below
            _read(status, pipeline.state, data)
    return status


def _read(status: Status, state: Any, data: Any) -> None:
    # plain SQL on the dataset's client: dlt 1.31's relations fail on sqlglot 30 (`qualify(infer_schema=)`)
    client = data.sql_client

    def run(sql: str, *tables: str) -> list[tuple[Any, ...]]:
        return list(client.execute_sql(sql.format(*map(client.make_qualified_table_name, tables))) or [])

    found: dict[tuple[int, str], ResourceStatus] = {}

    def entry(project_id: Any, resource: str) -> ResourceStatus:
        key = (int(project_id), resource)
        if key not in found:
            found[key] = ResourceStatus(*key)
        return found[key]

    schema = data.schema
    tables = set(schema.data_table_names(seen_data_only=True))
    if not tables:
        raise LookupError(
            f"no dataset {status.dataset!r} in {status.where} (nothing synced yet): "
            "check --destination, --output and --dataset"
        )
    if not status.state_found:
        names = run("SELECT DISTINCT pipeline_name FROM {}", schema.state_table_name)
        status.other_pipelines = sorted(r[0] for r in names if r[0] != status.pipeline_name)
    resources = state.get("sources", {}).get(SOURCE_NAME, {}).get("resources", {})
    for resource, resource_state in resources.items():
        if resource not in ENDPOINTS:
            continue
        for project_id, project_state in (resource_state.get("projects") or {}).items():
            item = entry(project_id, resource)
            item.cursor = state_cursor(project_state)
            item.pending = state_pending(project_state)
    for resource in ENDPOINTS:
        if resource in tables:
            counts = run("SELECT project_id, COUNT(*) FROM {} GROUP BY project_id", resource)
            for project_id, rows in counts:
                entry(project_id, resource).rows = int(rows)
    if "_sync_report" in tables:
        _read_report(status, entry, run, set(schema.tables["_sync_report"]["columns"]))
    for item in found.values():
        if item.rows is None and item.resource in tables:
            item.rows = 0  # the table holds rows of other projects only
    order = list(ENDPOINTS)
    status.resources = sorted(found.values(), key=lambda r: (r.project_id, order.index(r.resource)))


def _read_report(
    status: Status, entry: Callable[[Any, str], ResourceStatus], run: Callable[..., list[tuple[Any, ...]]],
    present: set[str],
) -> None:
    """Per project and resource its last run and last success; and every row of the newest run."""
    columns = [c for c in REPORT_COLUMNS if c in present]  # a report written by an older version lacks some
    listed = ", ".join(columns)
    last = run(
        f"SELECT {listed}, last_success FROM (SELECT {listed}, "
        "MAX(CASE WHEN status = 'ok' THEN run_started_at END) OVER (PARTITION BY project_id, resource) "
        "AS last_success, ROW_NUMBER() OVER (PARTITION BY project_id, resource ORDER BY run_started_at DESC) "
        "AS newest FROM {}) AS runs WHERE newest = 1",
        "_sync_report",
    )
    for values in last:
        row = dict(zip([*columns, "last_success"], values, strict=True))
        if row["resource"] not in ENDPOINTS:
            continue
        item = entry(row["project_id"], row["resource"])
        item.last_success, item.last_run = row["last_success"], row["run_started_at"]
        item.last_status, item.last_reason = row["status"], row["reason"]
        item.run = {c: row.get(c) for c in (*COUNTERS, "api_count")}
    newest = run(f"SELECT {listed} FROM {{0}} WHERE run_started_at = (SELECT MAX(run_started_at) FROM {{0}})",
                 "_sync_report")
    status.last_run = [dict(zip(columns, values, strict=True)) for values in newest]


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


def _iso(moment: datetime | None) -> str | None:
    """A moment as ISO 8601 in UTC with a `Z`, as the cursors are stored."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # a destination without time zones stores UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _cursor(item: ResourceStatus) -> str:
    if ENDPOINTS[item.resource].sync == "full":
        return "full scan"
    if not item.cursor:
        return ""
    shown = _when(datetime.fromisoformat(item.cursor.replace("Z", "+00:00")))
    return f"{shown} (+{item.pending} pending)" if item.pending else shown


def _number(value: Any) -> int | float | None:
    if value is None:
        return None
    return round(float(value), 3) if isinstance(value, float) or not float(value).is_integer() else int(value)


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest run's totals over its projects and resources, and how many ended in each status."""
    if not rows:
        return None
    totals: dict[str, Any] = {"started_at": _iso(rows[0]["run_started_at"]), "resources": len(rows)}
    for name in ("ok", "skipped", "incomplete", "failed", "removed"):
        totals[name] = sum(1 for r in rows if r["status"] == name)
    for name in COUNTERS:
        totals[name] = _number(sum(r.get(name) or 0 for r in rows))
    return totals


def status_document(status: Status) -> dict[str, Any]:
    """The `status --json` document (keys documented in README.md, "Ad hoc SQL and sync status")."""
    return {
        "version": JSON_VERSION,
        "destination": status.destination,
        "output": status.output,
        "dataset": status.dataset,
        "pipeline_name": status.pipeline_name,
        "state_found": status.state_found,
        "other_pipelines": status.other_pipelines,
        "last_run": _totals(status.last_run),
        "resources": [
            {
                "project_id": r.project_id,
                "resource": r.resource,
                "sync": ENDPOINTS[r.resource].sync,
                "rows": r.rows,
                "cursor": r.cursor,  # as the dlt state stores it: ISO 8601 UTC
                "pending": r.pending,
                "last_success": _iso(r.last_success),
                "last_run": _iso(r.last_run),
                "status": r.last_status,
                "reason": r.last_reason,
                "unproven": _number(r.run.get("unproven")),
                "run": {name: _number(r.run.get(name)) for name in (*COUNTERS, "api_count")} if r.run else None,
            }
            for r in status.resources
        ],
    }


def _warn_without_state(status: Status) -> None:
    if not status.state_found:
        others = f" (pipelines found: {', '.join(status.other_pipelines)}; use --pipeline-name)" \
            if status.other_pipelines else ""
        echo(f"warning: no dlt state of pipeline {status.pipeline_name!r} in {status.where}{others}; "
             "cursors not shown", err=True)


def print_status_json(status: Status) -> None:
    """Print the status as one JSON document on stdout (a missing state is still warned of on stderr)."""
    _warn_without_state(status)
    echo(json.dumps(status_document(status), indent=2))


def print_status(status: Status) -> None:
    """Print one line per project and resource, then the last run's errors and skips."""
    _warn_without_state(status)
    if not status.resources:
        echo(f"nothing synced yet into {status.where} (dataset {status.dataset})")
        return
    print_table(
        ["project", "resource", "last success", "cursor", "rows", "last run", "status"],
        [(str(r.project_id), r.resource, _when(r.last_success), _cursor(r), r.rows, _when(r.last_run),
          r.last_status or "") for r in status.resources],
    )
    for r in status.resources:
        if r.last_status == "removed":  # gone from PostHog: what the table holds is all there will be
            echo(f"removed: {r.resource} of project {r.project_id} (last asked {_when(r.last_run)}): "
                 f"{r.last_reason or 'removed from PostHog'}")
        elif r.last_status and r.last_status != "ok":
            echo(f"{r.last_status}: {r.resource} of project {r.project_id} at {_when(r.last_run)}: "
                 f"{r.last_reason or 'no reason recorded'}")
