"""`python -m fake_posthog`: serve a fake PostHog until killed, printing ``READY <url>`` once listening."""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Sequence

import fake_posthog
from fake_posthog import FakePostHog


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: serve a fake until killed, printing ``READY <url>`` once listening."""
    ap = argparse.ArgumentParser(prog="python -m fake_posthog", description=fake_posthog.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--projects", default="1,2", help="comma-separated project ids")
    for flag, default in (("recordings", 120), ("desktop-recordings", 12), ("segments", 8), ("summaries", 25),
                          ("subscriptions", 9), ("property-definitions", 30), ("group-types", 2),
                          ("recording-step-s", 600), ("retention-days", 365), ("seed", 0)):
        ap.add_argument(f"--{flag}", type=int, default=default)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--api-key", default="phx_fake_personal_key")
    ap.add_argument("--keyset", action=argparse.BooleanOptionalAction, default=True,
                    help="a newer server (next_cursor, a tiebreaker); --no-keyset: an older one")
    ap.add_argument("--tie-group", type=int, default=1, help="recordings sharing one start time")
    ap.add_argument("--subscription-order", choices=("heap", "ordering", "shuffle"), default="heap",
                    help="heap: older servers (no ORDER BY); ordering: newer servers honour ?ordering=")
    ap.add_argument("--version", action="append", default=[], metavar="RESOURCE=VERSION",
                    help="the row shape of a PostHog version, e.g. subscriptions=mid_2026 (see versions.VARIANTS)")
    ap.add_argument("--removed", action="append", default=[], metavar="RESOURCE",
                    help="an endpoint this server no longer has: session_group_summaries, desktop_recordings")
    ap.add_argument("--foss", action="store_true", help="a build without ee/: removed summaries answer 501")
    a = ap.parse_args(argv)
    fake = FakePostHog(
        project_ids=[int(x) for x in a.projects.split(",") if x.strip()], recordings=a.recordings,
        desktop_recordings=a.desktop_recordings, segments=a.segments, summaries=a.summaries,
        subscriptions=a.subscriptions, property_definitions=a.property_definitions, group_types=a.group_types,
        seed=a.seed, api_key=a.api_key, recording_step_s=a.recording_step_s, keyset=a.keyset, tie_group=a.tie_group,
        latency_s=a.latency_ms / 1000, retention_days=a.retention_days, subscription_order=a.subscription_order,
        versions=dict(v.split("=", 1) for v in a.version), removed=a.removed, foss=a.foss,
    )
    with fake.serve(port=a.port) as url:
        print(f"READY {url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
