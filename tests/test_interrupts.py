"""Interrupted and overlapping runs, with real `posthog-export` processes: exit codes, one line, nothing partial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from filelock import FileLock

from fake_posthog import FakePostHog
from pipelines.cli import main
from pipelines.runner import Interrupted, Interruption, SyncOptions, sync_locks
from sources.posthog import ENDPOINTS

from .test_sync import assert_no_duplicates, landed_rows, truth_rows

ROOT = Path(__file__).resolve().parents[1]


def _sync_args(url: str, output: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "sync", "--project-id", "1", "--project-id", "2",
            "--host", url, "--output", str(output), "--rate-limit-plan", "none"]


def _env(tmp_path: Path, fake: FakePostHog) -> dict[str, str]:
    return {**os.environ, "POSTHOG_PERSONAL_API_KEY": fake.api_key, "DLT_DATA_DIR": str(tmp_path / "dlt"),
            "SOURCES__POSTHOG__PAGE_SIZES": '{"session_recordings": 20, "desktop_recordings": 3}'}


def _slow_fake() -> FakePostHog:
    """A fake slow enough (30 ms a request, 20-row pages) that a sync is still running seconds in."""
    return FakePostHog(project_ids=[1, 2], seed=5, recordings=400, recording_step_s=1200, latency_s=0.03)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_load(tmp_path: Path, process: subprocess.Popen[str]) -> None:
    loaded = tmp_path / "dlt" / "pipelines" / "posthog" / "load" / "loaded"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (loaded.exists() and any(loaded.iterdir())):
        time.sleep(0.01)
    assert process.poll() is None, "the sync finished before it could be interrupted"


def _tables(output: Path) -> set[str]:
    with duckdb.connect(str(output), read_only=True) as con:
        rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'posthog'")
        return {name for (name,) in rows.fetchall()}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_within_seconds_commits_nothing_partial_and_the_rerun_continues(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    fake = _slow_fake()
    output, env = tmp_path / "interrupted.duckdb", _env(tmp_path, fake)
    with fake.serve() as url:
        args = _sync_args(url, output)
        victim = _start(args, env)
        _wait_for_first_load(tmp_path, victim)
        victim.send_signal(sig)
        sent = time.monotonic()
        _, stderr = victim.communicate(timeout=30)
        assert time.monotonic() - sent < 10, "the run did not stop within seconds"
        assert victim.returncode == code, stderr
        assert "Traceback" not in stderr
        lines = [line for line in stderr.splitlines() if line.startswith("interrupted")]
        assert len(lines) == 1 and signal.Signals(sig).name in lines[0], stderr
        # what finished is committed whole; the resource in flight left nothing behind
        options = SyncOptions(project_ids=[1, 2], api_key="-", host="-", resources=[], output=str(output))
        landed = {name for name in ENDPOINTS if name in _tables(output)}
        assert landed and landed != set(ENDPOINTS), landed
        for resource in landed:
            assert landed_rows(options, resource) == truth_rows(fake, resource), resource
        fake.latency_s = 0
        rerun = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
    for resource in ENDPOINTS:
        assert_no_duplicates(options, resource)
        assert landed_rows(options, resource) == truth_rows(fake, resource), resource


def test_a_second_sync_of_the_same_pipeline_exits_at_once_and_the_first_finishes(tmp_path: Path) -> None:
    fake = _slow_fake()
    output, env = tmp_path / "shared.duckdb", _env(tmp_path, fake)
    with fake.serve() as url:
        args = _sync_args(url, output)
        first = _start(args, env)
        lock = tmp_path / "dlt" / "pipelines" / "posthog.sync.lock"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not lock.exists():
            time.sleep(0.01)
        started = time.monotonic()
        second = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert first.poll() is None, "the first sync ended before the second started"
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "another sync of pipeline 'posthog'" in errors[0], second.stderr
        assert time.monotonic() - started < 30
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr
    # the second run sent nothing: each project's recordings listing started once
    for project in (1, 2):
        starts = [r for r in fake.requests if r.path == f"/api/projects/{project}/session_recordings/"
                  and not {"after", "offset", "session_ids"} & r.params.keys()]
        assert len(starts) == 1, starts
    options = SyncOptions(project_ids=[1, 2], api_key="-", host="-", resources=[], output=str(output))
    for resource in ENDPOINTS:
        assert_no_duplicates(options, resource)
        assert landed_rows(options, resource) == truth_rows(fake, resource), resource


def test_a_held_output_lock_stops_a_sync_of_another_pipeline_before_any_request(
    fake: FakePostHog, options: SyncOptions, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", fake.api_key)
    monkeypatch.setenv("DLT_DATA_DIR", str(Path(options.output).parent / "dlt"))
    output_lock = sync_locks(options)[-1]
    with FileLock(output_lock.lock_file):
        code = main(["sync", "--project-id", "1", "--host", options.host, "--output", options.output,
                     "--pipeline-name", "another_pipeline", "--rate-limit-plan", "none", "--quiet"])
    assert code == 1
    assert "is running" in capsys.readouterr().err
    assert fake.requests == []


def test_a_signal_lost_in_a_finalizer_still_stops_the_run_and_prints_no_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    reported: list[BaseException] = []  # what Python would print as "Exception ignored in ...", traceback and all
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))

    class Finalized:
        def __init__(self, error: BaseException | None = None) -> None:
            self.error = error

        def __del__(self) -> None:  # the signal arrives while the garbage collector runs this
            if self.error is not None:
                raise self.error
            interruption(signal.SIGTERM, None)

    with Interruption() as interruption:
        Finalized()
        Finalized(ValueError("not ours"))
        gc.collect()
        with pytest.raises(Interrupted) as raised:
            interruption.raise_if_signalled()
    assert raised.value.signum == signal.SIGTERM
    assert [type(e) for e in reported] == [ValueError]  # only other errors are still reported
    assert signal.getsignal(signal.SIGTERM) is not interruption  # handlers restored
