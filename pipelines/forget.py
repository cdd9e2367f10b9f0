"""`posthog-export forget`: erase one person's rows from the destination, after PostHog erased them.

What ties a row to a person is data in the endpoint table (`Endpoint.traces`, sources/posthog/endpoints.py):
columns holding a distinct id, PostHog person objects, emails, session ids, and JSON lists of emails or
session ids. A new table joins with one `Traces` entry; its child tables follow it.

1. Find the person's rows: every table with person columns is searched (a portable SQL pre-filter, each
   candidate checked in Python), and the distinct ids, person uuids and emails the rows found name join the
   person's, until no new one turns up (PostHog's person objects list all of a person's distinct ids).
2. The erased sessions are the session ids of those rows; rows naming one of them are erased too, child rows
   follow their parent, and the person's emails and the erased session ids leave the JSON lists that hold
   them (the rows stay).
3. The erased ids leave the readers' dlt state (a dlt load of the state alone); older state versions in the
   destination, and the packages of completed loads dlt keeps locally (`<pipeline>/load/loaded/`), are deleted.
4. SQL destinations: every UPDATE and DELETE in one transaction. Parquet: each file holding a touched row is
   rewritten without it and staged, in every table, before the manifests are written and the files switched
   (parquet.py): a crash before the manifests changes nothing, one after them is completed by the next run.

Only keys and the searched columns of candidate rows reach Python; DuckDB rewrites Parquet file by file.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sources.posthog import ENDPOINTS
from sources.posthog.endpoints import Traces
from sources.posthog.sync import DELETED, child_table, forget_in_state, members_merge_key, parent_key

from .output import echo, print_table
from .parquet import Switch, _connect, _finish, _literal, _manifest, _quote, _remove, _scan, _stage, _url, compact_table
from .runner import SyncOptions, UsageError, destination_for, destination_kind, exclusive
from .status import LOCAL, SOURCE_NAME, _check_local_output

logger = logging.getLogger("posthog_export")
BATCH = 500  # values per IN list or LIKE chain
MAX_ROUNDS = 10  # person-widening passes; each one that finds nothing new ends the search
Key = tuple[Any, ...]


@dataclass(frozen=True)
class Table:
    """A table forget may change: its key, its traces, and for a child table the parent it follows."""

    name: str
    resource: str  # the dlt resource loading it: its state may hold the table's row ids
    key: tuple[str, ...]
    traces: Traces = Traces()
    parent: str | None = None  # child tables: rows go with their parent row, on (project_id, <parent>_id)
    parent_fields: tuple[str, ...] = ("id",)  # child tables: the parent's columns their link holds
    merge_key: tuple[str, ...] = ()
    deleted: str | None = None  # the `hard_delete` column Parquet compaction honours

    @property
    def link(self) -> tuple[str, ...]:
        """The columns naming a row to erase: the key, or for a child table its parent's."""
        return self.key[:-1] if self.parent else self.key  # a child's key is its parent's link plus `position`


def tables() -> list[Table]:
    """Every table that can hold a person's trace: endpoints with `traces`, and their child tables."""
    found = []
    for endpoint in ENDPOINTS.values():
        if not endpoint.traces:
            continue
        found.append(Table(endpoint.name, endpoint.name, endpoint.key, endpoint.traces,
                           deleted=DELETED if endpoint.delete_missing else None))
        parent = parent_key(endpoint)
        for name in endpoint.children:
            found.append(Table(child_table(endpoint, name), endpoint.name, ("project_id", *parent, "position"),
                               parent=endpoint.name, parent_fields=tuple(parent.values()),
                               merge_key=("project_id", *parent)))
    for endpoint in ENDPOINTS.values():  # member tables (playlist items) load with their parent's resource
        members = endpoint.members.endpoint if endpoint.members else None
        if members is not None and members.traces:
            found.append(Table(members.name, endpoint.name, members.key, members.traces,
                               merge_key=members_merge_key(endpoint), deleted=DELETED))
    return found


@dataclass
class Person:
    """Who to forget: distinct ids, person uuids and (lower-cased) emails, widened by the rows found."""

    distinct_ids: set[str]
    uuids: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)

    def size(self) -> tuple[int, int, int]:
        """How much is known, to tell whether a pass learnt something."""
        return len(self.distinct_ids), len(self.uuids), len(self.emails)


@dataclass
class Change:
    """What forget does to one table."""

    table: Table
    gone: set[Key] = field(default_factory=set)  # values of `table.link` whose rows are erased
    removed: int = 0
    lists: dict[str, dict[Key, str]] = field(default_factory=dict)  # column -> key -> the list without them
    names_person: bool = False  # some erased rows name the person (not just an erased session)

    @property
    def changed(self) -> int:
        """Rows kept with a shortened list."""
        return len({k for updates in self.lists.values() for k in updates})

    @property
    def order(self) -> int:
        """Changes are made in this order: what names the person goes last (where a destination has no
        transactions, a failure part way then leaves what a re-run needs to find the rest)."""
        return 2 * bool(self.table.traces.persons) + self.names_person


def _lit(value: Any) -> str:
    return str(int(value)) if isinstance(value, int) and not isinstance(value, bool) else _literal(str(value))


def _like(value: str) -> str:
    """A LIKE pattern finding `value` inside JSON text (as JSON escapes it), `!` escaping wildcards."""
    text = orjson.dumps(value).decode()[1:-1]
    return _literal("%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%") + " ESCAPE '!'"


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value


def _chunks(values: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    items = sorted(values, key=repr)
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """The destination's tables as SQL. Subclasses: dlt's SQL client, or DuckDB over the Parquet files."""

    text = "TEXT"

    def table(self, name: str) -> str:
        raise NotImplementedError

    def column(self, name: str) -> str:
        raise NotImplementedError

    def columns(self, name: str) -> set[str] | None:
        """The table's columns, or None when it does not exist in the destination."""
        raise NotImplementedError

    def rows(self, sql: str) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def count(self, sql: str) -> int:
        """The single number a `SELECT count(*)` returns (its result read to the end)."""
        return int(list(self.rows(sql))[0][0])

    def apply(self, changes: Sequence[Change]) -> None:
        raise NotImplementedError

    def prune_state(self, pipeline: Any) -> int:
        """Delete the pipeline's dlt state versions older than the newest committed one (they can hold
        erased ids; dlt restores only the newest); returns how many went."""
        raise NotImplementedError

    def where(self, columns: Sequence[str], keys: Iterable[Key]) -> str:
        """SQL true for the rows whose `columns` (project_id first) equal one of `keys`."""
        by_project: dict[Any, list[Key]] = {}
        for key in keys:
            by_project.setdefault(key[0], []).append(key[1:])
        first, rest = self.column(columns[0]), [self.column(c) for c in columns[1:]]
        parts = []
        for project, values in by_project.items():
            if len(rest) == 1:
                parts.append(f"({first} = {_lit(project)} AND {rest[0]} IN ({', '.join(_lit(v[0]) for v in values)}))")
            else:
                ors = " OR ".join("(" + " AND ".join(f"{c} = {_lit(v)}" for c, v in zip(rest, value, strict=True))
                                  + ")" for value in values)
                parts.append(f"({first} = {_lit(project)} AND ({ors}))")
        return " OR ".join(parts) or "1 = 0"


class SqlStore(Store):
    """A SQL destination through dlt's SQL client; all changes in one transaction where it has them."""

    def __init__(self, pipeline: Any, client: Any) -> None:
        self.schema, self.client = pipeline.default_schema, client
        # dlt leaves it None (unset) for most SQL destinations and sets False where there are none
        self.transactions = pipeline.destination.capabilities().supports_transactions is not False
        self.present = set(self.schema.data_table_names(seen_data_only=True))

    def table(self, name: str) -> str:
        return str(self.client.make_qualified_table_name(name))

    def column(self, name: str) -> str:
        return str(self.client.escape_column_name(name))

    def columns(self, name: str) -> set[str] | None:
        return set(self.schema.tables[name]["columns"]) if name in self.present else None

    def rows(self, sql: str) -> Iterator[tuple[Any, ...]]:
        with self.client.execute_query(sql) as cursor:
            while batch := cursor.fetchmany(1000):
                yield from batch

    def apply(self, changes: Sequence[Change]) -> None:
        with self.client.begin_transaction() if self.transactions else nullcontext():
            for change in sorted(changes, key=lambda c: c.order):
                table, key = self.table(change.table.name), change.table.key
                for column, updates in change.lists.items():
                    by_value: dict[str, list[Key]] = {}
                    for k, value in updates.items():
                        by_value.setdefault(value, []).append(k)
                    for value, keys in by_value.items():
                        for chunk in _chunks(keys):
                            self.client.execute_sql(f"UPDATE {table} SET {self.column(column)} = {_literal(value)} "
                                                    f"WHERE {self.where(key, chunk)}")
                for chunk in _chunks(change.gone):
                    self.client.execute_sql(f"DELETE FROM {table} WHERE {self.where(change.table.link, chunk)}")


    def prune_state(self, pipeline: Any) -> int:
        schema, name = pipeline.default_schema, _literal(pipeline.pipeline_name)
        state, loads = self.table(schema.state_table_name), self.table(schema.loads_table_name)
        load_id, pipeline_name = self.column("_dlt_load_id"), self.column("pipeline_name")
        where = (f"{pipeline_name} = {name} AND {load_id} < (SELECT max(s.{load_id}) FROM {state} s JOIN {loads} l "
                 f"ON l.{self.column('load_id')} = s.{load_id} WHERE s.{pipeline_name} = {name} AND "
                 f"l.{self.column('status')} = 0)")
        count = self.count(f"SELECT count(*) FROM {state} WHERE {where}")
        if count:
            self.client.execute_sql(f"DELETE FROM {state} WHERE {where}")
        return count


class ParquetStore(Store):
    """Parquet on a filesystem destination: DuckDB views over each table's files; changes rewrite files."""

    def __init__(self, client: Any, names: Sequence[Table], staging: Path, *, compact: bool) -> None:
        self.fs, self.folder_of = client.fs_client, client.get_table_dir
        self.files: dict[str, list[str]] = {}
        self.con = _connect(self.fs, str(staging / "spill"))
        for table in names:
            folder = self.folder_of(table.name).rstrip("/\\")
            if compact:  # a crashed sync's uncompacted loads first: rewritten rows must be current ones
                compact_table(self.fs, folder, table.key, table.merge_key, table.deleted)
            files = sorted(self.fs.glob(f"{folder}/*.parquet"))
            if files:
                self.files[table.name] = files
                self.con.execute(f"CREATE VIEW {_quote(table.name)} AS SELECT * FROM {_scan(self.fs, files)}")

    def close(self) -> None:
        self.con.close()

    def table(self, name: str) -> str:
        return _quote(name)

    def column(self, name: str) -> str:
        return _quote(name)

    def columns(self, name: str) -> set[str] | None:
        if name not in self.files:
            return None
        return set(self.con.sql(f"SELECT * FROM {_quote(name)} LIMIT 0").columns) - {"_file", "file_row_number"}

    def rows(self, sql: str) -> Iterator[tuple[Any, ...]]:
        cursor = self.con.execute(sql)
        while batch := cursor.fetchmany(1000):
            yield from batch

    def apply(self, changes: Sequence[Change]) -> None:
        # every table's new files are staged before any manifest is written, and every manifest before any
        # file is switched: a crash before the manifests changes nothing, one after them is completed by the
        # next compaction or forget (parquet.py `_recover`)
        staged: list[Switch] = []
        try:
            for change in sorted(changes, key=lambda c: c.order):
                if change.gone or change.lists:
                    staged.extend(self._rewrite(change))
        except BaseException:
            for switch in staged:  # nothing was switched yet: drop what was staged
                _remove(self.fs, [f"{p}.tmp" for p in switch.outputs])
            raise
        for switch in staged:
            _manifest(self.fs, switch)
        for switch in staged:
            _finish(self.fs, switch)

    def prune_state(self, pipeline: Any) -> int:
        # `<pipeline>__<load id>__<hash>.jsonl`; a load is committed once `_dlt_loads` names it
        schema, fs = pipeline.default_schema, self.fs
        loads, states_folder = (self.folder_of(n).rstrip("/\\") for n in (schema.loads_table_name,
                                                                          schema.state_table_name))
        committed = {Path(p).stem.split("__")[-1] for p in fs.glob(f"{loads}/*")}
        states = {p: Path(p).name.split("__") for p in fs.glob(f"{states_folder}/*")}
        ours = {p: parts[1] for p, parts in states.items() if len(parts) == 3 and parts[0] == pipeline.pipeline_name}
        newest = max((float(i) for i in ours.values() if i in committed), default=None)
        old = [p for p, i in ours.items() if newest is not None and float(i) < newest]
        if old:
            fs.rm(old)
        return len(old)

    def _rewrite(self, change: Change) -> list[Switch]:
        """Write and stage new files for those holding the change's rows: without the erased rows, with the
        shortened lists."""
        table, fs = change.table, self.fs
        con, local = self.con, isinstance(fs, LocalFileSystem)
        link, key, lists = table.link, table.key, sorted(change.lists)
        gone = pa.Table.from_pylist([dict(zip(link, k, strict=True)) for k in change.gone]) if change.gone else None
        keys = {k for updates in change.lists.values() for k in updates}
        updated = None
        if keys:
            rows = [{**dict(zip(key, k, strict=True)), **{c: change.lists[c].get(k) for c in lists}} for k in keys]
            updated = pa.Table.from_pylist(rows)
            for c in lists:  # a list column no row of this table changes would be typed null
                updated = updated.set_column(updated.schema.get_field_index(c), c, updated[c].cast(pa.string()))
        tests = []
        if gone is not None:
            con.register("forget_gone", gone)
            tests.append("EXISTS (SELECT 1 FROM forget_gone g WHERE "
                         + " AND ".join(f"g.{_quote(c)} = t.{_quote(c)}" for c in link) + ")")
        if updated is not None:
            con.register("forget_lists", updated)
        on = " AND ".join(f"u.{_quote(c)} = t.{_quote(c)}" for c in key)
        hit = ("EXISTS (SELECT 1 FROM forget_lists u WHERE " + on + ")") if updated is not None else None
        where = " OR ".join([*tests, *([hit] if hit else [])])
        found = con.execute(f"SELECT DISTINCT _file FROM {_quote(table.name)} t WHERE {where}").fetchall()
        urls = {url for (url,) in found}
        files = self.files[table.name]
        replaced = [p for p in files if _url(fs, p) in urls]
        if not replaced:
            return []
        folder = self.folder_of(table.name).rstrip("/\\")
        staging = Path(tempfile.mkdtemp(prefix=".compacting-forget", dir=folder if local else None))
        try:
            out = staging / "out"
            out.mkdir()
            parts = []
            for n, path in enumerate(replaced):
                target = out / f"{n}.parquet"
                select = "t.* EXCLUDE (_file, file_row_number)"
                join = ""
                if updated is not None:
                    select += " REPLACE (" + ", ".join(
                        f"coalesce(u.{_quote(c)}, t.{_quote(c)}) AS {_quote(c)}" for c in lists) + ")"
                    join = f" LEFT JOIN forget_lists u ON {on}"
                keep = f" WHERE NOT {tests[0]}" if tests else ""
                con.execute(f"COPY (SELECT {select} FROM {_scan(fs, [path])} t{join}{keep}) "
                            f"TO {_literal(str(target))} (FORMAT parquet)")
                # a file left empty goes, unless it would be the table's last (its columns stay readable)
                if pq.ParquetFile(target).metadata.num_rows or (n == len(replaced) - 1 and not parts
                                                                and len(replaced) == len(files)):
                    parts.append(target)
            return [_stage(fs, folder, parts, replaced)]
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for name in ("forget_gone", "forget_lists"):
                try:
                    con.unregister(name)
                except Exception:  # noqa: BLE001 - not registered for this change
                    pass


def _project_filter(store: Store, projects: Sequence[int] | None) -> str:
    return f" AND {store.column('project_id')} IN ({', '.join(map(_lit, projects))})" if projects else ""


def _search(store: Store, table: Table, present: set[str], person: Person, only: str) -> Iterator[dict[str, Any]]:
    """Rows of `table` naming the person: pre-filtered in SQL, each one checked here."""
    t = table.traces
    ids, uuids, emails = sorted(person.distinct_ids), sorted(person.uuids), sorted(person.emails)
    distinct = [c for c in t.distinct_ids if c in present]
    persons = [c for c in t.persons if c in present]
    email_cols = [c for c in t.emails if c in present]
    terms = [f"{store.column(c)} IN ({', '.join(map(_lit, ids))})" for c in distinct if ids]
    terms += [f"CAST({store.column(c)} AS {store.text}) LIKE {_like(v)}" for c in persons for v in [*ids, *uuids]]
    terms += [f"lower({store.column(c)}) IN ({', '.join(map(_lit, emails))})" for c in email_cols if emails]
    if not terms:
        return
    names = list(dict.fromkeys([*table.key, *(c for c in t.sessions if c in present), *distinct, *persons,
                                *email_cols]))
    sql = (f"SELECT {', '.join(map(store.column, names))} FROM {store.table(table.name)} "
           f"WHERE ({' OR '.join(terms)}){only}")
    for values in store.rows(sql):
        row = dict(zip(names, values, strict=True))
        if _names_person(row, distinct, persons, email_cols, person):
            yield row


def _names_person(row: dict[str, Any], distinct: list[str], persons: list[str], emails: list[str],
                  person: Person) -> bool:
    if any(row[c] in person.distinct_ids for c in distinct):
        return True
    if any(isinstance(row[c], str) and row[c].lower() in person.emails for c in emails):
        return True
    for c in persons:
        obj = _json(row[c])
        if isinstance(obj, dict) and ({str(i) for i in obj.get("distinct_ids") or ()} & person.distinct_ids
                                      or str(obj.get("uuid")) in person.uuids):
            return True
    return False


def _widen(person: Person, row: dict[str, Any], table: Table) -> None:
    """Add what a row of the person names: its distinct ids, its person object's ids, uuid and email."""
    t = table.traces
    person.distinct_ids.update(str(row[c]) for c in t.distinct_ids if row.get(c))
    person.emails.update(row[c].lower() for c in t.emails if isinstance(row.get(c), str) and row[c])
    for c in t.persons:
        obj = _json(row.get(c))
        if not isinstance(obj, dict):
            continue
        person.distinct_ids.update(str(i) for i in obj.get("distinct_ids") or () if i)
        if obj.get("uuid"):
            person.uuids.add(str(obj["uuid"]))
        email = (obj.get("properties") or {}).get("email")
        if isinstance(email, str) and email:
            person.emails.add(email.lower())


def plan(store: Store, person: Person, projects: Sequence[int] | None = None) -> list[Change]:
    """Work out, without changing anything, what forgetting `person` does to each table present."""
    present = {t.name: cols for t in tables() if (cols := store.columns(t.name)) is not None}
    known = [t for t in tables() if t.name in present]
    only = _project_filter(store, projects)
    changes = {t.name: Change(t) for t in known}
    sessions: dict[Any, set[str]] = {}
    for _ in range(MAX_ROUNDS):
        before = person.size()
        for table in known:
            for row in _search(store, table, present[table.name], person, only):
                change = changes[table.name]
                change.gone.add(tuple(row[c] for c in table.key))
                change.names_person = True
                _widen(person, row, table)
                for c in table.traces.sessions:
                    if row.get(c):
                        sessions.setdefault(row["project_id"], set()).add(str(row[c]))
        if person.size() == before:
            break
    for table in known:  # rows naming an erased session
        for c in (c for c in table.traces.sessions if c in present[table.name]):
            for project, ids in sessions.items():
                for chunk in _chunks(ids):
                    sql = (f"SELECT {', '.join(map(store.column, table.key))} FROM {store.table(table.name)} WHERE "
                           f"{store.column('project_id')} = {_lit(project)} AND {store.column(c)} IN "
                           f"({', '.join(map(_lit, chunk))})")
                    changes[table.name].gone.update(store.rows(sql))
    for table in known:
        change = changes[table.name]
        if table.parent:
            # child rows name their parent by its `id`, or by its own key (sync.py `parent_key`)
            parent = changes.get(table.parent)
            change.gone = set()
            fields = ", ".join(map(store.column, ("project_id", *table.parent_fields)))
            for chunk in _chunks(parent.gone if parent else ()):
                change.gone.update(store.rows(
                    f"SELECT {fields} FROM {store.table(table.parent)} "
                    f"WHERE {store.where(parent.table.key, chunk)}"))  # type: ignore[union-attr]
            for chunk in _chunks(change.gone):
                sql = f"SELECT count(*) FROM {store.table(table.name)} WHERE {store.where(table.link, chunk)}"
                change.removed += store.count(sql)
        else:
            change.removed = len(change.gone)
        _shorten_lists(store, change, present[table.name], person, sessions, only)
    return [changes[t.name] for t in known]


def _shorten_lists(store: Store, change: Change, present: set[str], person: Person,
                   sessions: dict[Any, set[str]], only: str) -> None:
    """The rows kept whose JSON lists hold one of the person's emails or an erased session id."""
    table, t = change.table, change.table.traces
    searches: list[tuple[str, list[str], str]] = []  # (column, LIKE terms, extra condition)
    for c in (c for c in t.email_lists if c in present):
        for chunk in _chunks(person.emails, 100):
            searches.append((c, [f"lower(CAST({store.column(c)} AS {store.text})) LIKE {_like(e)}" for e in chunk],
                             only))
    for c in (c for c in t.session_lists if c in present):
        for project, ids in sessions.items():
            for chunk in _chunks(ids, 100):
                searches.append((c, [f"CAST({store.column(c)} AS {store.text}) LIKE {_like(s)}" for s in chunk],
                                 f" AND {store.column('project_id')} = {_lit(project)}"))
    for column, terms, extra in searches:
        names = [*table.key, column]
        sql = (f"SELECT {', '.join(map(store.column, names))} FROM {store.table(table.name)} "
               f"WHERE ({' OR '.join(terms)}){extra}")
        for values in store.rows(sql):
            key, listed = tuple(values[:-1]), _json(values[-1])
            if key in change.gone or not isinstance(listed, list):
                continue
            erased = sessions.get(key[0], set())
            kept = [v for v in listed if not (isinstance(v, str) and (v.lower() in person.emails if column in
                                                                      t.email_lists else v in erased))]
            if len(kept) < len(listed):
                change.lists.setdefault(column, {})[key] = orjson.dumps(kept).decode()


@dataclass
class ForgetResult:
    """What forget found (and, unless a dry run, removed) per table."""

    changes: list[Change]
    person: Person
    dry_run: bool
    where: str
    local_files: int = 0  # packages of completed loads deleted from the pipeline's folder
    state_versions: int = 0  # older dlt state versions deleted from the destination

    @property
    def removed(self) -> int:
        """Rows removed in all tables."""
        return sum(c.removed for c in self.changes)

    @property
    def changed(self) -> int:
        """Rows kept with a shortened list, in all tables."""
        return sum(c.changed for c in self.changes)


def forget(
    distinct_ids: Sequence[str], person_uuids: Sequence[str] = (), *, destination: str = "duckdb",
    output: str | None = None, dataset: str = "posthog", pipeline_name: str = "posthog",
    pipelines_dir: str | None = None, projects: Sequence[int] | None = None, dry_run: bool = False,
) -> ForgetResult:
    """Erase a person's rows from the destination `sync` wrote to (or with `dry_run`, only count them).

    Raises UsageError without any id, FileNotFoundError for a missing local output, LookupError when the
    dataset holds nothing synced; destination errors come from dlt.
    """
    ids, uuids = {i for i in distinct_ids if i}, {u for u in person_uuids if u}
    if not ids and not uuids:
        raise UsageError("give the person to forget: --distinct-id ID (repeatable) and/or --person-uuid UUID")
    output = output if destination in LOCAL else None
    if output is not None:
        _check_local_output(destination, output)
    where = output or f"{destination} dataset {dataset}"
    target = destination_for(destination, output or "", dataset)
    options = SyncOptions(destination=destination, output=output or "", dataset=dataset,
                          pipeline_name=pipeline_name, pipelines_dir=pipelines_dir)
    person = Person(ids, uuids)
    with exclusive(options), ExitStack() as stack:
        pipeline = dlt.pipeline(pipeline_name, destination=target, dataset_name=dataset, pipelines_dir=pipelines_dir)
        pipeline.sync_destination()
        if not pipeline.default_schema_name or not pipeline.default_schema.data_table_names(seen_data_only=True):
            raise LookupError(f"no dataset {dataset!r} with the state of pipeline {pipeline_name!r} in {where} "
                              "(nothing synced yet, or under another name): check --destination, --output, "
                              "--dataset and --pipeline-name")
        if pipeline.has_pending_data and not dry_run:
            raise UsageError(f"pipeline {pipeline_name!r} has a load that did not finish: run `posthog-export sync` "
                             "first (it completes it), then forget")
        if destination_kind(pipeline) == "filesystem":
            client = stack.enter_context(pipeline.destination_client())
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="posthog-export-forget-")))
            store: Store = ParquetStore(client, tables(), staging, compact=not dry_run)
            stack.callback(store.close)  # type: ignore[attr-defined]
        else:
            store = SqlStore(pipeline, stack.enter_context(pipeline.sql_client()))
        changes = plan(store, person, projects)
        result = ForgetResult(changes, person, dry_run, where)
        if dry_run:
            return result
        # state first: a crash after it leaves the rows, and a re-run finds them (and the ids) again
        _forget_in_state(pipeline, changes)
        if any(c.gone or c.lists for c in changes):
            store.apply(changes)
        if any(c.gone for c in changes):
            result.state_versions = store.prune_state(pipeline)
        result.local_files = _delete_local_copies(pipeline)
    return result


def _forget_in_state(pipeline: Any, changes: Sequence[Change]) -> None:
    """Drop the erased row ids from the readers' state, committed to the destination as a load of its own."""
    erased: dict[str, dict[str, set[Any]]] = {}
    for change in changes:
        if change.table.parent is None and len(change.table.key) == 2:
            for project, ident in change.gone:
                erased.setdefault(change.table.resource, {}).setdefault(str(project), set()).add(ident)
    if not erased:
        return
    with pipeline.managed_state(extract_state=True) as state:
        resources = state.get("sources", {}).get(SOURCE_NAME, {}).get("resources", {})
        for resource, projects in erased.items():
            for project, ids in projects.items():
                project_state = resources.get(resource, {}).get("projects", {}).get(project)
                if project_state is not None:
                    forget_in_state(project_state, ids)
    if pipeline.has_pending_data:  # the state changed: its package is loaded like any other
        pipeline.normalize()
        pipeline.load()


def _delete_local_copies(pipeline: Any) -> int:
    """Delete the packages of completed loads dlt keeps in the pipeline's folder: copies of every row loaded
    (`completed_jobs`) and of the state (`load_package_state.json`). dlt needs none of them again."""
    packages = [p for p in Path(pipeline.working_dir, "load", "loaded").glob("*") if p.is_dir()]
    for package in packages:
        shutil.rmtree(package)
    return len(packages)


def print_forget(result: ForgetResult) -> None:
    """Per table the rows removed and the rows whose lists were shortened, then one line saying what happened."""
    print_table(["table", "rows removed", "rows changed"],
                [(c.table.name, c.removed, c.changed) for c in result.changes])
    person = result.person
    found = (f"{len(person.distinct_ids)} distinct ids, {len(person.uuids)} person uuids and "
             f"{len(person.emails)} emails matched")
    if result.dry_run:
        echo(f"dry run: nothing changed in {result.where}; forget would remove {result.removed} rows and change "
             f"{result.changed} ({found})")
    else:
        echo(f"removed {result.removed} rows and changed {result.changed} in {result.where} ({found}); deleted "
             f"{result.state_versions} older dlt state versions and {result.local_files} local load packages")
