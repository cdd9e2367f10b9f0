"""Generic readers: one per sync mode of the endpoint table, shared by every endpoint.

Each reader gets one project's slice of the resource state and yields Arrow tables. State is only
changed after the project's last page was read; dlt commits it together with the loaded data, so a
failed or killed run never moves a cursor past rows that did not land.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import dlt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from dlt.extract.items import DataItemWithMeta

from .arrow import ArrowRows, Drift, decode_page, dlt_columns, to_arrow
from .client import PostHogClient
from .endpoints import MERGE, ColumnType, Endpoint
from .errors import BudgetExhausted, PagingError, PostHogError, QueryTooBig, ResourceUnavailable, TransientError
from .feed import Feed
from .paging import QueryLimits
from .report import Job, ResourceRun, SyncReport

logger = logging.getLogger("posthog_export")

ROW = dict[str, Any]
GROUP_TYPES_LIMIT = 5  # group_type_index is 0..4 (shared/posthog-api.md §7.5)
DETAIL_WORKERS = 8  # concurrent `/:id/` reads; the client's rate budget still applies
REREAD_BATCH = 100  # rows asked for again by id (`Endpoint.reread`) at once
EDGE_MARGIN_US = 3600 * 1_000_000  # a session's parts are never this far apart (30 idle minutes end it)
MIN_WINDOW = timedelta(minutes=15)  # narrower recordings windows than this do not get cheaper
DELETED = "_deleted"  # set on the rows a run sends only to delete them (dlt's `hard_delete` hint)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEEN_KEEP = 1024  # recordings read in a run are forgotten, once past, only when more than this many
LISTED_KEEP = 500_000  # ids listed in a window kept for deletion marks; a longer window marks none
BATCH_ROWS = 40_000  # consecutive pages of one table handed to dlt as one item: dlt checks hints per item


@dataclass(frozen=True)
class StoredTable:
    """What the destination holds of an endpoint's table before a run: column types, rows per project."""

    types: Mapping[str, str] = field(default_factory=dict)
    rows: Mapping[int, int] | None = None  # None: not counted (the table exists but could not be queried)


@dataclass
class Context:
    """Everything a reader needs besides the endpoint: the client, settings and the run's report."""

    client: PostHogClient
    report: SyncReport
    lookback: timedelta
    initial_date_from: str
    evolve: bool = False
    page_sizes: Mapping[str, int] = field(default_factory=dict)
    drift: Drift = field(default_factory=Drift)
    # set when the run ends or fails: readers still running ahead stop
    cancelled: threading.Event = field(default_factory=threading.Event)
    # readers started before dlt reached this resource, per project (see `start_feeds`)
    feeds: dict[int, tuple[Job, Feed]] = field(default_factory=dict)
    # the recordings page size PostHog answers in time, shared by every project of the run
    query_limits: QueryLimits = field(default_factory=QueryLimits)
    # the destination's table before this run (the runner tells; else the schema dlt extracts into)
    stored: StoredTable | None = None

    def page_size(self, endpoint: Endpoint) -> int:
        """The configured page size for an endpoint, else its declared default."""
        size = int(self.page_sizes.get(endpoint.name, endpoint.page_size))
        return min(size, endpoint.max_page_size) if endpoint.max_page_size else size


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with `Z`: PostHog reads dates without a zone in the project's zone (§7.1)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """Parse an ISO timestamp from PostHog or our state into an aware UTC datetime."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def child_table(endpoint: Endpoint, field_name: str) -> str:
    """Name of the child table for a list field, in dlt's `parent__child` convention."""
    return f"{endpoint.name}__{field_name}"


def parent_column(endpoint: Endpoint) -> str:
    """The column in child tables that points to the parent row (e.g. `desktop_recording_id`)."""
    return f"{endpoint.name.removesuffix('s')}_id"


def parent_key(endpoint: Endpoint) -> dict[str, str]:
    """The columns in child tables that point to the parent row, each with the parent field it holds:
    `<parent>_id` for a parent keyed by `id`, else the parent's own key columns (see `Child`)."""
    if endpoint.primary_key == ("id",):
        return {parent_column(endpoint): "id"}
    return {name: name for name in endpoint.primary_key}


def dig(row: ROW, path: str) -> Any:
    """The value at a dotted path into a row's nested objects, None where any step is missing."""
    value: Any = row
    for step in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def emit(job: Job, ctx: Context, rows: list[ROW]) -> Iterator[Any]:
    """Yield one page as Arrow: the endpoint's table and one table per child list."""
    yield from page_items(job, ctx, rows)[1]


def page_items(job: Job, ctx: Context, rows: list[ROW]) -> tuple[pa.Table | None, list[Any]]:
    """One page as the endpoint's Arrow table plus the items to yield to dlt (it and its children)."""
    if not rows:
        return None, []
    endpoint = job.endpoint
    for row in rows if endpoint.lifted else ():
        row.update((name, dig(row, path)) for name, path in endpoint.lifted.items())
    stored = ctx.stored.types if ctx.stored else None
    columns: dict[str, ColumnType] = {"project_id": "bigint", **endpoint.column_types(stored)}
    if endpoint.delete_missing:
        columns[DELETED] = "bool"
    if isinstance(rows, ArrowRows):  # decoded straight into columns (see `_decoder`)
        table = rows.table(job.project_id)
    else:
        table = to_arrow(
            endpoint.name, rows, columns, drift=ctx.drift, evolve=ctx.evolve, elsewhere=endpoint.children
        )
    for name in endpoint.list_placeholders:  # not the value: unknown until read by id (§7.1)
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.nulls(table.num_rows, table.schema.field(i).type))
    job.run.rows_loaded += table.num_rows
    # hints as a table variant: dlt starts child variants from the resource's hints, and the
    # parent's declared columns must not leak into child tables
    hints = dlt_columns(columns, endpoint.key)
    for name in endpoint.late_key:
        hints[name]["nullable"] = True
    if endpoint.delete_missing:
        hints[DELETED]["hard_delete"] = True
    items = [
        dlt.mark.with_hints(
            table, dlt.mark.make_hints(table_name=endpoint.name, columns=hints), create_table_variant=True
        )
    ]
    parent = parent_key(endpoint)
    for name, child in endpoint.children.items():
        columns = {"project_id": "bigint", **{c: endpoint.columns.get(f, "text") for c, f in parent.items()},
                   "position": "bigint", **child.columns}
        values: list[ROW] = []
        for row in rows:
            for position, element in enumerate((dig(row, child.path) if child.path else row.get(name)) or ()):
                value = {child.scalar: element} if child.scalar else dict(element)
                value.update(project_id=row["project_id"], position=position)
                value.update((column, row[f]) for column, f in parent.items())
                values.append(value)
        if not values:
            continue
        key = ("project_id", *parent, "position")
        hints = dlt.mark.make_hints(
            table_name=child_table(endpoint, name),
            write_disposition=MERGE,  # type: ignore[arg-type]
            # a parent's rows are replaced as a whole: list elements have no ids of their own
            merge_key=["project_id", *parent],
            primary_key=list(key),
            columns=dlt_columns(columns, key),
        )
        arrow = to_arrow(child_table(endpoint, name), values, columns, drift=ctx.drift, evolve=ctx.evolve)
        items.append(dlt.mark.with_hints(arrow, hints, create_table_variant=True))
    return table, items


def _dedupe(rows: Iterable[ROW], seen: set[Any], key: tuple[str, ...]) -> list[ROW]:
    fresh = []
    for row in rows:
        ident = tuple(row.get(k) for k in key)
        if ident not in seen:
            seen.add(ident)
            fresh.append(row)
    return fresh


def _fetch_details(job: Job, ctx: Context, rows: list[ROW]) -> list[ROW]:
    """Enrich list rows with their full records (`/:id/`), several at a time.

    The detail row is merged onto the list row, never replaces it: PostHog's retrieve serializer can
    lack list fields (group summaries have no `session_count` there, shared/posthog-api.md §7.2).
    """

    def fetch(row: ROW) -> ROW | None:
        try:
            return {**row, **ctx.client.get(f"{job.path}{row['id']}/", job=job)}
        except ResourceUnavailable as error:
            if error.status != 404:
                raise
            logger.info("%s %s vanished while syncing; skipped", job.endpoint.name, row["id"])
            return None

    with ThreadPoolExecutor(max_workers=DETAIL_WORKERS) as pool:
        return [full for full in pool.map(fetch, rows) if full is not None]


def _end_us(endpoint: Endpoint, row: ROW) -> int | None:
    """Where a row's span ends (µs), or None while it may still grow (ongoing, or no end yet)."""
    end = row.get(endpoint.end) if endpoint.end else None
    ongoing = row.get(endpoint.ongoing) if endpoint.ongoing else False
    return None if ongoing is not False or not end else _us(end)


@dataclass
class _Window:
    """Progress of one reader: the newest cursor value handed to dlt, edge ids, rows held back."""

    newest_us: int | None
    edge: dict[str, int] = field(default_factory=dict)
    held: dict[str, ROW] = field(default_factory=dict)
    # every id the listing returned, for deletion marks (None: not collected)
    listed: set[str] | None = None

    def saw(self, rows: list[ROW]) -> None:
        """Remember the ids of a listing page (before any is dropped as a repeat or partial)."""
        if self.listed is None:
            return
        self.listed.update(str(r["id"]) for r in rows if r.get("id") is not None)
        if len(self.listed) > LISTED_KEEP:
            logger.warning("more than %d recordings in the re-read window: no deletion marks this run", LISTED_KEEP)
            self.listed = None

    def hold(self, endpoint: Endpoint, rows: list[ROW], date_to_us: int) -> list[ROW]:
        """Keep back rows that may run past `date_to` (cut there, §7.1); return the others."""
        out = []
        for row in rows:
            end = _end_us(endpoint, row)
            if end is None or end >= date_to_us - EDGE_MARGIN_US:
                self.held[row["id"]] = row
            else:
                out.append(row)
        return out


def read_date_from(job: Job, ctx: Context) -> Iterator[Any]:
    """Server-side incremental: `date_from` = last cursor minus the lookback, merged on key.

    Recordings that straddle a window's edge come back partial (§7.1): at the lower edge with a later
    start, at a `date_to` with a cut end. Ids seen near the last edge are kept in state with their
    start; a row returned with a later start than stored is partial and is read again by `session_ids`.
    For deletion marks (`endpoint.deleted_mark`) the run keeps where its window began and, once read to
    the end on an incremental run, every id listed in it.
    A recordings query too big for ClickHouse (§6) is asked for in smaller pages, then narrower windows;
    the page size that worked is kept in state for the next run.
    """
    endpoint, state = job.endpoint, job.state
    cursor = state.get("cursor")
    date_from = iso(parse_time(cursor) - ctx.lookback) if cursor else ctx.initial_date_from
    limits = None
    if endpoint.too_big:  # ClickHouse-backed: too-big queries are asked for in smaller pieces
        limits = ctx.query_limits
        limits.start(ctx.page_size(endpoint), state.get("page_size"))
    known: dict[str, int] = state.get("edge", {})
    window = _Window(int(parse_time(cursor).timestamp() * 1_000_000) if cursor else None)
    if endpoint.deleted_mark:
        job.run.window_from = parse_time(date_from)
        window.listed = set() if cursor else None  # a first sync has nothing stored to mark
    try:
        yield from _read_windows(job, ctx, date_from, limits, known, window)
        job.run.listed = window.listed
    except (BudgetExhausted, QueryTooBig) as error:
        _stopped(job.run, error)
        if not endpoint.ascending:
            return  # newest first: rows not read yet are older than the cursor would claim
        window.edge.update((k, v) for k, v in known.items() if k not in window.edge)
        # read but not handed over: the next run must know their start (only that: state keeps no row)
        window.edge.update((k, _us(r[endpoint.cursor])) for k, r in window.held.items() if r.get(endpoint.cursor))
    if window.newest_us is not None:
        state["cursor"] = iso(datetime.fromtimestamp(window.newest_us / 1_000_000, UTC))
    if endpoint.partial_at_edge:
        state["edge"] = window.edge
    if limits is not None and limits.size:
        state["page_size"] = limits.size


def forget_in_state(state: dict[str, Any], ids: Iterable[Any]) -> bool:
    """Remove row ids from one project's reader state (recordings' edge, desktop pending, full-listing ids),
    for `forget`; True when something was removed. The state holds no other trace of a row."""
    gone, changed = set(ids), False
    edge = state.get("edge") or {}
    for ident in gone & edge.keys():
        del edge[ident]
        changed = True
    if any(i in gone for i in state.get("pending") or ()):
        state["pending"] = [i for i in state["pending"] if i not in gone]
        changed = True
    for name, listed in (state.get("ids") or {}).items():
        if any(i in gone for i in listed):
            state["ids"][name] = [i for i in listed if i not in gone]
            changed = True
    return changed


def _stopped(run: ResourceRun, error: PostHogError) -> None:
    run.status, run.reason, run.error = "incomplete", str(error), error
    logger.warning("%s project %s: %s", run.resource, run.project_id, error)


def _read_windows(
    job: Job, ctx: Context, date_from: str, limits: QueryLimits | None, known: dict[str, int], window: _Window,
) -> Iterator[Any]:
    """Read from `date_from` on, one date window after the other (a single one unless PostHog's query
    limits force narrower ones)."""
    endpoint, run = job.endpoint, job.run
    lookback_us = int(ctx.lookback.total_seconds() * 1_000_000)
    lower, upper, span = date_from, None, timedelta(0)
    failed: timedelta | None = None  # the narrowest window that was too big
    seen = _Seen(endpoint)
    previous: set[Any] = set()
    decode = _decoder(endpoint, ctx)
    while True:
        params = {**endpoint.params, "date_from": lower, "limit": ctx.page_size(endpoint)}
        if upper is not None:
            params["date_to"] = iso(upper)
        last_start: str | None = None
        try:
            pages = ctx.client.pages(job.path, params, endpoint.paging, limits, job, decode)
            for page, (rows, body) in enumerate(pages):
                if page == 0 and upper is None and lower == date_from and isinstance(body.get("count"), int):
                    run.api_count = body["count"]
                ctx.report.fetched(run, len(rows))
                window.saw(rows)
                if endpoint.partial_at_edge:
                    # keyset and `date_from` pages repeat rows already read (ties, sessions crossing the
                    # new `date_from` with a later start, §7.1): those are dropped
                    last_start = rows[-1].get(endpoint.cursor) if rows else last_start
                    rows = _kept(rows, seen.fresh(rows, last_start))
                else:  # offset pages can repeat a row on a boundary; one page back is as far as a shift reaches
                    current: set[Any] = set()
                    rows = _kept(rows, [r for r in _dedupe(rows, current, endpoint.primary_key)
                                        if (r.get("id"),) not in previous])
                    previous = current
                if isinstance(rows, ArrowRows) and (upper is not None or (
                        known and endpoint.partial_at_edge and any(r["id"] in known for r in rows))):
                    rows = rows.dicts()  # held and partial rows are handled (and merged) as whole rows
                if endpoint.detail:
                    rows = _fetch_details(job, ctx, rows)
                for row in rows:
                    row["project_id"] = job.project_id
                if known and endpoint.partial_at_edge:
                    rows = _complete_partials(job, ctx, rows, known)
                if upper is not None:  # rows running past date_to may be cut there: read whole at the end
                    rows = window.hold(endpoint, rows, int(upper.timestamp() * 1_000_000))
                    seen.ends.update(dict.fromkeys(window.held))  # a cut row's end is not the session's
                yield from _emit(job, ctx, rows, window, lookback_us)
        except QueryTooBig as error:
            if limits is None:
                raise
            # too big even at the smallest page: halve the window, from the last row read on (§6)
            lower = last_start or lower
            end = upper or max(datetime.now(UTC), parse_time(lower) + timedelta(days=2))
            failed = min(failed or end - parse_time(lower), end - parse_time(lower))
            span = failed / 2
            if span < MIN_WINDOW:
                raise
            upper = parse_time(lower) + span
            limits.regrow()
            logger.warning("%s; reading windows of %s from %s", error, span, lower)
            continue
        if window.held:
            rows = _reread(job, ctx, [r for r in window.held.values()])
            window.held.clear()
            seen.ends.update((r["id"], _end_us(endpoint, r)) for r in rows)
            yield from _emit(job, ctx, rows, window, lookback_us)
        if upper is None:
            return
        # the next window: twice as long unless that was too big already, open once it reaches now
        lower, span = iso(upper), span * 2 if failed is None or span * 2 < failed else span
        upper = upper + span
        if upper >= datetime.now(UTC):
            upper = None


def _decoder(endpoint: Endpoint, ctx: Context) -> Callable[[bytes], Any] | None:
    """Decode list pages straight into columns where a page's rows are loaded as they come (no child lists,
    detail reads, lifted fields or deletions, and no new columns to infer); see `arrow.decode_page`."""
    if endpoint.paging != "has_next" or endpoint.children or endpoint.detail or endpoint.lifted or \
            endpoint.delete_missing or ctx.evolve:
        return None
    columns = dict(endpoint.column_types(ctx.stored.types if ctx.stored else None))
    # the readers look at a page's rows by key and cursor only; ends come from the columns (`ArrowRows.end_us`)
    fields = tuple(dict.fromkeys(f for f in (*endpoint.primary_key, endpoint.cursor) if f))

    def decode(content: bytes) -> dict[str, Any] | None:
        return decode_page(content, columns, fields, ctx.drift.known(endpoint.name))

    return decode


def _kept(page: list[ROW], rows: list[ROW]) -> list[ROW]:
    """`rows`, the part of `page` a reader keeps, over the same decoded page where it is one."""
    return page.subset(rows) if isinstance(page, ArrowRows) else rows


class _Seen:
    """Recordings read in this run that may come back on a later page, with their end (µs)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.ends: dict[str, int | None] = {}
        self._mark = SEEN_KEEP

    def fresh(self, rows: list[ROW], last_start: str | None) -> list[ROW]:
        """The rows not read before; remembers them."""
        out = []
        endpoint = self.endpoint
        ends = rows.end_us(endpoint.end, endpoint.ongoing) if isinstance(rows, ArrowRows) else \
            [_end_us(endpoint, row) for row in rows]
        for row, end in zip(rows, ends, strict=True):
            ident = row.get("id")
            if ident in self.ends:
                continue
            # an ongoing session may still grow past any later date_from
            self.ends[ident] = end
            out.append(row)
        if len(self.ends) > self._mark and last_start:
            # a session comes back only with a part starting after the last start read (§7.1); parts of
            # one session are never an hour apart (PostHog ends a session after 30 idle minutes)
            floor = _us(last_start) - EDGE_MARGIN_US
            self.ends = {k: v for k, v in self.ends.items() if v is None or v >= floor}
            self._mark = max(SEEN_KEEP, 2 * len(self.ends))
        return out


def _us(value: str) -> int:
    # exact: a float of seconds since 1970 loses the last microsecond of some times
    return (parse_time(value) - _EPOCH) // timedelta(microseconds=1)


def _emit(job: Job, ctx: Context, rows: list[ROW], window: _Window, lookback_us: int) -> Iterator[Any]:
    endpoint = job.endpoint
    table, items = page_items(job, ctx, rows)
    newest = window.newest_us
    if table is not None and endpoint.cursor:
        starts = table.column(endpoint.cursor).cast(pa.int64())
        given = pc.filter(starts, pc.not_equal(starts, 0))
        newest = max(filter(None, [newest, pc.max(given).as_py() if len(given) else None]), default=None)
        if endpoint.partial_at_edge and newest is not None:
            floor = newest - lookback_us - 3_600_000_000
            ends = table.column(endpoint.end).cast(pa.int64()) if endpoint.end else starts
            # a row's end where it has one (not 0), else its start; rows without a start are not edge rows
            last = pc.coalesce(pc.if_else(pc.equal(ends, 0), pa.scalar(None, pa.int64()), ends), starts)
            near = pc.and_(pc.is_valid(starts), pc.greater_equal(last, floor))
            window.edge.update(zip(pc.filter(table.column("id"), near).to_pylist(),
                                   pc.filter(starts, near).to_pylist(), strict=True))
            for ident in [k for k, v in window.edge.items() if v < floor - 2 * 86_400_000_000]:
                del window.edge[ident]
    yield from items
    # only rows already handed to dlt count: a stop after this page keeps them
    window.newest_us = newest


def _complete_partials(job: Job, ctx: Context, rows: list[ROW], known: dict[str, int]) -> list[ROW]:
    endpoint = job.endpoint
    partial = []
    for row in rows:
        stored = known.get(row["id"])
        if stored is not None and row.get(endpoint.cursor) and _us(row[endpoint.cursor]) > stored:
            partial.append(row)
    if not partial:
        return rows
    logger.info("%s: re-read %d recordings cut by the window edge", endpoint.name, len(partial))
    starts = {row["id"]: known[row["id"]] for row in partial}
    complete = {r["id"]: r for r in _reread(job, ctx, partial, starts)}
    # a partial row no longer returned whole is left out: the stored complete row stays as it is
    return [complete[r["id"]] if r["id"] in starts else r for r in rows if r["id"] in complete or r["id"] not in starts]


def _reread(job: Job, ctx: Context, rows: list[ROW], starts: Mapping[str, int] | None = None) -> list[ROW]:
    """The rows read again whole by id (`endpoint.reread`, recordings' `session_ids`), merged over the list
    rows; rows not returned are left out.

    Older servers apply the date window to `session_ids` too (§7.1), so each batch sends a `date_from`
    before the earliest start known. A null in the re-read (persisted recordings come from Postgres
    without `ongoing`, `activity_score`, `expiry_time`, `recording_ttl`) keeps the list row's value:
    the reader never consults the destination, and the list row is the newest value it has.
    """
    endpoint = job.endpoint
    assert endpoint.reread
    by_id = {r["id"]: r for r in rows}
    batches = [list(by_id)[i : i + REREAD_BATCH] for i in range(0, len(by_id), REREAD_BATCH)]
    out: list[ROW] = []
    while batches:
        ids = batches.pop()
        earliest = min(
            (starts or {}).get(i) or _us(by_id[i].get(endpoint.cursor) or ctx.initial_date_from) for i in ids
        )
        params = {
            **endpoint.params, endpoint.reread: orjson.dumps(ids).decode(), "limit": len(ids),
            "date_from": iso(datetime.fromtimestamp(earliest / 1_000_000, UTC) - timedelta(days=1)),
        }
        try:
            fetched = [r for page, _ in ctx.client.pages(job.path, params, endpoint.paging, job=job) for r in page]
        except QueryTooBig:
            if len(ids) == 1:
                raise
            batches += [ids[: len(ids) // 2], ids[len(ids) // 2 :]]
            continue
        for row in fetched:
            if row.get("id") in by_id:
                listed = by_id.pop(row["id"])
                out.append({**listed, **{k: v for k, v in row.items() if v is not None}, "project_id": job.project_id})
    return out


def read_watermark(job: Job, ctx: Context) -> Iterator[Any]:
    """Client-side incremental for lists with no date filter, newest first (desktop recordings §7.3,
    Replay Vision observations §7.6).

    Pages until rows are older than the cursor minus the lookback, then re-reads the records that
    were not final at the last sync, so transcripts, summaries and scanner results completed later still
    land. An endpoint with a `parent` is one such list per parent row (per scanner), each with its own
    cursor; the parent listing is read first, and a parent gone from it takes its state along.
    """
    endpoint = job.endpoint
    if endpoint.parent is None:
        yield from _watermark(job, ctx, job.path, job.state)
        return
    parent = Job(endpoint.parent, job.project_id, job.run)
    try:
        listing = _full_listing(parent, ctx, dict(endpoint.parent.params))
    except BudgetExhausted as error:
        _stopped(job.run, error)  # nothing read: every parent keeps its state
        return
    if listing.error is not None:  # a parent missed would lose its rows' updates: try again next run
        job.run.status, job.run.reason = "incomplete", listing.error
    stored: dict[str, dict[str, Any]] = job.state.get("parents", {})
    placeholder = ":" + endpoint.path.split(":", 1)[1].split("/", 1)[0]
    states: dict[str, dict[str, Any]] = {}
    for ident in sorted(listing.rows, key=str):
        state = dict(stored.get(str(ident), {}))
        try:
            done = yield from _watermark(job, ctx, job.path.replace(placeholder, str(ident)), state)
        except ResourceUnavailable as error:
            if error.status != 404:
                raise
            logger.info("%s: %s %s vanished while syncing; skipped", endpoint.name, endpoint.parent.name, ident)
            continue
        states[str(ident)] = state
        if not done:  # the rate budget ran out: the parents not read yet keep their state
            states.update((k, v) for k, v in stored.items() if k not in states)
            break
    if not listing.proven:  # a parent not seen may still exist
        states.update((k, v) for k, v in stored.items() if k not in states)
    job.state["parents"] = states


def state_cursor(state: Mapping[str, Any]) -> str | None:
    """A project's cursor in its resource state: its own, or the newest of its parents' (`Endpoint.parent`)."""
    cursors = [part.get("cursor") for part in (state.get("parents") or {}).values()]
    return state.get("cursor") or max(filter(None, cursors), default=None)


def state_pending(state: Mapping[str, Any]) -> int:
    """How many rows a project's resource state holds for re-reading, its parents' included."""
    parts = [state, *(state.get("parents") or {}).values()]
    return sum(len(part.get("pending") or ()) for part in parts)


def _watermark(job: Job, ctx: Context, path: str, state: dict[str, Any]) -> Generator[Any, None, bool]:
    """One newest-first list read back to `state`'s cursor minus the lookback, plus the re-reads of its
    rows not final at the last sync; updates `state` and returns False when the rate budget stopped it."""
    endpoint, run = job.endpoint, job.run
    assert endpoint.cursor
    cursor = state.get("cursor")
    threshold = parse_time(cursor) - ctx.lookback if cursor else None
    newest = parse_time(cursor) if cursor else None
    ident = endpoint.reread_by or "id"
    seen: set[Any] = set()
    read: set[Any] = set()  # the `ident` of every row read in this run
    pending: list[Any] = []

    def track(rows: list[ROW]) -> list[ROW]:
        nonlocal newest
        for row in rows:
            row["project_id"] = job.project_id
            read.add(row.get(ident))
            if row.get("status") not in endpoint.final_statuses:
                pending.append(row[ident])
            if row.get(endpoint.cursor):
                started = parse_time(row[endpoint.cursor])
                newest = started if newest is None or started > newest else newest
        return rows

    params = {**endpoint.params, "limit": ctx.page_size(endpoint)}
    try:
        for rows, _ in ctx.client.pages(path, params, endpoint.paging, job=job):
            ctx.report.fetched(run, len(rows))
            recent = [
                r for r in rows
                if threshold is None or not r.get(endpoint.cursor) or parse_time(r[endpoint.cursor]) >= threshold
            ]
            yield from emit(job, ctx, track(_dedupe(recent, seen, endpoint.primary_key)))
            if len(recent) < len(rows):
                break  # ordered newest first: everything after this is older still
        again = [i for i in state.get("pending", []) if i not in read]
        refetched = _reread_pending(job, ctx, path, again, params)
        ctx.report.fetched(run, len(refetched))
        yield from emit(job, ctx, track(_dedupe(refetched, seen, endpoint.primary_key)))
    except BudgetExhausted as error:
        # what was read is kept; the cursor stays so the next run scans this window again
        _stopped(run, error)
        state["pending"] = sorted({*state.get("pending", []), *pending}, key=str)
        return False
    if newest is not None:
        state["cursor"] = iso(newest)
    state["pending"] = pending
    return True


def _reread_pending(job: Job, ctx: Context, path: str, idents: list[Any], params: dict[str, Any]) -> list[ROW]:
    """The rows not final at the last sync, read again: by the endpoint's csv list filter (`reread_by`),
    else one `/:id/` each. A row no longer there (deleted, or replaced by a retry) is left out."""
    reread_by = job.endpoint.reread_by
    if reread_by is None:
        return _fetch_details(job, ctx, [{"id": i} for i in idents])
    rows: list[ROW] = []
    for start in range(0, len(idents), REREAD_BATCH):
        batch = {**params, reread_by: ",".join(str(i) for i in idents[start : start + REREAD_BATCH])}
        rows.extend(r for page, _ in ctx.client.pages(path, batch, job.endpoint.paging, job=job) for r in page)
    return rows


def _scans(job: Job, ctx: Context) -> list[dict[str, Any]]:
    scans: list[dict[str, Any]] = []
    path = job.endpoint.group_types
    for scan in job.endpoint.scans:
        if scan.get("type") != "group" or path is None:
            scans.append(dict(scan))
            continue
        try:
            types = ctx.client.get(f"/api/projects/{job.project_id}/{path}/", job=job)
            indices = sorted({int(t["group_type_index"]) for t in types})
        except ResourceUnavailable as error:
            # the group types list needs the group:read scope (§7.5); every valid index still lists
            logger.warning("%s unavailable (%s); listing group indices 0-4", path, error)
            indices = list(range(GROUP_TYPES_LIMIT))
        scans.extend({**scan, "group_type_index": i} for i in indices)
    return scans


def read_full(job: Job, ctx: Context) -> Iterator[Any]:
    """Read the whole list every run, once per scan (soft-deleted rows, property types).

    Each scan is read until its listing is settled (see `_full_listing`); what could not be proven
    complete is still loaded, and counted on the run as `unproven`.
    """
    endpoint, run, state, project_id = job.endpoint, job.run, job.state, job.project_id
    rows_by_key: dict[Any, ROW] = {}
    gone: list[ROW] = []
    stored: dict[str, list[Any]] = state.get("ids", {})
    kept: dict[str, list[Any]] = {}
    api_count = 0
    try:
        for scan in _scans(job, ctx):
            tags = {k: v for k, v in scan.items() if k in endpoint.scan_tags}
            listing = _full_listing(job, ctx, {**endpoint.params, **scan})
            api_count += listing.count if listing.count is not None else len(listing.rows)
            if listing.unproven:
                run.unproven += listing.unproven
                where = f"{endpoint.name} project {project_id}" + (f" {tags}" if tags else "")
                logger.warning("%s: %d rows unproven after %d passes (%s)", where, listing.unproven,
                               listing.passes, listing.why or "PostHog counted more rows than it returned")
            if listing.error is not None:  # loaded what it read; the next run tries again
                run.status, run.reason = "incomplete", listing.error
            if endpoint.delete_missing:
                name = "/".join(str(v) for v in scan.values())
                if "listing" in endpoint.primary_key:  # a key column naming the scan (property definitions)
                    tags["listing"] = name
                before, now = set(stored.get(name, ())), set(listing.rows)
                # only a proven listing shows a row is gone; an unproven one keeps what it did not see
                kept[name] = sorted(now if listing.proven else now | before, key=str)
                if listing.proven:
                    gone.extend({**tags, "id": i, "project_id": project_id, DELETED: True} for i in before - now)
            for row in listing.rows.values():
                row.update(tags, project_id=project_id)
                rows_by_key[tuple(row.get(k) for k in (*endpoint.scan_tags, *endpoint.primary_key))] = row
    except BudgetExhausted as error:
        _stopped(run, error)  # nothing is emitted: a partial scan must not replace a full one
        return
    run.api_count = api_count
    for name in stored.keys() - kept.keys():  # a listing no longer scanned (a group type removed)
        listing_tag = {"listing": name} if "listing" in endpoint.primary_key else {}
        gone.extend({**listing_tag, "id": i, "project_id": project_id, DELETED: True} for i in stored[name])
    rows = list(rows_by_key.values())
    members = _read_members(job, ctx, rows, [row["id"] for row in gone]) if endpoint.members else []
    for start in range(0, len(rows), 5000):
        yield from emit(job, ctx, rows[start : start + 5000])
    if gone:
        yield from emit(job, ctx, gone)
        run.rows_loaded -= len(gone)
        logger.info("%s project %s: %d rows deleted upstream", endpoint.name, project_id, len(gone))
    if members:
        yield from _emit_members(job, ctx, members)
    if endpoint.delete_missing:
        state["ids"] = kept


@dataclass
class _Pass:
    """One walk through an offset-paged list: its rows in list order and what the pages said."""

    ids: list[Any] = field(default_factory=list)
    rows: dict[Any, ROW] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)
    ordered: bool = True  # every page was sorted on the endpoint's ordering field
    requests: int = 0
    error: str | None = None  # a page kept failing (e.g. the definitions listing's 25 s timeout)

    @property
    def settled(self) -> bool:
        """Read to the end with the same count on every page."""
        return self.error is None and len(set(self.counts)) <= 1

    @property
    def snapshot(self) -> bool:
        """One page held the whole list: a single query, so nothing can have moved under it."""
        return self.error is None and self.requests == 1


@dataclass
class Listing:
    """A full listing: the union of its passes, PostHog's last count and how much stayed unproven."""

    rows: dict[Any, ROW]
    count: int | None
    unproven: int
    passes: int
    why: str = ""
    error: str | None = None  # a page kept failing, so the listing stopped there

    @property
    def proven(self) -> bool:
        """Every row PostHog returns was read (rows counted but never returned aside)."""
        return not self.why


def _full_listing(job: Job, ctx: Context, params: dict[str, Any]) -> Listing:
    """Read an offset-paged list completely although rows are created, deleted and moved meanwhile.

    Each pass re-reads the end of the previous page (more when the count fell) and steps back further
    while none of those rows is found, so rows sliding back never fall between two pages. Rows can
    still move into the part already read: a pass over a list sorted on a field rows never change
    (asked for with `endpoint.ordering`, and checked, because older servers ignore the parameter,
    §7.4) proves itself; an unordered list is proven by two passes, each with one count throughout,
    that read the same ids in the same order.
    Passes are bounded; the union of all passes is kept, and whatever stayed unproven is counted.
    """
    endpoint = job.endpoint
    ordering = endpoint.ordering
    ordered = ordering is not None and _honours_ordering(job, ctx, params)
    if ordering is not None:
        params = {**params, ordering[0]: ordering[1]}
    union: dict[Any, ROW] = {}
    previous: _Pass | None = None
    count: int | None = None
    for number in range(1, endpoint.max_passes + 1):
        walk = _walk(job, ctx, params, ordering[1] if ordered and ordering else None)
        known = len(union)
        union.update(walk.rows)
        count = walk.counts[-1] if walk.counts else count
        short = max(0, (count or 0) - len(union))
        if walk.error is not None:
            return Listing(union, count, max(1, short), number, "a page kept failing", walk.error)
        if walk.snapshot:
            return Listing(union, count, short, number)
        if ordered and walk.ordered and walk.counts:
            if not short or (previous is not None and len(union) == known):
                # rows counted but never returned (hidden, §7.5), or created faster than we read
                return Listing(union, count, short, number)
        elif previous is not None and walk.settled and previous.settled and walk.ids == previous.ids:
            return Listing(union, count, short, number)
        if walk.ordered is False:
            ordered = False  # the server stopped sorting (or never did): prove it by passes instead
        previous = walk
    why = "the list kept changing while it was read"
    return Listing(union, count, max(1, (count or 0) - len(union)), endpoint.max_passes, why)


def _members_job(job: Job, ctx: Context) -> Job:
    """The job the member listings of `job`'s rows count on: their own run in the report and summary."""
    assert job.endpoint.members is not None
    return ctx.report.job(job.endpoint.members.endpoint, job.project_id)


def _read_members(job: Job, ctx: Context, parents: list[ROW], gone: list[Any]) -> list[ROW]:
    """Every parent's members, read again in full, plus one tombstone per parent read or gone.

    A tombstone (`DELETED` set) carries only the parent's key: it makes the load replace that parent's
    stored members with the ones read now, so removed members, the members of a now empty parent and
    those of a deleted parent disappear. A parent whose members could not be read keeps its stored ones.
    Each read parent gets `members.flag`: true when PostHog may hold more members than it returned
    (collections answer every persisted member plus at most 50 others, unpaged, §7.7).
    """
    members = job.endpoint.members
    assert members is not None
    mjob = _members_job(job, ctx)
    parent_col = next(iter(members.parent))
    field_name, values = members.read_when
    out: list[ROW] = []
    partial: list[str] = []
    for parent in parents:
        parent[members.flag] = None
        link = {column: parent.get(name) for column, name in members.parent.items()}
        tombstone = {**link, members.member[0]: "", "project_id": job.project_id, DELETED: True}
        if parent.get(field_name) not in values:
            out.append(tombstone)  # no members to read (saved filters): none stored either
            continue
        try:
            rows, more = _members_of(job, mjob, ctx, parent)
        except ResourceUnavailable as error:
            if error.status == 404:  # deleted since it was listed: the next run sees it gone
                continue
            # older servers refuse `recordings` (403, §7.7): the playlists still load
            mjob.run.status, mjob.run.reason, mjob.run.error = "skipped", str(error), error
            logger.warning("%s skipped for project %s: %s", mjob.endpoint.name, job.project_id, error)
            break
        except BudgetExhausted as error:
            _stopped(mjob.run, error)
            break
        parent[members.flag] = more
        if more:
            expected = _dig(parent, members.expected)
            partial.append(f"{parent.get(members.lookup)} ({len(rows)} of {expected if expected else 'more'})")
        out.append(tombstone)
        out.extend({**link, members.member[0]: row.get(members.member[1]), "project_id": job.project_id}
                   for row in rows)
    out.extend({parent_col: ident, members.member[0]: "", "project_id": job.project_id, DELETED: True}
               for ident in gone)
    ctx.report.finish(mjob.run)
    if partial:
        mjob.run.notes.append(
            f"{len(partial)} {job.endpoint.name} may hold more {members.noun} than PostHog returned: "
            f"{', '.join(partial[:5])}{', ...' if len(partial) > 5 else ''}; flagged in {members.flag}"
        )
    return out


def _dig(row: ROW, path: tuple[str, ...]) -> Any:
    value: Any = row
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


def _members_of(job: Job, mjob: Job, ctx: Context, parent: ROW) -> tuple[list[ROW], bool]:
    """One parent's members, and whether PostHog may hold more than it returned."""
    members = job.endpoint.members
    assert members is not None
    path = f"{job.path}{parent[members.lookup]}/{mjob.endpoint.path}/"
    paged = bool(parent.get(members.paged_when))
    # collections ignore limit and offset (§7.7): one request; the others page the member list
    params: dict[str, Any] = {"limit": ctx.page_size(mjob.endpoint), "offset": 0} if paged else {}
    found: dict[Any, ROW] = {}
    while True:
        body = ctx.client.get(path, params, mjob)
        page = body.get("results") if isinstance(body, dict) else None
        if not isinstance(page, list):
            raise PagingError(f"GET {path}: the response has no `results` list")
        ctx.report.fetched(mjob.run, len(page))
        known = len(found)
        found.update((row.get(members.member[1]), row) for row in page)
        more = bool(body.get("has_next"))
        if not paged or not more or len(found) == known:
            break  # a page that adds nothing: the server ignores paging here
        params = {**params, "offset": int(params["offset"]) + len(page)}
    expected = _dig(parent, members.expected)
    return list(found.values()), more or (isinstance(expected, int) and expected > len(found))


def _emit_members(job: Job, ctx: Context, rows: list[ROW]) -> Iterator[Any]:
    """The member rows (tombstones first) as one Arrow table replacing each parent's stored members."""
    mjob = _members_job(job, ctx)
    endpoint = mjob.endpoint
    members = job.endpoint.members
    assert members is not None
    columns: dict[str, ColumnType] = {"project_id": "bigint", **endpoint.columns, DELETED: "bool"}
    table = to_arrow(endpoint.name, rows, columns, drift=ctx.drift, evolve=False)
    mjob.run.rows_loaded += sum(1 for row in rows if not row.get(DELETED))
    hints = dlt_columns(columns, endpoint.key)
    hints[DELETED]["hard_delete"] = True
    yield dlt.mark.with_hints(
        table,
        dlt.mark.make_hints(
            table_name=endpoint.name,
            write_disposition=MERGE,  # type: ignore[arg-type]
            merge_key=list(members_merge_key(job.endpoint)),
            primary_key=list(endpoint.key),
            columns=hints,
        ),
        create_table_variant=True,
    )


def members_merge_key(endpoint: Endpoint) -> tuple[str, ...]:
    """The columns naming a parent in its members' table: a load replaces all members of each parent in it."""
    assert endpoint.members is not None
    return ("project_id", next(iter(endpoint.members.parent)))


def _honours_ordering(job: Job, ctx: Context, params: dict[str, Any]) -> bool:
    """Whether the server sorts on `endpoint.ordering`: ask for the reverse order and look.

    Older servers ignore the parameter and return rows in storage order, which runs oldest first, so a
    newest-first page of distinct values can only come from a server that sorts.
    """
    assert job.endpoint.ordering is not None
    name, value = job.endpoint.ordering
    body = ctx.client.get(job.path, {**params, name: f"-{value}", "limit": 16}, job)
    ctx.report.fetched(job.run, 0)
    keys = [_order_key(row, value) for row in body.get("results", [])]
    # rows without a value (synthetic playlists) sort last, so first here, and tell nothing
    return len({k for k in keys if not k[0]}) > 1 and keys == sorted(keys, reverse=True)


def _order_key(row: ROW, name: str) -> tuple[bool, Any]:
    """A row's sort key on `name`; nulls sort last, as the synthetic playlists do (§7.7)."""
    value = row.get(name)
    if value is None:
        return True, 0
    return False, parse_time(value) if name.endswith("_at") and isinstance(value, str) else value


def _walk(job: Job, ctx: Context, params: dict[str, Any], order: str | None) -> _Pass:
    """One pass: pages of `limit`, each re-reading the previous page's last rows."""
    size = ctx.page_size(job.endpoint)
    overlap = max(2, size // 10)
    walk = _Pass()
    frontier, back, tail = 0, 0, []  # server position after the last page, how far to re-read, its last ids
    while True:
        # bounded: a pass takes at most about twice its pages plus the steps back (each doubles `back`)
        if walk.requests > 16 + 3 * (max(walk.counts, default=0) // size + 1):
            walk.error = "gave up: the list kept sliding back"
            return walk
        offset = max(0, frontier - back)
        walk.requests += 1
        limit = size + frontier - offset
        if job.endpoint.max_page_size:
            limit = min(limit, job.endpoint.max_page_size)
        try:
            body = ctx.client.get(job.path, {**params, "limit": limit, "offset": offset}, job)
        except TransientError as error:
            walk.error = str(error)
            return walk
        page = body.get("results")
        if not isinstance(page, list):
            raise PostHogError(f"GET {job.path}: the response has no `results` list")
        ctx.report.fetched(job.run, len(page))
        count = body.get("count")
        if isinstance(count, int):
            walk.counts.append(count)
        ids = [row.get("id") for row in page]
        if tail and offset > 0 and not set(tail) & set(ids):
            # every row we ended on is gone from here: the list slid back further than we re-read
            back = max(2 * back, overlap)
            continue
        if order is not None and walk.ordered:
            keys = [_order_key(row, order) for row in page]
            walk.ordered = all(a <= b for a, b in pairwise(keys))
        for ident, row in zip(ids, page, strict=True):
            if ident not in walk.rows:
                walk.ids.append(ident)
            walk.rows[ident] = row  # virtual definitions repeat (§7.5): one row per id
        if not body.get("next"):
            return walk
        frontier = offset + len(page)  # never the limit asked for: PostHog may clip it (§7.7)
        tail = ids[-overlap:]
        drop = walk.counts[-2] - walk.counts[-1] if len(walk.counts) > 1 else 0
        back = min(frontier, overlap + max(0, drop))  # rows deleted before us slid back that far


READERS = {"date_from": read_date_from, "watermark": read_watermark, "full": read_full}


def _feed(endpoint: Endpoint, ctx: Context, project_id: int, state: dict[str, Any]) -> tuple[Job, Feed]:
    job = ctx.report.job(endpoint, project_id, state)

    def read() -> Iterator[Any]:
        try:
            yield from READERS[endpoint.sync](job, ctx)
        finally:
            ctx.report.finish(job.run)

    return job, Feed(read, state, ctx.cancelled)


def start_feeds(
    endpoint: Endpoint, ctx: Context, project_ids: Iterable[int], states: Mapping[str, dict[str, Any]]
) -> None:
    """Start reading every project now, from copies of their last committed state.

    Used when several resources load one after the other: each reads ahead while dlt loads the others.
    """
    for project_id in project_ids:
        state = copy.deepcopy(dict(states.get(str(project_id), {})))
        ctx.feeds[project_id] = _feed(endpoint, ctx, project_id, state)


def removed_reason(endpoint: Endpoint, stored: StoredTable | None, project_id: int) -> str:
    """Why a removed endpoint (`Endpoint.removed`) loaded nothing, and what became of the rows exported before."""
    rows = None if stored is None or stored.rows is None else stored.rows.get(project_id, 0)
    if rows == 0:
        return f"does not exist on this PostHog server (removed from PostHog in {endpoint.removed}); nothing to export"
    kept = "the rows already exported are kept" if rows is None else f"the {rows} rows already exported are kept"
    return f"removed from PostHog in {endpoint.removed}; {kept}"


def batched(items: Iterable[Any], rows: int = BATCH_ROWS) -> Iterator[Any]:
    """`items` with consecutive Arrow tables of the same hints joined into one (up to `rows` rows, no copy):
    dlt validates an item's hints and writes it in one call, so fewer items cost the extract less.

    Whatever was read is handed on before an error of `items` propagates (a skipped project keeps its rows).
    """
    held: list[Any] = []

    def joined() -> Iterator[Any]:
        if held:
            first = held[0]
            tables = [item.data for item in held]
            yield first if len(tables) == 1 else dlt.mark.with_hints(
                pa.concat_tables(tables), first.meta.hints, create_table_variant=first.meta.create_table_variant)
            held.clear()

    def page(item: Any) -> bool:
        return isinstance(item, DataItemWithMeta) and isinstance(item.data, pa.Table)

    def fits(item: Any) -> bool:  # joins the held pages
        last = held[-1]
        return (page(item) and item.meta.hints == last.meta.hints and item.data.schema == last.data.schema
                and item.meta.create_table_variant == last.meta.create_table_variant
                and sum(t.data.num_rows for t in held) + item.data.num_rows <= rows)

    try:
        for item in items:
            if held and not fits(item):
                yield from joined()
            if page(item):
                held.append(item)
            else:
                yield item
    except Exception:
        yield from joined()
        raise
    yield from joined()


def read_endpoint(endpoint: Endpoint, ctx: Context, project_ids: Iterable[int]) -> Iterator[Any]:
    """The body of every resource: read each project with the endpoint's sync mode.

    Projects are read concurrently (one thread each, sharing the client's rate budget) and handed to
    dlt one after the other; each project's state is replaced by its reader's once all its rows are out.
    """
    projects = dlt.current.resource_state().setdefault("projects", {})
    if ctx.stored is None:  # not told by the runner: the table as the schema dlt extracts into has it
        table = dlt.current.source_schema().tables.get(endpoint.name, {})
        ctx.stored = StoredTable({n: c.get("data_type", "") for n, c in table.get("columns", {}).items()})
    ids = list(project_ids)
    for project_id in ids:
        if project_id not in ctx.feeds:
            state = projects.setdefault(str(project_id), {})
            ctx.feeds[project_id] = _feed(endpoint, ctx, project_id, state)
    try:
        for project_id in ids:
            job, feed = ctx.feeds.pop(project_id)
            try:
                yield from batched(feed)
            except ResourceUnavailable as error:
                if endpoint.removed and error.status in (404, 501):  # gone from PostHog: nothing to fix
                    job.run.status, job.run.reason = "removed", removed_reason(endpoint, ctx.stored, project_id)
                    logger.debug("%s project %s: %s (%s)", endpoint.name, project_id, job.run.reason, error)
                else:
                    job.run.status, job.run.reason, job.run.error = "skipped", str(error), error
                    logger.warning("%s skipped for project %s: %s", endpoint.name, project_id, error)
            except TransientError as error:
                raise PostHogError(
                    f"{endpoint.name} project {project_id}: gave up after {ctx.client.max_attempts} attempts: "
                    f"{error}"
                ) from error
            projects[str(project_id)] = feed.state
    finally:
        for _, feed in ctx.feeds.values():
            feed.close()
        ctx.feeds.clear()
    for table, names in ctx.drift.fields.items():
        ctx.report.drift.setdefault(table, set()).update(names)
