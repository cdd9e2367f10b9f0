"""Recording playlists and their items: full scans, synthetic rows, deletions, membership, partial collections."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog, FakeRequest
from pipelines.runner import SyncOptions
from sources.posthog.endpoints import PLAYLISTS

from .conftest import NOW, PROJECTS, query, sync
from .test_listings import _listing
from .test_sync import assert_no_duplicates, landed_rows, truth_rows

PLAYLISTS_PATH = "session_recording_playlists"
ITEMS = "session_recording_playlist_items"


@pytest.fixture
def options(options: SyncOptions) -> SyncOptions:
    options.resources = [PLAYLISTS_PATH]
    # several pages per listing; synthetic playlists page their members too
    options.page_sizes = {PLAYLISTS_PATH: 5, ITEMS: 7}
    return options


def _read(options: SyncOptions, table: str, columns: str) -> list[tuple[Any, ...]]:
    if options.destination == "parquet":
        with duckdb.connect() as con:
            glob = Path(options.output) / "posthog" / table / "*.parquet"
            return con.execute(f"SELECT {columns} FROM read_parquet('{glob}')").fetchall()
    return query(options, f"SELECT {columns} FROM posthog.{table}")


def landed_items(options: SyncOptions) -> dict[tuple[int, int], set[str]]:
    """Per (project, playlist id): the session ids landed (no duplicates)."""
    rows = _read(options, ITEMS, "project_id, playlist_id, session_id")
    assert len(rows) == len(set(rows))
    out: dict[tuple[int, int], set[str]] = {}
    for p, playlist, session in rows:
        out.setdefault((p, playlist), set()).add(session)
    return out


def truth_items(fake: FakePostHog) -> dict[tuple[int, int], set[str]]:
    """Per (project, playlist id): every member PostHog holds, returned or not."""
    out: dict[tuple[int, int], set[str]] = {}
    for p in PROJECTS:
        for row in fake.truth(p, ITEMS):
            out.setdefault((p, row["playlist_id"]), set()).add(row["session_id"])
    return out


def flags(options: SyncOptions) -> dict[tuple[int, int], bool | None]:
    return {(p, i): flag for p, i, flag in _read(options, PLAYLISTS_PATH, "project_id, id, items_partial")}


def assert_items_match(fake: FakePostHog, options: SyncOptions) -> None:
    """Every member lands unless its playlist is flagged partial; a flagged one lacks some, never more."""
    landed, truth, flagged = landed_items(options), truth_items(fake), flags(options)
    assert set(landed) <= set(truth)
    for key, members in truth.items():
        got = landed.get(key, set())
        assert got <= members, key
        assert flagged[key] == (got != members), (key, len(got), len(members))


@pytest.mark.parametrize("variant", ["newer", "older"])
@pytest.mark.parametrize("size", [3, 1000])
def test_a_full_scan_lands_every_playlist_and_member(options: SyncOptions, variant: str, size: int) -> None:
    fake = FakePostHog(project_ids=PROJECTS, now=NOW, recordings=150, recording_step_s=3000, playlists=12,
                       playlist_tiebreaker=variant == "newer")
    options.page_sizes = {PLAYLISTS_PATH: size, ITEMS: 7}
    sync(options, fake.transport())

    assert_no_duplicates(options, PLAYLISTS_PATH)
    assert landed_rows(options, PLAYLISTS_PATH) == truth_rows(fake, PLAYLISTS_PATH)
    assert_items_match(fake, options)
    listing = [r for r in fake.requests if r.path.endswith(f"/{PLAYLISTS_PATH}/")]
    # never more than PostHog serves (§7.7), and sorted on a field rows never change
    assert all(int(r.params["limit"]) <= 500 for r in listing)
    assert all(r.params["order"] in ("created_at", "-created_at") for r in listing)
    assert not any("date_from" in r.params for r in listing)
    if size == 3:
        assert len(listing) >= 2 * (12 + 6) // 3


def test_a_limit_above_500_is_clipped_and_the_listing_stays_complete() -> None:
    fake = FakePostHog(project_ids=[1], now=NOW, playlists=520)
    truth = {r["id"] for r in fake.truth(1, PLAYLISTS_PATH)}
    assert len(truth) == 526  # the six synthetic rows are counted and listed too
    # a client that does not know the cap asks for 1000 and gets 500 rows a page
    blind, _ = _listing(fake, replace(PLAYLISTS, max_page_size=None), 1000)
    assert set(blind.rows) == truth and blind.unproven == 0
    assert any(int(r.params["limit"]) > 500 for r in fake.requests)
    # each page goes on from the rows it got, not the rows it asked for: the order probe and two pages
    assert len(fake.requests) == 3
    fake.requests.clear()
    listing, run = _listing(fake, PLAYLISTS, 1000)
    assert set(listing.rows) == truth and listing.unproven == 0
    assert all(int(r.params["limit"]) <= 500 for r in fake.requests) and run.requests == len(fake.requests)


def test_synthetic_playlists_are_flagged_and_never_duplicated(fake: FakePostHog, options: SyncOptions) -> None:
    for _ in range(2):
        sync(options, fake.transport())
        assert_no_duplicates(options, PLAYLISTS_PATH)
        synthetic = query(options, f"SELECT project_id, id, short_id, created_at FROM posthog.{PLAYLISTS_PATH} "
                                   "WHERE is_synthetic")
        assert len(synthetic) == 6 * len(PROJECTS)
        assert all(i < 0 and s.startswith("synthetic-") and c is None for _, i, s, c in synthetic)
        assert landed_rows(options, PLAYLISTS_PATH) == truth_rows(fake, PLAYLISTS_PATH)
        # their members change with the clock (watch history, expiring, ...) and are paged to the end
        assert_items_match(fake, options)
        fake.advance(3 * 3600)


@pytest.mark.parametrize("destination", ["duckdb", "parquet"])
def test_a_deleted_playlist_and_its_items_disappear(fake: FakePostHog, options: SyncOptions, destination: str) -> None:
    if destination == "parquet":
        options.destination, options.output = "parquet", str(options.pipelines_dir) + "_parquet"
    sync(options, fake.transport())
    doomed = next(s for s in fake.playlist_short_ids(1) if fake.playlist_members(1, s))
    doomed_id = next(r["id"] for r in fake.truth(1, PLAYLISTS_PATH) if r["short_id"] == doomed)
    assert landed_items(options)[(1, doomed_id)]
    fake.delete_playlist(1, doomed)
    fake.advance(3600)
    sync(options, fake.transport())

    assert (1, doomed_id) not in flags(options) and (1, doomed_id) not in landed_items(options)
    assert set(flags(options)) == {(p, r["id"]) for p in PROJECTS for r in fake.truth(p, PLAYLISTS_PATH)}
    assert_items_match(fake, options)


@pytest.mark.parametrize("destination", ["duckdb", "parquet"])
def test_members_added_and_removed_between_syncs_show_up(
    fake: FakePostHog, options: SyncOptions, destination: str
) -> None:
    if destination == "parquet":
        options.destination, options.output = "parquet", str(options.pipelines_dir) + "_parquet"
    sync(options, fake.transport())
    grow, shrink, empty = [s for s in fake.playlist_short_ids(1) if fake.playlist_members(1, s)][:3]
    modified = {r["short_id"]: r["last_modified_at"] for r in fake.truth(1, PLAYLISTS_PATH)}
    recordings = [r["id"] for r in fake.truth(1, "session_recordings")]
    added = [r for r in recordings if r not in fake.playlist_members(1, grow)][:3]
    removed = fake.playlist_members(1, shrink)[:1]
    fake.add_members(1, grow, added)
    fake.remove_members(1, shrink, removed)
    fake.remove_members(1, empty, fake.playlist_members(1, empty))
    # membership never moves last_modified_at (§7.7): a date_from sync would miss all of it
    assert {r["short_id"]: r["last_modified_at"] for r in fake.truth(1, PLAYLISTS_PATH)} == modified
    sync(options, fake.transport())

    ids = {r["short_id"]: r["id"] for r in fake.truth(1, PLAYLISTS_PATH)}
    landed = landed_items(options)
    assert set(added) <= landed[(1, ids[grow])]
    assert not set(removed) & landed[(1, ids[shrink])]
    assert (1, ids[empty]) not in landed
    assert_items_match(fake, options)


def test_a_collection_bigger_than_posthog_returns_is_flagged(
    fake: FakePostHog, options: SyncOptions, capsys: pytest.CaptureFixture[str]
) -> None:
    options.quiet = False
    result = sync(options, fake.transport())

    assert_items_match(fake, options)
    flagged = {key for key, flag in flags(options).items() if flag}
    assert flagged  # the default data holds a 90-member collection and one with year-old members
    truth, landed = truth_items(fake), landed_items(options)
    assert all(len(landed.get(key, ())) < len(truth[key]) for key in flagged)
    kinds = {(p, r["id"]): r["type"] for p in PROJECTS for r in fake.truth(p, PLAYLISTS_PATH)}
    assert all(flag is None for key, flag in flags(options).items() if kinds[key] == "filters")
    out = capsys.readouterr().out
    for project in PROJECTS:
        names = [r["short_id"] for r in fake.truth(project, PLAYLISTS_PATH) if (project, r["id"]) in flagged]
        line = next(x for x in out.splitlines() if x.startswith(f"note: {ITEMS} project {project}:"))
        assert f"{len(names)} {PLAYLISTS_PATH} may hold more recordings" in line
        assert all(name in line for name in names)
    # PostHog's answer by design, not a failure: --strict does not fail on it
    assert not any("may hold more" in w for w in result.warnings())
    report = query(options, f"SELECT rows_loaded FROM posthog._sync_report WHERE resource = '{ITEMS}'")
    assert sum(r[0] for r in report) == sum(len(v) for v in landed.values())


def test_every_sync_rereads_every_collection_and_no_saved_filter(fake: FakePostHog, options: SyncOptions) -> None:
    sync(options, fake.transport())
    fake.requests.clear()
    fake.advance(3600)
    sync(options, fake.transport())

    for project in PROJECTS:
        rows = fake.truth(project, PLAYLISTS_PATH)
        base = f"/api/projects/{project}/{PLAYLISTS_PATH}/"
        sent = [r for r in fake.requests if r.path.startswith(base)]
        listing = [r for r in sent if r.path == base]
        assert listing and not any("date_from" in r.params for r in listing)  # deletions need the full scan
        members = [r for r in sent if r.path.endswith("/recordings/")]
        asked = {r.path.removeprefix(base).split("/")[0] for r in members}
        assert asked == {r["short_id"] for r in rows if r["type"] == "collection"}
        for row in rows:
            mine = [r for r in members if r.path == f"{base}{row['short_id']}/recordings/"]
            if row["is_synthetic"]:  # paged by offset to the end
                assert [int(r.params["offset"]) for r in mine] == [7 * k for k in range(len(mine))]
                assert len(mine) == max(1, -(-len(fake.playlist_members(project, row["short_id"])) // 7))
            elif row["type"] == "collection":  # one request: PostHog ignores limit and offset here
                assert len(mine) == 1 and mine[0].params == {}


def test_a_server_refusing_members_still_loads_the_playlists(fake: FakePostHog, options: SyncOptions) -> None:
    fake.inject("/recordings/", 403, times=1000)
    result = sync(options, fake.transport())
    assert landed_rows(options, PLAYLISTS_PATH) == truth_rows(fake, PLAYLISTS_PATH)
    runs = [r for r in result.report.runs.values() if r.resource == ITEMS]
    assert runs and all(r.status == "skipped" for r in runs)
    assert any(ITEMS in w and "skipped" in w for w in result.warnings())


# -- the listing's completeness while playlists are created, edited and deleted ------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 30), size=st.integers(1, 12), tiebreaker=st.booleans(),
       ops=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["add", "delete", "modify"]),
                              st.integers(0, 10_000)), max_size=20))
def test_every_playlist_live_throughout_a_churning_listing_is_read(
    rows: int, size: int, tiebreaker: bool, ops: list[tuple[int, str, int]]
) -> None:
    fake = FakePostHog(project_ids=[1], now=NOW, playlists=rows, seed=rows, playlist_tiebreaker=tiebreaker)
    throughout = set(fake.playlist_short_ids(1, None))
    pending = sorted(ops)

    def churn(request: FakeRequest) -> None:
        while pending and pending[0][0] < len(fake.requests):
            _, kind, pick = pending.pop(0)
            live = fake.playlist_short_ids(1, None)
            if kind == "add" or not live:
                fake.add_playlist(1, "collection" if pick % 2 else "filters")
                continue
            target = live[pick % len(live)]
            if kind == "delete":
                fake.delete_playlist(1, target)
                throughout.discard(target)
            else:
                fake.modify_playlist(1, target)
            fake.advance(60)

    fake.hooks.append(churn)
    listing, run = _listing(fake, PLAYLISTS, size)
    read = {row["short_id"] for row in listing.rows.values()}
    assert throughout <= read and listing.unproven == 0, (throughout - read, listing.why)
    assert sum(1 for row in listing.rows.values() if row["is_synthetic"]) == 6
    assert run.requests == len(fake.requests)


# -- the fake itself answers as §7.7 says --------------------------------------------------------------

def test_the_fake_lists_playlists_as_posthog_does() -> None:
    fake = FakePostHog(project_ids=[1], now=NOW, playlists=600)
    api = httpx.Client(transport=fake.transport(), base_url="http://fake.test",
                       headers={"Authorization": f"Bearer {fake.api_key}"})
    base = f"/api/projects/1/{PLAYLISTS_PATH}/"

    def listing(**params: Any) -> dict[str, Any]:
        return api.get(base, params=params).json()  # type: ignore[no-any-return]

    newest = listing()  # -last_modified_at: the synthetic rows first
    assert newest["count"] == 606 and len(newest["results"]) == 100 and newest["next"]
    assert [r["is_synthetic"] for r in newest["results"][:7]] == [True] * 6 + [False]
    assert len(listing(limit=0)["results"]) == 100 and len(listing(limit=1000)["results"]) == 500
    oldest = listing(order="created_at", offset=600, limit=10)["results"]
    assert [r["id"] for r in oldest] == [-1, -2, -3, -4, -5, -6]  # last under ascending orders
    since = newest["results"][20]["last_modified_at"]  # the 15th newest: strict, and synthetic rows ignore it
    after = listing(date_from=since, limit=500)
    assert after["count"] == 6 + 14 and all(r["last_modified_at"] != since for r in after["results"])
    for excluded in ({"type": "filters"}, {"collection_type": "custom"}, {"pinned": "true"}, {"user": "true"},
                     {"created_by": "1"}):
        assert not any(r["is_synthetic"] for r in listing(limit=500, **excluded)["results"]), excluded
    assert listing(collection_type="synthetic")["count"] == 6
    # a collection ignores limit and offset; a synthetic playlist pages its id list
    big = next(s for s in fake.playlist_short_ids(1) if len(fake.playlist_members(1, s)) == 90)
    answers = [api.get(f"{base}{big}/recordings/", params=p).json() for p in ({}, {"limit": 5, "offset": 60})]
    assert answers[0] == answers[1] and answers[0]["has_next"] and 50 < len(answers[0]["results"]) < 90
    watched = [api.get(f"{base}synthetic-watch-history/recordings/", params={"limit": 10, "offset": o}).json()
               for o in (0, 10)]
    assert all(len(w["results"]) == 10 and w["has_next"] for w in watched)
    assert not {r["id"] for r in watched[0]["results"]} & {r["id"] for r in watched[1]["results"]}
    saved = fake.playlist_short_ids(1, "filters")[0]
    assert api.get(f"{base}{saved}/recordings/").json()["results"] == []
    fake.delete_playlist(1, big)
    assert api.get(f"{base}{big}/recordings/").status_code == 404
    assert big not in {r["short_id"] for r in listing(limit=500, offset=0)["results"]} | {
        r["short_id"] for r in listing(limit=500, offset=500)["results"]}
