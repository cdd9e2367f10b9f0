"""Detail reads that enrich, and full listings that move while they are read (subscriptions, definitions)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog, FakeRequest
from pipelines.runner import SyncOptions, _destination, run_sync
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import PROPERTY_DEFINITIONS, SUBSCRIPTIONS, Endpoint
from sources.posthog.report import ResourceRun, SyncReport
from sources.posthog.sync import Context, Listing, _full_listing

from .conftest import PROJECTS, query, requests_to, sync
from .test_sync import assert_no_duplicates


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


# -- the full-listing reader against the fake, in process ------------------------------------------

def _listing(fake: FakePostHog, endpoint: Endpoint, size: int, params: dict[str, str] | None = None,
             ) -> tuple[Listing, ResourceRun]:
    client = PostHogClient("http://fake.test", fake.api_key, transport=fake.transport(), backoff_s=0, max_attempts=2)
    ctx = Context(client=client, report=SyncReport(), lookback=timedelta(days=1), initial_date_from="2020-01-01",
                  page_sizes={endpoint.name: size})
    job = ctx.report.job(endpoint, 1)
    return _full_listing(job, ctx, {**endpoint.params, **(params or {})}), job.run


OPS = st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["insert", "soft_delete", "delete", "touch"]),
                         st.integers(0, 10_000)), max_size=30)


class Churn:
    """Mutations of one project's subscriptions after given requests; tracks the rows live throughout."""

    def __init__(self, fake: FakePostHog, ops: list[tuple[int, str, int]], first_pass_of: int | None = None) -> None:
        self.fake, self.ops, self.seen = fake, sorted(ops, key=lambda op: op[0]), 0
        self.throughout = set(fake.live_subscriptions(1))
        self.first_pass_of, self.passes = first_pass_of, 0  # page size: churn only during the first pass
        fake.hooks.append(self)

    def __call__(self, request: FakeRequest) -> None:
        self.seen += 1
        if request.params.get("offset") == "0" and request.params.get("limit") == str(self.first_pass_of):
            self.passes += 1  # a pass starts with a plain first page; steps back to 0 ask for more rows
        if self.passes > 1:
            return
        while self.ops and self.ops[0][0] < self.seen:
            _, kind, pick = self.ops.pop(0)
            live = self.fake.live_subscriptions(1)
            if kind == "insert" or not live:
                self.fake.add_subscription(1)
                continue
            target = live[pick % len(live)]
            if kind == "touch":
                self.fake.touch_subscription(1, target)
                continue
            getattr(self.fake, f"{kind}_subscription")(1, target)
            self.throughout.discard(target)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 60), size=st.integers(2, 12), order=st.sampled_from(["heap", "ordering"]), ops=OPS)
# after page 1: soft-delete the first row, update the last (it moves into the freed first slot), create one:
# the count and every overlap stay as they were, and one pass alone would miss the updated row
@example(rows=10, size=4, order="heap", ops=[(1, "soft_delete", 0), (1, "touch", 5), (1, "insert", 0)])
def test_every_row_live_throughout_a_churning_listing_is_read(rows: int, size: int, order: str,
                                                             ops: list[tuple[int, str, int]]) -> None:
    fake = FakePostHog(project_ids=[1], subscriptions=rows, seed=rows, subscription_order=order)
    # every mutation happens while the first pass is read: later passes see a quiet list
    churn = Churn(fake, ops, first_pass_of=size)
    listing, run = _listing(fake, SUBSCRIPTIONS, size)
    missing = churn.throughout - set(listing.rows)
    assert not missing and listing.unproven == 0, (missing, listing.why, listing.passes)
    assert run.requests == run.pages == len(fake.requests)
    if order == "ordering":  # the order proves the pass: a second is needed only for rows created meanwhile
        assert listing.passes <= 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 60), size=st.integers(2, 12), order=st.sampled_from(["heap", "ordering", "shuffle"]),
       ops=OPS)
def test_a_listing_that_never_settles_reports_what_it_could_not_prove(
    rows: int, size: int, order: str, ops: list[tuple[int, str, int]]
) -> None:
    fake = FakePostHog(project_ids=[1], subscriptions=rows, seed=rows, subscription_order=order)
    churn = Churn(fake, [(at * 4, kind, pick) for at, kind, pick in ops])  # spread over every pass
    listing, run = _listing(fake, SUBSCRIPTIONS, size)
    missing = churn.throughout - set(listing.rows)
    assert not missing or listing.unproven > 0, (missing, listing.why)
    assert listing.passes <= SUBSCRIPTIONS.max_passes
    assert run.requests == run.pages == len(fake.requests)



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 50), size=st.integers(2, 12), hidden=st.integers(0, 3),
       ops=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["add", "remove", "verify", "unverify"]),
                              st.integers(0, 10_000)), max_size=25))
def test_definitions_listing_reads_every_definition_live_throughout(
    rows: int, size: int, hidden: int, ops: list[tuple[int, str, int]]
) -> None:
    fake = FakePostHog(project_ids=[1], property_definitions=rows, seed=rows)
    fake.hide_property_definitions(1, "person", hidden)
    defs = fake._defs[1][("person", None)]
    throughout = {r["id"] for r in defs} | {r["id"] for r in fake._virtual("person")}
    pending, passes = sorted(ops), [0]

    def churn(request: FakeRequest) -> None:  # only while the first pass is read
        passes[0] += request.params.get("offset") == "0" and request.params.get("limit") == str(size)
        while pending and pending[0][0] < len(fake.requests) and passes[0] == 1:
            _, kind, pick = pending.pop(0)
            if kind == "add" or not defs:
                fake.add_property_definition(1, "person", f"new_{len(fake.requests)}_{pick}")
                continue
            row = defs[pick % len(defs)]
            if kind == "remove":
                fake.remove_property_definition(1, "person", row["name"])
                throughout.discard(row["id"])
            else:  # verified definitions sort first: the row moves, maybe into the pages already read
                fake.verify_property_definition(1, "person", row["name"], kind == "verify")

    fake.hooks.append(churn)
    listing, run = _listing(fake, PROPERTY_DEFINITIONS, size, {"type": "person"})
    assert throughout <= set(listing.rows), listing.why
    # counted but never returned: reported (rows read and deleted since are kept until the next run)
    gone = set(listing.rows) - {r["id"] for r in fake.truth(1, "property_definitions") if r["type"] == "person"}
    assert listing.proven and listing.unproven == max(0, hidden - len(gone))
    assert run.requests == run.pages == len(fake.requests)


# -- end to end: what lands, what the report says --------------------------------------------------

def _definitions(options: SyncOptions, project: int, type_: str) -> set[str]:
    return {r[0] for r in query(options, f"SELECT name FROM posthog.property_definitions WHERE project_id = {project} "
                                         f"AND type = '{type_}'")}


def test_hidden_definitions_are_reported_not_failed(fake: FakePostHog, options: SyncOptions) -> None:
    options.resources = ["property_definitions"]
    fake.hide_property_definitions(1, "person", 4)
    result = sync(options)
    run = result.report.runs[(1, "property_definitions")]
    assert run.unproven == 4 and result.report.runs[(2, "property_definitions")].unproven == 0
    assert any("property_definitions project 1: 4 rows unproven" in w for w in result.warnings())
    assert query(options, "SELECT project_id, unproven FROM posthog._sync_report ORDER BY 1") == [(1, 4), (2, 0)]
    truth = {r["name"] for r in fake.truth(1, "property_definitions") if r["type"] == "person"}
    assert _definitions(options, 1, "person") == truth


def test_a_definition_listing_that_keeps_timing_out_loads_what_it_read_and_keeps_the_rest(
    fake: FakePostHog, options: SyncOptions
) -> None:
    options.resources = ["property_definitions"]
    options.max_attempts, options.page_sizes = 2, {"property_definitions": 8}
    sync(options)
    before = _definitions(options, 1, "event")
    events = sorted(r["name"] for r in fake.truth(1, "property_definitions") if r["type"] == "event")
    fake.remove_property_definition(1, "event", events[-1])  # gone upstream, on a page that times out
    fake.remove_property_definition(1, "person", next(r["name"] for r in fake.truth(1, "property_definitions")
                                                      if r["type"] == "person" and not r.get("virtual")))
    fake.time_out_property_definitions("event", from_offset=10)
    fake.requests.clear()

    result = run_sync(options)

    assert result.ok  # not failed: loaded what it read, reported the rest
    run = result.report.runs[(1, "property_definitions")]
    assert run.unproven > 0 and run.status == "incomplete" and "503" in (run.reason or "")
    assert any("property_definitions project 1 incomplete" in w for w in result.warnings())
    assert _definitions(options, 1, "event") == before  # rows it could not re-confirm are kept
    person = {r["name"] for r in fake.truth(1, "property_definitions") if r["type"] == "person"}
    assert _definitions(options, 1, "person") == person  # a proven listing still drops deleted rows
    statuses = [r.status for r in requests_to(fake, "property_definitions") if r.params.get("type") == "event"]
    assert statuses.count(503) >= 2 and statuses[0] == 200

    fake._def_timeouts.clear()
    sync(options)
    assert _definitions(options, 1, "event") == before - {events[-1]}  # resolved by the next run
    assert_no_duplicates(options, "property_definitions")

    fake.group_types = 1  # group type 1 removed: its listing is gone, and so are its rows
    sync(options)
    assert query(options, "SELECT DISTINCT group_type_index FROM posthog.property_definitions "
                          "WHERE type = 'group' ORDER BY 1") == [(0,)]


def test_subscriptions_under_churn_land_every_row_live_throughout_once(fake: FakePostHog, options: SyncOptions) -> None:
    fake = FakePostHog(project_ids=[1], subscriptions=300, seed=4, now=fake.now)
    picks = iter(range(10**6))

    def churn(request: FakeRequest) -> None:
        if not request.path.endswith("/subscriptions/") or request.params.get("deleted"):
            return
        live = fake.live_subscriptions(1)
        fake.add_subscription(1)
        fake.touch_subscription(1, live[next(picks) * 7 % len(live)])
        if next(picks) % 2:
            gone = live[next(picks) * 13 % len(live)]
            fake.soft_delete_subscription(1, gone)
            throughout.discard(gone)

    throughout = set(fake.live_subscriptions(1))
    options.project_ids, options.resources, options.page_sizes = [1], ["subscriptions"], {"subscriptions": 25}
    fake.hooks.append(churn)
    result = sync(options, transport=fake.transport())
    fake.hooks.clear()
    run = result.report.runs[(1, "subscriptions")]
    landed = {r[0] for r in query(options, "SELECT id FROM posthog.subscriptions WHERE NOT deleted")}
    missing = throughout - landed
    assert not missing or run.unproven > 0
    assert query(options, "SELECT count(*) - count(DISTINCT id) FROM posthog.subscriptions") == [(0,)]
    assert run.requests == run.pages == len(fake.requests)
    stored = query(options, "SELECT requests, pages, unproven FROM posthog._sync_report")
    assert stored == [(run.requests, run.pages, run.unproven)]


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.integers(3, 30), order=st.sampled_from(["heap", "ordering"]), ops=OPS)
def test_synced_subscriptions_hold_every_row_live_throughout_exactly_once(
    options: SyncOptions, size: int, order: str, ops: list[tuple[int, str, int]]
) -> None:
    fake = FakePostHog(project_ids=[1], subscriptions=80, seed=size, subscription_order=order)
    churn = Churn(fake, ops)
    with tempfile.TemporaryDirectory() as folder:
        run_options = replace(options, project_ids=[1], resources=["subscriptions"], output=f"{folder}/out.duckdb",
                              pipelines_dir=f"{folder}/pipelines", page_sizes={"subscriptions": size})
        result = sync(run_options, transport=fake.transport())
        run = result.report.runs[(1, "subscriptions")]
        landed = query(run_options, "SELECT id, count(*) FROM posthog.subscriptions GROUP BY id")
        stored = query(run_options, "SELECT requests, pages, unproven FROM posthog._sync_report")
    assert all(n == 1 for _, n in landed)
    missing = churn.throughout - {i for i, _ in landed}
    assert not missing or (run.unproven > 0 and result.warnings())
    assert stored == [(run.requests, run.pages, run.unproven)] and run.requests == len(fake.requests)


def test_parquet_drops_definitions_deleted_upstream(fake: FakePostHog, options: SyncOptions) -> None:
    import duckdb

    options.destination, options.resources = "parquet", ["property_definitions"]
    options.output = str(options.pipelines_dir) + "_parquet"
    sync(options)
    removed = next(r["name"] for r in fake.truth(1, "property_definitions") if r["type"] == "event")
    fake.remove_property_definition(1, "event", removed)
    sync(options)
    glob = f"{options.output}/posthog/property_definitions/*.parquet"
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT project_id, listing, id, name FROM read_parquet('{glob}')").fetchall()
    assert len(rows) == len({r[:3] for r in rows})
    truth = {(p, r["id"]) for p in PROJECTS for r in fake.truth(p, "property_definitions")}
    assert {(r[0], r[2]) for r in rows} == truth
    assert removed not in {r[3] for r in rows if r[0] == 1 and r[1] == "event"}


@pytest.mark.parametrize("destination", ["duckdb", "parquet"])
def test_definitions_stored_before_the_listing_key_do_not_stay_beside_their_new_copies(
    fake: FakePostHog, options: SyncOptions, destination: str
) -> None:
    import dlt
    import duckdb
    import pyarrow as pa

    options.resources, options.destination = ["property_definitions"], destination
    if destination == "parquet":
        options.output = str(options.pipelines_dir) + "_parquet"
    # the table as the release before `listing` left it: one row per (project, type, index, id), no listing
    old = [{k: v for k, v in {**r, "project_id": p}.items() if k in ("project_id", "id", "type", "name")}
           for p in PROJECTS for r in fake.truth(p, "property_definitions")]
    target = _destination(options)
    pipeline = dlt.pipeline(options.pipeline_name, destination=target, dataset_name=options.dataset,
                            pipelines_dir=options.pipelines_dir)
    # loaded as Arrow, as the release did (no _dlt_load_id/_dlt_id columns)
    pipeline.run(dlt.resource(pa.Table.from_pylist(old), name="property_definitions", write_disposition="append"),
                 loader_file_format="parquet")  # as the runner loads DuckDB and Parquet
    sync(options)
    if destination == "duckdb":
        rows = query(options, "SELECT project_id, listing, id FROM posthog.property_definitions")
    else:
        glob = f"{options.output}/posthog/property_definitions/*.parquet"
        with duckdb.connect() as con:
            rows = con.execute(f"SELECT project_id, listing, id FROM read_parquet('{glob}')").fetchall()
    assert all(listing is not None for _, listing, _ in rows)
    assert len(rows) == len(set(rows)) == len(old)
