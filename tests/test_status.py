"""`posthog-export status --json` (and the table) on DuckDB and Parquet, checked against what landed there.

Postgres is covered in test_postgres.py with `assert_status_matches` from here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dlt.common.versioned_state import decompress_state

from fake_posthog import FakePostHog
from pipelines.cli import main
from pipelines.runner import SyncOptions, run_sync
from sources.posthog import ENDPOINTS
from sources.posthog.sync import state_cursor, state_pending

from .conftest import PROJECTS
from .test_inspect import table_lines

Query = Callable[[str], list[tuple[Any, ...]]]
COUNTERS = ("requests", "throttled", "retries", "pages", "rows_fetched", "rows_loaded", "unproven", "duration_s")
SKIPPED = (2, "subscriptions")  # disabled on the fake (HTTP 402): the run skips it


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def status_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """`status --json`: exit 0, nothing on stderr, and stdout is exactly one JSON document."""
    code, out, err = run_cli(capsys, "status", "--json", *args)
    assert code == 0 and err == "", err
    return json.loads(out)  # fails on anything but one JSON document


def _utc(value: Any) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def landed(sql: Query, table: Callable[[str], str]) -> dict[str, Any]:
    """What a destination holds, read with plain SQL (not through dlt): rows per project and table, the
    `_sync_report` rows of every run, and the cursors of the newest committed pipeline state."""
    rows = {}
    for resource in ENDPOINTS:
        for project_id, count in sql(f"SELECT project_id, count(*) FROM {table(resource)} GROUP BY 1"):
            rows[int(project_id), resource] = int(count)
    columns = ("run_started_at", "project_id", "resource", "status", "reason", "api_count", *COUNTERS)
    report = sql(f"SELECT {', '.join(columns)} FROM {table('_sync_report')}")
    states = sql(f"SELECT s.state, s.pipeline_name FROM {table('_dlt_pipeline_state')} AS s "
                 f"JOIN {table('_dlt_loads')} AS l ON l.load_id = s._dlt_load_id WHERE l.status = 0 ORDER BY l.load_id")
    return {
        "rows": rows,
        "report": [dict(zip(columns, r, strict=True)) for r in report],
        "states": {name: decompress_state(state) for state, name in states},  # the newest per pipeline wins
    }


def assert_status_matches(doc: dict[str, Any], truth: dict[str, Any], pipeline_name: str) -> None:
    """Every project and resource of `status --json` equals what landed, and the totals are the newest run's."""
    assert doc["version"] == 1 and doc["pipeline_name"] == pipeline_name and doc["state_found"] is True
    entries = {(e["project_id"], e["resource"]): e for e in doc["resources"]}
    assert set(entries) == {(p, r) for p in PROJECTS for r in ENDPOINTS}
    assert [(e["project_id"], e["resource"]) for e in doc["resources"]] == [(p, r) for p in PROJECTS for r in ENDPOINTS]
    state = truth["states"][pipeline_name]["sources"]["posthog"]["resources"]
    newest = max(_utc(r["run_started_at"]) for r in truth["report"])
    for (project_id, resource), entry in entries.items():
        runs = sorted((r for r in truth["report"] if (r["project_id"], r["resource"]) == (project_id, resource)),
                      key=lambda r: r["run_started_at"])
        last = runs[-1]
        oks = [_utc(r["run_started_at"]) for r in runs if r["status"] == "ok"]
        assert entry["rows"] == truth["rows"].get((project_id, resource), 0), (project_id, resource)
        assert entry["status"] == last["status"] and entry["reason"] == last["reason"]
        assert datetime.fromisoformat(entry["last_run"]) == _utc(last["run_started_at"])
        assert entry["last_success"] == (max(oks).isoformat().replace("+00:00", "Z") if oks else None)
        assert entry["unproven"] == last["unproven"] and entry["run"]["api_count"] == last["api_count"]
        assert {k: entry["run"][k] for k in COUNTERS} == {k: last[k] for k in COUNTERS}
        project_state = state[resource]["projects"].get(str(project_id), {})
        assert entry["cursor"] == state_cursor(project_state)
        assert entry["pending"] == state_pending(project_state)
        assert entry["sync"] == ENDPOINTS[resource].sync
    in_newest = [r for r in truth["report"] if _utc(r["run_started_at"]) == newest]
    totals = doc["last_run"]
    assert datetime.fromisoformat(totals["started_at"]) == newest and totals["resources"] == len(in_newest)
    for name in ("ok", "skipped", "incomplete", "failed"):
        assert totals[name] == sum(r["status"] == name for r in in_newest)
    for name in COUNTERS:
        assert totals[name] == pytest.approx(sum(r[name] or 0 for r in in_newest))


def assert_table_matches(out: str, doc: dict[str, Any]) -> None:
    """The human table shows the same rows, statuses and skip reasons as the JSON."""
    rows = {(int(r[0]), r[1]): r for r in table_lines(out) if len(r) > 2}
    assert set(rows) == {(e["project_id"], e["resource"]) for e in doc["resources"]}
    for entry in doc["resources"]:
        row = rows[entry["project_id"], entry["resource"]]
        assert row[-1] == entry["status"] and f"{entry['rows']:,}" in row
    problems = [line for line in out.splitlines() if line.startswith(("skipped:", "failed:", "incomplete:"))]
    assert problems == [f"{e['status']}: {e['resource']} of project {e['project_id']} at "
                        f"{datetime.fromisoformat(e['last_run']):%Y-%m-%d %H:%M:%SZ}: {e['reason']}"
                        for e in doc["resources"] if e["status"] != "ok"]


def duckdb_truth(path: str, dataset: str = "posthog") -> dict[str, Any]:
    with duckdb.connect(path, read_only=True) as con:
        return landed(lambda sql: con.execute(sql).fetchall(), lambda table: f"{dataset}.{table}")


def parquet_truth(folder: Path, dataset: str = "posthog") -> dict[str, Any]:
    def table(name: str) -> str:
        found = list((folder / dataset / name).glob("*.parquet")) or list((folder / dataset / name).glob("*.jsonl"))
        assert found, name
        reader = "read_parquet" if found[0].suffix == ".parquet" else "read_json_auto"
        return f"{reader}('{folder / dataset / name}/*{found[0].suffix}')"

    with duckdb.connect() as con:
        return landed(lambda sql: con.execute(sql).fetchall(), table)


def _digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_status_json_on_duckdb_equals_what_landed(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, options: SyncOptions
) -> None:
    fake.versions["subscriptions"] = "older"  # the 402 gate is gone from newer servers
    fake.disable(*SKIPPED, 402)
    assert run_sync(options).ok
    recordings_synced = len(fake.truth(1, "session_recordings"))
    options.resources = ["subscriptions", "desktop_recordings"]
    fake.advance(3600)
    assert run_sync(options).ok  # a second, partial run: totals are its own, last success per resource
    shutil.rmtree(str(options.pipelines_dir))  # status needs no local pipeline folder
    before = _digest(Path(options.output))
    doc = status_json(capsys, "--output", options.output, "--pipeline-name", options.pipeline_name)
    assert _digest(Path(options.output)) == before  # read-only
    truth = duckdb_truth(options.output)
    assert_status_matches(doc, truth, options.pipeline_name)
    assert doc["destination"] == "duckdb" and doc["output"] == options.output and doc["last_run"]["resources"] == 4
    skipped = next(e for e in doc["resources"] if (e["project_id"], e["resource"]) == SKIPPED)
    assert skipped["status"] == "skipped" and "HTTP 402" in skipped["reason"] and skipped["last_success"] is None
    assert skipped["rows"] == 0 and doc["last_run"]["skipped"] == 1
    recordings = next(e for e in doc["resources"] if (e["project_id"], e["resource"]) == (1, "session_recordings"))
    assert recordings["last_run"] < doc["last_run"]["started_at"]  # not in the second run
    assert recordings["rows"] == recordings_synced > 0
    code, out, err = run_cli(capsys, "status", "--output", options.output, "--pipeline-name", options.pipeline_name)
    assert code == 0 and err == ""
    assert_table_matches(out, doc)


def test_status_json_on_parquet_equals_what_landed(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, options: SyncOptions, tmp_path: Path
) -> None:
    fake.versions["subscriptions"] = "older"  # the 402 gate is gone from newer servers
    fake.disable(*SKIPPED, 402)
    options.destination, options.output = "parquet", str(tmp_path / "parquet")
    assert run_sync(options).ok
    fake.advance(3600)
    assert run_sync(options).ok
    shutil.rmtree(str(options.pipelines_dir))
    before = _digest(Path(options.output))
    args = ("--destination", "parquet", "--output", options.output, "--pipeline-name", options.pipeline_name)
    doc = status_json(capsys, *args)
    assert _digest(Path(options.output)) == before
    assert_status_matches(doc, parquet_truth(Path(options.output)), options.pipeline_name)
    tables = sum(len(endpoint.tables) for endpoint in ENDPOINTS.values())  # a report row per table and project
    assert doc["destination"] == "parquet" and doc["last_run"]["resources"] == len(PROJECTS) * tables
    for project in PROJECTS:  # compacted: each object once
        for resource in ENDPOINTS:
            entry = next(e for e in doc["resources"] if (e["project_id"], e["resource"]) == (project, resource))
            expected = 0 if (project, resource) == SKIPPED else len(fake.truth(project, resource))
            assert entry["rows"] == expected, (project, resource)
    code, out, err = run_cli(capsys, "status", *args)
    assert code == 0 and err == ""
    assert_table_matches(out, doc)


def test_status_json_names_other_pipelines_and_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], options: SyncOptions, tmp_path: Path
) -> None:
    assert run_sync(options).ok
    code, out, err = run_cli(capsys, "status", "--json", "--output", options.output)  # default pipeline name
    doc = json.loads(out)
    assert code == 0 and doc["state_found"] is False and doc["other_pipelines"] == [options.pipeline_name]
    assert all(e["cursor"] is None for e in doc["resources"]) and {e["status"] for e in doc["resources"]} == {"ok"}
    assert len(err.splitlines()) == 1 and "no dlt state of pipeline 'posthog'" in err
    for args, words in [
        (("--output", str(tmp_path / "nope.duckdb")), "no DuckDB file"),
        (("--destination", "parquet", "--output", str(tmp_path / "nope")), "no Parquet folder"),
        (("--output", options.output, "--dataset", "other"), "no dataset 'other'"),
    ]:
        code, out, err = run_cli(capsys, "status", "--json", *args)
        assert (code, out) == (2, "") and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "nope.duckdb").exists() and not (tmp_path / "nope").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli(capsys, "status", "--json", "--destination", "parquet", "--output", str(empty))
    assert (code, out) == (2, "") and "no dataset 'posthog'" in err and len(err.splitlines()) == 1


def test_status_of_an_unreachable_destination_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg2")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", f"postgresql://postgres:x@127.0.0.1:{port}/postgres")
    code, out, err = run_cli(capsys, "status", "--json", "--destination", "postgres")
    assert (code, out) == (1, "") and len(err.splitlines()) == 1 and err.startswith("error: cannot read the status")
