"""Measure throttled and faulty syncs against the fake PostHog (figures for the README and notes).

Usage: .venv/bin/python bench/faults.py [--recordings 2000] [--fault-rate 0.1]

Throttled runs: the fake enforces limits (DRF sliding logs, wait only in the 429 body) on a virtual clock
shared with the client, so hours of rate limiting pass in seconds: PostHog's free-plan limits, then a
server stricter than published (general 60/min, recordings list 4/min) the client does not know of, alone
and with another tool spending the same key (general 20/min, recordings list 1/min). Each is run paced by
our client (`--rate-limit-plan free`) and unpaced (`none`, learning from 429s alone).
Faulty run: a seeded share of requests fail (429, 500, 502/504 HTML, 503, truncated JSON).
A second table shows, per rate bucket, the 429s (late: in the later half of the bucket's requests since its
first 429) and the rate the run settled at. Virtual time is an upper bound: the clock moves on every
sleep, so threads that wait at the same time add up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fake_posthog import FakePostHog  # noqa: E402
from pipelines.output import print_table  # noqa: E402
from pipelines.runner import SyncOptions, SyncResult, run_sync  # noqa: E402
from sources.posthog import ENDPOINTS  # noqa: E402
from tests.test_sync import landed_rows, truth_rows  # noqa: E402
from tests.test_throttle import bucket_of  # noqa: E402

FREE = {"recordings_list": [(12, 60.0), (60, 3600.0)], "analytics": [(240, 60.0), (1200, 3600.0)],
        "general": [(480, 60.0), (4800, 3600.0)]}
STRICT = {**FREE, "recordings_list": [(4, 60.0)], "general": [(60, 60.0)]}
COMPETITOR = {"general": 20.0, "recordings_list": 1.0}  # requests/min another tool spends on the same key


class VirtualClock:
    """Monotonic time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        """Pass `seconds` of virtual time at once."""
        self.now += max(0.0, seconds)


def measure(
    label: str, fake: FakePostHog, plan: str, clock: VirtualClock, folder: Path, pages: dict[str, int],
    buckets: list[list[object]],
) -> list[object]:
    """One full sync of every resource; returns a row of figures and adds one row per rate bucket."""
    with fake.serve() as url:
        options = SyncOptions(project_ids=fake.project_ids, api_key=fake.api_key, host=url,
                              resources=list(ENDPOINTS), output=str(folder / f"{label}.duckdb"),
                              pipelines_dir=str(folder / label), pipeline_name="bench_faults",
                              rate_limit_plan=plan, max_wait_s=4 * 3600, max_attempts=8, quiet=True,
                              page_sizes=pages)
        started = time.monotonic()
        result = run_sync(options, clock=(lambda: clock.now, clock.sleep))
        wall = time.monotonic() - started
    runs = result.report.runs.values()
    rows = sum(r.rows_loaded for r in runs)
    exact = all(landed_rows(options, r) == truth_rows(fake, r) for r in ENDPOINTS)
    _bucket_rows(label, plan, fake, result, buckets)
    return [label, plan, sum(r.requests for r in runs), sum(r.throttled for r in runs),
            sum(r.retries for r in runs), rows, "yes" if exact else "NO", round(clock.now / 60, 1), round(wall, 1),
            "ok" if result.ok and not result.warnings() else "; ".join(result.warnings() or list(result.failures))]


def _bucket_rows(label: str, plan: str, fake: FakePostHog, result: SyncResult, out: list[list[object]]) -> None:
    """Per bucket that saw a 429 or was paced: requests, 429s (all, and late ones), the settled rate."""
    assert result.client_stats is not None
    for name, bucket in result.client_stats.buckets.items():
        if not (bucket.throttled or bucket.paced_s):
            continue
        statuses = [r.status for r in fake.requests if bucket_of(r) == name]
        since = statuses[statuses.index(429):] if 429 in statuses else []
        late = sum(s == 429 for s in since[len(since) // 2:])  # the later half of its requests since its first 429
        rate = "" if bucket.rate_per_min is None else round(bucket.rate_per_min, 2)
        out.append([label, plan, name, bucket.requests, bucket.throttled, late, rate, round(bucket.paced_s / 60, 1)])


def main() -> None:
    """Run the throttled and faulty scenarios and print two tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    args = parser.parse_args()
    table: list[list[object]] = []
    buckets: list[list[object]] = []
    scenarios = [("throttled", FREE, False), ("stricter", STRICT, False), ("stricter+competitor", STRICT, True)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, limits, compete in scenarios:
            for plan in ("free", "none"):
                clock = VirtualClock()
                fake = FakePostHog(project_ids=[1, 2], recordings=args.recordings, recording_step_s=600, seed=1)
                fake.throttle(limits, clock=lambda c=clock: c.now)  # type: ignore[misc]
                if compete:
                    fake.compete(COMPETITOR["general"], ["general"])
                    fake.compete(COMPETITOR["recordings_list"], ["analytics", "recordings_list"])
                # pages of 50 recordings: enough listing calls to reach the free plan's hourly limit
                table.append(measure(f"{name}-{plan}", fake, plan, clock, Path(tmp), {"session_recordings": 50},
                                     buckets))
        clock = VirtualClock()
        fake = FakePostHog(project_ids=[1, 2], recordings=args.recordings, recording_step_s=600, seed=1)
        fake.chaos(args.fault_rate, seed=42)
        table.append(measure("faulty", fake, "none", clock, Path(tmp), {}, buckets))
    print_table(["run", "pacing", "requests", "429s", "retries", "rows", "= truth", "virtual min", "wall s",
                 "result"], table)
    print()
    print_table(["run", "pacing", "bucket", "requests", "429s", "late 429s", "settled /min", "waited min"],
                buckets)


if __name__ == "__main__":
    main()
