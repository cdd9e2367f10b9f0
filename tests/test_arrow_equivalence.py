"""The Arrow path lands exactly what dlt's generic dict path lands, row for row and column for column.

Our sync builds Arrow tables against the declared columns (sources/posthog/arrow.py) and skips dlt's
row-by-row normalizer. Here the same recordings also go through dlt as plain dicts with the same column
hints, into another dataset of the same DuckDB file, and both tables are compared value by value.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from fake_posthog import FakePostHog
from pipelines.runner import SyncOptions
from sources.posthog import schema_contract
from sources.posthog.arrow import Drift, dlt_columns, to_arrow
from sources.posthog.endpoints import RECORDINGS

from .conftest import NOW, PROJECTS, sync

COLUMNS = {"project_id": "bigint", **RECORDINGS.columns}
JSON_COLUMNS = [i for i, t in enumerate(COLUMNS.values()) if t == "json"]


@pytest.fixture
def fake() -> FakePostHog:
    """Overrides conftest's: a few thousand recordings (1,500 per project)."""
    return FakePostHog(project_ids=PROJECTS, now=NOW, seed=11, recordings=1500, recording_step_s=1200)


def _hints() -> dict[str, Any]:
    return dict(
        name="session_recordings",
        write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        primary_key=list(RECORDINGS.key),
        columns=dlt_columns(COLUMNS, RECORDINGS.key),
        schema_contract=schema_contract(False),
    )


def load_dicts(database: Path, pipelines: Path, dataset: str, rows: list[dict[str, Any]]) -> None:
    """dlt's generic path: plain dicts, the same column hints, dlt's own normalizer and file format."""
    pipeline = dlt.pipeline(f"eq_{dataset}", destination=dlt.destinations.duckdb(str(database)),
                            dataset_name=dataset, pipelines_dir=str(pipelines))
    pipeline.run(dlt.resource(rows, max_table_nesting=0, **_hints()))


def load_arrow(database: Path, pipelines: Path, dataset: str, rows: list[dict[str, Any]]) -> None:
    """Our path without the HTTP part: pages of Arrow tables from `to_arrow`, loaded from Parquet."""
    pages = [to_arrow("session_recordings", rows[i : i + 7], COLUMNS, drift=Drift()) for i in range(0, len(rows), 7)]
    pipeline = dlt.pipeline(f"eq_{dataset}", destination=dlt.destinations.duckdb(str(database)),
                            dataset_name=dataset, pipelines_dir=str(pipelines))
    pipeline.run(dlt.resource(pages, **_hints()), loader_file_format="parquet")


def landed(database: Path, dataset: str) -> list[tuple[Any, ...]]:
    """Every declared column of every row, ordered by key; JSON values parsed (text layout may differ)."""
    names = ", ".join(f'"{name}"' for name in COLUMNS)
    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.execute(f"SELECT {names} FROM {dataset}.session_recordings ORDER BY project_id, id").fetchall()
    return [tuple(json.loads(v) if i in JSON_COLUMNS and v is not None else v for i, v in enumerate(row))
            for row in rows]


def differences(left: list[tuple[Any, ...]], right: list[tuple[Any, ...]]) -> list[str]:
    """Human-readable differences between two landed tables (empty when they are equal)."""
    found = [f"{len(left)} rows against {len(right)}"] if len(left) != len(right) else []
    for a, b in zip(left, right, strict=False):
        for name, x, y in zip(COLUMNS, a, b, strict=True):
            if x != y or type(x) is not type(y):
                found.append(f"{a[1]}.{name}: {x!r} != {y!r}")
    return found


def test_synced_recordings_equal_the_dict_path_row_for_row(
    fake: FakePostHog, options: SyncOptions, tmp_path: Path
) -> None:
    sync(dataclasses.replace(options, resources=["session_recordings"], page_sizes={"session_recordings": 700}))
    placeholders = dict.fromkeys(RECORDINGS.list_placeholders)  # stored null (§7.1)
    rows = [{**row, "project_id": p, **placeholders} for p in PROJECTS for row in fake.truth(p, "session_recordings")]
    load_dicts(Path(options.output), tmp_path / "eq_pipelines", "via_dicts", rows)

    ours, generic = landed(Path(options.output), "posthog"), landed(Path(options.output), "via_dicts")
    assert len(ours) == len(rows) == 3000
    assert differences(ours, generic) == []
    # every column carries values somewhere, so no column is compared only as nulls
    # (`storage` is an older servers' field; the snapshot placeholders are stored null, §7.1; no
    # recording was deleted, so none carries a deletion mark)
    unfilled = {"storage", *RECORDINGS.list_placeholders, RECORDINGS.deleted_mark}
    assert all(any(row[i] is not None for row in ours) for i, name in enumerate(COLUMNS) if name not in unfilled)
    # the comparison does see a single changed value
    changed = [*generic[:17], (*generic[17][:5], (generic[17][5] or 0) + 1, *generic[17][6:]), *generic[18:]]
    assert differences(ours, changed) == [f"{ours[17][1]}.{list(COLUMNS)[5]}: {ours[17][5]!r} != {changed[17][5]!r}"]


def _edge_rows() -> list[dict[str, Any]]:
    base = {"project_id": 3, "start_time": "2026-01-01T00:00:00Z"}
    return [
        {**base, "id": "only-key"},  # every other column missing
        {**base, "id": "nulls", **dict.fromkeys(RECORDINGS.columns.keys() - {"id"})},
        {**base, "id": "text", "distinct_id": "ünïcødé ✓ \"quoted\" \\ back", "start_url": "", "storage": "object"},
        {**base, "id": "numbers", "recording_duration": 12, "active_seconds": 0.1 + 0.2, "inactive_seconds": -0.0,
         "click_count": 2**53 + 1, "keypress_count": -(2**63), "console_log_count": 0, "activity_score": 1e-300},
        {**base, "id": "bools", "viewed": False, "ongoing": True, "has_summary": False, "matches_filters": True},
        {**base, "id": "times", "start_time": "2026-03-01T23:59:59.999999Z", "end_time": "2026-03-02T00:00:00+02:00",
         "expiry_time": "2027-03-01T00:00:00.5Z"},
        {**base, "id": "json", "viewers": [], "person": {"nested": {"list": [1, 2.5, None, "x"]}, "ü": True},
         "summary_outcome": {}, "external_references": [{"a": [[]]}]},
    ]


def test_edge_values_land_the_same_on_both_paths(tmp_path: Path) -> None:
    database = tmp_path / "edges.duckdb"
    load_arrow(database, tmp_path / "pipelines", "via_arrow", _edge_rows())
    load_dicts(database, tmp_path / "pipelines", "via_dicts", _edge_rows())
    ours, generic = landed(database, "via_arrow"), landed(database, "via_dicts")
    assert len(ours) == 7
    assert differences(ours, generic) == []
    times = {row[1]: row[list(COLUMNS).index("end_time")] for row in ours}
    assert times["times"] == datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
