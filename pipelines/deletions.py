"""Deletion marks: stored recordings PostHog deleted get a `deleted_at` time; the rows are kept.

PostHog drops a deleted recording from its list at once and lists no deletions (shared/posthog-api.md §7.1),
so absence is the only sign. Two checks find it, both after the recordings load of a run:

- the window: a run that read its re-read window (`date_from` to now) to the end knows every id PostHog still
  lists there; a stored, unexpired, unmarked row that started in the window and was not listed is deleted.
- `--verify-deletions`: stored, unexpired, unmarked rows older than the window are asked for by `session_ids`,
  100 at a time, oldest first, within the rate budget; progress (the last row checked) is kept in dlt state,
  so the next run goes on, and a round that reached the end starts over. Recordings persisted to long-term
  storage come back from Postgres without a deletion filter (their `expiry_time` is null, §7.1), so each of
  those is confirmed by `GET /:id/`: 404 means deleted.

Candidates are found and read back through the destination's SQL client (DuckDB, Parquet via dlt's views,
Postgres, ...) in chunks, and marked rows are loaded again through dlt (merge), so Parquet compaction and
every destination work as for any load. A row PostHog lists again is loaded from PostHog, `deleted_at` null.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
import pyarrow as pa

from sources.posthog import Endpoint, Session
from sources.posthog.arrow import ARROW_TYPES, dlt_columns
from sources.posthog.endpoints import MERGE
from sources.posthog.errors import BudgetExhausted, ResourceUnavailable
from sources.posthog.report import REPORT_COLUMNS, REPORT_TABLE, Job, ResourceRun
from sources.posthog.sync import REREAD_BATCH, _reread, iso, parse_time

from .parquet import _connect, _quote, _urls

logger = logging.getLogger("posthog_export")

# a row this close to its expiry may have expired on PostHog's clock: expired rows vanish too (§7.1)
EXPIRY_MARGIN = timedelta(hours=1)
# rows without `expiry_time` (older servers): assume the shortest plan's retention
FALLBACK_RETENTION = timedelta(days=30)
CHUNK = 1000  # stored rows read from the destination per query
READ_BACK = 500  # marked rows read back per query


def marks_name(endpoint: Endpoint) -> str:
    """The run-summary resource (and dlt resource) of an endpoint's deletion marks."""
    return f"{endpoint.name}_deletions"


@dataclass
class _Project:
    """One project's marks: its run, the ids found deleted, verification progress."""

    run: ResourceRun
    deleted: list[str] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    progress_changed: bool = False


def mark_deletions(
    pipeline: Any, session: Session, endpoint: Endpoint, *, verify: bool, file_format: str | None,
    restart: bool = False,
) -> bool:
    """Mark stored rows of `endpoint` that PostHog deleted (see the module docstring); True if marks loaded.

    `verify` also checks rows older than the window (`--verify-deletions`); `restart` forgets the progress
    of earlier verification rounds (a full refresh).
    """
    column = endpoint.deleted_mark
    assert column
    name = marks_name(endpoint)
    had = _saved_progress(pipeline, name)
    saved = {} if restart else had
    projects: dict[int, _Project] = {}
    with _sql_client(pipeline) as sql:
        schema = pipeline.default_schema
        if endpoint.name not in schema.tables:
            return False
        types = {n: c.get("data_type") for n, c in schema.get_table_columns(endpoint.name).items()}
        stored = _Stored(sql, endpoint, types)
        if column not in stored.columns:
            return False
        for project_id in session.project_ids():
            run = session.report.runs.get((project_id, endpoint.name))
            if run is None or run.window_from is None:
                continue  # not read this run
            window = run.status == "ok" and run.listed is not None
            if not window and not verify:
                continue
            alive = session.client.server_time() + EXPIRY_MARGIN
            deleted: list[str] = []
            if window:
                assert run.listed is not None
                for ids in stored.ids(project_id, alive, since=run.window_from):
                    deleted.extend(i for i, _ in ids if i not in run.listed)
                run.listed = None  # used: let the ids go
            if not deleted and not verify:
                continue  # nothing to report: no summary row, no `_sync_report` load of its own
            job = Job(endpoint, project_id, session.report.run(project_id, name))
            project = projects[project_id] = _Project(job.run, deleted, saved.get(str(project_id)))
            if verify:
                _verify(job, session, stored, project, alive, run.window_from)
            session.report.finish(job.run)
        noticed = datetime.now(UTC)
        tables = [stored.read_back(p, ids, noticed) for p, x in projects.items() for ids in _chunks(x.deleted)]
    for project_id, project in projects.items():
        project.run.deleted_marked = project.run.rows_loaded = len(project.deleted)
        if project.deleted:
            logger.info("%s project %s: %d deleted in PostHog, marked", endpoint.name, project_id, len(project.deleted))
    progress = {str(p): x.progress for p, x in projects.items() if x.progress_changed}
    if not any(t.num_rows for t in tables) and not progress and not (restart and had):
        return False
    _load(pipeline, session, endpoint, tables, {**saved, **progress}, file_format)
    return any(t.num_rows for t in tables)


def _chunks(ids: list[str], size: int = READ_BACK) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _saved_progress(pipeline: Any, name: str) -> dict[str, Any]:
    resources = pipeline.state.get("sources", {}).get(pipeline.default_schema_name, {}).get("resources", {})
    return dict(resources.get(name, {}).get("projects", {}))


def _load(
    pipeline: Any, session: Session, endpoint: Endpoint, tables: list[pa.Table], progress: dict[str, Any],
    file_format: str | None,
) -> None:
    """Load the marked rows (merge on the key), the verification progress and the marks' `_sync_report`
    rows, in one dlt load."""
    name = marks_name(endpoint)

    columns: dict[str, Any] = {"project_id": "bigint", **endpoint.columns}
    # hints per table variant: the `_sync_report` rows must not take the recordings' columns
    marked = dlt.mark.make_hints(
        table_name=endpoint.name, write_disposition=MERGE, primary_key=list(endpoint.key),  # type: ignore[arg-type]
        columns=dlt_columns(columns, endpoint.key),
    )

    def rows() -> Iterator[Any]:
        state = dlt.current.resource_state()
        state["projects"] = {k: v for k, v in progress.items() if v is not None}
        for table in tables:
            if table.num_rows:
                yield dlt.mark.with_hints(table, marked, create_table_variant=True)
        report = session.report.written(name)
        if report:
            hints = dlt.mark.make_hints(table_name=REPORT_TABLE, write_disposition="append", primary_key=[],
                                        columns=REPORT_COLUMNS)
            yield dlt.mark.with_hints(report, hints, create_table_variant=True)

    resource = dlt.resource(
        rows, name=name, table_name=endpoint.name, write_disposition=MERGE,  # type: ignore[arg-type]
        primary_key=list(endpoint.key),
    )
    pipeline.run(resource, loader_file_format=file_format)


def _verify(
    job: Job, session: Session, stored: _Stored, project: _Project, alive: datetime, window_from: datetime
) -> None:
    """Check stored rows older than the window by `session_ids`, from the saved progress on, until the round
    ends or the rate budget does."""
    ctx = session.contexts[job.endpoint.name]
    after = None
    if project.progress:
        after = (parse_time(project.progress["start_time"]), project.progress["id"])
    checked = 0
    try:
        while True:
            chunk = next(stored.ids(job.project_id, alive, before=window_from, after=after, limit=CHUNK), [])
            if not chunk:
                logger.info("%s project %s: deletions verified to the end (%d rows this run); the next run starts "
                            "over", job.endpoint.name, job.project_id, checked)
                project.progress, project.progress_changed = None, True
                return
            for first in range(0, len(chunk), REREAD_BATCH):
                batch = chunk[first : first + REREAD_BATCH]
                project.deleted.extend(_gone(job, ctx, batch))
                last_id, last_start = batch[-1]
                project.progress, project.progress_changed = {"start_time": iso(last_start), "id": last_id}, True
                checked += len(batch)
            after = (chunk[-1][1], chunk[-1][0])
    except BudgetExhausted as error:
        job.run.status = "incomplete"
        job.run.reason = f"{error}; verified {checked} rows, the next --verify-deletions run goes on from there"
        job.run.error = error
        logger.warning("%s project %s: %s", job.endpoint.name, job.project_id, job.run.reason)


def _gone(job: Job, ctx: Any, batch: list[tuple[str, datetime]]) -> list[str]:
    """The ids of `batch` PostHog no longer has: not returned by `session_ids`, or returned from Postgres
    (persisted, no deletion filter, §7.1) but 404 on `GET /:id/`."""
    cursor = job.endpoint.cursor
    assert cursor
    rows = [{"id": i, cursor: iso(start)} for i, start in batch]
    returned = _reread(job, ctx, rows)
    ctx.report.fetched(job.run, len(returned))
    found = {r["id"]: r for r in returned}
    gone = [i for i, _ in batch if i not in found]
    endpoint = job.endpoint
    detail = Job(replace(endpoint, buckets=endpoint.detail_buckets or endpoint.buckets), job.project_id, job.run)
    for ident, row in found.items():
        if row.get("expiry_time") is not None:
            continue  # from ClickHouse, which filters deletions
        try:
            ctx.client.get(f"{job.path}{ident}/", job=detail)
        except ResourceUnavailable as error:
            if error.status != 404:
                raise
            gone.append(ident)
    return gone


@contextmanager
def _sql_client(pipeline: Any) -> Iterator[Any]:
    """A SQL client over the stored tables: the destination's own, or on a bucket one over the tables'
    compacted Parquet files (dlt's filesystem client cannot open a remote bucket's secret on DuckDB 2.0)."""
    if str(pipeline.destination.destination_type).rsplit(".", 1)[-1] != "filesystem":
        with pipeline.dataset() as data:
            yield data.sql_client
        return
    with pipeline.destination_client() as client, tempfile.TemporaryDirectory() as spill:
        con = _connect(client.fs_client, spill)
        try:
            yield _ParquetSql(con, client.fs_client, client.get_table_dir)
        finally:
            con.close()


@dataclass
class _ParquetSql:
    """What `_Stored` asks of a dlt SQL client, answered by DuckDB over a table folder's Parquet files."""

    con: Any
    fs: Any
    folder: Callable[[str], str]

    def make_qualified_table_name(self, name: str) -> str:
        """A view over the table's files (run after compaction: they hold its current rows once)."""
        folder = self.folder(name).rstrip("/")
        self.fs.invalidate_cache(folder)  # a bucket's listing may be cached from before the compaction
        files = _urls(self.fs, sorted(self.fs.glob(f"{folder}/*.parquet")))
        self.con.execute(f"CREATE OR REPLACE VIEW {_quote(name)} AS "
                         f"SELECT * FROM read_parquet([{files}], union_by_name = true)")
        return _quote(name)

    def escape_column_name(self, name: str) -> str:
        """A quoted identifier."""
        return _quote(name)

    def execute_sql(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a query with `%s` parameters, as dlt's clients take them."""
        return self.con.execute(sql.replace("%s", "?"), list(args)).fetchall()


class _Stored:
    """Queries on an endpoint's stored table, through any dlt destination's SQL client."""

    def __init__(self, sql: Any, endpoint: Endpoint, columns: dict[str, Any]) -> None:
        self.sql, self.endpoint, self.columns = sql, endpoint, columns  # name: dlt data type
        self.table = sql.make_qualified_table_name(endpoint.name)
        self.q = sql.escape_column_name

    def ids(
        self, project_id: int, alive: datetime, *, since: datetime | None = None, before: datetime | None = None,
        after: tuple[datetime, str] | None = None, limit: int = CHUNK,
    ) -> Iterator[list[tuple[str, datetime]]]:
        """(id, start) of stored, unmarked, unexpired rows of a project, in (start, id) order, `limit` at a time:
        started at or after `since`, before `before`, after the (start, id) `after`."""
        q, cursor = self.q, self.endpoint.cursor
        assert cursor and self.endpoint.deleted_mark
        start, ident = q(cursor), q("id")
        where = [f"{q('project_id')} = %s", f"{q(self.endpoint.deleted_mark)} IS NULL", f"{start} IS NOT NULL"]
        args: list[Any] = [project_id]
        if "expiry_time" in self.columns:
            where.append(f"({q('expiry_time')} > %s OR ({q('expiry_time')} IS NULL AND {start} > %s))")
            args += [alive, alive - FALLBACK_RETENTION]
        else:
            where.append(f"{start} > %s")
            args.append(alive - FALLBACK_RETENTION)
        if since is not None:
            where.append(f"{start} >= %s")
            args.append(since)
        if before is not None:
            where.append(f"{start} < %s")
            args.append(before)
        while True:
            keyset, extra = "", []
            if after is not None:
                keyset = f" AND ({start} > %s OR ({start} = %s AND {ident} > %s))"
                extra = [after[0], after[0], after[1]]
            sql = (f"SELECT {ident}, {start} FROM {self.table} WHERE {' AND '.join(where)}{keyset} "
                   f"ORDER BY {start}, {ident} LIMIT {int(limit)}")
            rows = [(str(i), _utc(s)) for i, s in self.sql.execute_sql(sql, *args, *extra) or []]
            if not rows:
                return
            yield rows
            after = (rows[-1][1], rows[-1][0])

    def read_back(self, project_id: int, ids: list[str], noticed: datetime) -> pa.Table:
        """The stored rows of `ids` as Arrow, as the reader would send them, with the mark set to `noticed`."""
        types = self.columns
        names = [n for n in self.columns if not n.startswith("_dlt_")]
        q = self.q
        selected = ", ".join(
            f"CAST({q(n)} AS TEXT)" if types.get(n) == "json" else q(n) for n in names
        )
        marks = ", ".join(["%s"] * len(ids))
        sql = f"SELECT {selected} FROM {self.table} WHERE {q('project_id')} = %s AND {q('id')} IN ({marks})"
        rows = list(self.sql.execute_sql(sql, project_id, *ids) or [])
        arrays = []
        for position, name in enumerate(names):
            values = [row[position] for row in rows]
            if name == self.endpoint.deleted_mark:
                values = [noticed] * len(rows)
            kind = types.get(name)
            arrays.append(pa.array(values, ARROW_TYPES[kind]) if kind in ARROW_TYPES else pa.array(values))
        return pa.Table.from_arrays(arrays, names=names)


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
