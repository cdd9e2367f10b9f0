"""Full listings under churn on the fake: rows missed, passes and requests (`python -m bench.listing_churn`).

1,000 subscriptions, pages of 100; after every page request N subscriptions are created, N updated (a
delivery: they move in heap order) and N soft-deleted. Rows live throughout the listing must all be read;
what could not be proven is reported as unproven.
"""

from __future__ import annotations

import random
from datetime import timedelta

from fake_posthog import FakePostHog, FakeRequest
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import PROPERTY_DEFINITIONS, SUBSCRIPTIONS, Endpoint
from sources.posthog.report import SyncReport
from sources.posthog.sync import Context, _full_listing


def measure(order: str, per_page: int, first_pass_only: bool, endpoint: Endpoint = SUBSCRIPTIONS,
            seed: int = 1) -> dict[str, object]:
    """One listing of 1,000 rows with `per_page` creates, updates and deletes after each page request."""
    fake = FakePostHog(project_ids=[1], subscriptions=1500, property_definitions=1000, seed=seed,
                       subscription_order=order)
    rng, state = random.Random(seed), {"passes": 0}
    if endpoint is SUBSCRIPTIONS:
        throughout = set(fake.live_subscriptions(1))
    else:
        throughout = {r["id"] for r in fake.truth(1, endpoint.name) if r["type"] == "event"}

    def churn(request: FakeRequest) -> None:
        if request.params.get("offset") == "0" and request.params.get("limit") == "100":
            state["passes"] += 1
        if first_pass_only and state["passes"] > 1 or "offset" not in request.params:
            return
        for _ in range(per_page):
            if endpoint is SUBSCRIPTIONS:
                live = fake.live_subscriptions(1)
                fake.add_subscription(1)
                fake.touch_subscription(1, rng.choice(live))
                gone = rng.choice(live)
                fake.soft_delete_subscription(1, gone)
            else:
                names = [r["name"] for r in fake._defs[1][("event", None)]]
                fake.add_property_definition(1, "event", f"new_{rng.random():.9f}")
                fake.verify_property_definition(1, "event", rng.choice(names), rng.random() < 0.5)
                gone_name = rng.choice(names)
                gone = next(r["id"] for r in fake._defs[1][("event", None)] if r["name"] == gone_name)
                fake.remove_property_definition(1, "event", gone_name)
            throughout.discard(gone)

    fake.hooks.append(churn)
    client = PostHogClient("http://fake.test", fake.api_key, transport=fake.transport())
    ctx = Context(client=client, report=SyncReport(), lookback=timedelta(days=1), initial_date_from="2020-01-01",
                  page_sizes={endpoint.name: 100})
    job = ctx.report.job(endpoint, 1)
    run = job.run
    params = {**endpoint.params, **({"type": "event"} if endpoint is PROPERTY_DEFINITIONS else {})}
    listing = _full_listing(job, ctx, params)
    return {"endpoint": endpoint.name, "server": order, "churn/page": per_page,
            "churn": "first pass" if first_pass_only else "every pass", "rows": len(throughout),
            "missing": len(throughout - set(listing.rows)), "passes": listing.passes, "requests": run.requests,
            "unproven": listing.unproven}


def main() -> None:
    """Print one line per scenario."""
    for endpoint in (SUBSCRIPTIONS, PROPERTY_DEFINITIONS):
        for order in ("ordering", "heap", "shuffle") if endpoint is SUBSCRIPTIONS else ("heap",):
            for per_page in (0, 1, 5, 20):
                for first in (True, False):
                    if per_page == 0 and not first:
                        continue
                    print(measure(order, per_page, first, endpoint))


if __name__ == "__main__":
    main()
