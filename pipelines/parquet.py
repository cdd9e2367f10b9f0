"""Parquet output without duplicates: compact each touched table after a load.

dlt's `merge` on plain filesystem output appends, so a table's folder gathers one file per load. After a
load we rewrite the table into one file holding exactly its current rows, decided the way the merge
would: the newest load wins per primary key, and for tables replaced per merge key (a project's property
definitions, a recording's transcript segments) only the newest load of each merge-key group counts.
The new file is written before the old ones are deleted, so a crash in between leaves duplicates that
the next compaction removes, never lost rows. Files are read and written through fsspec, so this works
on a local folder and on any bucket dlt's filesystem destination writes to (S3, GCS, Azure, ...).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

# dlt names load files `<load_id>.<file_id>.parquet`, and load ids are `<seconds>.<fraction>`
_LOAD_ID = r"(\d+\.\d+)\.[^/\\]*\.parquet$"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_id(path: str) -> str | None:
    match = re.search(_LOAD_ID, path)
    return match.group(1) if match else None


def _read(fs: AbstractFileSystem, files: Sequence[str]) -> pa.Table:
    """All rows of `files`, columns unified by name, with the load id of each row's file as `_load`."""
    tables = []
    for path in files:
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        load = pa.array([float(_load_id(path) or 0)] * table.num_rows, pa.float64())
        tables.append(table.append_column("_load", load))
    return pa.concat_tables(tables, promote_options="permissive")


def compact_table(
    fs: AbstractFileSystem, folder: str, primary_key: Sequence[str], merge_key: Sequence[str] = (),
    deleted: str | None = None,
) -> tuple[int, int]:
    """Rewrite one table folder of `fs` into a single Parquet file of current rows.

    `deleted` names a column marking rows deleted upstream (dlt's `hard_delete`): they are dropped.
    Returns (files before, rows after); a folder with one file or none is left alone.
    """
    folder = folder.rstrip("/\\")
    files = sorted(p for p in fs.glob(f"{folder}/*.parquet") if _load_id(p))
    if len(files) < 2:
        return len(files), -1
    newest = max(_load_id(p) or "" for p in files)
    target = f"{folder}/{newest}.compacted{uuid.uuid4().hex[:8]}.parquet"
    partial = target.removesuffix(".parquet") + ".tmp"
    rows = "SELECT * FROM loaded"
    if merge_key:
        groups = ", ".join(map(_quote, merge_key))
        rows = f"SELECT * FROM ({rows}) QUALIFY _load = max(_load) OVER (PARTITION BY {groups})"
    newest_per_key = ""
    if primary_key:
        keys = ", ".join(map(_quote, primary_key))
        # a null key column marks rows written before that column joined the key: newer loads hold them
        keyed = " AND ".join(f"{_quote(k)} IS NOT NULL" for k in primary_key)
        newest_per_key = f"WHERE {keyed} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _load DESC) = 1"
    loaded = _read(fs, files)
    schema = loaded.schema.remove(loaded.schema.get_field_index("_load"))
    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order = false")
        con.register("loaded", loaded)
        current = con.sql(f"SELECT * EXCLUDE (_load) FROM ({rows}) {newest_per_key}")
        if deleted is not None and deleted in loaded.schema.names:
            current = current.filter(f"{_quote(deleted)} IS DISTINCT FROM true")
        current = current.to_arrow_table()
    del loaded
    current = current.cast(schema)  # DuckDB renames time zones (UTC -> Etc/UTC): keep the files' types
    with fs.open(partial, "wb") as handle:
        pq.write_table(current, handle)
    fs.mv(partial, target)
    fs.rm(files)
    return len(files), current.num_rows
