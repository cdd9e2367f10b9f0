"""`posthog-export sql` and `posthog-export status` against a synced DuckDB output."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from fake_posthog import FakePostHog
from pipelines.cli import main
from pipelines.runner import SyncOptions, run_sync
from sources.posthog import ENDPOINTS
from sources.posthog.sync import state_cursor

from .conftest import PROJECTS, query, sync


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def table_lines(out: str) -> list[list[str]]:
    """The rows of a printed table, split on runs of two or more spaces (header and rule dropped)."""
    lines = [line for line in out.splitlines() if line.strip()]
    rule = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "})
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[rule + 1:] if not line.startswith("(")]


@pytest.fixture
def synced(options: SyncOptions) -> SyncOptions:
    sync(options)
    return options


def test_sql_prints_a_table_with_exact_numbers(capsys: pytest.CaptureFixture[str], synced: SyncOptions) -> None:
    code, out, err = run_cli(capsys, "sql", "SELECT project_id, count(*) AS n, avg(active_seconds) AS avg_active "
                             "FROM session_recordings GROUP BY 1 ORDER BY 1", "--output", synced.output)
    assert code == 0 and err == ""
    header = out.splitlines()[0].split()
    assert header == ["project_id", "n", "avg_active"]
    expected = query(synced, "SELECT project_id, count(*), avg(active_seconds) FROM posthog.session_recordings "
                             "GROUP BY 1 ORDER BY 1")
    assert table_lines(out) == [[str(p), str(n), repr(a)] for p, n, a in expected]
    assert out.rstrip().endswith(f"({len(PROJECTS)} rows)")


def test_sql_reads_views_cuts_long_values_and_limits_rows(
    capsys: pytest.CaptureFixture[str], synced: SyncOptions
) -> None:
    code, out, _ = run_cli(capsys, "sql", "SELECT day, recordings FROM v_recordings_per_day ORDER BY day",
                           "--output", synced.output, "--max-rows", "2")
    assert code == 0 and len(table_lines(out)) == 2 and "first 2 rows shown" in out
    code, out, _ = run_cli(capsys, "sql", "SELECT transcript_text FROM posthog.desktop_recordings "
                           "WHERE length(transcript_text) > 100 LIMIT 1", "--output", synced.output,
                           "--max-width", "30")
    assert code == 0 and table_lines(out)[0][0].endswith("…") and len(table_lines(out)[0][0]) == 30


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM no_such_table", "no_such_table does not exist"),
        ("SELECT nope FROM subscriptions", '"nope" not found'),
        ("DROP TABLE posthog.subscriptions", "read-only"),
    ],
)
def test_sql_bad_query_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], synced: SyncOptions, sql: str, words: str
) -> None:
    code, out, err = run_cli(capsys, "sql", sql, "--output", synced.output)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and words in err
    assert query(synced, "SELECT count(*) FROM posthog.subscriptions")[0][0] > 0


def test_sql_without_an_output_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "sql", "SELECT 1", "--output", str(tmp_path / "missing.duckdb"))
    assert code == 2 and "no DuckDB file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "missing.duckdb").exists()


def test_status_shows_each_project_and_resource(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, options: SyncOptions
) -> None:
    fake.versions["subscriptions"] = "older"  # the 402 gate is gone from newer servers
    fake.disable(2, "subscriptions", 402)  # a skip the status must show
    result = run_sync(options)
    assert result.ok
    code, out, err = run_cli(capsys, "status", "--output", options.output, "--pipeline-name", options.pipeline_name)
    assert code == 0 and err == ""
    rows = {(r[0], r[1]): r for r in table_lines(out) if len(r) > 2}
    assert set(rows) == {(str(p), name) for p in PROJECTS for name in ENDPOINTS}
    state = result.pipeline.state["sources"]["posthog"]["resources"]
    started = result.report.started_at.strftime("%Y-%m-%d %H:%M:%SZ")
    for (project, resource), row in rows.items():
        count = query(options, f"SELECT count(*) FROM posthog.{resource} WHERE project_id = {project}")[0][0]
        if (project, resource) == ("2", "subscriptions"):
            assert row[-1] == "skipped" and started not in row[2] and count == 0
            continue
        assert row[2] == started and row[-1] == "ok"  # last success = this run
        assert f"{count:,}" in row
        cursor = state_cursor(state[resource]["projects"][project])
        if ENDPOINTS[resource].sync == "full":
            assert "full scan" in row
        else:
            shown = datetime.fromisoformat(cursor.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%SZ")
            assert any(cell.startswith(shown) for cell in row)
    skipped = [line for line in out.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and "subscriptions of project 2" in skipped[0]


def test_status_keeps_the_last_success_when_a_later_run_fails(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, options: SyncOptions
) -> None:
    options.resources = ["subscriptions"]
    first = sync(options)
    fake.set_field("subscriptions", "interval", "every other week")  # contradicts the declared bigint
    second = run_sync(options)
    assert not second.ok
    code, out, _ = run_cli(capsys, "status", "--output", options.output, "--pipeline-name", options.pipeline_name)
    assert code == 0
    row = next(r for r in table_lines(out) if r[:2] == ["1", "subscriptions"])
    assert row[2] == first.report.started_at.strftime("%Y-%m-%d %H:%M:%SZ")
    assert row[-1] == "failed"
    assert any(line.startswith("failed: subscriptions of project 1") and "interval" in line
               for line in out.splitlines())


def test_status_names_other_pipelines_and_bad_paths(
    capsys: pytest.CaptureFixture[str], synced: SyncOptions, tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "status", "--output", synced.output)  # default pipeline name: posthog
    assert code == 0 and "no dlt state of pipeline 'posthog'" in err and synced.pipeline_name in err
    assert "subscriptions" in out  # rows and runs still shown
    code, _, err = run_cli(capsys, "status", "--output", str(tmp_path / "nope.duckdb"))
    assert code == 2 and "no DuckDB file" in err
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    code, _, err = run_cli(capsys, "status", "--output", str(empty))
    assert code == 2 and "no dataset 'posthog'" in err
