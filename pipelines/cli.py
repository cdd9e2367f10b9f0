"""The `posthog-export` command line: sync, demo, sql, status."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb
from dlt.pipeline.exceptions import PipelineStepFailed

from sources.posthog import ENDPOINTS, SettingsError
from sources.posthog.client import REGION_HOSTS
from sources.posthog.errors import PostHogError

from .destinations import DestinationError, step_failure
from .hints import with_hint
from .output import echo, print_table
from .runner import AlreadyRunning, Interrupted, Interruption, SyncOptions, UsageError, run_sync

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# the shell's convention for a process ended by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)
EXIT_SIGNALLED = {signal.SIGINT: 130, signal.SIGTERM: 143}
DEFAULT_OUTPUT = "posthog_export.duckdb"
DEFAULT_PARQUET_OUTPUT = "posthog_export_parquet"
DEMO_OUTPUT = "posthog_demo.duckdb"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        echo(f"error: {message} (see --help)", err=True)
        raise SystemExit(EXIT_USAGE)


def _resources(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENDPOINTS]
    if unknown or not names:
        shown = ", ".join(unknown) or repr(value)
        raise argparse.ArgumentTypeError(f"unknown resource {shown}; choose from {', '.join(ENDPOINTS)}")
    return names


def _positive(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `posthog-export`."""
    parser = _Parser(prog="posthog-export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sync = commands.add_parser("sync", help="sync PostHog projects into a destination")
    sync.add_argument("--project-id", action="append", dest="project_ids", metavar="ID",
                      help="PostHog project id, repeatable, or `all` for every project the key can read "
                      "(default: sources.posthog.project_ids)")
    sync.add_argument("--host", help=f"PostHog host: us, eu or a URL (default {REGION_HOSTS['us']})")
    sync.add_argument("--resources", type=_resources, help=f"comma-separated: {', '.join(ENDPOINTS)}")
    sync.add_argument("--destination", default="duckdb",
                      help="duckdb (default), parquet, or any dlt destination name")
    sync.add_argument("--output", help=f"DuckDB file or Parquet folder (default {DEFAULT_OUTPUT})")
    sync.add_argument("--dataset", default="posthog", help="dataset (schema) name (default posthog)")
    sync.add_argument("--full-refresh", action="store_true", help="rebuild the selected tables from scratch")
    sync.add_argument("--verify-deletions", action="store_true",
                      help="also check stored recordings older than the re-read window for deletion in PostHog "
                      "(by session_ids, 100 per request, within the rate budget; resumes where the last run stopped)")
    sync.add_argument("--lookback-days", type=_positive, help="re-read window before the cursor (default 1)")
    sync.add_argument("--schema-contract", choices=["freeze", "evolve"],
                      help="freeze: new PostHog fields are reported, not loaded (default); evolve: add them")
    sync.add_argument("--pipeline-name", default="posthog", help="dlt pipeline name (default posthog)")
    sync.add_argument("--rate-limit-plan", choices=["free", "paid", "enterprise", "none"],
                      help="PostHog plan whose rate limits to pace by (default: free, the strictest, on "
                      "PostHog Cloud; none on self-hosted hosts)")
    sync.add_argument("--max-wait-minutes", type=_positive,
                      help="longest wait for the rate budget before stopping cleanly (default 60)")
    sync.add_argument("--strict", action="store_true",
                      help="exit 1 on skipped or unfinished resources and on count mismatches too")
    sync.add_argument("--allow-insecure-http", action="store_true",
                      help="allow a plain http:// host that is not loopback (the key travels in clear text)")
    sync.add_argument("--quiet", action="store_true", help="print errors only")
    sync.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    demo = commands.add_parser("demo", help="sync the built-in fake PostHog into a local DuckDB file")
    demo.add_argument("--output", default=DEMO_OUTPUT, help=f"DuckDB file (default {DEMO_OUTPUT})")
    demo.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    sql = commands.add_parser("sql", help="run a read-only SQL query against the DuckDB output")
    sql.add_argument("query", help='e.g. "SELECT * FROM v_recordings_per_day ORDER BY day DESC"')
    sql.add_argument("--output", default=DEFAULT_OUTPUT, help=f"DuckDB file (default {DEFAULT_OUTPUT})")
    sql.add_argument("--dataset", default="posthog", help="schema of unqualified table names (default posthog)")
    sql.add_argument("--max-rows", type=int, default=100, help="rows to print, 0 for all (default 100)")
    sql.add_argument("--max-width", type=int, default=60, help="cut longer values, 0 for never (default 60)")
    sql.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    status = commands.add_parser("status", help="per project and resource: last sync, cursor, rows, problems")
    _written_by_sync(status)
    status.add_argument("--json", action="store_true", help="print one JSON document (keys in README.md)")
    status.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    forget = commands.add_parser(
        "forget", help="erase a person's rows from the destination (after PostHog erased them)",
        description="Erase a person's rows from the destination `sync` wrote to, after PostHog carried out the "
        "GDPR request: their recordings (by distinct id, or the person object's distinct ids or uuid), every row "
        "naming one of those sessions or the person, and their email from other recordings' viewers lists. "
        "Prints the rows removed and changed per table; --dry-run only counts them. A later sync brings rows "
        "back only if PostHog still has them.",
    )
    forget.add_argument("--distinct-id", action="append", dest="distinct_ids", default=[], metavar="ID",
                        help="a distinct id of the person, repeatable")
    forget.add_argument("--person-uuid", action="append", dest="person_uuids", default=[], metavar="UUID",
                        help="the PostHog person's uuid (`person.uuid` in recordings), repeatable")
    forget.add_argument("--project-id", action="append", dest="project_ids", type=int, metavar="ID",
                        help="only in this project, repeatable (default: every project in the dataset)")
    forget.add_argument("--dry-run", action="store_true", help="count what would be removed; change nothing")
    _written_by_sync(forget)
    forget.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return parser


def _written_by_sync(command: argparse.ArgumentParser) -> None:
    """The flags naming what an earlier `sync` wrote: destination, output, dataset, pipeline."""
    command.add_argument("--destination", default="duckdb",
                         help="the destination `sync` wrote to: duckdb (default), parquet, or a dlt destination name")
    command.add_argument("--output", help=f"DuckDB file or Parquet folder (default {DEFAULT_OUTPUT})")
    command.add_argument("--dataset", default="posthog", help="dataset (schema) name (default posthog)")
    command.add_argument("--pipeline-name", default="posthog", help="dlt pipeline name (default posthog)")


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "dlt", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def default_output(destination: str) -> str:
    """Where `--output` points when not given, for `sync` and `status` alike."""
    return DEFAULT_PARQUET_OUTPUT if destination == "parquet" else DEFAULT_OUTPUT


def sync_options(args: argparse.Namespace) -> SyncOptions:
    """The flags a user gave, as the options of one sync; every setting not given comes from dlt's config
    (`sources/posthog/settings.py`), as for `posthog_source()`."""
    output = args.output or default_output(args.destination)
    return SyncOptions(
        project_ids=args.project_ids,
        host=args.host,
        resources=args.resources or list(ENDPOINTS),
        destination=args.destination,
        output=output,
        dataset=args.dataset,
        full_refresh=args.full_refresh,
        verify_deletions=args.verify_deletions,
        lookback_days=args.lookback_days,
        evolve={"evolve": True, "freeze": False}.get(args.schema_contract),
        pipeline_name=args.pipeline_name,
        rate_limit_plan=args.rate_limit_plan,
        max_wait_s=None if args.max_wait_minutes is None else 60 * args.max_wait_minutes,
        allow_insecure_http=args.allow_insecure_http or None,
        strict=args.strict,
        quiet=args.quiet,
    )


def _sync(args: argparse.Namespace) -> int:
    options = sync_options(args)
    # SIGTERM (a scheduler stopping the job) ends the run like Ctrl-C: unwound, nothing partial committed
    with Interruption() as interruption:
        result = run_sync(options, interruption=interruption)
        interruption.raise_if_signalled()  # a signal whose exception a finalizer swallowed at the very end
    if not result.ok or (options.strict and result.warnings()):
        return EXIT_FAILED
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return EXIT_OK if run_demo(Path(args.output)) else EXIT_FAILED


def _sql(args: argparse.Namespace) -> int:
    from .query import QueryError, one_line, run_query

    try:
        run_query(args.output, args.query, dataset=args.dataset, max_rows=args.max_rows, max_width=args.max_width)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    except QueryError as error:
        echo(f"error: {error}", err=True)
        return EXIT_USAGE
    except duckdb.Error as error:  # the file itself: locked by a running sync, not a DuckDB file, ...
        echo(f"error: cannot open {args.output}: {one_line(error)}", err=True)
        return EXIT_FAILED
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from .query import one_line
    from .status import print_status, print_status_json, read_status

    output = args.output or default_output(args.destination)
    try:
        status = read_status(args.destination, output, dataset=args.dataset, pipeline_name=args.pipeline_name)
    except (FileNotFoundError, LookupError) as error:
        raise UsageError(str(error).strip("'\"")) from error
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - the destination: unreachable, locked by a sync, no credentials
        if args.verbose:
            raise
        where = output if args.destination in ("duckdb", "parquet", "filesystem") else args.destination
        echo(f"error: cannot read the status from {where}: {one_line(error)}", err=True)
        return EXIT_FAILED
    (print_status_json if args.json else print_status)(status)
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    from .forget import forget, print_forget
    from .query import one_line

    output = args.output or default_output(args.destination)
    try:
        result = forget(args.distinct_ids, args.person_uuids, destination=args.destination, output=output,
                        dataset=args.dataset, pipeline_name=args.pipeline_name, projects=args.project_ids,
                        dry_run=args.dry_run)
    except (FileNotFoundError, LookupError) as error:
        raise UsageError(str(error).strip("'\"")) from error
    except (UsageError, AlreadyRunning):
        raise
    except Exception as error:  # noqa: BLE001 - the destination: unreachable, locked, no credentials
        if args.verbose:
            raise
        where = output if args.destination in ("duckdb", "parquet", "filesystem") else args.destination
        echo(f"error: cannot forget in {where}: {one_line(error)} (rerun with --verbose for details)", err=True)
        return EXIT_FAILED
    print_forget(result)
    return EXIT_OK


COMMANDS = {"sync": _sync, "demo": _demo, "sql": _sql, "status": _status, "forget": _forget}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `posthog-export`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help and usage errors
        return int(exit_.code or 0)
    _setup_logging(args.verbose, getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except (UsageError, DestinationError) as error:
        for line in str(error).splitlines():
            echo(f"error: {line}", err=True)
        if args.verbose and error.__cause__ is not None:  # e.g. dlt's full account of a destination error
            echo(str(error.__cause__).strip(), err=True)
        return EXIT_USAGE
    except SettingsError as error:
        echo(f"error: {with_hint(str(error), error)}", err=True)
        return EXIT_USAGE
    except AlreadyRunning as error:
        echo(f"error: {error}", err=True)
        return EXIT_FAILED
    except KeyboardInterrupt as error:
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        resource = error.resource if isinstance(error, Interrupted) else None
        echo(f"interrupted by {signal.Signals(signum).name}: "
             + (f"{resource} was not committed, " if resource else "")
             + ("resources that finished are committed; " if args.command == "sync" else "")
             + "rerun to continue", err=True)
        return EXIT_SIGNALLED.get(signum, EXIT_FAILED)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into one line
        if args.verbose:
            raise
        if isinstance(error, PostHogError):
            shown = with_hint(str(error), error)
        elif isinstance(error, PipelineStepFailed):
            shown = step_failure(error)
        else:
            shown = f"{type(error).__name__}: {error}"
        echo(f"error: {shown} (rerun with --verbose for details)", err=True)
        return EXIT_FAILED


def entry() -> None:
    """The `posthog-export` console script: `main`, then exit with its code.

    After an interrupt the process exits at once: reader threads may still be inside a request or a
    rate-limit wait, and what they hold is not committed anyway.
    """
    code = main()
    if code in EXIT_SIGNALLED.values():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()


__all__ = ["main", "entry", "build_parser", "print_table"]
