"""Run a sync: one dlt pipeline, one load per resource, Parquet compaction, the run summary."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import httpx
from dlt.common.configuration.exceptions import ConfigurationException
from dlt.common.pipeline import get_dlt_pipelines_dir
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.pipeline.exceptions import PipelineStepFailed
from filelock import FileLock, Timeout
from rich.console import Console

from sources.posthog import (
    ENDPOINTS,
    PostHogSettings,
    Session,
    SyncReport,
    posthog_source,
    resolve_settings,
    session_of,
)
from sources.posthog.arrow import SchemaViolation
from sources.posthog.client import ClientStats
from sources.posthog.errors import AuthError, NotPostHog, PostHogError, ProjectNotFound
from sources.posthog.report import REPORT_COLUMNS, REPORT_TABLE
from sources.posthog.settings import Clock
from sources.posthog.sync import DELETED, StoredTable, child_table, members_merge_key, parent_key

from .deletions import mark_deletions, marks_name
from .destinations import check_destination, resolve_destination
from .hints import with_hint
from .output import echo, print_table
from .parquet import compact_table
from .progress import SyncProgress, default_mode
from .views import create_views, drop_views

logger = logging.getLogger("posthog_export")
DUCKDB_MEMORY = "64MB"


class UsageError(Exception):
    """Bad input from the user: exit code 2."""


class AlreadyRunning(Exception):
    """Another sync holds this pipeline's (or output's) lock: this run did nothing."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stops; what finished stays committed, the resource in flight does not."""

    def __init__(self, signum: int, resource: str | None = None) -> None:
        super().__init__(f"signal {signum}")
        self.signum, self.resource = signum, resource


class Interruption:
    """SIGINT/SIGTERM handling for one sync: the signal raises `Interrupted` and is remembered.

    Python drops an exception raised inside a finalizer (`__del__`, run by the garbage collector at any
    moment) and prints it with a traceback, so a signal can arrive there and be lost; while installed
    (`with Interruption() as i:`) such a report is silenced and the run checks `raise_if_signalled`
    between loads.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._hook: Callable[[Any], object] = sys.unraisablehook

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum
        raise Interrupted(signum)

    def __enter__(self) -> Interruption:
        self._previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self._hook

    def _unraisable(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):  # ours is acted on between loads
            self._hook(unraisable)

    def raise_if_signalled(self) -> None:
        """Raise `Interrupted` if a signal arrived, even one whose exception was lost."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def _interrupted(error: BaseException, resource: str | None = None) -> Interrupted | None:
    """The interrupt behind an error dlt wrapped (it wraps Ctrl-C and SIGTERM like any failure), if any."""
    cause = _cause(error)
    if not isinstance(cause, KeyboardInterrupt):
        return None
    signum = getattr(cause, "signum", None) or getattr(cause, "signal_code", None) or signal.SIGINT
    return Interrupted(int(signum), getattr(cause, "resource", None) or resource)


@dataclass
class SyncOptions:
    """One sync: where it loads (the runner's part) and the settings given explicitly.

    A setting left at None comes from dlt's config (`SOURCES__POSTHOG__*`, `[sources.posthog]`) or its
    default, exactly as for `posthog_source()` (`sources/posthog/settings.py`).
    """

    project_ids: list[int] | str | None = None
    api_key: str | None = None
    host: str | None = None
    resources: list[str] = field(default_factory=lambda: list(ENDPOINTS))
    destination: str = "duckdb"
    output: str = "posthog_export.duckdb"
    dataset: str = "posthog"
    full_refresh: bool = False
    pipeline_name: str = "posthog"
    pipelines_dir: str | None = None
    strict: bool = False
    quiet: bool = False
    # also check stored recordings older than the re-read window for deletion (pipelines/deletions.py)
    verify_deletions: bool = False
    # settings (None: from config)
    lookback_days: float | None = None
    evolve: bool | None = None
    initial_date_from: str | None = None
    page_sizes: dict[str, int] | None = None
    max_attempts: int | None = None
    backoff_s: float | None = None
    rate_limit_plan: str | None = None
    rate_limits: dict[str, list[int]] | None = None
    max_wait_s: float | None = None
    allow_insecure_http: bool | None = None

    def settings(self) -> PostHogSettings:
        """The source's settings: these options where given, dlt's config and defaults for the rest."""
        try:
            return resolve_settings(
                project_ids=self.project_ids, personal_api_key=self.api_key, host=self.host,
                lookback_days=self.lookback_days, evolve_schema=self.evolve,
                initial_date_from=self.initial_date_from, page_sizes=self.page_sizes,
                max_attempts=self.max_attempts, backoff_s=self.backoff_s, rate_limit_plan=self.rate_limit_plan,
                rate_limits=self.rate_limits, allow_insecure_http=self.allow_insecure_http,
                max_wait_minutes=None if self.max_wait_s is None else self.max_wait_s / 60,
            )
        except ConfigurationException as error:  # a config value of the wrong type
            raise UsageError(str(error).strip().splitlines()[0]) from error


@dataclass
class SyncResult:
    """What a sync did: its report, failed resources and the pipeline (for tests and `status`)."""

    report: SyncReport
    failures: dict[str, str]
    pipeline: Any
    client_stats: ClientStats | None = None  # the key's totals and rate buckets

    @property
    def ok(self) -> bool:
        """True when every resource finished (skips are warnings, not failures)."""
        return not self.failures

    def warnings(self) -> list[str]:
        """Skipped or unfinished resources and counts that disagree with PostHog's (fail `--strict`).

        An endpoint PostHog removed (status `removed`) is none of these: there is nothing to fix.
        """
        found = []
        for run in self.report.runs.values():
            where = f"{run.resource} project {run.project_id}"
            if run.status in ("skipped", "incomplete"):
                unproven = f" ({run.unproven} rows unproven)" if run.unproven else ""
                found.append(with_hint(f"{where} {run.status}{unproven}: {run.reason}", run.error))
            elif run.unproven:
                found.append(
                    f"{where}: {run.unproven} rows unproven (PostHog counted {run.api_count}, "
                    f"{run.rows_loaded} were loaded; the list changed while it was read or hides rows)"
                )
            elif run.api_count is not None and run.api_count != run.rows_loaded:
                found.append(f"{where}: PostHog counted {run.api_count} rows, {run.rows_loaded} were loaded")
        return found

    def notes(self) -> list[str]:
        """What the summary says besides warnings, never a failure, not even with `--strict` (what
        PostHog returns only in part by design, e.g. large playlist collections)."""
        return [f"{run.resource} project {run.project_id}: {note}" for run in self.report.runs.values()
                for note in run.notes]


def _destination(options: SyncOptions) -> Any:
    return destination_for(options.destination, options.output, options.dataset)


def destination_for(kind: str, output: str, dataset: str, *, read_only: bool = False) -> Any:
    """The dlt destination of `--destination`/`--output`/`--dataset`."""
    if kind == "duckdb":
        path = Path(output)
        if path.stem == dataset:
            # dlt on DuckDB 2.0: a catalog named like the dataset makes every query ambiguous
            raise UsageError(
                f"the DuckDB file name {path.name!r} equals the dataset name {dataset!r}, which "
                "DuckDB cannot tell apart: choose another --output or --dataset"
            )
        if path.parent != Path() and not path.parent.exists():
            raise UsageError(f"the folder of --output {output!r} does not exist")
        # bounded, so a big first merge spills to disk instead of growing the process
        credentials = DuckDbCredentials(
            str(path.resolve()), global_config={"memory_limit": DUCKDB_MEMORY, "preserve_insertion_order": False},
            read_only=read_only,
        )
        return dlt.destinations.duckdb(credentials)
    if kind in ("parquet", "filesystem"):
        url = output if "://" in output else Path(output).resolve().as_uri()
        return dlt.destinations.filesystem(bucket_url=url)
    return resolve_destination(kind)


def _quiet_arrow_hints(record: logging.LogRecord) -> bool:
    """Drop dlt's per-page warning that declared `json` columns arrive as Arrow strings (on purpose)."""
    return "when merging arrow schema" not in record.getMessage()


def _cause(error: BaseException) -> BaseException:
    """The innermost error of ours (or the deepest one) behind dlt's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = error
    deepest = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PostHogError | SchemaViolation | KeyboardInterrupt):
            return current
        deepest = current
        current = getattr(current, "exception", None) or current.__cause__ or current.__context__
    return deepest


def _compact(resource: str, pipeline: Any) -> None:
    """Compact the resource's tables in the bucket, local or remote, with dlt's own fsspec client."""
    endpoint = ENDPOINTS[resource]
    with pipeline.destination_client() as client:
        fs, folder = client.fs_client, client.get_table_dir
        compact_table(fs, folder(endpoint.name), endpoint.key, deleted=DELETED if endpoint.delete_missing else None)
        parent = tuple(parent_key(endpoint))
        for name in endpoint.children:
            compact_table(
                fs, folder(child_table(endpoint, name)), ("project_id", *parent, "position"), ("project_id", *parent)
            )
        if endpoint.members:
            members = endpoint.members.endpoint
            compact_table(fs, folder(members.name), members.key, members_merge_key(endpoint), deleted=DELETED)


def _drop_rows_of_an_older_key(resource: str, pipeline: Any) -> None:
    """Delete rows a null key column marks as loaded before that column joined the key (`late_key`).

    Such rows would never match a merge again and stand beside their newer copies; the full listing that
    just loaded wrote every current row again, so they can go. (Parquet compaction drops them itself.)
    """
    endpoint = ENDPOINTS[resource]
    if not endpoint.late_key:
        return
    with pipeline.sql_client() as sql:
        nulls = " OR ".join(f"{sql.escape_column_name(k)} IS NULL" for k in endpoint.late_key)
        sql.execute_sql(f"DELETE FROM {sql.make_qualified_table_name(endpoint.name)} WHERE {nulls}")



def sync_locks(options: SyncOptions) -> list[FileLock]:
    """The locks one sync holds: its dlt pipeline's working folder and, when local, its output.

    They are OS file locks (`flock`), released when the process ends however it ends, so a crashed run
    never leaves a stale lock behind.
    """
    pipelines_dir = Path(options.pipelines_dir or get_dlt_pipelines_dir())
    pipelines_dir.mkdir(parents=True, exist_ok=True)
    paths = [pipelines_dir / f"{options.pipeline_name}.sync.lock"]
    if "://" not in options.output and options.destination in ("duckdb", "parquet", "filesystem"):
        output = Path(options.output).resolve()
        paths.append(output.with_name(f".{output.name}.sync.lock"))
    return [FileLock(path, timeout=0) for path in paths]


@contextmanager
def exclusive(options: SyncOptions) -> Iterator[None]:
    """Hold the sync's locks, or raise `AlreadyRunning` at once (a cron run still going: skip this one)."""
    with ExitStack() as held:
        for lock in sync_locks(options):
            try:
                held.enter_context(lock)
            except Timeout:
                raise AlreadyRunning(
                    f"another sync of pipeline {options.pipeline_name!r} or of {options.output} is running "
                    f"(lock {lock.lock_file}): this run did nothing; it can start once that one has ended"
                ) from None
        yield


def run_sync(
    options: SyncOptions, *, transport: httpx.BaseTransport | None = None, clock: Clock | None = None,
    interruption: Interruption | None = None, console: Console | None = None,
) -> SyncResult:
    """The CLI's sync: settings, locks, progress display and summary around `run(pipeline, source)`.

    Only one sync of a pipeline (and of a local output) runs at a time: a second one raises
    `AlreadyRunning`. With `interruption` installed as the SIGINT/SIGTERM handler, a signal stops the run
    between loads even if its exception was lost.
    `console` (default stderr) shows the live display when it is a terminal.
    """
    settings = options.settings()
    marked = [e.name for e in ENDPOINTS.values() if e.deleted_mark]
    if options.verify_deletions and not set(marked) & set(options.resources):
        raise UsageError(f"--verify-deletions checks {', '.join(marked)}: add it to --resources")
    destination = _destination(options)
    with exclusive(options):
        client = settings.client(transport, clock)
        source = posthog_source(settings=settings, resources=options.resources, client=client)
        pipeline = dlt.pipeline(
            options.pipeline_name,
            destination=destination,
            dataset_name=options.dataset,
            pipelines_dir=options.pipelines_dir,
        )
        with SyncProgress(client.stats, default_mode(options.quiet, console), console=console) as progress:
            session_of(source).report.on_page = progress.page
            result = run(pipeline, source, full_refresh=options.full_refresh, interruption=interruption,
                         verify_deletions=options.verify_deletions)
    print_summary(result, options)
    return result


def run(
    pipeline: Any, source: Any, *, full_refresh: bool = False, loader_file_format: str | None = None,
    interruption: Interruption | None = None, verify_deletions: bool = False,
) -> SyncResult:
    """Load a `posthog_source()` into `pipeline` as the CLI does, and return what happened.

    Each selected resource is its own dlt load, so one that fails leaves nothing half-loaded and its state
    unchanged while the others still load; every resource starts reading at once, from its last committed
    state. After each load the Parquet files of a filesystem destination are compacted; at the end the
    BI views are (re)created and the counters of failed resources appended to `_sync_report`. After the
    recordings load, stored recordings PostHog deleted are marked (`deleted_at`); `verify_deletions` also
    checks those older than the re-read window (pipelines/deletions.py). A rejected
    key or an unknown project stops the run at once (raised). `loader_file_format` defaults to Parquet on
    DuckDB and filesystem destinations.
    """
    session = session_of(source)
    interruption = interruption or Interruption()
    kind = destination_kind(pipeline)
    file_format = loader_file_format or ("parquet" if kind in ("duckdb", "filesystem") else None)
    dlt_logger = logging.getLogger("dlt")
    if _quiet_arrow_hints not in dlt_logger.filters:
        dlt_logger.addFilter(_quiet_arrow_hints)
    # dlt's own handlers defer a signal during normalize/load and forget it if the step ends first: ours
    # raise at once instead; an interrupted load stays pending and the next run completes it
    pipeline.config.runtime.intercept_signals = False
    selected = list(source.selected_resources)
    failures: dict[str, str] = {}
    try:
        check_destination(pipeline)  # before any PostHog request: a missing driver or credential in a line
        session.project_ids()  # `all`: ask PostHog once, before any load
        if full_refresh and kind not in ("duckdb", "filesystem"):
            try:  # Postgres refuses to drop tables that views depend on; the run recreates them
                drop_views(pipeline)
            except Exception as error:  # noqa: BLE001 - the loads below report destination problems
                logger.warning("views not dropped before the full refresh: %s", error)
        states = committed_states(pipeline)  # also restores the destination's schema
        session.know_stored(stored_tables(pipeline, selected))
        session.read_ahead({} if full_refresh else states, selected)
        for resource in selected:
            interruption.raise_if_signalled()
            one = source.with_resources(resource)  # a clone that extracts this resource only
            if kind != "filesystem" and _first_load(pipeline, resource):
                # nothing stored to merge with, and readers yield each key once: straight into the table
                one.resources[resource].apply_hints(write_disposition="append")
            if _load_one(pipeline, one, resource, session, file_format, full_refresh, failures):
                if kind == "filesystem":
                    _compact(resource, pipeline)
                else:
                    _drop_rows_of_an_older_key(resource, pipeline)
                if ENDPOINTS[resource].deleted_mark:
                    _mark_deletions(pipeline, session, resource, file_format, full_refresh, verify_deletions, failures)
        interruption.raise_if_signalled()
        create_views(pipeline)  # BI views (pipelines/views.py); none on Parquet/filesystem
        _load_report(pipeline, session.report, file_format)
    except PipelineStepFailed as error:
        if interrupt := _interrupted(error):
            raise interrupt from None
        raise
    finally:
        session.close()
    return SyncResult(report=session.report, failures=failures, pipeline=pipeline, client_stats=session.client.stats)


def destination_kind(pipeline: Any) -> str:
    """`duckdb`, `filesystem`, `postgres`, ...: the type of the pipeline's destination."""
    return str(pipeline.destination.destination_type).rsplit(".", 1)[-1]


def committed_states(pipeline: Any) -> dict[str, dict[str, Any]]:
    """Per resource, the project states of the last committed load (restored from the destination)."""
    pipeline.sync_destination()
    resources = pipeline.state.get("sources", {}).get("posthog", {}).get("resources", {})
    return {name: dict(value.get("projects", {})) for name, value in resources.items()}


def stored_tables(pipeline: Any, resources: list[str]) -> dict[str, StoredTable]:
    """Per resource, its table's column types in the destination's schema, and for endpoints PostHog removed
    (`Endpoint.removed`) the rows each project holds, which a run reading nothing reports as kept."""
    schema = pipeline.default_schema if pipeline.default_schema_name else None
    found: dict[str, StoredTable] = {}
    for resource in resources:
        table = schema.tables.get(resource) if schema is not None else None
        if not table or not table.get("columns"):
            continue
        types = {name: column.get("data_type", "") for name, column in table["columns"].items()}
        rows: dict[int, int] | None = {}
        if ENDPOINTS[resource].removed:
            try:
                with pipeline.sql_client() as sql:
                    counted = sql.execute_sql(
                        f"SELECT project_id, COUNT(*) FROM {sql.make_qualified_table_name(resource)} GROUP BY 1")
                rows = {int(p): int(n) for p, n in counted or ()}
            except Exception as error:  # noqa: BLE001 - a count only words a message; the sync goes on
                logger.debug("rows of %s not counted: %s", resource, error)
                rows = None
        found[resource] = StoredTable(types, rows)
    return found


def _first_load(pipeline: Any, resource: str) -> bool:
    """Whether a resource's table holds no row in the destination yet (whatever this pipeline's own state
    says: another pipeline may have filled it), so this load can append; child tables and deletions always
    merge. Any doubt (an error other than a missing table) means merge."""
    endpoint = ENDPOINTS[resource]
    if endpoint.children or endpoint.members or endpoint.delete_missing:
        return False
    try:
        with pipeline.sql_client() as sql:
            rows = sql.execute_sql(f"SELECT 1 FROM {sql.make_qualified_table_name(resource)} LIMIT 1")
    except DatabaseUndefinedRelation:
        return True
    except Exception as error:  # noqa: BLE001 - merging is always correct, only slower
        logger.debug("rows of %s not checked, merging: %s", resource, error)
        return False
    return not rows


def _load_one(
    pipeline: Any, source: Any, resource: str, session: Session, file_format: str | None, full_refresh: bool,
    failures: dict[str, str],
) -> bool:
    """Load one resource; False (and the reason in `failures`) when it failed."""
    # the tables of endpoints PostHog removed hold the only copy of their rows: re-read, never dropped
    refresh = "drop_resources" if full_refresh and not ENDPOINTS[resource].removed else None
    try:
        pipeline.run(
            source,
            loader_file_format=file_format,  # type: ignore[arg-type]
            refresh=refresh,  # type: ignore[arg-type]
        )
    except PipelineStepFailed as error:
        if interrupt := _interrupted(error, resource):
            raise interrupt from None
        cause = _cause(error)
        if isinstance(cause, AuthError | ProjectNotFound | NotPostHog):
            raise cause from error  # nothing else can work either: stop the run
        failures[resource] = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        for table in ENDPOINTS[resource].tables:
            session.report.failed(table, failures[resource], session.project_ids())
        return False
    return True


def _mark_deletions(
    pipeline: Any, session: Session, resource: str, file_format: str | None, full_refresh: bool, verify: bool,
    failures: dict[str, str],
) -> None:
    """Mark the resource's rows PostHog deleted; a failure is reported and leaves the marks of earlier runs."""
    endpoint = ENDPOINTS[resource]
    try:
        loaded = mark_deletions(pipeline, session, endpoint, verify=verify, file_format=file_format,
                                restart=full_refresh)
    except PipelineStepFailed as error:
        if interrupt := _interrupted(error, resource):
            raise interrupt from None
        message = str(_cause(error)).splitlines()[0]
    except Exception as error:  # noqa: BLE001 - the recordings are loaded; the marks wait for the next run
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
    else:
        if loaded and destination_kind(pipeline) == "filesystem":
            _compact(resource, pipeline)
        return
    name = marks_name(endpoint)
    failures[name] = message
    session.report.failed(name, message, session.project_ids())
    for project_id in session.project_ids():
        session.report.run(project_id, name).deleted_marked = 0  # nothing landed


def _load_report(pipeline: Any, report: SyncReport, file_format: str | None) -> None:
    """Append to `_sync_report` the counters no resource's own load carried (the failed ones)."""
    rows = report.unwritten()
    if rows:
        table = dlt.resource(rows, name=REPORT_TABLE, write_disposition="append", columns=REPORT_COLUMNS)
        pipeline.run(table, loader_file_format=file_format)



def print_rate_buckets(stats: ClientStats | None) -> None:
    """Per rate bucket of the key that saw a 429 or was paced: requests, 429s and the rate it settled at."""
    buckets = [b for b in (stats.buckets.values() if stats else []) if b.throttled or b.paced_s > 0]
    if not buckets:
        return
    echo()
    rows = [
        (b.name, b.requests, b.throttled, round(b.paced_s), "" if b.rate_per_min is None else round(b.rate_per_min, 1),
         "learned from 429s" if b.rate_per_min is not None else f"published {b.published}" if b.published else "")
        for b in buckets
    ]
    print_table(["rate bucket", "requests", "429s", "waited s", "settled /min", "pace"], rows)


def print_summary(result: SyncResult, options: SyncOptions) -> None:
    """Print per project and resource what was fetched and loaded, then skips, drift and failures.

    Quiet runs print the failures only.
    """
    report = result.report
    if options.quiet:
        for resource, message in result.failures.items():
            echo(f"error: {resource} failed: {message}", err=True)
        return
    rows = [
        (r.project_id, r.resource, r.rows_fetched, r.rows_loaded, r.unproven, r.requests, r.throttled, r.retries,
         round(r.duration_s, 1), r.status)
        for r in report.runs.values()
    ]
    print_table(
        ["project", "resource", "fetched", "loaded", "unproven", "requests", "429s", "retries", "seconds", "status"],
        rows,
    )
    print_rate_buckets(result.client_stats)
    marks = {marks_name(e) for e in ENDPOINTS.values() if e.deleted_mark}
    for run in report.runs.values():
        if run.status == "removed":  # a fact about the server, nothing to act on: not a warning
            echo(f"{run.resource} project {run.project_id}: {run.reason}")
        if run.resource in marks and run.deleted_marked:
            echo(f"project {run.project_id}: {run.deleted_marked} recordings deleted in PostHog marked (deleted_at)")
    for warning in result.warnings():
        echo(f"warning: {warning}", err=True)
    for note in result.notes():
        echo(f"note: {note}")
    for table, names in sorted(report.drift.items()):
        for name in sorted(names):
            if options.evolve:
                echo(f"PostHog added field {name} to {table}; loaded as a new column")
            else:
                echo(
                    f"PostHog added field {name} to {table}; not loaded; use `--schema-contract evolve` "
                    "to add it"
                )
    for resource, message in result.failures.items():
        echo(f"error: {resource} failed: {message}", err=True)
