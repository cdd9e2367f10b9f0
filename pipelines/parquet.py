"""Parquet output without duplicates: compact each touched table after a load.

dlt's `merge` on plain filesystem output appends, so a table's folder gathers one file per load. After a
load we rewrite the table into one file holding exactly its current rows, decided the way the merge
would: the newest load wins per primary key, and for tables replaced per merge key (a project's property
definitions, a recording's transcript segments) only the newest load of each merge-key group counts.
The new file is written before the old ones are deleted, so a crash in between leaves duplicates that
the next compaction removes, never lost rows.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb

# dlt names load files `<load_id>.<file_id>.parquet`, and load ids are `<seconds>.<fraction>`
_LOAD_ID = r"(\d+\.\d+)\.[^/\\]*\.parquet$"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def compact_table(
    folder: Path, primary_key: Sequence[str], merge_key: Sequence[str] = ()
) -> tuple[int, int]:
    """Rewrite one table folder into a single Parquet file of current rows.

    Returns (files before, rows after); a folder with one file or none is left alone.
    """
    files = sorted(p for p in folder.glob("*.parquet") if re.search(_LOAD_ID, p.name))
    if len(files) < 2:
        return len(files), -1
    newest = max(re.search(_LOAD_ID, p.name).group(1) for p in files)  # type: ignore[union-attr]
    target = folder / f"{newest}.compacted{uuid.uuid4().hex[:8]}.parquet"
    partial = target.with_suffix(".tmp")
    file_list = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    load = f"regexp_extract(filename, '{_LOAD_ID}', 1)::DOUBLE"
    rows = f"SELECT *, {load} AS _load FROM read_parquet({file_list}, filename = true, union_by_name = true)"
    if merge_key:
        groups = ", ".join(map(_quote, merge_key))
        rows = f"SELECT * FROM ({rows}) QUALIFY _load = max(_load) OVER (PARTITION BY {groups})"
    newest_per_key = ""
    if primary_key:
        keys = ", ".join(map(_quote, primary_key))
        newest_per_key = f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _load DESC) = 1"
    select = f"SELECT * EXCLUDE (_load, filename) FROM ({rows}) {newest_per_key}"
    out = str(partial).replace("'", "''")
    sql = f"COPY ({select}) TO '{out}' (FORMAT parquet)"
    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order = false")
        con.execute(sql)
        count = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()
    partial.rename(target)
    for path in files:
        path.unlink()
    return len(files), int(count[0]) if count else 0
