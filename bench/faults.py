"""Measure a throttled and a faulty sync against the fake PostHog (figures for the README and notes).

Usage: .venv/bin/python bench/faults.py [--recordings 2000] [--fault-rate 0.1]

Throttled run: the fake enforces PostHog's free-plan limits (DRF sliding logs, wait only in the 429 body)
on a virtual clock shared with the client, so hours of rate limiting pass in seconds. It is run once paced
by our client (`--rate-limit-plan free`) and once unpaced (`none`, relying on 429 waits alone).
Faulty run: a seeded share of requests fail (429, 500, 502/504 HTML, 503, truncated JSON).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.output import print_table  # noqa: E402
from pipelines.runner import SyncOptions, run_sync  # noqa: E402
from sources.posthog import ENDPOINTS  # noqa: E402
from sources.posthog.fake import FakePostHog  # noqa: E402

FREE = {"recordings_list": [(12, 60.0), (60, 3600.0)], "analytics": [(240, 60.0), (1200, 3600.0)],
        "general": [(480, 60.0), (4800, 3600.0)]}


class VirtualClock:
    """Monotonic time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        """Pass `seconds` of virtual time at once."""
        self.now += max(0.0, seconds)


def measure(
    label: str, fake: FakePostHog, plan: str, clock: VirtualClock, folder: Path, pages: dict[str, int]
) -> list[object]:
    """One full sync of every resource; returns a row of figures."""
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
    return [label, plan, sum(r.requests for r in runs), sum(r.throttled for r in runs),
            sum(r.retries for r in runs), rows, round(clock.now / 60, 1), round(wall, 1),
            "ok" if result.ok and not result.warnings() else "; ".join(result.warnings() or list(result.failures))]


def main() -> None:
    """Run the throttled and faulty scenarios and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    args = parser.parse_args()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for plan in ("free", "none"):
            clock = VirtualClock()
            fake = FakePostHog(project_ids=[1, 2], recordings=args.recordings, recording_step_s=600, seed=1)
            fake.throttle(FREE, clock=lambda c=clock: c.now)  # type: ignore[misc]
            # pages of 50 recordings: enough listing calls to reach the free plan's hourly limit
            table.append(measure(f"throttled-{plan}", fake, plan, clock, Path(tmp), {"session_recordings": 50}))
        clock = VirtualClock()
        fake = FakePostHog(project_ids=[1, 2], recordings=args.recordings, recording_step_s=600, seed=1)
        fake.chaos(args.fault_rate, seed=42)
        table.append(measure("faulty", fake, "none", clock, Path(tmp), {}))
    print_table(["run", "pacing", "requests", "429s", "retries", "rows", "virtual min", "wall s", "result"], table)


if __name__ == "__main__":
    main()
