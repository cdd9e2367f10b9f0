"""Turn pages of API rows into Arrow tables shaped by the declared columns.

Building each page as an Arrow table against the endpoint table's declarations does two jobs at once:
dlt loads Arrow without its row-by-row normalizer, and every value is checked against its declared type,
so a contradiction fails with a message naming the table, column and types.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .endpoints import ColumnType

ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "json": pa.string(),
}


_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


class SchemaViolation(Exception):
    """A value contradicts its column's declared type."""


@dataclass
class Drift:
    """Fields PostHog sent that the declarations do not know, per table (reported once per run)."""

    fields: dict[str, set[str]] = field(default_factory=dict)

    def add(self, table: str, names: Iterable[str]) -> None:
        """Remember new field names seen in a table's rows."""
        self.fields.setdefault(table, set()).update(names)


def dlt_columns(columns: Mapping[str, ColumnType], key: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """dlt column hints for declared columns; key columns are not nullable."""
    keys = set(key)
    hints: dict[str, dict[str, Any]] = {}
    for name, ctype in columns.items():
        hint: dict[str, Any] = {"name": name, "data_type": ctype, "nullable": name not in keys}
        if ctype == "timestamp":
            hint.update(timezone=True, precision=6)
        hints[name] = hint
    return hints


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _timestamps(strings: pa.Array) -> pa.Array:
    try:
        return strings.cast(ARROW_TYPES["timestamp"])
    except pa.ArrowInvalid:
        # no offset in the string: PostHog's own answers are UTC
        return pc.assume_timezone(strings.cast(pa.timestamp("us")), "UTC")


def _convert(values: list[Any], ctype: ColumnType) -> pa.Array:
    if ctype == "json":
        return pa.array([_json(v) for v in values], pa.string())
    if ctype == "timestamp":
        return _timestamps(pa.array(values, pa.string()))
    return pa.array(values, ARROW_TYPES[ctype])


@functools.lru_cache(maxsize=64)
def _row_type(columns: tuple[tuple[str, ColumnType], ...]) -> pa.StructType:
    """The struct Arrow converts whole rows into: every non-JSON column, timestamps still as strings."""
    return pa.struct([(n, pa.string() if t == "timestamp" else ARROW_TYPES[t]) for n, t in columns if t != "json"])


def _fast_arrays(rows: list[dict[str, Any]], columns: Mapping[str, ColumnType]) -> list[pa.Array]:
    """All declared columns, converted by Arrow in one pass over the rows (raises on any bad value).

    Arrow converts a struct's fields with the same converters as single columns, so the result is the
    column-by-column result; on any error the caller redoes the page column by column to name the value.
    """
    row_type = _row_type(tuple(columns.items()))
    fields = dict(zip(row_type.names, pa.array(rows, row_type).flatten(), strict=True)) if row_type.num_fields else {}
    dumps = orjson.dumps
    arrays = []
    for name, ctype in columns.items():
        if ctype == "json":
            values = [None if (v := r.get(name)) is None else dumps(v).decode() for r in rows]
            arrays.append(pa.array(values, pa.string()))
        elif ctype == "timestamp":
            arrays.append(_timestamps(fields[name]))
        else:
            arrays.append(fields[name])
    return arrays


def _column(table: str, name: str, values: list[Any], ctype: ColumnType) -> pa.Array:
    try:
        return _convert(values, ctype)
    except _CONVERSION_ERRORS:
        for value in values:
            try:
                _convert([value], ctype)
            except _CONVERSION_ERRORS:
                shown = repr(value)[:60]
                raise SchemaViolation(
                    f"{table}.{name}: declared {ctype}, but PostHog sent {type(value).__name__} "
                    f"{shown}; nothing of {table} was loaded. Evolving the schema adds new columns only: a "
                    "changed type needs a declaration change in sources/posthog/endpoints.py"
                ) from None
        raise


def _infer(values: list[Any]) -> pa.Array | None:
    """Arrow array for a column PostHog added (evolve mode); None while it holds only nulls."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if any(isinstance(v, dict | list) for v in present):
        return pa.array([_json(v) for v in values], pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_json(v) for v in values], pa.string())


def to_arrow(
    table: str,
    rows: list[dict[str, Any]],
    columns: Mapping[str, ColumnType],
    *,
    drift: Drift,
    evolve: bool = False,
    elsewhere: Iterable[str] = (),
) -> pa.Table:
    """Build one Arrow table with exactly the declared columns (plus new ones when evolving).

    `elsewhere` names fields that land in other tables (child lists), so they are not new fields.
    """
    try:
        arrays = _fast_arrays(rows, columns)
    except _CONVERSION_ERRORS:
        arrays = [_column(table, name, [r.get(name) for r in rows], ct) for name, ct in columns.items()]
    names = list(columns)
    # rows of one page nearly always share one key order: union the distinct key tuples, not every key
    unknown = set().union(*set(map(tuple, rows))) - columns.keys() - set(elsewhere)
    if unknown:
        drift.add(table, unknown)
        if evolve:
            for name in sorted(unknown):
                array = _infer([r.get(name) for r in rows])
                if array is not None:
                    names.append(name)
                    arrays.append(array)
    fields = [pa.field(n, a.type) for n, a in zip(names, arrays, strict=True)]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
