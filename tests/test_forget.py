"""`posthog-export forget`: a person's rows leave DuckDB, Parquet and Postgres, and nothing else changes.

Each test syncs the fake, picks people from the fake's own rows, forgets them, and compares every row of
every table with what was there before minus exactly what the people had.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from fake_posthog import FakePostHog
from pipelines import forget as forget_module
from pipelines.cli import main
from pipelines.runner import SyncOptions
from sources.posthog import ENDPOINTS
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import RECORDINGS
from sources.posthog.errors import BudgetExhausted
from sources.posthog.report import SyncReport
from sources.posthog.sync import Context, read_date_from

from .conftest import NOW, sync
from .test_postgres import cli_sync, pg, pg_query, postgres_url  # noqa: F401 - fixtures

RESOURCES = ["session_recordings", "session_group_summaries"]
TABLES = {"session_recordings": ("project_id", "id"), "session_group_summaries": ("project_id", "id")}
JSON = {name: {c for c, t in ENDPOINTS[name].columns.items() if t == "json"} for name in RESOURCES}


@pytest.fixture
def forget_options(options: SyncOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: Any) -> SyncOptions:
    """Recordings and summaries only; the CLI finds the pipeline where the sync put it (DLT_DATA_DIR)."""
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path))
    assert Path(options.pipelines_dir or "") == tmp_path / "pipelines"
    options.resources, options.page_sizes = RESOURCES, {}  # whole listings in a page or two: fewer requests
    destination = getattr(request, "param", "duckdb")
    if destination == "parquet":
        options.destination, options.output = "parquet", str(tmp_path / "parquet")
    return options


both_destinations = pytest.mark.parametrize("forget_options", ["duckdb", "parquet"], indirect=True)


def _reader(options: SyncOptions) -> Callable[[str], str]:
    if options.destination == "parquet":
        return lambda table: f"read_parquet('{options.output}/posthog/{table}/*.parquet')"
    return lambda table: f"posthog.{table}"


def stored(options: SyncOptions) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every row of every table, by key, JSON columns parsed."""
    source = _reader(options)
    found = {}
    with duckdb.connect(options.output if options.destination == "duckdb" else ":memory:", read_only=
                        options.destination == "duckdb") as con:
        for table, key in TABLES.items():
            cursor = con.execute(f"SELECT * FROM {source(table)}")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
            for row in rows:
                for column in JSON[table] & row.keys():
                    row[column] = json.loads(row[column]) if isinstance(row[column], str) else row[column]
            found[table] = {tuple(r[k] for k in key): r for r in rows}
            assert len(found[table]) == len(rows), f"duplicates in {table}"
    return found


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def destination_args(options: SyncOptions) -> list[str]:
    return ["--destination", options.destination, "--output", options.output, "--pipeline-name",
            options.pipeline_name]


def printed_counts(out: str) -> dict[str, tuple[int, int]]:
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in TABLES:
            counts[parts[0]] = (int(parts[1]), int(parts[2]))
    return counts


def stored_state(options: SyncOptions, tmp_path: Path) -> dict[str, Any]:
    """The recordings' reader state as the destination holds it (restored into a throwaway pipeline)."""
    destination = "filesystem" if options.destination == "parquet" else "duckdb"
    target = (dlt.destinations.filesystem(bucket_url=Path(options.output).as_uri()) if destination == "filesystem"
              else dlt.destinations.duckdb(options.output))
    pipeline = dlt.pipeline(options.pipeline_name, destination=target, dataset_name="posthog",
                            pipelines_dir=str(tmp_path / "restored"))
    pipeline.sync_destination()
    projects = pipeline.state["sources"]["posthog"]["resources"]["session_recordings"]["projects"]
    return dict(projects)


def state_versions(options: SyncOptions) -> list[str]:
    """The dlt state versions of the pipeline the destination holds (each can name recordings' ids)."""
    if options.destination == "parquet":
        return sorted(p.name for p in Path(options.output, "posthog", "_dlt_pipeline_state").glob(
            f"{options.pipeline_name}__*"))
    with duckdb.connect(options.output, read_only=True) as con:
        return [s for (s,) in con.execute("SELECT state FROM posthog._dlt_pipeline_state WHERE pipeline_name = ?",
                                          [options.pipeline_name]).fetchall()]


@dataclass
class Case:
    """Two people to forget, the rows as stored after a sync, and what forget must leave and print."""

    args: list[str]
    owned: set[tuple[Any, ...]]
    before: dict[str, dict[tuple[Any, ...], dict[str, Any]]]
    expected: dict[str, dict[tuple[Any, ...], dict[str, Any]]]
    counts: dict[str, tuple[int, int]]


def two_people(fake: FakePostHog, options: SyncOptions) -> Case:
    """Sync, and work out from the stored rows what forgetting two people must do."""
    recordings = {p: fake.truth(p, "session_recordings") for p in (1, 2)}
    # person A (project 1, by distinct id) owns the newest recording, so its id sits in the state's edge;
    # A is also a PostHog user who watched recordings: their email is on other recordings' viewers lists
    a = max(recordings[1], key=lambda r: r["start_time"])["distinct_id"]
    viewer = next(v for r in recordings[1] for v in r["viewers"])
    fake.set_person_property(1, a, "email", viewer.upper())  # emails compare case-insensitively
    # person B (project 2) is named by its person uuid only
    b_person = recordings[2][3]["person"]
    owned = {(1, r["id"]) for r in recordings[1] if r["distinct_id"] == a}
    owned |= {(2, r["id"]) for r in recordings[2] if r["person"]["uuid"] == b_person["uuid"]}
    assert len(owned) > 2
    sync(options, fake.transport())
    before = stored(options)
    assert owned <= before["session_recordings"].keys()
    expected = {table: {k: dict(r) for k, r in rows.items()} for table, rows in before.items()}
    for k in owned:
        del expected["session_recordings"][k]
    changed = {"session_recordings": 0, "session_group_summaries": 0}
    for row in expected["session_recordings"].values():
        kept = [v for v in row["viewers"] or [] if v.lower() != viewer.lower()]
        if kept != (row["viewers"] or []):
            row["viewers"], changed["session_recordings"] = kept, changed["session_recordings"] + 1
    for (project, _), row in expected["session_group_summaries"].items():
        kept = [s for s in row["session_ids"] if (project, s) not in owned]
        if kept != row["session_ids"]:
            row["session_ids"], changed["session_group_summaries"] = kept, changed["session_group_summaries"] + 1
    assert changed["session_recordings"] > 0 and changed["session_group_summaries"] > 0
    counts = {"session_recordings": (len(owned), changed["session_recordings"]),
              "session_group_summaries": (0, changed["session_group_summaries"])}
    args = ["forget", "--distinct-id", a, "--person-uuid", b_person["uuid"], *destination_args(options)]
    return Case(args, owned, before, expected, counts)


@both_destinations
def test_forget_removes_exactly_the_peoples_rows_and_a_later_sync_keeps_them_out(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, forget_options: SyncOptions, tmp_path: Path
) -> None:
    options = forget_options
    case = two_people(fake, options)
    args, owned, before, expected, counts = case.args, case.owned, case.before, case.expected, case.counts
    erased_ids = {i for _, i in owned}
    edge = {(int(p), i) for p, s in stored_state(options, tmp_path).items() for i in s.get("edge", {})}
    assert edge & owned, "the newest recording's id should be in the state"
    versions = state_versions(options)
    assert len(versions) > 1  # one per load that moved a cursor

    code, out, err = run_cli(capsys, *args, "--dry-run")
    assert (code, err) == (0, ""), err
    assert printed_counts(out) == counts and "dry run: nothing changed" in out
    assert stored(options) == before and state_versions(options) == versions
    code, out, err = run_cli(capsys, *args, "--pipeline-name", "other")
    assert code == 2 and "under another name" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, *args, "--dry-run", "--project-id", "2")  # B's project only
    assert code == 0 and printed_counts(out)["session_recordings"][0] == len({k for k in owned if k[0] == 2}) > 0

    code, out, err = run_cli(capsys, *args)
    assert (code, err) == (0, ""), err
    assert printed_counts(out) == counts
    assert f"removed {len(owned)} rows" in out
    after = stored(options)
    assert after == expected
    assert not any(erased_ids & set(s.get("edge", {})) for s in stored_state(options, tmp_path).values())
    assert len(state_versions(options)) == 1  # the older versions named erased ids; dlt needs the newest only
    loaded = Path(options.pipelines_dir or "", options.pipeline_name, "load", "loaded")
    assert not list(loaded.glob("*")), "dlt's local copies of the rows and the state"

    code, out, err = run_cli(capsys, *args)  # done already: nothing left to remove
    assert (code, err) == (0, "")
    assert printed_counts(out) == {t: (0, 0) for t in TABLES}
    assert stored(options) == expected

    # PostHog erased them too: the next sync works, brings in new recordings and none of theirs
    for project, ident in owned:
        fake.delete_recording(project, ident)
    fake.advance(3 * 3600)
    sync(options, fake.transport())
    synced = stored(options)["session_recordings"]
    assert not owned & synced.keys()
    assert len(synced) > len(after["session_recordings"])


def test_forget_refuses_bad_input_in_one_line(
    capsys: pytest.CaptureFixture[str], forget_options: SyncOptions, tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "forget", "--output", str(tmp_path / "x.duckdb"))
    assert code == 2 and "--distinct-id" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, "forget", "--distinct-id", "d1", "--output", str(tmp_path / "missing.duckdb"))
    assert code == 2 and "no DuckDB file" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, "forget", "--distinct-id", "d1", "--destination", "parquet",
                             "--output", str(tmp_path / "missing"))
    assert code == 2 and "no Parquet folder" in err and len(err.splitlines()) == 1
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    code, out, err = run_cli(capsys, "forget", "--distinct-id", "d1", "--output", str(tmp_path / "empty.duckdb"))
    assert code == 2 and "nothing synced yet" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err


@both_destinations
def test_a_table_joins_forget_by_one_traces_entry_with_its_child_tables(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, forget_options: SyncOptions,
) -> None:
    """Replay Vision observations (with a child table) and playlist items: declared, loaded, forgotten."""
    options = forget_options
    options.resources = ["session_recordings"]
    # vision_observations (keyed by scanner and session, children by the same key) and playlist items are
    # declared in the endpoint table like every other table
    recordings = fake.truth(1, "session_recordings")
    a = recordings[0]["distinct_id"]
    mine = [r["id"] for r in recordings if r["distinct_id"] == a]
    other = next(r for r in recordings if r["distinct_id"] != a)
    email = recordings[0]["person"]["properties"]["email"]
    rows = [  # (id, session, distinct id, subject email, erased)
        ("o1", mine[0], a, None, True),  # names the person
        ("o2", mine[-1], None, None, True),  # names an erased session
        # the person's email: its distinct id is theirs too (their sessions' recordings expired unexported)
        ("o3", "expired-1", "a-laptop", email.upper(), True),
        ("o4", "expired-2", "a-laptop", None, True),
        ("o5", other["id"], other["distinct_id"], "someone@example.com", False),
    ]
    sync(options, fake.transport())
    pipeline = dlt.pipeline(options.pipeline_name, destination=(
        dlt.destinations.filesystem(bucket_url=Path(options.output).as_uri()) if options.destination == "parquet"
        else dlt.destinations.duckdb(options.output)), dataset_name="posthog", pipelines_dir=options.pipelines_dir)
    pipeline.run([
        dlt.resource([{"project_id": 1, "id": i, "scanner_id": "scanner-1", "session_id": s, "distinct_id": d,
                       "recording_subject_email": e} for i, s, d, e, _ in rows], name="vision_observations"),
        dlt.resource([{"project_id": 1, "scanner_id": "scanner-1", "session_id": s, "position": n, "tag": f"tag{n}"}
                      for _, s, *_ in rows for n in range(2)], name="vision_observations__tags"),
        dlt.resource([{"project_id": 1, "playlist_id": 7, "session_id": s} for s in (mine[0], other["id"])],
                     name="session_recording_playlist_items"),
    ], loader_file_format="parquet")
    code, out, err = run_cli(capsys, "forget", "--distinct-id", a, *destination_args(options))
    assert (code, err) == (0, ""), err
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[2:-1]}
    assert counts == {"session_recordings": len(mine), "vision_observations": 4, "vision_observations__tags": 8,
                      "session_recording_playlist_items": 1}
    source = _reader(options)
    with duckdb.connect(options.output if options.destination == "duckdb" else ":memory:") as con:
        def ids(table: str, column: str) -> set[Any]:
            return {v for (v,) in con.execute(f"SELECT {column} FROM {source(table)}").fetchall()}

        assert ids("vision_observations", "id") == {"o5"}
        assert ids("vision_observations__tags", "session_id") == {other["id"]}
        assert ids("session_recording_playlist_items", "session_id") == {other["id"]}
        assert not ids("session_recordings", "id") & set(mine) and other["id"] in ids("session_recordings", "id")


def test_forget_on_postgres_in_one_transaction(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, server: str, pg: dict[str, str]  # noqa: F811
) -> None:
    recordings = fake.truth(1, "session_recordings")
    a = recordings[-1]["distinct_id"]
    viewer = next(v for r in recordings for v in r["viewers"])
    fake.set_person_property(1, a, "email", viewer)
    mine = {r["id"] for r in recordings if r["distinct_id"] == a}
    cli_sync(pg, server, "--resources", ",".join(RESOURCES))
    table = f"{pg['dataset']}.session_recordings"

    def state() -> tuple[Any, ...]:
        return pg_query(pg["url"], f"SELECT count(*), count(*) FILTER (WHERE viewers::text LIKE '%{viewer}%'), "
                        f"count(*) FILTER (WHERE id IN ({', '.join(repr(i) for i in mine)})), "
                        f"sum(hashtext(id || coalesce(viewers::text, ''))) FROM {table}")[0]

    total, viewed, owned, _ = before = state()
    assert owned == len(mine) > 0 and viewed > 0
    summaries = pg_query(pg["url"], f"SELECT count(*) FROM {pg['dataset']}.session_group_summaries WHERE "
                         f"project_id = 1 AND session_ids ?| array[{', '.join(repr(i) for i in mine)}]")[0][0]
    args = ["forget", "--distinct-id", a, "--destination", "postgres", "--dataset", pg["dataset"],
            "--pipeline-name", pg["dataset"]]
    code, out, err = run_cli(capsys, *args, "--dry-run")
    assert (code, err) == (0, "") and state() == before
    counts = printed_counts(out)
    assert counts["session_recordings"][0] == len(mine) and counts["session_group_summaries"] == (0, summaries)
    code, out, err = run_cli(capsys, *args)
    assert (code, err) == (0, "") and printed_counts(out) == counts
    assert state()[:3] == (total - len(mine), 0, 0)
    # every other recording that listed the email (in both projects) keeps its row, without the email
    assert counts["session_recordings"][1] == viewed - sum(1 for r in recordings if r["id"] in mine and viewer in
                                                           r["viewers"]) > 0
    left = pg_query(pg["url"], f"SELECT count(*) FROM {pg['dataset']}.session_group_summaries WHERE "
                    f"session_ids ?| array[{', '.join(repr(i) for i in mine)}]")[0][0]
    assert left == 0
    assert pg_query(pg["url"], f"SELECT count(*) FROM {pg['dataset']}._dlt_pipeline_state "
                    f"WHERE pipeline_name = '{pg['dataset']}'")[0][0] == 1
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and printed_counts(out) == {t: (0, 0) for t in TABLES}


@pytest.mark.parametrize("step", ["_stage", "_finish"])
def test_a_crash_mid_forget_on_parquet_loses_nothing_and_a_rerun_finishes(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, options: SyncOptions, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, step: str,
) -> None:
    """Killed while staging the second table's files (nothing switched yet), or while switching them (every
    manifest written, the first table switched)."""
    options.resources, options.destination, options.output = RESOURCES, "parquet", str(tmp_path / "parquet")
    options.page_sizes = {}
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path))
    case = two_people(fake, options)
    real, calls = getattr(forget_module, step), []

    def crash_on_the_second(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C (a kill -9 leaves staged files, which the next run removes)
        return real(*args)

    monkeypatch.setattr(forget_module, step, crash_on_the_second)
    code, out, err = run_cli(capsys, *case.args)
    assert code == 130 and err == "interrupted by SIGINT: rerun to continue\n"
    half = stored(options)
    if step == "_stage":  # nothing visible changed
        assert half == case.before
    else:  # summaries switched, recordings' manifest written but not applied yet: no row lost
        assert half["session_group_summaries"] == case.expected["session_group_summaries"]
        assert half["session_recordings"].keys() >= case.expected["session_recordings"].keys()
    monkeypatch.setattr(forget_module, step, real)
    code, out, err = run_cli(capsys, *case.args)
    assert (code, err) == (0, "")
    # a staged crash left everything to do; a switching one is completed before the rerun looks
    assert printed_counts(out) == (case.counts if step == "_stage" else {t: (0, 0) for t in TABLES})
    assert stored(options) == case.expected
    assert not list(Path(options.output).rglob("*.tmp")) and not list(Path(options.output).rglob("*.manifest.json"))


def test_a_failure_mid_forget_on_duckdb_rolls_everything_back(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, forget_options: SyncOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = two_people(fake, forget_options)
    real_apply = forget_module.SqlStore.apply
    statements = []

    def fail_after_two(self: Any, changes: Any) -> None:
        execute = self.client.execute_sql

        def counted(sql: str, *args: Any) -> Any:
            statements.append(sql.split()[0])
            if len(statements) > 2:
                raise RuntimeError("disk full")
            return execute(sql, *args)

        self.client.execute_sql = counted
        real_apply(self, changes)

    monkeypatch.setattr(forget_module.SqlStore, "apply", fail_after_two)
    code, out, err = run_cli(capsys, *case.args)
    assert code == 1 and "disk full" in err and len(err.splitlines()) == 1
    assert statements[:2] == ["UPDATE", "UPDATE"]
    assert stored(forget_options) == case.before  # one transaction: nothing of it stayed
    monkeypatch.setattr(forget_module.SqlStore, "apply", real_apply)
    code, out, err = run_cli(capsys, *case.args)
    assert (code, err) == (0, "") and printed_counts(out) == case.counts
    assert stored(forget_options) == case.expected


def test_a_recordings_read_stopped_in_a_narrowed_window_keeps_only_ids_and_starts_in_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows held back at a window's `date_to` when the rate budget runs out: the state keeps their start,
    never the rows (which carry the person object)."""
    fake = FakePostHog(project_ids=[1], now=NOW, recordings=400, recording_step_s=600, seed=1)
    fake.too_big(20, max_span_s=6 * 3600, statuses=(504,), seed=0)
    real_pages, asked = PostHogClient.pages, []

    def stop_at_the_re_read(self: Any, path: str, params: Any, *args: Any, **kwargs: Any) -> Any:
        if "session_ids" in params:  # the rows held at the window's date_to, read again whole
            asked.extend(json.loads(params["session_ids"]))
            raise BudgetExhausted("rate budget: waiting 61 min exceeds 60 (max_wait)")
        yield from real_pages(self, path, params, *args, **kwargs)

    monkeypatch.setattr(PostHogClient, "pages", stop_at_the_re_read)
    state: dict[str, Any] = {}
    client = PostHogClient("http://fake.test", fake.api_key, backoff_s=0.001, transport=fake.transport())
    ctx = Context(client=client, report=SyncReport(), lookback=timedelta(days=1),
                  initial_date_from="2026-11-17T12:00:00Z", page_sizes={"session_recordings": 20})
    list(read_date_from(ctx.report.job(RECORDINGS, 1, state), ctx))
    client.close()
    assert asked and ctx.report.run(1, RECORDINGS.name).status == "incomplete"
    assert set(asked) <= state["edge"].keys()  # the next run must know where they start
    assert state["edge"] and all(isinstance(v, int) for v in state["edge"].values()), state["edge"]
    assert "@" not in json.dumps(state)  # no person object, no email
