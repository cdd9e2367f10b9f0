"""Turn pages of API rows into Arrow tables shaped by the declared columns.

Building each page as an Arrow table against the endpoint table's declarations does two jobs at once:
dlt loads Arrow without its row-by-row normalizer, and every value is checked against its declared type,
so a contradiction fails with a message naming the table, column and types.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


# what DuckDB converts each declared type from (its json_transform gives NULL where a cast fails: integers
# go through HUGEINT, so one beyond int64 fails Arrow's checked cast instead; timestamps are parsed by Arrow
# as on the dict path)
_DUCKDB_TYPES = {"text": "VARCHAR", "bigint": "HUGEINT", "double": "DOUBLE", "bool": "BOOLEAN",
                 "timestamp": "VARCHAR", "json": "JSON"}
# the JSON types (`json_structure`) a page's values may have, per declared type, for DuckDB's conversion to
# equal the dict path's; anything else (DuckDB casts leniently: "12" to 12, 1.5 to 2) goes the dict path
_ACCEPTED = {"text": {"VARCHAR"}, "bigint": {"BIGINT", "UBIGINT"}, "double": {"DOUBLE", "BIGINT", "UBIGINT"},
             "bool": {"BOOLEAN"}, "timestamp": {"VARCHAR"}}
PAGE_KEYS = ("has_next", "next_cursor", "next", "count")  # what paging and the readers read besides `results`
_EXACT = 2**53  # integers from here on are not exact as doubles: the dict path refuses them (so it decides)
# one DuckDB and one thread decode every page of the process: DuckDB keeps the memory a decode used for
# the thread that used it (about ten times the page's bytes), so more threads would keep more
_database: Any = None
_decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posthog-decode")


class ArrowRows(list):  # type: ignore[type-arg]
    """Rows of a page decoded straight into Arrow: a list of light dicts (only `fields`) over the page's table.

    The readers filter and inspect the light dicts as they do full rows; `table()` is the page's Arrow table
    for the rows still in the list, and `dicts()` decodes those rows in full (from the page's bytes) for the
    paths that need whole rows (re-reads, held and partial rows).
    """

    def __init__(self, rows: Iterable[dict[str, Any]], page: _Page) -> None:
        super().__init__(rows)
        self.page = page

    @property
    def unknown(self) -> set[str]:
        """Fields of the page that the declarations do not know."""
        return self.page.unknown

    def subset(self, rows: Iterable[dict[str, Any]]) -> ArrowRows:
        """These rows (light dicts of this page) over the same page."""
        return ArrowRows(rows, self.page)

    def _positions(self) -> list[int]:
        return [self.page.position[id(r)] for r in self]

    def table(self, project_id: int) -> pa.Table:
        """The declared columns of these rows, `project_id` first, as `to_arrow` builds them."""
        table = self.page.table
        positions = self._positions()
        if positions != list(range(table.num_rows)):
            table = table.take(positions)
        ids = pa.array([project_id] * table.num_rows, pa.int64())
        return table.add_column(0, pa.field("project_id", pa.int64()), ids)

    def dicts(self) -> list[dict[str, Any]]:
        """These rows decoded in full, with what the readers set on the light dicts (e.g. `project_id`)."""
        if self.page.full is None:
            self.page.full = orjson.loads(self.page.content)["results"]
        full = self.page.full
        return [{**full[p], **{k: v for k, v in r.items() if k not in self.page.fields}}
                for p, r in zip(self._positions(), self, strict=True)]


@dataclass
class _Page:
    content: bytes
    table: pa.Table
    fields: tuple[str, ...]
    unknown: set[str]
    position: dict[int, int] = field(default_factory=dict)
    full: list[dict[str, Any]] | None = None


def _decode_with_duckdb(query: str) -> pa.Table:
    """Run a page's query on the one decoding thread (see `decode_page`)."""
    global _database
    if _database is None:
        import duckdb

        # one core; files are read once, so DuckDB need not cache them; freed memory goes back soon
        _database = duckdb.connect(config={
            "threads": 1, "enable_external_file_cache": False, "allocator_background_threads": True,
            "allocator_flush_threshold": "8MB",
        })
    return _database.sql(query).to_arrow_table()


def decode_page(
    content: bytes, columns: Mapping[str, ColumnType], fields: tuple[str, ...]
) -> dict[str, Any] | None:
    """Decode a list page (`{"results": [...], "has_next": ...}`) straight into Arrow with DuckDB's JSON reader.

    Returns the body with `results` as `ArrowRows` (light dicts of `fields`), or None whenever the dict path
    must decide instead: a value whose JSON type DuckDB would convert where the dict path refuses it, rows
    that are not objects, an empty page, or anything DuckDB cannot read. Undeclared fields are kept aside as
    `unknown` (drift), as `to_arrow` reports them.
    """
    spec = orjson.dumps([{n: _DUCKDB_TYPES[t] for n, t in columns.items()}]).decode()
    keys = ", ".join(f"'{k}': 'JSON'" for k in ("results", *PAGE_KEYS))
    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as file:
            file.write(content)
            file.flush()
            query = (
                f"SELECT json_structure(results) AS s, json_transform(results, '{spec}') AS t, "
                f"{', '.join(PAGE_KEYS)} FROM read_json('{file.name}', columns={{{keys}}}, "
                f"format='unstructured', records=true, maximum_object_size={len(content) + 1024})"
            )
            result = _decoder.submit(_decode_with_duckdb, query).result()
    except Exception:  # noqa: BLE001 - any failure: the dict path decides (and names the problem)
        return None
    if result.num_rows != 1 or result["s"][0].as_py() is None:
        return None
    structure = orjson.loads(result["s"][0].as_py())
    if not isinstance(structure, list) or len(structure) != 1 or not isinstance(structure[0], dict):
        return None  # not a list of objects, or an empty page
    found: dict[str, Any] = structure[0]
    for name, ctype in columns.items():
        kind = found.get(name, "NULL")
        if ctype != "json" and kind != "NULL" and (not isinstance(kind, str) or kind not in _ACCEPTED[ctype]):
            return None
    values = result["t"].combine_chunks().flatten()
    arrays = []
    for (name, ctype), array in zip(columns.items(), values.flatten(), strict=True):
        if isinstance(array.type, pa.ExtensionType):
            array = array.storage
        if ctype == "timestamp":
            try:
                array = _timestamps(array)
            except _CONVERSION_ERRORS:
                return None
        elif ctype == "double" and found.get(name, "NULL") != "NULL":  # (the JSON type of a mix is DOUBLE)
            largest = pc.max(pc.abs(array)).as_py()
            if largest is not None and largest >= _EXACT:
                return None
        try:
            arrays.append(array.cast(ARROW_TYPES[ctype]))
        except _CONVERSION_ERRORS:
            return None
    table = pa.Table.from_arrays(arrays, schema=pa.schema([(n, ARROW_TYPES[t]) for n, t in columns.items()]))
    page = _Page(content, table, fields, set(found) - columns.keys())
    light = table.select(list(fields))
    if any(columns[f] == "timestamp" for f in fields):  # the readers compare and send the API's own strings
        raw = dict(zip(columns, values.flatten(), strict=True))
        light = pa.table({f: raw[f] if columns[f] == "timestamp" else light[f] for f in fields})
    rows = light.to_pylist()
    page.position = {id(r): i for i, r in enumerate(rows)}
    body: dict[str, Any] = {k: None if (v := result[k][0].as_py()) is None else orjson.loads(v) for k in PAGE_KEYS}
    body["results"] = ArrowRows(rows, page)
    return body
