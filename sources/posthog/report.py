"""What a run did, per project and resource: the run summary and the `_sync_report` table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from .arrow import dlt_columns
from .endpoints import Endpoint

REPORT_TABLE = "_sync_report"
REPORT_COLUMNS = dlt_columns({
    "run_started_at": "timestamp",
    "project_id": "bigint",
    "resource": "text",
    "requests": "bigint",
    "throttled": "bigint",
    "retries": "bigint",
    "pages": "bigint",
    "rows_fetched": "bigint",
    "rows_loaded": "bigint",
    "api_count": "bigint",
    "unproven": "bigint",
    "deleted_marked": "bigint",
    "duration_s": "double",
    "status": "text",
    "reason": "text",
})


@dataclass
class ResourceRun:
    """Counters for one resource of one project in one run."""

    project_id: int
    resource: str
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    pages: int = 0
    rows_fetched: int = 0
    rows_loaded: int = 0
    api_count: int | None = None
    # rows of full listings not proven read: counted but never returned, or the list never settled
    unproven: int = 0
    # stored rows this run found deleted upstream and marked (`Endpoint.deleted_mark`)
    deleted_marked: int = 0
    duration_s: float = 0.0
    status: str = "ok"  # ok | skipped | incomplete | failed | removed (the endpoint is gone from PostHog)
    reason: str | None = None
    error: Exception | None = field(default=None, repr=False, compare=False)  # what stopped it, not stored
    # date_from readers: where the window began, and the ids listed in it when it was read to the end
    # (None: stopped, first sync, or too many to keep); for deletion marks, not stored
    window_from: datetime | None = field(default=None, repr=False, compare=False)
    listed: set[str] | None = field(default=None, repr=False, compare=False)


@dataclass
class Job:
    """One endpoint of one project in one run: what its requests are for, where they count, its state.

    Created once per (endpoint, project) and handed to the readers and to every client call they make.
    """

    endpoint: Endpoint
    project_id: int
    run: ResourceRun
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The endpoint's list path for the project (always `/api/projects/`, shared/posthog-api.md §2)."""
        return f"/api/projects/{self.project_id}/{self.endpoint.path}/"


# the fields of a run that `_sync_report` stores (`error` is for messages, the window for deletion marks)
_STORED = [f for f in fields(ResourceRun) if f.name not in ("error", "window_from", "listed")]


@dataclass
class SyncReport:
    """Collects per-resource counters, skips and schema drift for one run."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    runs: dict[tuple[int, str], ResourceRun] = field(default_factory=dict)
    drift: dict[str, set[str]] = field(default_factory=dict)
    # called after every page read, for progress displays
    on_page: Callable[[ResourceRun], None] | None = None
    _clock: dict[tuple[int, str], float] = field(default_factory=dict)
    # runs whose `_sync_report` rows a resource already sent with its own load
    _written: set[tuple[int, str]] = field(default_factory=set)

    def fetched(self, run: ResourceRun, rows: int) -> None:
        """Count one page of `rows` read for a resource of a project."""
        run.pages += 1
        run.rows_fetched += rows
        if self.on_page is not None:
            self.on_page(run)

    def run(self, project_id: int, resource: str) -> ResourceRun:
        """The counters of one project's resource, created on first use."""
        key = (project_id, resource)
        if key not in self.runs:
            self.runs[key] = ResourceRun(project_id, resource)
            self._clock[key] = time.monotonic()
        return self.runs[key]

    def job(self, endpoint: Endpoint, project_id: int, state: dict[str, Any] | None = None) -> Job:
        """The job of one project's endpoint, counted on its run (created on first use)."""
        return Job(endpoint, project_id, self.run(project_id, endpoint.name), {} if state is None else state)

    def finish(self, run: ResourceRun) -> None:
        """Stop the clock of one project's resource."""
        run.duration_s = round(time.monotonic() - self._clock[(run.project_id, run.resource)], 3)

    def rows(self) -> list[dict[str, Any]]:
        """Rows for the `_sync_report` table."""
        return [self._row(run) for run in self.runs.values()]

    def written(self, resource: str) -> list[dict[str, Any]]:
        """The `_sync_report` rows of one resource, which its load carries; marked as sent."""
        keys = [key for key in self.runs if key[1] == resource]
        self._written.update(keys)
        return [self._row(self.runs[key]) for key in keys]

    def failed(self, resource: str, reason: str, project_ids: list[int]) -> None:
        """Mark a resource failed in every project: its load committed nothing, its rows are unwritten."""
        for project_id in project_ids:
            run = self.run(project_id, resource)
            run.status, run.reason, run.rows_loaded = "failed", reason, 0
            self._written.discard((project_id, resource))

    def unwritten(self) -> list[dict[str, Any]]:
        """Rows of runs no committed load carried (a failed resource): loaded on their own."""
        return [row for row in self.rows() if (row["project_id"], row["resource"]) not in self._written]

    def _row(self, run: ResourceRun) -> dict[str, Any]:
        return {"run_started_at": self.started_at, **{f.name: getattr(run, f.name) for f in _STORED}}
