"""The command line: exit codes, one-line errors, the demo, and flags winning over config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import duckdb
import pytest

from fake_posthog import FakePostHog
from pipelines.cli import main
from tests.conftest import reload_dlt_config


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_key_exits_1_with_a_clear_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", "phx_wrong_key_123")
    output = tmp_path / "bad.duckdb"
    code, out, err = run_cli(capsys, "sync", "--project-id", "1", "--host", server, "--output", str(output),
                             "--pipeline-name", "bad_key_test")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "personal API key" in lines[0] and "region" in lines[0]
    assert "Traceback" not in err and "phx_wrong_key_123" not in out + err
    if output.exists():
        with duckdb.connect(str(output)) as con:
            tables = con.execute("SELECT table_name FROM information_schema.tables "
                                 "WHERE table_name NOT LIKE '_dlt%'").fetchall()
        assert tables == []


def test_unknown_project_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    code, _, err = run_cli(capsys, "sync", "--project-id", "999", "--host", server, "--output",
                           str(tmp_path / "x.duckdb"), "--pipeline-name", "unknown_project_test")
    assert code == 1 and "project 999 not found" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["sync", "--project-id", "1", "--resources", "recordings"], "unknown resource recordings"),
        (["sync", "--project-id", "abc"], "must be a number"),
        (["sync", "--project-id", "1", "--lookback-days", "-1"], "zero or more"),
        (["sync", "--project-id", "1", "--output", "posthog.duckdb"], "equals the dataset name"),
        (["sync"], "no project id"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", "phx_some_key")
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1


def test_sync_without_a_key_says_where_to_put_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "sync", "--project-id", "1")
    assert code == 2
    assert "POSTHOG_PERSONAL_API_KEY" in err and "secrets.toml" in err
    assert not Path("posthog_export.duckdb").exists()


def test_config_file_supplies_project_and_host_and_flags_win(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
    tmp_path: Path,
) -> None:
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / "config.toml").write_text(
        f'[sources.posthog]\nproject_ids = [2]\nhost = "{server}"\n'
    )
    (tmp_path / ".dlt" / "secrets.toml").write_text(f'[sources.posthog]\npersonal_api_key = "{fake.api_key}"\n')
    reload_dlt_config(tmp_path)
    code, _, err = run_cli(capsys, "sync", "--resources", "subscriptions", "--output", "cfg.duckdb",
                           "--pipeline-name", "config_test")
    assert code == 0, err
    with duckdb.connect("cfg.duckdb") as con:
        assert con.execute("SELECT DISTINCT project_id FROM posthog.subscriptions").fetchall() == [(2,)]
    code, _, err = run_cli(capsys, "sync", "--project-id", "1", "--resources", "subscriptions",
                           "--output", "cfg.duckdb", "--pipeline-name", "config_test")
    assert code == 0, err
    with duckdb.connect("cfg.duckdb") as con:
        assert con.execute("SELECT DISTINCT project_id FROM posthog.subscriptions ORDER BY 1").fetchall() == [
            (1,), (2,)]


def test_demo_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    output = tmp_path / "demo.duckdb"
    code, out, err = run_cli(capsys, "demo", "--output", str(output))
    assert code == 0, err
    assert "Second sync" in out and "Sample query" in out
    with duckdb.connect(str(output)) as con:
        counts = dict(con.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables() WHERE schema_name = 'posthog'"
        ).fetchall())
        recordings = con.execute("SELECT count(DISTINCT project_id), count(*), count(DISTINCT (project_id, id)) "
                                 "FROM posthog.session_recordings").fetchone()
    assert {"session_recordings", "desktop_recordings__transcript_segments", "property_definitions"} <= set(counts)
    assert recordings is not None and recordings[0] == 2 and recordings[1] == recordings[2] > 1000


def test_project_id_all_discovers_every_project_and_one_failing_project_does_not_stop_the_others(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    caplog.set_level(logging.INFO, logger="posthog_export")
    for resource in ("subscriptions", "property_definitions"):
        fake.disable(2, resource, 403)
    output = tmp_path / "all.duckdb"
    code, out, err = run_cli(capsys, "sync", "--project-id", "all", "--host", server, "--output", str(output),
                             "--resources", "subscriptions,property_definitions", "--rate-limit-plan", "none")
    assert code == 0, err
    assert any(r.path == "/api/projects/" for r in fake.requests)
    assert "subscriptions project 2 skipped" in err and "property_definitions project 2 skipped" in err
    with duckdb.connect(str(output)) as con:
        assert con.execute("SELECT DISTINCT project_id FROM posthog.subscriptions").fetchall() == [(1,)]
    # timestamped progress lines when not on a terminal
    assert "subscriptions project 1: 1 pages" in caplog.text
    code, out, err = run_cli(capsys, "sync", "--project-id", "all", "--project-id", "1", "--host", server)
    assert code == 2 and "do not combine" in err


def test_quiet_prints_errors_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    code, out, err = run_cli(capsys, "sync", "--project-id", "1", "--host", server, "--quiet", "--output",
                             str(tmp_path / "q.duckdb"), "--resources", "subscriptions", "--rate-limit-plan", "none")
    assert code == 0 and out == "" and err == ""


def test_a_key_from_the_other_region_gets_a_hint() -> None:
    import httpx

    from pipelines.hints import with_hint
    from sources.posthog.client import PostHogClient
    from sources.posthog.errors import AuthError

    client = PostHogClient("eu", "phx_us_key", transport=httpx.MockTransport(
        lambda r: httpx.Response(401, json={"detail": "Personal API key found in request Authorization header is "
                                                      "invalid."})))
    with pytest.raises(AuthError, match="may have been made on US Cloud") as raised:
        client.get("/api/projects/1/subscriptions/")
    assert "--" not in str(raised.value)  # the source states the fact; the CLI names the flag
    assert with_hint(str(raised.value), raised.value).endswith("made on US Cloud (use --host us)")


def test_pacing_defaults_to_the_strictest_plan_on_posthog_cloud_only() -> None:
    from sources.posthog.settings import default_plan

    assert default_plan("https://us.posthog.com") == default_plan("https://eu.posthog.com") == "free"
    assert default_plan("https://posthog.internal.example.com") == default_plan("http://127.0.0.1:8000") == "none"


@pytest.mark.parametrize("value", ["[2]", "2"])
def test_project_ids_from_an_environment_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
    tmp_path: Path, value: str,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    monkeypatch.setenv("SOURCES__POSTHOG__PROJECT_IDS", value)
    output = tmp_path / "env.duckdb"
    code, _, err = run_cli(capsys, "sync", "--host", server, "--resources", "subscriptions", "--output", str(output))
    assert code == 0, err
    with duckdb.connect(str(output)) as con:
        assert con.execute("SELECT DISTINCT project_id FROM posthog.subscriptions").fetchall() == [(2,)]


# a destination's driver, blocked so the test sees it missing whatever this environment has installed
DRIVERS = {name: f"dlt.destinations.impl.{name}.{name}" for name in ("bigquery", "snowflake", "clickhouse", "mssql")}


@pytest.mark.parametrize(
    ("destination", "settings", "words"),
    [
        ("bigquery", {}, ['pip install "posthog-export[bigquery]"', "DESTINATION__BIGQUERY__CREDENTIALS__PROJECT_ID",
                          "DESTINATION__BIGQUERY__CREDENTIALS__PRIVATE_KEY", "[destination.bigquery.credentials]"]),
        ("snowflake", {}, ['pip install "posthog-export[snowflake]"', "DESTINATION__SNOWFLAKE__CREDENTIALS__HOST",
                           "DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE"]),
        ("clickhouse", {"DESTINATION__CLICKHOUSE__CREDENTIALS__HOST": "localhost"},
         ['pip install "posthog-export[clickhouse]"']),
        ("mssql", {"DESTINATION__MSSQL__CREDENTIALS": "mssql://u:p@localhost/db"}, ['pip install "dlt[mssql]"']),
        ("postgres", {"DESTINATION__POSTGRES__CREDENTIALS__HOST": "localhost"},
         ["DESTINATION__POSTGRES__CREDENTIALS__DATABASE", "DESTINATION__POSTGRES__CREDENTIALS__PASSWORD",
          "DESTINATION__POSTGRES__CREDENTIALS__USERNAME", "database, password, username under "
          "[destination.postgres.credentials] in .dlt/secrets.toml"]),
        ("motherduck", {}, ["DESTINATION__MOTHERDUCK__CREDENTIALS__PASSWORD", ".dlt/secrets.toml"]),
        ("bigqeury", {}, ["unknown destination 'bigqeury' (did you mean bigquery?)"]),
    ],
)
def test_a_destination_missing_its_driver_or_credentials_fails_in_a_line_or_two_before_any_request(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
    destination: str, settings: dict[str, str], words: list[str],
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    if destination in DRIVERS:
        monkeypatch.setitem(sys.modules, DRIVERS[destination], None)
    code, out, err = run_cli(capsys, "sync", "--destination", destination, "--project-id", "1", "--host", server,
                             "--pipeline-name", f"dest_{destination}_test")
    lines = err.strip().splitlines()
    assert code == 2 and 1 <= len(lines) <= 2 and all(line.startswith("error: ") for line in lines), err
    for word in words:
        assert word in err
    assert ("pip install" in err) == any("pip install" in w for w in words)
    assert "Traceback" not in err and "tried in order" not in err
    assert fake.requests == []  # it failed before asking PostHog anything
    code, _, verbose = run_cli(capsys, "sync", "--destination", destination, "--project-id", "1", "--host", server,
                               "--pipeline-name", f"dest_{destination}_test", "--verbose")
    assert code == 2 and err.strip() in verbose and len(verbose) > len(err) + 40  # then dlt's own account
    assert fake.requests == []


def test_verbose_keeps_dlts_full_account_of_missing_credentials(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    code, _, err = run_cli(capsys, "sync", "--destination", "postgres", "--project-id", "1", "--host", server,
                           "--pipeline-name", "verbose_dest_test", "--verbose")
    assert code == 2
    assert "Missing 1 field(s) in configuration `PostgresClientConfiguration`" in err
    assert "(Environment Variables, DESTINATION__POSTGRES__CREDENTIALS__PASSWORD)" in err


def test_the_extras_named_in_destination_errors_are_pyprojects() -> None:
    import tomllib

    from pipelines.destinations import EXTRAS

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert set(EXTRAS) == set(project["optional-dependencies"]) - {"dev", "dagster"}  # the others are destinations


def test_an_unreachable_destination_is_one_line_and_asks_posthog_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: str, fake: FakePostHog,
) -> None:
    pytest.importorskip("psycopg2", reason="the postgres extra is not installed")
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", "postgresql://u:p@127.0.0.1:9/db")  # nothing listens
    code, _, err = run_cli(capsys, "sync", "--destination", "postgres", "--project-id", "1", "--host", server,
                           "--pipeline-name", "unreachable_dest_test")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: destination postgres failed in dlt's sync step: OperationalError: ") and "9" in err
    assert fake.requests == []
