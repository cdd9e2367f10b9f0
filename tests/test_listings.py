"""Detail reads that enrich, and full listings that move while they are read (subscriptions, definitions)."""

from __future__ import annotations

import httpx

from pipelines.runner import SyncOptions
from sources.posthog.fake import FakePostHog

from .conftest import PROJECTS, query, requests_to, sync


def test_summary_detail_rows_enrich_the_list_row(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["session_group_summaries"]
    with httpx.Client(base_url=options.host, headers={"Authorization": f"Bearer {fake.api_key}"}) as api:
        listed = api.get("/api/projects/1/session_group_summaries/").json()["results"][0]
        detail = api.get(f"/api/projects/1/session_group_summaries/{listed['id']}/").json()
    assert "session_count" in listed and "session_count" not in detail  # PostHog's retrieve serializer
    fake.requests.clear()

    sync(options)

    landed = dict(query(options, "SELECT project_id || '/' || id, session_count FROM posthog.session_group_summaries"))
    truth = {f"{p}/{r['id']}": r["session_count"] for p in PROJECTS for r in fake.truth(p, "session_group_summaries")}
    assert landed == truth and all(n is not None for n in landed.values())
    details = [r for r in requests_to(fake, "") if r.path.count("/") == 6 and "summaries" in r.path]
    assert len(details) == len(truth)  # every row was still read in full
    assert query(options, "SELECT count(*) FROM posthog.session_group_summaries WHERE session_ids IS NULL") == [(0,)]
