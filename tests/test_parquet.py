"""Parquet compaction on its own: loads of updates, deletions and replaced groups, folded file by file.

Each test writes load files the way dlt names them (`<load id>.<file id>.parquet`) into a folder, compacts,
and checks what `read_parquet('<folder>/*.parquet')` returns against a model of the merge, plus which files
a small load made the compaction rewrite.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog
from pipelines import parquet, runner
from pipelines.parquet import compact_table
from pipelines.runner import SyncOptions
from sources.posthog import ENDPOINTS

from .conftest import PROJECTS, sync
from .test_sync import COMPARED, _norm, truth_rows

FS = fsspec.filesystem("file")
KEY = ("project_id", "id")


class Folder:
    """One table folder that receives loads, numbered like dlt's load ids."""

    def __init__(self, path: Path) -> None:
        self.path, self.loads = path, itertools.count(1_700_000_000)
        path.mkdir(parents=True, exist_ok=True)

    def load(self, rows: list[dict[str, Any]], schema: pa.Schema) -> str:
        name = f"{next(self.loads)}.{len(rows):06d}.{'ab12cd'}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), self.path / name)
        return name

    def rows(self, columns: str) -> list[tuple[Any, ...]]:
        with duckdb.connect() as con:
            return con.execute(f"SELECT {columns} FROM read_parquet('{self.path}/*.parquet')").fetchall()

    def stamps(self) -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in self.path.glob("*.parquet")}


def row(ident: str, value: int | None, project_id: int = 1, at: datetime | None = None) -> dict[str, Any]:
    """A parent row; a None value is a deletion (the `deleted` column dlt's hard_delete reads)."""
    return {"project_id": project_id, "id": ident, "value": value, "deleted": value is None, "at": at}


PARENT = pa.schema([("project_id", pa.int64()), ("id", pa.string()), ("value", pa.int64()), ("deleted", pa.bool_()),
                    ("at", pa.timestamp("us", tz="UTC"))])
CHILD = pa.schema([("project_id", pa.int64()), ("parent_id", pa.string()), ("position", pa.int64()),
                   ("text", pa.string())])

# one load: per key, a new value or a deletion (None); per parent, its new list of child texts
loads_strategy = st.lists(
    st.tuples(
        st.dictionaries(st.tuples(st.sampled_from([1, 2]), st.integers(0, 30).map(str)),
                        st.none() | st.integers(0, 1000), max_size=25),
        st.dictionaries(st.tuples(st.sampled_from([1, 2]), st.integers(0, 12).map(str)),
                        st.lists(st.text("abc", max_size=3), min_size=1, max_size=4), max_size=6),
        st.booleans(),  # compact after this load (or let loads pile up)
    ),
    min_size=1, max_size=8,
)


@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(loads=loads_strategy, file_rows=st.integers(1, 12))
def test_read_equals_the_merge_after_every_compaction(tmp_path_factory: pytest.TempPathFactory,
                                                      loads: list[Any], file_rows: int) -> None:
    root = tmp_path_factory.mktemp("compact")
    parent, child = Folder(root / "parent"), Folder(root / "child")
    truth: dict[tuple[int, str], int] = {}
    lists: dict[tuple[int, str], list[str]] = {}
    for n, (changes, replaced, compact) in enumerate(loads):
        parent.load([row(i, v, p) for (p, i), v in changes.items()], PARENT)
        for key, value in changes.items():
            if value is None:
                truth.pop(key, None)
            else:
                truth[key] = value
        parent_rows = [{"project_id": p, "parent_id": i, "position": k, "text": t}
                       for (p, i), texts in replaced.items() for k, t in enumerate(texts)]
        child.load(parent_rows, CHILD)
        lists.update(replaced)
        if compact or n == len(loads) - 1:
            compact_table(FS, str(parent.path), KEY, deleted="deleted", file_rows=file_rows)
            compact_table(FS, str(child.path), ("project_id", "parent_id", "position"), ("project_id", "parent_id"),
                          file_rows=file_rows)
            assert sorted(parent.rows("project_id, id, value")) == sorted((p, i, v) for (p, i), v in truth.items())
            expected = [(p, i, k, t) for (p, i), texts in lists.items() for k, t in enumerate(texts)]
            assert sorted(child.rows("project_id, parent_id, position, text")) == sorted(expected)
            assert not list(parent.path.glob("*.tmp")) and not list(parent.path.glob("*.json"))
            sizes = [pq.ParquetFile(p).metadata.num_rows for p in parent.path.glob("*.parquet")]
            assert all(size <= file_rows for size in sizes)


def test_a_small_load_rewrites_only_the_files_holding_its_keys(tmp_path: Path) -> None:
    table = Folder(tmp_path / "t")
    table.load([row(f"{i:05d}", i) for i in range(100)],
               PARENT)
    assert compact_table(FS, str(table.path), KEY, deleted="deleted", file_rows=10) == (1, 100)
    first = table.stamps()
    assert len(first) == 10 and all("compacted" in name for name in first)
    files = {name: {r[0] for r in duckdb.sql(f"SELECT id FROM '{table.path / name}'").fetchall()} for name in first}
    holder = next(name for name, ids in files.items() if "00042" in ids)
    last = max(first)  # the partly filled last file takes new rows; here it is full
    table.load([row("00042", -1),
                row("new", 7)], PARENT)
    rewritten, rows = compact_table(FS, str(table.path), KEY, deleted="deleted", file_rows=10)
    after = table.stamps()
    kept = {name for name in first if after.get(name) == first[name]}
    assert kept == set(first) - {holder}, "only the file holding the touched key was rewritten"
    assert (rewritten, rows) == (2, 11) and last in kept
    assert len(table.rows("*")) == 101
    assert table.rows("value") and (-1,) in table.rows("value") and (42,) not in table.rows("value")
    # a load of new keys only goes into the last file while it has room, touching nothing else
    table.load([row("newer", 8)], PARENT)
    before = table.stamps()
    compact_table(FS, str(table.path), KEY, deleted="deleted", file_rows=10)
    changed = {name for name in before if table.stamps().get(name) != before[name]}
    assert len(changed) == 2  # the load and the last, partly filled file (1 of 10 rows)


def test_nothing_to_do_without_new_loads(tmp_path: Path) -> None:
    table = Folder(tmp_path / "t")
    table.load([row("a", 1)], PARENT)
    compact_table(FS, str(table.path), KEY)
    stamps = table.stamps()
    assert compact_table(FS, str(table.path), KEY) == (0, 0)
    assert table.stamps() == stamps


def test_rows_of_an_older_key_are_dropped(tmp_path: Path) -> None:
    """Rows written before a column joined the key (null there, or the column missing) give way."""
    table = Folder(tmp_path / "t")
    old = pa.schema([("project_id", pa.int64()), ("id", pa.string()), ("value", pa.int64())])
    table.load([{"project_id": 1, "id": "a", "value": 1}, {"project_id": 1, "id": "b", "value": 2}], old)
    compact_table(FS, str(table.path), KEY)
    table.load([{"project_id": 1, "listing": "x", "id": "a", "value": 10}],
               pa.schema([("project_id", pa.int64()), ("listing", pa.string()), ("id", pa.string()),
                          ("value", pa.int64())]))
    compact_table(FS, str(table.path), ("project_id", "listing", "id"))
    assert table.rows("listing, id, value") == [("x", "a", 10)]


def test_types_survive_compaction(tmp_path: Path) -> None:
    table = Folder(tmp_path / "t")
    table.load([row("a", 1, at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))], PARENT)
    table.load([row("b", 2)], PARENT)
    compact_table(FS, str(table.path), KEY, deleted="deleted")
    (file,) = table.path.glob("*.parquet")
    schema = pq.read_schema(file)
    assert schema.field("at").type == pa.timestamp("us", tz="UTC") and schema.field("value").type == pa.int64()


def test_a_table_with_every_row_deleted_keeps_an_empty_file(tmp_path: Path) -> None:
    table = Folder(tmp_path / "t")
    table.load([row("a", 1)], PARENT)
    compact_table(FS, str(table.path), KEY, deleted="deleted")
    table.load([row("a", None)], PARENT)
    compact_table(FS, str(table.path), KEY, deleted="deleted")
    assert table.rows("*") == [] and len(table.stamps()) == 1


@pytest.mark.parametrize("crash_at", ["staged", "manifest", "renamed_one", "deleted_some"])
def test_a_crash_mid_compaction_is_healed_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      crash_at: str) -> None:
    """New files first, then the switch: a crash anywhere leaves no lost rows, and the next run heals it."""
    table = Folder(tmp_path / "t")
    table.load([row(f"{i:03d}", i) for i in range(30)],
               PARENT)
    compact_table(FS, str(table.path), KEY, deleted="deleted", file_rows=10)
    table.load([row("005", -5),
                row("029", None),
                *(row(f"n{i}", 100 + i)
                  for i in range(15))], PARENT)
    expected = sorted({**{f"{i:03d}": i for i in range(29)}, "005": -5,
                       **{f"n{i}": 100 + i for i in range(15)}}.items())

    class Crash(Exception):
        pass

    real_mv, real_remove, moves = FS.mv, parquet._remove, []

    def mv(source: str, target: str) -> None:
        if crash_at == "renamed_one" and moves:
            raise Crash
        moves.append(target)
        real_mv(source, target)

    def remove(fs: Any, paths: list[str]) -> None:
        if crash_at == "deleted_some" and len(paths) > 1:
            real_remove(fs, paths[:1])
            raise Crash
        real_remove(fs, paths)

    def write_manifest(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    if crash_at == "staged":
        monkeypatch.setattr(FS, "open", write_manifest)
    elif crash_at == "manifest":
        monkeypatch.setattr(FS, "mv", lambda source, target: (_ for _ in ()).throw(Crash()))
    else:
        monkeypatch.setattr(FS, "mv", mv)
        monkeypatch.setattr(parquet, "_remove", remove)
    with pytest.raises(Crash):
        compact_table(FS, str(table.path), KEY, deleted="deleted", file_rows=10)
    monkeypatch.undo()
    assert {i for i, _ in expected} <= {i for i, _ in table.rows("id, value")}  # duplicates at worst, no loss
    compact_table(FS, str(table.path), KEY, deleted="deleted", file_rows=10)
    assert sorted(table.rows("id, value")) == expected
    assert not list(table.path.glob("*.tmp")) and not list(table.path.glob("*.json"))
    assert not list(table.path.glob(".compacting*"))


def _parquet_rows(options: SyncOptions, resource: str) -> list[tuple[Any, ...]]:
    columns = COMPARED[resource]
    glob = f"{options.output}/posthog/{resource}/*.parquet"
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT project_id, {', '.join(columns)} FROM read_parquet('{glob}')").fetchall()
    return [(r[0], *(_norm(c, v) for c, v in zip(columns, r[1:], strict=True))) for r in rows]


def test_syncs_with_updates_and_deletions_read_back_as_the_fake_holds_them(
    fake: FakePostHog, options: SyncOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parquet, "FILE_ROWS", 16)  # many compacted files, so several are left alone per run
    options.destination, options.output = "parquet", str(options.pipelines_dir) + "_parquet"
    sync(options)
    for step in range(3):
        live = [s["id"] for s in fake.truth(2, "subscriptions") if not s["deleted"]]
        fake.soft_delete_subscription(2, live[step])
        removed = [r["name"] for r in fake.truth(1, "property_definitions") if r["type"] == "event"][step]
        fake.remove_property_definition(1, "event", removed)
        fake.add_property_definition(2, "person", f"added_{step}")
        fake.advance(2 * 3600)
        sync(options)
        for resource in ENDPOINTS:
            landed = _parquet_rows(options, resource)
            assert len(landed) == len(set(landed)), resource
            assert set(landed) == truth_rows(fake, resource), (step, resource)
        segments = Path(options.output) / "posthog" / "desktop_recordings__transcript_segments"
        with duckdb.connect() as con:
            stored = set(con.execute(f"SELECT project_id, desktop_recording_id, position, text "
                                     f"FROM read_parquet('{segments}/*.parquet')").fetchall())
        expected = {(p, r["id"], k, s["text"]) for p in PROJECTS for r in fake.truth(p, "desktop_recordings")
                    for k, s in enumerate(r["transcript_segments"])}
        assert stored == expected


def test_a_second_small_sync_rewrites_only_the_files_it_touches(
    fake: FakePostHog, options: SyncOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parquet, "FILE_ROWS", 10)
    options.destination, options.output = "parquet", str(options.pipelines_dir) + "_parquet"
    options.resources, options.lookback_days = ["session_recordings"], 0.05
    sync(options)
    folder = Path(options.output) / "posthog" / "session_recordings"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    ids = {name: {r[0] for r in duckdb.sql(f"SELECT id FROM '{folder / name}'").fetchall()} for name in before}
    assert len(before) >= 20 and all(len(i) <= 10 for i in ids.values())
    loaded: set[str] = set()

    def spy(fs: Any, table: str, *args: Any, **kwargs: Any) -> tuple[int, int]:
        if table.rstrip("/").endswith("/session_recordings"):  # the ids of the load, before it is folded in
            loads = [p for p in Path(table).glob("*.parquet") if "compacted" not in p.name]
            loaded.update(i for p in loads for (i,) in duckdb.sql(f"SELECT id FROM '{p}'").fetchall())
        return compact_table(fs, table, *args, **kwargs)

    monkeypatch.setattr(runner, "compact_table", spy)
    fake.advance(3000)  # one new recording per project; the ongoing ones grow
    sync(options)
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    kept = {name for name in before if after.get(name) == before[name]}
    replaced = set(before) - kept
    last = max(before, key=lambda n: (float(n.split(".compacted")[0]), n))
    assert loaded and replaced and all(ids[name] & loaded or name == last for name in replaced)
    assert len(kept) >= len(before) - 4, (len(kept), len(before))
    assert set(_parquet_rows(options, "session_recordings")) == truth_rows(fake, "session_recordings")


def test_a_full_refresh_leaves_only_the_new_rows(fake: FakePostHog, options: SyncOptions) -> None:
    options.destination, options.output = "parquet", str(options.pipelines_dir) + "_parquet"
    options.resources = ["subscriptions", "desktop_recordings"]
    sync(options)
    fake.delete_subscription(1, fake.live_subscriptions(1)[0])  # gone upstream: a rebuilt table lacks it
    options.full_refresh = True
    sync(options)
    for resource in options.resources:
        landed = _parquet_rows(options, resource)
        assert len(landed) == len(set(landed)) and set(landed) == truth_rows(fake, resource), resource
