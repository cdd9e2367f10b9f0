"""Parquet output without duplicates: compact each touched table after a load, in bounded memory.

dlt's `merge` on plain filesystem output appends, so a table's folder gathers one file per load. After a
load we fold the new load files into the table's compacted files, deciding rows the way the merge would:
the newest load wins per primary key, and for tables replaced per merge key (a recording's transcript
segments) only the newest load of each merge-key group counts; rows marked deleted are dropped.

Work is proportional to the change, not to the table: compacted files hold at most `FILE_ROWS` rows each, in
the order rows arrived (so the rows a sync touches again, recent ones, sit together), and a compaction rewrites
only the compacted files holding a key the new loads touch, plus the last, partly filled one, which takes the
new rows. DuckDB does the work from file to file (`COPY ... TO`) under a memory limit, spilling to disk.

Crash safety: new files are staged as `.tmp` (not matched by `*.parquet`), then a manifest names the files
they replace, then they are renamed into place and the replaced files deleted, then the manifest. A crash
leaves at worst duplicates that the next compaction removes (it finishes or undoes the manifest first), never
lost rows. Files are read and written through fsspec, so this works on a local folder and on any bucket
dlt's filesystem destination writes to (S3, GCS, Azure, ...).
"""

from __future__ import annotations

import bisect
import json
import logging
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger("posthog_export")

# dlt names load files `<load_id>.<file_id>.parquet`, and load ids are `<seconds>.<fraction>`; compacted files
# are `<newest load id>.compacted<batch>.<part>.parquet`
_LOAD_ID = r"(\d+\.\d+)\.[^/\\]*\.parquet$"
_COMPACTED = ".compacted"
FILE_ROWS = 50_000
_FILE_STEP = 1 << 40  # positions: file index * _FILE_STEP + row number in the file
MEMORY = "128MB"


@dataclass(frozen=True)
class Switch:
    """New files staged in place of others: the manifest naming both, the files replaced, the new ones."""

    manifest: str
    replaced: list[str]
    outputs: list[str]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _load_id(path: str) -> str | None:
    match = re.search(_LOAD_ID, path)
    return match.group(1) if match else None


def _order(path: str) -> tuple[float, str]:
    return float(_load_id(path) or 0), path


def _name(path: str) -> str:
    return posixpath.basename(path.replace("\\", "/"))


def _recover(fs: AbstractFileSystem, folder: str) -> None:
    """Finish (or undo) a compaction a crash interrupted, so that no file is both kept and replaced."""
    for manifest in fs.glob(f"{folder}/*{_COMPACTED}*.manifest.json"):
        with fs.open(manifest, "rb") as handle:
            plan = json.loads(handle.read())
        outputs = [f"{folder}/{name}" for name in plan["outputs"]]
        if all(fs.exists(p) or fs.exists(f"{p}.tmp") for p in outputs):
            for path in outputs:  # every new file was staged: complete the switch
                if not fs.exists(path):
                    fs.mv(f"{path}.tmp", path)
            _remove(fs, [f"{folder}/{name}" for name in plan["inputs"]])
        else:  # staging was cut short, so nothing was replaced yet: drop what was staged
            _remove(fs, [*outputs, *(f"{p}.tmp" for p in outputs)])
        fs.rm(manifest)
    _remove(fs, fs.glob(f"{folder}/*{_COMPACTED}*.tmp"))
    if isinstance(fs, LocalFileSystem):
        for staging in Path(folder).glob(".compacting*"):
            shutil.rmtree(staging, ignore_errors=True)


def _remove(fs: AbstractFileSystem, paths: Sequence[str]) -> None:
    present = [p for p in paths if fs.exists(p)]
    if present:
        fs.rm(present)


def _connect(fs: AbstractFileSystem, spill: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"memory_limit": MEMORY, "temp_directory": spill})
    con.execute("SET preserve_insertion_order = false")
    if not isinstance(fs, LocalFileSystem):
        con.register_filesystem(fs)  # DuckDB reads the bucket through dlt's fsspec client and credentials
    return con


def _url(fs: AbstractFileSystem, path: str) -> str:
    """How DuckDB names `path` (and reports it in `_file`): a bucket's files carry their protocol."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _urls(fs: AbstractFileSystem, files: Sequence[str]) -> str:
    return ", ".join(_literal(_url(fs, p)) for p in files)


def _scan(fs: AbstractFileSystem, files: Sequence[str]) -> str:
    """`read_parquet` over `files`, columns unified by name, with each row's file and its position there."""
    return f"read_parquet([{_urls(fs, files)}], union_by_name = true, filename = '_file', file_row_number = true)"


def compact_table(
    fs: AbstractFileSystem, folder: str, primary_key: Sequence[str], merge_key: Sequence[str] = (),
    deleted: str | None = None, file_rows: int | None = None,
) -> tuple[int, int]:
    """Fold one table folder's new load files into its compacted Parquet files of current rows.

    `deleted` names a column marking rows deleted upstream (dlt's `hard_delete`): they are dropped. A row
    with a null key column was written before that column joined the key: newer loads hold it, so it goes.
    Returns (files rewritten, rows written); (0, 0) when no load arrived since the last compaction.
    """
    folder, file_rows = folder.rstrip("/\\"), file_rows or FILE_ROWS
    _recover(fs, folder)
    files = sorted((p for p in fs.glob(f"{folder}/*.parquet") if _load_id(p)), key=_order)
    loads = [p for p in files if _COMPACTED not in _name(p)]
    compacted = [p for p in files if _COMPACTED in _name(p)]
    if not loads or not primary_key:
        return 0, 0
    local = isinstance(fs, LocalFileSystem)
    # local output: stage beside the table (a rename moves it); a bucket: stage on local disk, then upload
    staging = Path(tempfile.mkdtemp(prefix=".compacting", dir=folder if local else None))
    try:
        with _connect(fs, str(staging / "spill")) as con:
            touched = _touched_files(con, fs, compacted, loads, merge_key or primary_key, primary_key, file_rows)
            rewrite = sorted([*touched, *loads], key=_order)
            # a table left with no rows keeps one empty file, so that its columns stay readable
            rows = _write(con, fs, rewrite, primary_key, merge_key, deleted, file_rows, staging,
                          keep_empty=len(rewrite) == len(files))
        parts = sorted((staging / "out").rglob("*.parquet"), key=_part_number)
        _switch(fs, folder, parts, rewrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.debug("compacted %s: %d files rewritten into %d, %d rows", folder, len(rewrite), len(parts), rows)
    return len(rewrite), rows


def _touched_files(
    con: duckdb.DuckDBPyConnection, fs: AbstractFileSystem, compacted: Sequence[str], loads: Sequence[str],
    groups: Sequence[str], primary_key: Sequence[str], file_rows: int,
) -> list[str]:
    """The compacted files to rewrite: those holding a group the loads touch or a null-key row, and the
    last one while it has room for more rows. Only key columns are read."""
    if not compacted:
        return []
    if any(k not in con.sql(f"SELECT * FROM {_scan(fs, compacted)} LIMIT 0").columns for k in primary_key):
        return list(compacted)  # a key column the compacted files lack: every row there is of an older key
    cols = ", ".join(map(_quote, groups))
    con.execute(f"CREATE TEMP TABLE touched AS SELECT DISTINCT {cols}, true AS _hit FROM {_scan(fs, loads)}")
    on = " AND ".join(f"c.{_quote(g)} = t.{_quote(g)}" for g in groups)
    stale = " OR ".join(f"c.{_quote(k)} IS NULL" for k in primary_key)
    found = con.execute(
        f"SELECT c._file, count(*), bool_or(t._hit IS NOT NULL OR {stale}) FROM {_scan(fs, compacted)} c "
        f"LEFT JOIN touched t ON {on} GROUP BY c._file"
    ).fetchall()
    by_url = {url: (rows, hit) for url, rows, hit in found}
    rows_of = {p: by_url.get(_url(fs, p), (0, False)) for p in compacted}
    last = compacted[-1]
    return [p for p in compacted if rows_of[p][1] or (p == last and rows_of[p][0] < file_rows)]


def _dropped(
    con: duckdb.DuckDBPyConnection, fs: AbstractFileSystem, files: Sequence[str], primary_key: Sequence[str],
    merge_key: Sequence[str], deleted: str | None,
) -> str:
    """SQL for the positions (`file index * 2^40 + row in file`) of the rows of `files` that are not current,
    decided from key columns only."""
    names = list(dict.fromkeys([*primary_key, *merge_key]))
    if deleted is not None and deleted in con.sql(f"SELECT * FROM {_scan(fs, files)} LIMIT 0").columns:
        names.append(deleted)
    cols = ", ".join(map(_quote, names))
    # compacted rows are all current (a touched group is rewritten whole), so they rank below every load
    # and never against each other: a group spread over files of two compactions keeps all its rows
    compacted = _literal(r"\.compacted[^/\\]*\.parquet$")
    load_id = f"CAST(regexp_extract(_file, {_literal(_LOAD_ID)}, 1) AS DOUBLE)"
    load = f"CASE WHEN regexp_matches(_file, {compacted}) THEN 0 ELSE {load_id} END"
    source = f"SELECT {cols}, {load} AS _load, {_position(fs, files)} AS _pos FROM {_scan(fs, files)}"
    keys = ", ".join(map(_quote, primary_key))
    # a superseded row, a row of an older key (a null key column), a deletion, a group replaced by a newer load
    stale = [f"row_number() OVER (PARTITION BY {keys} ORDER BY _load DESC, _pos DESC) > 1",
             *(f"{_quote(k)} IS NULL" for k in primary_key)]
    if deleted in names:
        stale.append(f"{_quote(deleted)} IS NOT DISTINCT FROM true")
    if merge_key:
        stale.append(f"_load < max(_load) OVER (PARTITION BY {', '.join(map(_quote, merge_key))})")
    return f"SELECT _pos FROM ({source}) QUALIFY {' OR '.join(stale)}"


def _position(fs: AbstractFileSystem, files: Sequence[str], first: int = 0) -> str:
    """A row's position: its file's index (from `first`) times 2^40 plus its row number in that file."""
    return f"(list_position([{_urls(fs, files)}], _file) - 1 + {first}) * {_FILE_STEP} + file_row_number"


def _cuts(sizes: Sequence[int], dropped: Sequence[int], file_rows: int) -> list[int]:
    """The position of every `file_rows`-th kept row (the first row of each output file)."""
    cuts, kept_before, lo = [], 0, 0
    for index, size in enumerate(sizes):
        hi = bisect.bisect_left(dropped, (index + 1) * _FILE_STEP, lo)
        gone = [d - index * _FILE_STEP for d in dropped[lo:hi]]
        lo = hi
        kept = size - len(gone)
        k = -kept_before % file_rows  # the first cut in this file is its k-th kept row
        while k < kept:
            row = k
            while (nxt := k + bisect.bisect_right(gone, row)) != row:  # skip the dropped rows up to it
                row = nxt
            cuts.append(index * _FILE_STEP + row)
            k += file_rows
        kept_before += kept
    return cuts


def _write(
    con: duckdb.DuckDBPyConnection, fs: AbstractFileSystem, files: Sequence[str], primary_key: Sequence[str],
    merge_key: Sequence[str], deleted: str | None, file_rows: int, staging: Path, keep_empty: bool,
) -> int:
    """Write the current rows of `files` into `staging/out`, `file_rows` per file, in arrival order.

    Only key columns are compared; whole rows then stream from the files to each output file minus the
    dropped positions, so memory holds one integer per dropped row (and DuckDB spills beyond its limit)."""
    con.execute(f"CREATE TEMP TABLE dropped AS {_dropped(con, fs, files, primary_key, merge_key, deleted)}")
    dropped = [d for (d,) in con.execute("SELECT _pos FROM dropped ORDER BY _pos").fetchall()]
    counted = dict(con.execute(f"SELECT _file, count(*) FROM {_scan(fs, files)} GROUP BY _file").fetchall())
    cuts = _cuts([counted.get(_url(fs, p), 0) for p in files], dropped, file_rows)
    out = staging / "out"
    out.mkdir()
    ends = [*cuts[1:], len(files) * _FILE_STEP] if cuts else []
    for n, (lo, hi) in enumerate(zip(cuts, ends, strict=True)):
        first, last = lo // _FILE_STEP, (hi - 1) // _FILE_STEP
        part = files[first:last + 1]
        con.execute(f"COPY (SELECT * EXCLUDE (_file, file_row_number, _pos) FROM (SELECT *, "
                    f"{_position(fs, part, first)} AS _pos FROM {_scan(fs, part)}) WHERE _pos >= {lo} AND _pos < {hi} "
                    f"AND _pos NOT IN (SELECT _pos FROM dropped)) TO {_literal(str(out / f'{n}.parquet'))} "
                    "(FORMAT parquet)")
    if not cuts and keep_empty:
        con.execute(f"COPY (SELECT * EXCLUDE (_file, file_row_number) FROM {_scan(fs, files)} LIMIT 0) "
                    f"TO {_literal(str(out / '0.parquet'))} (FORMAT parquet)")
    return sum(counted.values()) - len(dropped)


def _part_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)\.parquet$", path.name)
    return (int(match.group(1)) if match else 0), path.name


def _switch(fs: AbstractFileSystem, folder: str, parts: Sequence[Path], replaced: Sequence[str]) -> None:
    """Put the new files in place of the replaced ones: stage, manifest, rename, delete (see the module doc)."""
    _finish(fs, _manifest(fs, _stage(fs, folder, parts, replaced)))


def _stage(fs: AbstractFileSystem, folder: str, parts: Sequence[Path], replaced: Sequence[str]) -> Switch:
    """Stage the new files beside the replaced ones as `.tmp`: nothing visible changes yet."""
    newest = max((_load_id(p) or "0" for p in replaced), key=float)
    batch = uuid.uuid4().hex[:8]
    outputs = [f"{folder}/{newest}{_COMPACTED}{batch}.{i:04d}.parquet" for i in range(len(parts))]
    for part, path in zip(parts, outputs, strict=True):
        if isinstance(fs, LocalFileSystem):
            Path(part).rename(f"{path}.tmp")
        else:
            fs.put_file(str(part), f"{path}.tmp")
    return Switch(f"{folder}/{newest}{_COMPACTED}{batch}.manifest.json", list(replaced), outputs)


def _manifest(fs: AbstractFileSystem, switch: Switch) -> Switch:
    """Write the manifest: from here on a crash is completed by the next `_recover`, not undone."""
    plan = {"inputs": [_name(p) for p in switch.replaced], "outputs": [_name(p) for p in switch.outputs]}
    with fs.open(switch.manifest, "wb") as handle:
        handle.write(json.dumps(plan).encode())
    return switch


def _finish(fs: AbstractFileSystem, switch: Switch) -> None:
    """Rename the staged files into place, delete the replaced ones, then the manifest."""
    for path in switch.outputs:
        fs.mv(f"{path}.tmp", path)
    _remove(fs, switch.replaced)
    fs.rm(switch.manifest)
