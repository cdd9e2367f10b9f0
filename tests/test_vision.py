"""Replay Vision (shared/posthog-api.md §7.6): scanners and their observations, against the fake."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog
from fake_posthog.base import FakeRequest
from pipelines.cli import build_parser, sync_options
from pipelines.runner import SyncOptions
from sources.posthog.client import PostHogClient
from sources.posthog.endpoints import VISION_OBSERVATIONS
from sources.posthog.report import SyncReport
from sources.posthog.sync import Context, parse_time, read_watermark

from .conftest import PROJECTS, query, sync

VISION = ["vision_scanners", "vision_observations"]
PAGES = {"vision_scanners": 3, "vision_observations": 15}
CHILDREN = {"tags": "tags", "tags_freeform": "tags_freeform", "friction_points": "friction_points",
            "keywords": "keywords"}
COLUMNS = ("project_id, scanner_id, session_id, id, status, created_at, completed_at, scanner_type, "
           "result_verdict, result_score, result_label, result_title, result_confidence, signals_count, "
           "label_is_correct")


@pytest.fixture
def vision(fake: FakePostHog, options: SyncOptions) -> SyncOptions:
    options.resources = list(VISION)
    options.page_sizes = dict(PAGES)
    return options


def _output(row: dict[str, Any]) -> dict[str, Any]:
    return (row["scanner_result"] or {}).get("model_output") or {}


def _when(value: str | None) -> Any:
    return None if value is None else parse_time(value)


def _number(value: Any) -> Any:
    return None if value is None else float(value)


def truth(fake: FakePostHog) -> set[tuple[Any, ...]]:
    """The observations PostHog shows now, with the typed columns worked out from their JSON."""
    return {
        (p, o["scanner_id"], o["session_id"], o["id"], o["status"], _when(o["created_at"]),
         _when(o["completed_at"]), (o["scanner_snapshot"] or {}).get("scanner_type"), _output(o).get("verdict"),
         _number(_output(o).get("score")), _output(o).get("label"), _output(o).get("title"),
         _number(_output(o).get("confidence")), (o["scanner_result"] or {}).get("signals_count"),
         (o["label"] or {}).get("is_correct"))
        for p in PROJECTS for o in fake.truth(p, "vision_observations")
    }


def landed(options: SyncOptions, table: str = "vision_observations") -> set[tuple[Any, ...]]:
    rows = query(options, f"SELECT {COLUMNS} FROM posthog.{table}")
    out = {(*r[:9], _number(r[9]), *r[10:12], _number(r[12]), *r[13:]) for r in rows}
    assert len(out) == len(rows)
    return out


def child_counts(options: SyncOptions, child: str) -> dict[tuple[int, str], int]:
    rows = query(options, f"SELECT project_id, scanner_id, count(*) FROM posthog.vision_observations__{child} "
                          "GROUP BY ALL")
    return {(p, s): n for p, s, n in rows}


def truth_child_counts(fake: FakePostHog, field: str) -> dict[tuple[int, str], int]:
    counts: dict[tuple[int, str], int] = {}
    for p in PROJECTS:
        for o in fake.truth(p, "vision_observations"):
            n = len(_output(o).get(field) or [])
            if n:
                counts[(p, o["scanner_id"])] = counts.get((p, o["scanner_id"]), 0) + n
    return counts


def observation_lists(fake: FakePostHog) -> list[FakeRequest]:
    return [r for r in fake.requests if r.path.rstrip("/").endswith("/observations")]


def test_first_sync_pages_every_scanner_to_the_end_and_lands_what_posthog_shows(
    fake: FakePostHog, vision: SyncOptions
) -> None:
    sync(vision, transport=fake.transport())
    scanners = query(vision, "SELECT project_id, id, name, scanner_type, credits_this_month, "
                             "json_extract_string(created_by, '$.email') FROM posthog.vision_scanners")
    assert set(scanners) == {(p, s["id"], s["name"], s["scanner_type"], s["credits_this_month"],
                              s["created_by"]["email"]) for p in PROJECTS for s in fake.truth(p, "vision_scanners")}
    assert {t for *_, t, _, _ in scanners} == {"monitor", "classifier", "scorer", "summarizer"}
    assert landed(vision) == truth(fake)
    for child in CHILDREN:
        expected = truth_child_counts(fake, child)
        assert expected and child_counts(vision, child) == expected, child
    # typed columns hold each scanner type's own result, and only that
    per_type = dict((t, rest) for t, *rest in query(
        vision, "SELECT scanner_type, count(result_verdict), count(result_score), count(result_title), "
                "count(result_reasoning) FROM posthog.vision_observations WHERE status = 'succeeded' GROUP BY 1"))
    assert per_type["monitor"][0] > 0 and per_type["monitor"][1:3] == [0, 0]
    assert per_type["scorer"][1] > 0 and per_type["scorer"][0] == per_type["scorer"][2] == 0
    assert per_type["summarizer"][2] > 0 and per_type["summarizer"][3] == 0
    assert per_type["classifier"][:3] == [0, 0, 0] and per_type["classifier"][3] > 0
    # every scanner's observations were paged to the end: several pages, none twice
    for p in PROJECTS:
        for scanner in fake.truth(p, "vision_scanners"):
            n = sum(o["scanner_id"] == scanner["id"] for o in fake.truth(p, "vision_observations"))
            offsets = [int(r.params.get("offset", 0)) for r in observation_lists(fake) if scanner["id"] in r.path]
            assert sorted(offsets) == list(range(0, n, PAGES["vision_observations"])), scanner["name"]
            assert n > 2 * PAGES["vision_observations"]


def test_a_second_sync_reads_the_newest_pages_and_rereads_unfinished_observations(
    fake: FakePostHog, vision: SyncOptions
) -> None:
    vision.lookback_days = 0  # only the re-reads can bring unfinished observations up to date
    new = fake.add_scanner(1, "classifier", name="Fresh classifier")  # sweeps the last day from now on
    fake.advance(20 * 60)
    sync(vision, transport=fake.transport())
    unfinished = query(vision, "SELECT scanner_id, session_id FROM posthog.vision_observations "
                               "WHERE status IN ('pending', 'running')")
    assert len({s for s, _ in unfinished}) >= 1 and any(s == new for s, _ in unfinished)
    first = len(observation_lists(fake))
    fake.advance(3600)
    fake.requests.clear()
    sync(vision, transport=fake.transport())
    # all but `label`: a user's feedback on a final observation has no timestamp, only the lookback finds it
    assert {r[:-1] for r in landed(vision)} == {r[:-1] for r in truth(fake)}
    lists = observation_lists(fake)
    rereads = [r for r in lists if "session_id" in r.params]
    reread = {(r.path.split("/")[6], s) for r in rereads for s in r.params["session_id"].split(",")}
    newest_first = [r for r in lists if "session_id" not in r.params]
    # the unfinished ones not met again on the newest pages were asked for by session id, nothing else
    assert reread and reread <= set(unfinished)
    assert not any(r.params.get("status") for r in lists)
    # not everything again: per scanner, the newest pages only
    assert len(newest_first) < first / 2
    scanners = {r.path for r in newest_first}
    assert len(scanners) == sum(len(fake.truth(p, "vision_scanners")) for p in PROJECTS)


def test_a_retry_replaces_the_failed_observation(fake: FakePostHog, vision: SyncOptions) -> None:
    sync(vision, transport=fake.transport())
    failed = next(o for o in fake.truth(1, "vision_observations")
                  if o["status"] == "failed" and (o["scanner_snapshot"] or {}).get("scanner_type") == "classifier")
    fake.retry_observation(1, failed["scanner_id"], failed["session_id"])
    fake.advance(2 * 3600)
    sync(vision, transport=fake.transport())
    rows = query(vision, "SELECT id, status, created_at FROM posthog.vision_observations "
                         f"WHERE project_id = 1 AND session_id = '{failed['session_id']}' "
                         f"AND scanner_id = '{failed['scanner_id']}'")
    now = next(o for o in fake.truth(1, "vision_observations")
               if (o["scanner_id"], o["session_id"]) == (failed["scanner_id"], failed["session_id"]))
    assert now["id"] != failed["id"] and rows == [(now["id"], now["status"], parse_time(now["created_at"]))]
    assert landed(vision) == truth(fake)
    for child in CHILDREN:  # child rows hang on (scanner_id, session_id), which a retry keeps
        orphans = query(vision, f"SELECT count(*) FROM posthog.vision_observations__{child} AS c WHERE NOT EXISTS "
                                "(SELECT 1 FROM posthog.vision_observations AS o WHERE o.project_id = c.project_id "
                                "AND o.scanner_id = c.scanner_id AND o.session_id = c.session_id "
                                "AND o.status = 'succeeded')")
        assert orphans == [(0,)], child
        assert child_counts(vision, child) == truth_child_counts(fake, child), child


def test_a_scanner_deleted_in_posthog_leaves_the_tables_and_views(fake: FakePostHog, vision: SyncOptions) -> None:
    vision.resources = [*VISION, "session_recordings"]
    sync(vision, transport=fake.transport())
    gone = next(s["id"] for s in fake.truth(1, "vision_scanners") if s["scanner_type"] == "classifier")
    per_day = query(vision, f"SELECT sum(sessions_observed) FROM posthog.v_vision_per_day WHERE scanner_id = '{gone}'")
    assert per_day[0][0] > 0
    fake.delete_scanner(1, gone)
    fake.requests.clear()
    sync(vision, transport=fake.transport())
    assert not any(gone in r.path for r in fake.requests)  # its observations are not asked for any more
    assert query(vision, f"SELECT count(*) FROM posthog.vision_scanners WHERE id = '{gone}'") == [(0,)]
    assert landed(vision, "v_vision_observations") == truth(fake)
    for view in ("v_vision_per_day", "v_vision_tags_per_day"):
        assert query(vision, f"SELECT count(*) FROM posthog.{view} WHERE scanner_id = '{gone}'") == [(0,)]
    # the table itself keeps them (documented): the views are the current picture
    assert query(vision, f"SELECT count(*) > 0 FROM posthog.vision_observations WHERE scanner_id = '{gone}'") \
        == [(True,)]


def test_the_per_day_view_counts_what_the_observations_hold(fake: FakePostHog, vision: SyncOptions) -> None:
    vision.resources = [*VISION, "session_recordings"]
    sync(vision, transport=fake.transport())
    starts = {(p, r["id"]): parse_time(r["start_time"]).date() for p in PROJECTS
              for r in fake.truth(p, "session_recordings")}
    expected: dict[tuple[Any, ...], list[Any]] = {}
    for p in PROJECTS:
        for o in fake.truth(p, "vision_observations"):
            key = (p, starts.get((p, o["session_id"])), o["scanner_id"])
            row = expected.setdefault(key, [0, 0, 0, 0, []])
            out = _output(o)
            row[0] += 1
            row[1] += out.get("verdict") == "yes"
            row[2] += out.get("verdict") == "inconclusive"
            row[3] += len(out.get("tags") or [])
            if out.get("score") is not None:
                row[4].append(out["score"])
    got = query(vision, "SELECT project_id, day, scanner_id, sessions_observed, verdict_yes, verdict_inconclusive, "
                        "tags, mean_score FROM posthog.v_vision_per_day")
    assert {(p, d, s): [n, y, i, t, None if m is None else round(m, 6)] for p, d, s, n, y, i, t, m in got} == {
        k: [*v[:4], round(sum(v[4]) / len(v[4]), 6) if v[4] else None] for k, v in expected.items()}
    tags = query(vision, "SELECT sum(sessions) FILTER (WHERE NOT freeform), sum(sessions) FILTER (WHERE freeform) "
                         "FROM posthog.v_vision_tags_per_day")
    assert tags == [(sum(truth_child_counts(fake, "tags").values()),
                     sum(truth_child_counts(fake, "tags_freeform").values()))]


def test_replay_vision_off_is_skipped_with_a_reason(fake: FakePostHog, vision: SyncOptions) -> None:
    fake.vision_enabled = False  # the replay-vision flag off, or a server without the product: 404 (§7.6)
    result = sync(vision, transport=fake.transport())
    for p in PROJECTS:
        for resource in VISION:
            run = result.report.runs[(p, resource)]
            assert run.status == "skipped" and "404" in (run.reason or ""), (resource, run)
    reasons = query(vision, "SELECT DISTINCT status, reason FROM posthog._sync_report")
    assert len(reasons) == 1 and reasons[0][0] == "skipped" and "not on this PostHog version" in reasons[0][1]


def test_a_key_without_the_recordings_scope_is_told_which_scope_it_lacks(
    fake: FakePostHog, vision: SyncOptions
) -> None:
    fake.disable(1, "vision_observations", 403)  # observations also need session_recording:read (§7.6)
    result = sync(vision, transport=fake.transport())
    run = result.report.runs[(1, "vision_observations")]
    assert run.status == "skipped" and "session_recording:read" in (run.reason or "")
    assert result.report.runs[(1, "vision_scanners")].status == "ok"
    assert query(vision, "SELECT DISTINCT project_id FROM posthog.vision_observations") == [(2,)]


def test_the_fake_pages_filters_and_orders_observations_as_posthog_does(fake: FakePostHog) -> None:
    api = httpx.Client(base_url="http://fake.test", headers={"Authorization": f"Bearer {fake.api_key}"},
                       transport=fake.transport())
    scanner = fake.scanner_ids(1)[0]
    path = f"/api/projects/1/vision/scanners/{scanner}/observations/"
    rows, url = [], f"{path}?limit=7"
    while url:
        body = api.get(url).json()
        rows += body["results"]
        url = body["next"]
    assert body["count"] == len(rows) == len({r["id"] for r in rows}) > 7
    created = [parse_time(r["created_at"]) for r in rows]
    assert created == sorted(created, reverse=True)
    assert all(set(r) == set(VISION_OBSERVATIONS.columns) - set(VISION_OBSERVATIONS.derived) for r in rows)
    for r in rows:  # completed_at exactly when final, a result only once succeeded
        assert (r["completed_at"] is not None) == (r["status"] in ("succeeded", "failed", "ineligible"))
        assert (r["scanner_result"] is not None) == (r["status"] == "succeeded")
    some = [r["session_id"] for r in rows[:3]]
    picked = api.get(path, params={"session_id": ",".join(some)}).json()["results"]
    assert sorted(r["session_id"] for r in picked) == sorted(some)
    final = api.get(path, params={"status": "succeeded,failed"}).json()
    assert final["count"] == sum(r["status"] in ("succeeded", "failed") for r in rows)
    scores = api.get(path, params={"order_by": "-completed_at", "limit": 500}).json()["results"]
    done = [parse_time(r["completed_at"]) for r in scores if r["completed_at"]]
    assert done == sorted(done, reverse=True) and all(r["completed_at"] is None for r in scores[len(done):])
    fake.delete_scanner(1, scanner)  # cascades
    assert api.get(path).status_code == 404
    assert not any(o["scanner_id"] == scanner for o in fake.truth(1, "vision_observations"))


def test_the_resources_flag_takes_both_tables_and_the_default_is_every_resource() -> None:
    parser = build_parser()
    chosen = parser.parse_args(["sync", "--project-id", "1", "--resources", "vision_observations,vision_scanners"])
    assert sync_options(chosen).resources == ["vision_observations", "vision_scanners"]
    assert set(VISION) <= set(sync_options(parser.parse_args(["sync", "--project-id", "1"])).resources)


# -- the reader alone, in process, while PostHog changes under it ------------------------------------

def _read(fake: FakePostHog, state: dict[str, Any], sizes: tuple[int, int], lookback_h: int) -> dict[Any, Any]:
    client = PostHogClient("http://fake.test", fake.api_key, transport=fake.transport(), backoff_s=0, max_attempts=2)
    ctx = Context(client=client, report=SyncReport(), lookback=timedelta(hours=lookback_h),
                  initial_date_from="2020-01-01", page_sizes={"vision_scanners": sizes[0],
                                                              "vision_observations": sizes[1]})
    rows: dict[Any, Any] = {}
    for item in read_watermark(ctx.report.job(VISION_OBSERVATIONS, 1, state), ctx):
        if item.meta.hints["table_name"] == "vision_observations":
            for row in item.data.select(["scanner_id", "session_id", "id", "status"]).to_pylist():
                rows[(row["scanner_id"], row["session_id"])] = (row["id"], row["status"])
    return rows


OPS = st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["advance", "retry", "add", "delete"]),
                         st.integers(0, 10_000)), max_size=12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.tuples(st.integers(1, 5), st.integers(3, 40)), lookback_h=st.sampled_from([0, 24]), ops=OPS,
       seed=st.integers(0, 50))
def test_observations_live_throughout_a_changing_sync_land_and_the_next_sync_catches_up(
    sizes: tuple[int, int], lookback_h: int, ops: list[tuple[int, str, int]], seed: int
) -> None:
    fake = FakePostHog(project_ids=[1], recordings=40, recording_step_s=3000, desktop_recordings=0, seed=seed)
    before = {(o["scanner_id"], o["session_id"]): o["id"] for o in fake.truth(1, "vision_observations")}
    pending = sorted(ops)

    def change(request: FakeRequest) -> None:
        while pending and pending[0][0] <= len(fake.requests):
            _, kind, pick = pending.pop(0)
            scanners = fake.scanner_ids(1)
            if kind == "advance":
                fake.advance(pick % 7200)
            elif kind == "add":
                fake.add_scanner(1, ("monitor", "classifier", "scorer", "summarizer")[pick % 4])
            elif kind == "delete" and scanners:
                fake.delete_scanner(1, scanners[pick % len(scanners)])
            elif kind == "retry":
                failed = [o for o in fake.truth(1, "vision_observations") if o["status"] == "failed"]
                if failed:
                    o = failed[pick % len(failed)]
                    fake.retry_observation(1, o["scanner_id"], o["session_id"])

    fake.hooks.append(change)
    state: dict[str, Any] = {}
    first = _read(fake, state, sizes, lookback_h)
    fake.hooks.clear()
    after = {(o["scanner_id"], o["session_id"]): o["id"] for o in fake.truth(1, "vision_observations")}
    throughout = {k for k, v in before.items() if after.get(k) == v}
    assert {k for k in throughout if first.get(k, (None,))[0] != after[k]} == set()
    # the next sync, with nothing changing meanwhile, brings the table to what PostHog shows
    second = _read(fake, state, sizes, lookback_h)
    merged = {**first, **second}
    shown = {(o["scanner_id"], o["session_id"]): (o["id"], o["status"]) for o in fake.truth(1, "vision_observations")}
    assert {k: v for k, v in merged.items() if k[0] in set(fake.scanner_ids(1))} == shown
    assert set(state["parents"]) == set(fake.scanner_ids(1))
