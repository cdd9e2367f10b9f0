"""Turn pages of API rows into Arrow tables shaped by the declared columns.

Building each page as an Arrow table against the endpoint table's declarations does two jobs at once:
dlt loads Arrow without its row-by-row normalizer, and every value is checked against its declared type,
so a contradiction fails with a message naming the table, column and types.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, table: str, names: Iterable[str]) -> None:
        """Remember new field names seen in a table's rows."""
        with self._lock:
            self.fields.setdefault(table, set()).update(names)

    def known(self, table: str) -> frozenset[str]:
        """The new field names seen so far in a table's rows (readers of other projects add to them)."""
        with self._lock:
            return frozenset(self.fields.get(table, ()))


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
        # no offset in a string: PostHog's own answers are UTC
        zoned = pc.match_substring_regex(strings, r"(Z|[+-]\d\d(:?\d\d)?)$")
        return pc.if_else(zoned, strings, pc.binary_join_element_wise(strings, "Z", "")).cast(ARROW_TYPES["timestamp"])


# per column type, the Python type Arrow converts into it with loss: it truncates 1.5 into 1, makes true 1.0
_LOSSY: dict[str, type] = {"bigint": float, "double": bool}


def _lossless(values: list[Any], ctype: ColumnType) -> None:
    """Raise on a value Arrow would convert with loss (an integral float is a whole number without loss)."""
    lossy = _LOSSY.get(ctype)
    if lossy is not None and any(type(v) is lossy and not (lossy is float and v.is_integer()) for v in values):
        raise TypeError(f"a {lossy.__name__} Arrow converts into {ctype} with loss")


def _convert(values: list[Any], ctype: ColumnType) -> pa.Array:
    _lossless(values, ctype)
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
    for name, ctype in columns.items():
        if (lossy := _LOSSY.get(ctype)) and lossy in {type(r.get(name)) for r in rows}:
            raise TypeError(f"{name}: a {lossy.__name__} Arrow may convert with loss")  # the column path decides
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


# --- list pages decoded straight into columns -------------------------------------------------------------
# msgspec decodes a page into typed structs (no dict per row, JSON values kept as their raw text) several
# times faster than orjson into dicts; any value the typed decoding or Arrow refuses sends the whole page
# the dict path, which decides exactly as before and names the value.

POSITION = "_page_position"  # a light row's place in its decoded page
PAGE_KEYS = ("has_next", "next_cursor", "next", "count")  # what paging and the readers read besides `results`
_NULL = msgspec.Raw(b"null")
_PY_TYPES: dict[str, Any] = {"text": str | None, "bigint": int | None, "double": int | float | None,
                             "bool": bool | None, "timestamp": str | None}


class ArrowRows(list):  # type: ignore[type-arg]
    """Rows of a page decoded into columns: a list of light dicts (the readers' `fields`) over the page.

    The readers filter and inspect the light dicts as they do full rows; `table()` is the page's Arrow table
    for the rows still in the list, and `dicts()` decodes those rows in full (from the page's bytes) for the
    paths that need whole rows (re-reads, held and partial rows).
    """

    def __init__(self, rows: Iterable[dict[str, Any]], page: _Page) -> None:
        super().__init__(rows)
        self.page = page

    def subset(self, rows: Iterable[dict[str, Any]]) -> ArrowRows:
        """These rows (light dicts of this page) over the same page."""
        return ArrowRows(rows, self.page)

    def _taken(self, data: Any) -> Any:
        """`data` (a table or array over the whole page) for these rows only, in their order."""
        positions = [r[POSITION] for r in self]
        return data if positions == list(range(len(data))) else data.take(pa.array(positions, pa.int64()))

    def table(self, project_id: int) -> pa.Table:
        """The declared columns of these rows, `project_id` first, as `to_arrow` builds them."""
        table = self._taken(self.page.table)
        ids = pa.array([project_id] * table.num_rows, pa.int64())
        return table.add_column(0, pa.field("project_id", pa.int64()), ids)

    def end_us(self, end: str | None, ongoing: str | None) -> list[int | None]:
        """Per row, where its span ends (µs since the epoch), None while it may still grow (ongoing, or no
        end yet): `sync._end_us` for these rows, computed over the page's columns."""
        table = self.page.table
        if not end:
            return [None] * len(self)
        ends = table.column(end).cast(pa.int64())
        if ongoing:
            ends = pc.if_else(pc.equal(table.column(ongoing), False), ends, pa.scalar(None, pa.int64()))
        return self._taken(ends).to_pylist()

    def dicts(self) -> list[dict[str, Any]]:
        """These rows decoded in full, with what the readers set on the light dicts (e.g. `project_id`)."""
        full = orjson.loads(self.page.content)["results"]
        own = {*self.page.fields, POSITION}
        return [{**full[r[POSITION]], **{k: v for k, v in r.items() if k not in own}} for r in self]


@dataclass
class _Page:
    content: bytes
    table: pa.Table
    fields: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def _page_decoder(columns: tuple[tuple[str, ColumnType], ...], ignored: frozenset[str]) -> msgspec.json.Decoder:
    """A decoder of list pages whose rows hold only the declared columns (and `ignored` fields, dropped).

    A row's fields are its non-JSON columns first, in declared order, then the JSON ones and the ignored
    ones: the first part of a row's tuple is what Arrow converts into `_row_type` at once."""
    specs = [(n, _PY_TYPES[t], None) for n, t in columns if t != "json"]
    specs += [(n, msgspec.Raw, _NULL) for n, t in columns if t == "json"]
    specs += [(n, msgspec.Raw, _NULL) for n in sorted(ignored - {n for n, _ in columns})]
    # an unknown field fails the row: the dict path then reports it (and the next page ignores it)
    row = msgspec.defstruct("Row", specs, kw_only=True, forbid_unknown_fields=True, gc=False)
    page = msgspec.defstruct("Page", [("results", list[row]), *((k, Any, None) for k in PAGE_KEYS)], gc=False)
    return msgspec.json.Decoder(page)


def _json_text(values: list[msgspec.Raw]) -> pa.Array:
    # one buffer of all texts and their offsets: no bytes object per value
    offsets = pa.array([0, *itertools.accumulate(map(len, values))], pa.int64())
    texts = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(values),
                                             [None, offsets.buffers()[1], pa.py_buffer(b"".join(values))])
    return pc.if_else(pc.equal(texts, b"null"), pa.scalar(None, pa.large_binary()), texts).cast(pa.string())


def decode_page(
    content: bytes, columns: Mapping[str, ColumnType], fields: tuple[str, ...], ignored: Iterable[str] = ()
) -> dict[str, Any] | None:
    """Decode a list page (`{"results": [...], "has_next": ...}`) straight into Arrow columns.

    Returns the body with `results` as `ArrowRows` (light dicts of `fields`, values as the API sent them),
    or None whenever the dict path must decide instead: a field not declared (nor in `ignored`), a value
    of another JSON type than its column's, anything Arrow refuses, an empty page or a body that is not
    a page. JSON columns hold the API's own JSON text of the value.
    """
    declared = tuple(columns.items())
    decoder = _page_decoder(declared, frozenset(ignored))
    row_type = _row_type(declared)
    try:
        body = decoder.decode(content)
        rows = body.results
        if not rows:
            return None
        # one tuple per row (no attribute lookups), cut to the non-JSON fields, converted by Arrow in one pass
        cut = itemgetter(slice(0, row_type.num_fields))
        struct = pa.array(list(map(cut, map(msgspec.structs.astuple, rows))), row_type)
        scalars = dict(zip(row_type.names, struct.flatten(), strict=True))
        arrays = []
        for name, ctype in declared:
            if ctype == "json":
                arrays.append(_json_text(list(map(attrgetter(name), rows))))
            elif ctype == "timestamp":
                arrays.append(_timestamps(scalars[name]))
            else:
                arrays.append(scalars[name])
    except (msgspec.DecodeError, *_CONVERSION_ERRORS):
        return None
    table = pa.Table.from_arrays(arrays, schema=pa.schema([(n, ARROW_TYPES[t]) for n, t in declared]))
    values = {f: list(map(attrgetter(f), rows)) for f in fields}
    return {**{k: getattr(body, k) for k in PAGE_KEYS},
            "results": ArrowRows(_light(fields, values, len(rows)), _Page(content, table, fields))}


def _light(fields: tuple[str, ...], values: Mapping[str, list[Any]], count: int) -> list[dict[str, Any]]:
    """One small dict per row: its `fields` and its place in the page (a literal per row where the fields
    are the readers' usual two, key and cursor: several times faster than `dict(zip(...))`)."""
    if len(fields) == 2:
        a, b = fields
        return [{a: x, b: y, POSITION: i} for i, x, y in zip(range(count), values[a], values[b])]  # noqa: B905
    columns = zip(*(values[f] for f in fields), strict=True)
    return [{**dict(zip(fields, v, strict=True)), POSITION: i} for i, v in enumerate(columns)]
