"""Run a sync: one dlt pipeline, one load per resource, Parquet compaction, the run summary."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import httpx
from dlt.common.pipeline import get_dlt_pipelines_dir
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.pipeline.exceptions import PipelineStepFailed
from filelock import FileLock, Timeout

from sources.posthog import ENDPOINTS, PostHogClient, SyncReport, posthog_source
from sources.posthog.arrow import SchemaViolation, dlt_columns
from sources.posthog.client import ClientStats
from sources.posthog.endpoints import ColumnType as TColumnType
from sources.posthog.errors import AuthError, NotPostHog, PostHogError, ProjectNotFound
from sources.posthog.pacing import Pacer
from sources.posthog.sync import DELETED, child_table, parent_column

from .hints import with_hint
from .output import echo, print_table
from .parquet import compact_table
from .progress import SyncProgress, default_mode
from .views import create_views, drop_views

logger = logging.getLogger("posthog_export")
DUCKDB_MEMORY = "128MB"
Clock = tuple[Callable[[], float], Callable[[float], None]]


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
    """Everything one sync needs, resolved from flags and config."""

    project_ids: list[int]
    api_key: str
    host: str
    resources: list[str]
    destination: str = "duckdb"
    output: str = "posthog_export.duckdb"
    dataset: str = "posthog"
    full_refresh: bool = False
    lookback_days: float = 1.0
    evolve: bool = False
    pipeline_name: str = "posthog"
    pipelines_dir: str | None = None
    initial_date_from: str = "2020-01-01T00:00:00Z"
    page_sizes: dict[str, int] = field(default_factory=dict)
    max_attempts: int = 6
    backoff_s: float = 1.0
    rate_limit_plan: str = "free"
    rate_limits: dict[str, list[int]] = field(default_factory=dict)
    max_wait_s: float = 3600.0
    strict: bool = False
    all_projects: bool = False
    quiet: bool = False


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
        """Skipped or unfinished resources and counts that disagree with PostHog's (fail `--strict`)."""
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


def _destination(options: SyncOptions) -> tuple[Any, str | None]:
    if options.destination == "duckdb":
        path = Path(options.output)
        if path.stem == options.dataset:
            # dlt on DuckDB 2.0: a catalog named like the dataset makes every query ambiguous
            raise UsageError(
                f"the DuckDB file name {path.name!r} equals the dataset name {options.dataset!r}, which "
                "DuckDB cannot tell apart: choose another --output or --dataset"
            )
        if path.parent != Path() and not path.parent.exists():
            raise UsageError(f"the folder of --output {options.output!r} does not exist")
        # bounded, so a big first merge spills to disk instead of growing the process
        credentials = DuckDbCredentials(
            str(path.resolve()), global_config={"memory_limit": DUCKDB_MEMORY, "preserve_insertion_order": False}
        )
        return dlt.destinations.duckdb(credentials), "parquet"
    if options.destination in ("parquet", "filesystem"):
        url = options.output if "://" in options.output else Path(options.output).resolve().as_uri()
        return dlt.destinations.filesystem(bucket_url=url), "parquet"
    return options.destination, None


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


def _compact(options: SyncOptions, resource: str, pipeline: Any) -> None:
    """Compact the resource's tables in the bucket, local or remote, with dlt's own fsspec client."""
    if options.destination not in ("parquet", "filesystem"):
        return
    endpoint = ENDPOINTS[resource]
    with pipeline.destination_client() as client:
        fs, folder = client.fs_client, client.get_table_dir
        compact_table(fs, folder(endpoint.name), endpoint.key, deleted=DELETED if endpoint.delete_missing else None)
        parent = parent_column(endpoint)
        for name in endpoint.children:
            compact_table(
                fs, folder(child_table(endpoint, name)), ("project_id", parent, "position"), ("project_id", parent)
            )


def _drop_rows_of_an_older_key(options: SyncOptions, resource: str, pipeline: Any) -> None:
    """Delete rows a null key column marks as loaded before that column joined the key (`late_key`).

    Such rows would never match a merge again and stand beside their newer copies; the full listing that
    just loaded wrote every current row again, so they can go. (Parquet compaction drops them itself.)
    """
    endpoint = ENDPOINTS[resource]
    if not endpoint.late_key or options.destination in ("parquet", "filesystem"):
        return
    with pipeline.sql_client() as sql:
        nulls = " OR ".join(f"{sql.escape_column_name(k)} IS NULL" for k in endpoint.late_key)
        sql.execute_sql(f"DELETE FROM {sql.make_qualified_table_name(endpoint.name)} WHERE {nulls}")


def make_client(
    options: SyncOptions, transport: httpx.BaseTransport | None = None, clock: Clock | None = None
) -> PostHogClient:
    """The run's one PostHog client, shared by every resource and project.

    `clock` replaces (monotonic time, sleep) for tests that simulate hours of rate limits.
    """
    timing = {"clock": clock[0], "sleep": clock[1]} if clock else {}
    return PostHogClient(
        options.host,
        options.api_key,
        max_attempts=options.max_attempts,
        backoff_s=options.backoff_s,
        max_wait_s=options.max_wait_s,
        pacer=Pacer(options.rate_limit_plan, options.rate_limits),
        transport=transport,
        **timing,  # type: ignore[arg-type]
    )


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
    interruption: Interruption | None = None,
) -> SyncResult:
    """Sync the selected resources of every project, one dlt load per resource.

    A resource that fails leaves nothing half-loaded and its state unchanged; the others still run.
    A rejected key or an unknown project stops the run at once. Only one sync of a pipeline (and of a
    local output) runs at a time: a second one raises `AlreadyRunning`. With `interruption` installed as
    the SIGINT/SIGTERM handler, a signal stops the run between loads even if its exception was lost.
    """
    destination, file_format = _destination(options)
    with exclusive(options):
        return _run_locked(options, destination, file_format, transport, clock, interruption or Interruption())


def _run_locked(
    options: SyncOptions, destination: Any, file_format: str | None, transport: httpx.BaseTransport | None,
    clock: Clock | None, interruption: Interruption,
) -> SyncResult:
    dlt_logger = logging.getLogger("dlt")
    if _quiet_arrow_hints not in dlt_logger.filters:
        dlt_logger.addFilter(_quiet_arrow_hints)
    report = SyncReport()
    try:
        client = make_client(options, transport, clock)
    except ValueError as error:
        raise UsageError(str(error)) from error
    pipeline = dlt.pipeline(
        options.pipeline_name,
        destination=destination,
        dataset_name=options.dataset,
        pipelines_dir=options.pipelines_dir,
    )
    # dlt's own handlers defer a signal during normalize/load and forget it if the step ends first: ours
    # raise at once instead; an interrupted load stays pending and the next run completes it
    pipeline.config.runtime.intercept_signals = False
    try:
        if options.all_projects:
            options.project_ids = discover_projects(client)
        with SyncProgress(client.stats, default_mode(options.quiet)) as progress:
            report.on_page = progress.page
            failures = _load_resources(options, pipeline, client, report, file_format, interruption)
        interruption.raise_if_signalled()
        create_views(pipeline)  # BI views (pipelines/views.py); none on Parquet/filesystem
        _load_report(pipeline, report, file_format)
    except PipelineStepFailed as error:
        if interrupt := _interrupted(error):
            raise interrupt from None
        raise
    finally:
        client.close()
    result = SyncResult(report=report, failures=failures, pipeline=pipeline, client_stats=client.stats)
    print_summary(result, options)
    return result


def discover_projects(client: PostHogClient) -> list[int]:
    """Every project the key can read (`/api/projects/`, all pages)."""
    ids = [int(p["id"]) for page, _ in client.pages("/api/projects/", {"limit": 100}, "drf") for p in page]
    if not ids:
        raise UsageError(f"the key can read no projects on {client.host}: check the key's project access")
    logger.info("found %d projects: %s", len(ids), ", ".join(map(str, ids)))
    return ids


def _load_resources(
    options: SyncOptions, pipeline: Any, client: PostHogClient, report: SyncReport, file_format: str | None,
    interruption: Interruption,
) -> dict[str, str]:
    """One dlt load per resource; returns the resources that failed, with their one-line reason."""
    failures: dict[str, str] = {}
    if options.full_refresh and options.destination not in ("duckdb", "parquet", "filesystem"):
        try:  # Postgres refuses to drop tables that views depend on; the run recreates them
            drop_views(pipeline)
        except Exception as error:  # noqa: BLE001 - the loads below report destination problems
            logger.warning("views not dropped before the full refresh: %s", error)
    cancelled = threading.Event()
    # every resource starts reading now, from its committed state, and waits for its own load
    read_ahead = ({} if options.full_refresh else committed_states(pipeline), cancelled)
    sources = {
        resource: posthog_source(
            project_ids=options.project_ids,
            host=options.host,
            resources=[resource],
            lookback_days=options.lookback_days,
            initial_date_from=options.initial_date_from,
            evolve_schema=options.evolve,
            page_sizes=options.page_sizes,
            client=client,
            report=report,
            read_ahead=read_ahead,
        )
        for resource in options.resources
    }
    try:
        for resource, source in sources.items():
            interruption.raise_if_signalled()
            if _load_one(options, pipeline, source, resource, report, file_format, failures):
                _compact(options, resource, pipeline)
                _drop_rows_of_an_older_key(options, resource, pipeline)
    finally:
        cancelled.set()
    return failures


def committed_states(pipeline: Any) -> dict[str, dict[str, Any]]:
    """Per resource, the project states of the last committed load (restored from the destination)."""
    pipeline.sync_destination()
    resources = pipeline.state.get("sources", {}).get("posthog", {}).get("resources", {})
    return {name: dict(value.get("projects", {})) for name, value in resources.items()}


def _load_one(
    options: SyncOptions, pipeline: Any, source: Any, resource: str, report: SyncReport,
    file_format: str | None, failures: dict[str, str],
) -> bool:
    """Load one resource; False (and the reason in `failures`) when it failed."""
    try:
        pipeline.run(
            source,
            loader_file_format=file_format,  # type: ignore[arg-type]
            refresh="drop_resources" if options.full_refresh else None,
        )
    except PipelineStepFailed as error:
        if interrupt := _interrupted(error, resource):
            raise interrupt from None
        cause = _cause(error)
        if isinstance(cause, AuthError | ProjectNotFound | NotPostHog):
            raise cause from error  # nothing else can work either: stop the run
        failures[resource] = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        for project_id in options.project_ids:
            run = report.run(project_id, resource)
            run.status, run.reason, run.rows_loaded = "failed", failures[resource], 0
        return False
    return True


REPORT_COLUMNS: dict[str, TColumnType] = {
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
    "duration_s": "double",
    "status": "text",
    "reason": "text",
}


def _load_report(pipeline: Any, report: SyncReport, file_format: str | None) -> None:
    """Append this run's counters to the `_sync_report` table."""
    rows = report.rows()
    if rows:
        table = dlt.resource(
            rows, name="_sync_report", write_disposition="append", columns=dlt_columns(REPORT_COLUMNS)
        )
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
    for warning in result.warnings():
        echo(f"warning: {warning}", err=True)
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
