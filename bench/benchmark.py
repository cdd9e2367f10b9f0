"""Benchmark: our sync against a generic dlt `rest_api` pipeline, on the same fake PostHog.

    .venv/bin/python bench/benchmark.py --rows 30000 [--latency-ms 0]
        [--resource session_recordings|desktop_recordings] [--destination duckdb|parquet]
        [--peer/--no-peer] [--bare] [--cached] [--segments 100] [--page-size N] [--incremental [--new 1000]]

Starts the fake PostHog (`python -m fake_posthog`) in a subprocess, then runs each sync in a
subprocess of its own, into a fresh temporary output and dlt pipelines folder, and prints rows/s, peak
RSS (from `wait4`), list requests (from the fake's `/_fake/requests`), wall time and the process's CPU
time (user + sys, including start-up; steadier than wall time on a busy machine), plus the ratios.
Ours runs in the repository (its `.dlt/config.toml` applies); the peer runs in an empty folder, so it
gets dlt's defaults. Wall time is the sync call itself, without interpreter start and imports.
`--bare` also runs a bare client (httpx + `orjson.loads`, page after page, nothing stored): the ceiling
that reading and decoding alone allow against this fake; "fake CPU s" is the fake's own CPU time meanwhile.
`--cached` puts `bench/cached.py` in front of the fake and runs each sync once unmeasured first, so the
measured runs get every page from memory: the server then costs next to nothing, as on an independent
simulator, and the figures are the client's own.

`--incremental` measures the hourly case instead: a first sync stores `--rows`, the fake's clock moves on
(`--new` recordings appear and the ongoing ones grow; for desktop recordings one new recording starts and
the unfinished ones go on), and a second sync of the same output runs; it prints both syncs, the ratio of
their wall times, and how many rows the second sync loaded and rewrote (Parquet: rows in the table files
it wrote; DuckDB: rows its merge inserted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
API_KEY = "phx_fake_personal_key"
PROJECT = 1
INITIAL = "2020-01-01T00:00:00Z"
# what rows/s counts: the transcript target is about segment rows
COUNTED = {"session_recordings": "session_recordings",
           "desktop_recordings": "desktop_recordings__transcript_segments"}


@dataclass
class Result:
    """One measured sync."""

    name: str
    rows: int
    seconds: float
    peak_rss_mb: float
    list_requests: int
    cpu_seconds: float
    fake_cpu_seconds: float = 0.0  # CPU time of the fake PostHog while this sync ran
    loaded: int = 0  # rows the sync's load wrote into the counted table
    rewritten: int = 0  # rows of the counted table the sync wrote to disk (Parquet: files it wrote)

    @property
    def rows_per_s(self) -> float:
        """Counted rows per second of sync wall time."""
        return self.rows / self.seconds if self.seconds else 0.0


def start_fake(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """Start the fake PostHog with the benchmark's data and return the process and its URL."""
    desktop = args.resource == "desktop_recordings"
    step = 30
    if desktop and args.incremental:  # desktop recordings start every 1,800 s: a few are unfinished at a time
        step = max(step, args.rows * 1800 // 10)
    command = [
        sys.executable, "-m", "fake_posthog", "--port", "0", "--projects", str(PROJECT),
        "--recordings", str(10 if desktop else args.rows), "--desktop-recordings", str(args.rows if desktop else 10),
        "--segments", str(args.segments), "--recording-step-s", str(step), "--retention-days", "3650",
        "--latency-ms", str(args.latency_ms), "--api-key", API_KEY,
    ]
    return _serve(command, "the fake PostHog")


def _serve(command: list[str], what: str) -> tuple[subprocess.Popen[str], str]:
    """Start a server that prints ``READY <url>`` once listening; return it and its URL."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True, env=_env())
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("READY "):
        process.kill()
        raise SystemExit(f"{what} did not start: {line!r}")
    return process, line.split()[1]


def start_cache(url: str) -> tuple[subprocess.Popen[str], str]:
    """Start the caching proxy (`bench/cached.py`) in front of the fake at `url`; return it and its URL."""
    return _serve([sys.executable, str(REPO / "bench" / "cached.py"), url], "the caching proxy")


def advance_fake(url: str, seconds: float) -> None:
    """Move the fake's clock: new recordings appear, ongoing ones grow."""
    request = urllib.request.Request(f"{url}/_fake/advance?seconds={seconds}",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request) as response:
        response.read()


def request_counts(url: str) -> dict[str, int]:
    """Requests the fake answered so far, per path."""
    request = urllib.request.Request(f"{url}/_fake/requests", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux `/proc`), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env() -> dict[str, str]:
    # no telemetry, and only errors on stderr (dlt warns per page about hints it overrides)
    return {**os.environ, "PYTHONPATH": str(REPO), "RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "ERROR"}


def measure(
    name: str, args: argparse.Namespace, url: str, workdir: Path | None = None, fake_pid: int = 0
) -> Result:
    """Run one sync (`ours`, `peer` or `bare`) in a fresh subprocess and temp folder (or `workdir`, kept);
    measure it."""
    keep = workdir is not None
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"bench_{name}_"))
    before, fake_before = request_counts(url), cpu_seconds(fake_pid)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--url", url,
               "--workdir", str(workdir), "--resource", args.resource, "--destination", args.destination]
    if args.page_size:
        command += ["--page-size", str(args.page_size)]
    try:
        process = subprocess.Popen(command, cwd=REPO if name == "ours" else workdir, env=_env(),
                                   stdout=subprocess.PIPE, text=True)
        output = process.stdout.read() if process.stdout else ""
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"{name} failed with exit code {process.returncode}")
        child = json.loads(output.strip().splitlines()[-1])
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    after = request_counts(url)
    listing = f"/api/projects/{PROJECT}/{args.resource}/"
    return Result(name, child["rows"], child["seconds"], usage.ru_maxrss / 1024,
                  after.get(listing, 0) - before.get(listing, 0), usage.ru_utime + usage.ru_stime,
                  cpu_seconds(fake_pid) - fake_before, child.get("loaded", 0), child.get("rewritten", 0))


def run_ours(url: str, workdir: Path, resource: str, destination: str, page_size: int | None) -> float:
    """Our sync, through the same entry point as `posthog-export sync`; returns its wall time."""
    from pipelines.runner import SyncOptions, run_sync

    options = SyncOptions(
        project_ids=[PROJECT], api_key=API_KEY, host=url, resources=[resource], destination=destination,
        output=str(workdir / ("out.duckdb" if destination == "duckdb" else "parquet")),
        pipelines_dir=str(workdir / "pipelines"), pipeline_name="bench_ours", initial_date_from=INITIAL,
        page_sizes={resource: page_size} if page_size else {}, quiet=True,
        rate_limit_plan="none",  # the fake does not throttle; the peer does not pace either
    )
    started = time.perf_counter()
    result = run_sync(options)
    seconds = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"our sync failed: {result.failures}")
    return seconds


def peer_config(url: str, resource: str, page_size: int) -> dict[str, Any]:
    """The `rest_api` source as a competent user would set it up for one PostHog endpoint."""
    endpoint: dict[str, Any] = {"path": f"api/projects/{PROJECT}/{resource}/", "data_selector": "results"}
    if resource == "session_recordings":
        endpoint["params"] = {
            "order": "start_time", "order_direction": "ASC",
            "date_from": {"type": "incremental", "cursor_path": "start_time", "initial_value": INITIAL},
        }
        endpoint["paginator"] = {"type": "offset", "limit": page_size, "total_path": None,
                                 "has_more_path": "has_next"}
    else:  # DRF paging, newest first, no date filter
        endpoint["params"] = {"limit": page_size}
        endpoint["paginator"] = {"type": "json_link", "next_url_path": "next"}
        endpoint["incremental"] = {"cursor_path": "started_at", "initial_value": INITIAL, "row_order": "desc"}
    return {
        "client": {"base_url": f"{url}/", "auth": {"type": "bearer", "token": API_KEY}},
        "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
        "resources": [{"name": resource, "endpoint": endpoint}],
    }


def run_peer(url: str, workdir: Path, resource: str, page_size: int) -> float:
    """The generic dlt pipeline into DuckDB with dlt's defaults; returns its wall time."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    pipeline = dlt.pipeline("bench_peer", destination=dlt.destinations.duckdb(str(workdir / "out.duckdb")),
                            dataset_name="posthog", pipelines_dir=str(workdir / "pipelines"))
    started = time.perf_counter()
    pipeline.run(rest_api_source(peer_config(url, resource, page_size)))  # type: ignore[arg-type]
    return time.perf_counter() - started


def run_bare(url: str, resource: str, page_size: int) -> tuple[int, float]:
    """Every page of the listing read with httpx and decoded with orjson, nothing else; returns rows, seconds."""
    import httpx
    import orjson

    params: dict[str, Any] = {"limit": page_size}
    if resource == "session_recordings":
        params.update(order="start_time", order_direction="ASC", date_from=INITIAL)
    path, rows = f"/api/projects/{PROJECT}/{resource}/", 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        started = time.perf_counter()
        while True:
            body = orjson.loads(client.get(path, params=params).content)
            rows += len(body["results"])
            if body.get("next_cursor") and body.get("has_next"):
                params["after"] = body["next_cursor"]
            elif body.get("next"):
                params["offset"] = params.get("offset", 0) + len(body["results"])
            else:
                return rows, time.perf_counter() - started


def count_rows(workdir: Path, table: str, destination: str, since: float = 0.0) -> tuple[int, int]:
    """Rows in a table of the sync's output, and how many of them arrived in loads started at or after
    `since` (epoch seconds: dlt's load ids are timestamps, and each row carries its `_dlt_load_id`)."""
    import duckdb

    count = f"SELECT count(*), count(*) FILTER (WHERE CAST(_dlt_load_id AS DOUBLE) >= {since})"
    with duckdb.connect() as con:
        if destination == "parquet":
            files = str(workdir / "parquet" / "posthog" / table / "*.parquet")
            return con.execute(f"{count} FROM read_parquet(?)", [files]).fetchone()  # type: ignore[return-value]
        con.execute(f"ATTACH '{workdir / 'out.duckdb'}' AS out (READ_ONLY)")
        return con.execute(f"{count} FROM out.posthog.{table}").fetchone()  # type: ignore[return-value]


def rows_written_since(workdir: Path, table: str, since: float) -> int:
    """Rows in the Parquet files of `table` written at or after `since` (epoch seconds)."""
    import pyarrow.parquet as pq

    folder = workdir / "parquet" / "posthog" / table
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet") if f.stat().st_mtime >= since)


def child(args: argparse.Namespace) -> None:
    """Inside the measured subprocess: run one sync and print its rows and seconds as JSON."""
    from sources.posthog import ENDPOINTS

    workdir = Path(args.workdir)
    page_size = args.page_size or ENDPOINTS[args.resource].page_size
    table, started = COUNTED[args.resource], time.time()
    if args.child == "bare":
        rows, seconds = run_bare(args.url, args.resource, page_size)
        print(json.dumps({"rows": rows, "seconds": seconds}))
        return
    if args.child == "ours":
        seconds = run_ours(args.url, workdir, args.resource, args.destination, args.page_size)
        destination = args.destination
    else:
        seconds, destination = run_peer(args.url, workdir, args.resource, page_size), "duckdb"
    rows, loaded = count_rows(workdir, table, destination, started)
    rewritten = rows_written_since(workdir, table, started) if destination == "parquet" else loaded
    print(json.dumps({"rows": rows, "seconds": seconds, "loaded": loaded, "rewritten": rewritten}))


def report(args: argparse.Namespace, results: Sequence[Result]) -> None:
    """Print the measured table and, with a peer, the ratios."""
    print(f"\n{args.resource}: {args.rows:,} rows, latency {args.latency_ms:g} ms, "
          f"destination {args.destination} (peer: duckdb); rows = {COUNTED[args.resource]}")
    print(f"{'sync':<6}{'rows':>12}{'rows/s':>12}{'peak RSS MB':>13}{'list requests':>15}{'wall s':>9}{'CPU s':>8}"
          f"{'fake CPU s':>12}")
    for r in results:
        print(f"{r.name:<6}{r.rows:>12,}{r.rows_per_s:>12,.0f}{r.peak_rss_mb:>13,.0f}{r.list_requests:>15,}"
              f"{r.seconds:>9.1f}{r.cpu_seconds:>8.1f}{r.fake_cpu_seconds:>12.1f}")
    peers = [r for r in results if r.name == "peer"]
    if peers:
        ours, peer = results[0], peers[0]
        print(f"ours/peer rows/s: {ours.rows_per_s / peer.rows_per_s:.1f}x; "
              f"peer/ours peak RSS: {peer.peak_rss_mb / ours.peak_rss_mb:.1f}x")


def report_incremental(args: argparse.Namespace, first: Result, second: Result) -> None:
    """Print the first and second sync of the incremental case and their ratio."""
    print(f"\n{args.resource} incremental, destination {args.destination}: {first.rows:,} rows stored by the "
          f"first sync, {second.rows - first.rows:+,} by the second; rows = {COUNTED[args.resource]}")
    print(f"{'sync':<8}{'rows':>12}{'loaded':>10}{'rewritten':>11}{'peak RSS MB':>13}{'list requests':>15}"
          f"{'wall s':>9}{'CPU s':>8}")
    for r in (first, second):
        print(f"{r.name:<8}{r.rows:>12,}{r.loaded:>10,}{r.rewritten:>11,}{r.peak_rss_mb:>13,.0f}"
              f"{r.list_requests:>15,}{r.seconds:>9.2f}{r.cpu_seconds:>8.1f}")
    print(f"second/first wall: {second.seconds / first.seconds:.1%}; second sync peak RSS: "
          f"{second.peak_rss_mb:,.0f} MB")


def incremental(args: argparse.Namespace, url: str) -> None:
    """First sync, move the fake's clock, second sync of the same output; print both."""
    workdir = Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    try:
        first = measure("ours", args, url, workdir)
        first.name = "first"
        # session recordings start every 30 s; desktop recordings every 1,800 s (see `start_fake`)
        advance_fake(url, 1800 if args.resource == "desktop_recordings" else args.new * 30)
        second = measure("ours", args, url, workdir)
        second.name = "second"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report_incremental(args, first, second)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000, help="recordings (or desktop recordings) to sync")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fake latency per request")
    parser.add_argument("--resource", choices=sorted(COUNTED), default="session_recordings")
    parser.add_argument("--destination", choices=["duckdb", "parquet"], default="duckdb")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the generic rest_api pipeline (default: yes)")
    parser.add_argument("--bare", action="store_true", help="also run a bare client (httpx + orjson only)")
    parser.add_argument("--cached", action="store_true",
                        help="serve pages from a cache in front of the fake (each sync runs once unmeasured first)")
    parser.add_argument("--segments", type=int, default=100, help="transcript segments per recorded hour")
    parser.add_argument("--page-size", type=int, help="page size for both (default: the endpoint table's)")
    parser.add_argument("--incremental", action="store_true",
                        help="a first sync, then a second one after --new recordings (ours only)")
    parser.add_argument("--new", type=int, default=1000, help="recordings added before the second sync")
    parser.add_argument("--child", choices=["ours", "peer", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the fake, measure ours (and the peer), print the table."""
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    fake, url = start_fake(args)
    processes = [fake]
    try:
        if args.cached:
            cache, url = start_cache(url)
            processes.append(cache)
        if args.incremental:
            incremental(args, url)
            return
        names = ["ours", *(["peer"] if args.peer else []), *(["bare"] if args.bare else [])]
        for name in names if args.cached else ():
            measure(name, args, url)  # fills the cache
        results = [measure(name, args, url, fake_pid=fake.pid) for name in names]
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    report(args, results)


if __name__ == "__main__":
    main()
