"""Check a dlt destination before a sync reads anything: known, installed, configured; each problem in a line."""

from __future__ import annotations

import difflib
import re
from typing import Any

import dlt.destinations
from dlt.common.configuration.exceptions import ConfigFieldMissingException, LookupTraces
from dlt.common.destination import Destination
from dlt.common.destination.exceptions import UnknownDestinationModule
from dlt.common.exceptions import MissingDependencyException
from dlt.pipeline.exceptions import PipelineStepFailed

# the warehouse extras of pyproject.toml's [project.optional-dependencies] (a test keeps them equal)
EXTRAS = ("postgres", "bigquery", "snowflake", "clickhouse", "motherduck", "s3")


class DestinationError(Exception):
    """The destination cannot be used as configured (exit 2): what is missing, a line per problem.

    Raised from dlt's own error, whose full text `--verbose` prints.
    """


def resolve_destination(name: str) -> Any:
    """The dlt destination factory for `name` (a dlt destination or a named one with a configured type)."""
    try:
        return Destination.from_reference(name)
    except UnknownDestinationModule as error:
        known = [d for d in dlt.destinations.__all__ if d not in ("destination", "dummy")]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DestinationError(
            f"unknown destination {name!r}{hint}: use duckdb, parquet or one of dlt's: {', '.join(sorted(known))}"
        ) from error


def check_destination(pipeline: Any) -> None:
    """Raise `DestinationError` if the pipeline's destination lacks its packages or required settings.

    Builds the destination client (which resolves its configuration like a load would, without connecting).
    """
    destination = pipeline.destination
    name = destination.destination_name
    problems: list[str] = []
    cause: BaseException | None = None
    try:
        destination.client_class  # noqa: B018 - imports the destination's driver
    except ImportError as error:
        problems.append(f"destination {name} is not installed: {_install(destination, error)}")
        cause = error
    try:
        pipeline.destination_client()
    except ConfigFieldMissingException as error:
        problems.append(f"destination {name} is not configured: {_missing(error)}")
        cause = error
    except MissingDependencyException as error:  # the driver, found missing while configuring
        if not problems:
            problems.append(f"destination {name} is not installed: {_install(destination, error)}")
        cause = error
    if problems:
        raise DestinationError("\n".join(problems)) from cause


def _install(destination: Any, error: ImportError) -> str:
    """The pip command that installs what `destination` needs: our extra where there is one, else dlt's."""
    wanted = [str(d) for d in getattr(error, "dependencies", [])]
    extras = [m.group(1) for d in wanted if (m := re.fullmatch(r"dlt\[(\w+)\]", d))]
    extras = extras or [destination.destination_type.rsplit(".", 1)[-1]]
    mine = [e for e in extras if e in EXTRAS]
    if mine:
        return f'pip install "posthog-export[{mine[0]}]"'
    return " ".join(f'pip install "{d}"' for d in wanted) or f'pip install "dlt[{extras[0]}]"'


def _leaves(traces: dict[str, list[Any]]) -> list[tuple[list[str], str, bool]]:
    """(sections, field, more kinds exist) of each missing value; of a union, only its first kind."""
    found: list[tuple[list[str], str, bool]] = []
    for field, field_traces in traces.items():
        nested = [t for t in field_traces if isinstance(t, LookupTraces)]
        if nested:
            first = min(nested, key=lambda t: t.union_pos)
            found += [(s, f, more or first.union_count > 1) for s, f, more in _leaves(first.traces)]
        else:
            sections = max((list(t.sections) for t in field_traces), key=len, default=[])
            found.append((sections, field, False))
    return found


def _missing(error: ConfigFieldMissingException) -> str:
    """The missing values as environment variables and as `.dlt/secrets.toml` keys."""
    leaves = _leaves(error.traces)
    env = ", ".join("__".join([*sections, field]).upper() for sections, field, _ in leaves)
    tables: dict[str, list[str]] = {}
    for sections, field, _ in leaves:
        tables.setdefault(".".join(sections), []).append(field)
    toml = "; ".join(f"{', '.join(fields)} under [{table}]" for table, fields in tables.items())
    other = " (other kinds of credentials: see --verbose)" if any(more for *_, more in leaves) else ""
    return f"set {env}, or {toml} in .dlt/secrets.toml{other}"


def step_failure(error: PipelineStepFailed) -> str:
    """One line for a dlt step that failed outside a resource's load, e.g. on an unreachable destination."""
    cause, name = error.exception, error.pipeline.destination.destination_name
    if isinstance(cause, ConfigFieldMissingException):
        return f"destination {name} is not configured: {_missing(cause)}"
    text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"destination {name} failed in dlt's {error.step} step: {type(cause).__name__}: {text}"
