"""Postgres for real: a PostgreSQL server started in a temp dir on 127.0.0.1, synced into with the CLI.

Skips when no PostgreSQL server binary (Debian's `postgresql` package) or no psycopg2 (the `postgres`
extra) is found, unless POSTHOG_EXPORT_REQUIRE_POSTGRES=1 (as in CI), where that is an error.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from fake_posthog import FakePostHog
from pipelines.cli import main
from sources.posthog import ENDPOINTS

from .conftest import PROJECTS
from .test_views import VIEW_NAMES, assert_views_match, expected_views, landed_views

REQUIRED = os.environ.get("POSTHOG_EXPORT_REQUIRE_POSTGRES") == "1"
KEYS = {name: endpoint.key for name, endpoint in ENDPOINTS.items()}
KEYS["property_definitions"] = ("project_id", "type", "group_type_index", "id")
COMPARED = {  # a few columns per table whose values must equal the fake's
    "session_recordings": ("recording_duration", "console_error_count", "start_time"),
    "session_group_summaries": ("title", "created_at"),
    "desktop_recordings": ("status", "transcript_text", "updated_at"),
    "subscriptions": ("deleted", "target_type"),
    "property_definitions": ("name", "property_type"),
    "session_recording_playlists": ("short_id", "is_synthetic", "last_modified_at"),
    "vision_scanners": ("name", "credits_this_month"),
    "vision_observations": ("id", "status", "completed_at"),
}
_datasets = count(1)


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (POSTHOG_EXPORT_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


def _server_bin() -> Path | None:
    """The folder of the newest PostgreSQL server found: Debian's layout first, then PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path and shutil.which("initdb", path=str(Path(on_path).parent)) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_unprivileged(folder: Path) -> list[str]:
    """A command prefix that drops root (PostgreSQL refuses to run as root); the folder is handed over."""
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam("nobody")
    os.chown(folder, user.pw_uid, user.pw_gid)
    if shutil.which("setpriv"):  # execs in place: the pid we hold is the server's
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"]
    _unavailable("running as root and neither setpriv nor runuser found to start PostgreSQL as nobody")
    return []


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1; yields its connection URL."""
    bindir = _server_bin()
    if bindir is None:
        _unavailable("no PostgreSQL server binary (apt-get install postgresql, or put postgres/initdb on PATH)")
    assert bindir is not None
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable('psycopg2 missing: pip install -e ".[postgres]"')
    folder = Path(tempfile.mkdtemp(prefix="posthog-export-pg-"))  # not under /root: nobody must reach it
    server: subprocess.Popen[bytes] | None = None
    try:
        prefix = _as_unprivileged(folder)
        data, log = folder / "data", folder / "server.log"
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-locale", "-N"], check=True, capture_output=True)
        port = _free_port()
        with log.open("wb") as out:
            server = subprocess.Popen(
                [*prefix, str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                 "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        url = f"postgresql://postgres:unused@127.0.0.1:{port}/postgres"
        _wait_ready(url, server, log)
        yield url
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            psycopg2.connect(url, connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def pg_query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one query on the test server."""
    import psycopg2

    with psycopg2.connect(url) as con, con.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    con.close()
    return rows


@pytest.fixture
def pg(postgres_url: str, monkeypatch: pytest.MonkeyPatch, fake: FakePostHog, tmp_path: Path) -> dict[str, str]:
    """dlt pointed at the test server, a fresh dataset, the fake's key, and dlt state kept under tmp_path."""
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", postgres_url)
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt"))
    return {"url": postgres_url, "dataset": f"posthog_pg_{os.getpid()}_{next(_datasets)}"}


def cli_sync(pg: dict[str, str], server: str, *extra: str) -> None:
    args = ["sync", "--destination", "postgres", "--host", server, "--dataset", pg["dataset"],
            "--pipeline-name", pg["dataset"], *extra]
    for project in PROJECTS:
        args += ["--project-id", str(project)]
    assert main(args) == 0


def _value(value: Any) -> Any:
    if isinstance(value, str) and value[:4].isdigit() and "T" in value:
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def assert_tables_match(fake: FakePostHog, pg: dict[str, str]) -> None:
    """Every table holds exactly the fake's objects, once each."""
    for resource, key in KEYS.items():
        columns = [*key, *COMPARED[resource]]
        rows = pg_query(pg["url"], f"SELECT {', '.join(columns)} FROM {pg['dataset']}.{resource}")
        landed = [tuple(_value(v) for v in row) for row in rows]
        assert len(landed) == len(set(landed[i][: len(key)] for i in range(len(landed)))), f"duplicates in {resource}"
        expected = {tuple(_value(p if c == "project_id" else row.get(c)) for c in columns)
                    for p in PROJECTS for row in fake.truth(p, resource)}
        assert set(landed) == expected, (resource, sorted(set(landed) ^ expected, key=repr)[:3])


def test_two_syncs_into_postgres_land_every_row_once(
    fake: FakePostHog, server: str, pg: dict[str, str]
) -> None:
    cli_sync(pg, server)
    assert_tables_match(fake, pg)
    fake.soft_delete_subscription(1, next(s["id"] for s in fake.truth(1, "subscriptions") if not s["deleted"]))
    fake.advance(3 * 3600)  # new and finished recordings, transcripts grow, desktop recordings become ready
    cli_sync(pg, server)
    assert_tables_match(fake, pg)
    types = dict(pg_query(pg["url"], "SELECT column_name, data_type FROM information_schema.columns "
                          f"WHERE table_schema = '{pg['dataset']}' AND table_name = 'session_recordings'"))
    assert types["start_time"] == "timestamp with time zone" and types["click_count"] == "bigint"
    assert types["ongoing"] == "boolean" and types["person"] == "jsonb"
    report = pg_query(pg["url"], f"SELECT count(*), count(DISTINCT run_started_at) FROM {pg['dataset']}._sync_report")
    tables = sum(len(endpoint.tables) for endpoint in ENDPOINTS.values())  # a report row per table and project
    assert report[0] == (2 * len(PROJECTS) * tables, 2)


def test_views_work_on_postgres(fake: FakePostHog, server: str, pg: dict[str, str]) -> None:
    cli_sync(pg, server)
    views = pg_query(pg["url"], "SELECT table_name FROM information_schema.views "
                     f"WHERE table_schema = '{pg['dataset']}' ORDER BY 1")
    assert [v[0] for v in views] == sorted(VIEW_NAMES)
    assert_views_match(landed_views(lambda sql: pg_query(pg["url"], sql), pg["dataset"]), expected_views(fake))
    fake.advance(3600)
    cli_sync(pg, server)  # views are dropped and created again over the grown tables
    assert_views_match(landed_views(lambda sql: pg_query(pg["url"], sql), pg["dataset"]), expected_views(fake))


def test_full_refresh_on_postgres_with_views_in_place(fake: FakePostHog, server: str, pg: dict[str, str]) -> None:
    cli_sync(pg, server)
    cli_sync(pg, server, "--full-refresh")  # Postgres refuses to drop tables views depend on
    assert_tables_match(fake, pg)
    assert_views_match(landed_views(lambda sql: pg_query(pg["url"], sql), pg["dataset"]), expected_views(fake))



def test_status_json_on_postgres_equals_what_landed(
    capsys: pytest.CaptureFixture[str], fake: FakePostHog, server: str, pg: dict[str, str], tmp_path: Path
) -> None:
    from .test_status import assert_status_matches, assert_table_matches, landed, status_json

    fake.versions["subscriptions"] = "older"  # the 402 gate is gone from newer servers
    fake.disable(2, "subscriptions", 402)
    cli_sync(pg, server)
    fake.advance(3600)
    cli_sync(pg, server, "--resources", "desktop_recordings,subscriptions")
    capsys.readouterr()
    shutil.rmtree(tmp_path / "dlt")  # status restores the state from Postgres, not from a local pipeline folder
    args = ("--destination", "postgres", "--dataset", pg["dataset"], "--pipeline-name", pg["dataset"])
    doc = status_json(capsys, *args)
    truth = landed(lambda sql: pg_query(pg["url"], sql), lambda table: f"{pg['dataset']}.{table}")
    assert_status_matches(doc, truth, pg["dataset"])
    assert doc["destination"] == "postgres" and doc["output"] is None and doc["last_run"]["resources"] == 4
    skipped = next(e for e in doc["resources"] if (e["project_id"], e["resource"]) == (2, "subscriptions"))
    assert skipped["status"] == "skipped" and "HTTP 402" in skipped["reason"] and skipped["rows"] == 0
    assert [e["rows"] for e in doc["resources"] if e["resource"] == "desktop_recordings"] == [
        len(fake.truth(p, "desktop_recordings")) for p in PROJECTS
    ]
    code, out, err = main(["status", *args]), *capsys.readouterr()
    assert code == 0 and err == ""
    assert_table_matches(out, doc)
    code, out, err = main(["status", "--json", *args[:2], "--dataset", "no_such_dataset"]), *capsys.readouterr()
    assert (code, out) == (2, "") and "no dataset 'no_such_dataset'" in err and len(err.splitlines()) == 1
