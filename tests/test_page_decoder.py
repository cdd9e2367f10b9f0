"""Pages decoded straight into columns (`arrow.decode_page`) equal the dict path, or go the dict path.

For any page, either the fast decoder gives exactly the table `to_arrow` builds from the same page parsed
into dicts (JSON columns compared as parsed values: the fast path keeps the API's own text), or it
declines and the dict path decides (which names a contradicting value). It never loads what the dict path
refuses, and it declines undeclared fields so that drift is still reported.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_posthog import FakePostHog
from pipelines.runner import SyncOptions
from sources.posthog import arrow
from sources.posthog.arrow import ArrowRows, Drift, SchemaViolation, decode_page, to_arrow
from sources.posthog.endpoints import RECORDINGS
from sources.posthog.sync import _end_us

from .conftest import PROJECTS, sync

COLUMNS = dict(RECORDINGS.columns)
FIELDS = ("id", "start_time", "end_time", "ongoing")
READERS_FIELDS = ("id", "start_time")  # what `sync._decoder` asks for: key and cursor

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_times = st.sampled_from(["2026-01-01T00:00:00Z", "2026-03-01T23:59:59.999999Z", "2026-03-02T00:00:00+02:00",
                          "2027-03-01T00:00:00.5Z", "2026-05-05T10:00:00", "not a time", ""])
# mostly the declared JSON type, sometimes another one (which the dict path may refuse)
_by_type = {
    "text": st.text(max_size=12) | st.none(),
    "bigint": st.integers(-(2**63), 2**63 - 1) | st.none(),
    "double": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60) | st.none(),
    "bool": st.booleans() | st.none(),
    "timestamp": _times | st.none(),
    "json": _json_values,
}
_wrong = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4) \
    | st.booleans() | st.lists(st.integers(), max_size=2)


@st.composite
def _rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"id": draw(st.text(min_size=1, max_size=8))}
    for name, ctype in COLUMNS.items():
        if name == "id" or draw(st.integers(0, 9)) == 0:
            continue  # a missing field
        row[name] = draw(_wrong) if draw(st.integers(0, 30)) == 0 else draw(_by_type[ctype])
    if draw(st.integers(0, 40)) == 0:
        row["added_by_posthog"] = draw(_json_values)
    return row


def _dict_path(rows: list[dict[str, Any]]) -> Any:
    try:
        return to_arrow("session_recordings", [{**r, "project_id": 1} for r in rows],
                        {"project_id": "bigint", **COLUMNS}, drift=Drift())
    except SchemaViolation:
        return None


def _parsed(table: Any) -> list[dict[str, Any]]:
    return [{k: json.loads(v) if COLUMNS.get(k) == "json" and v is not None else v for k, v in row.items()}
            for row in table.to_pylist()]


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_rows(), min_size=1, max_size=6), has_next=st.booleans(),
       fields=st.sampled_from([FIELDS, READERS_FIELDS]))
def test_a_decoded_page_is_the_dict_paths_table_or_goes_the_dict_path(rows: list[dict[str, Any]],
                                                                      has_next: bool, fields: tuple[str, ...]) -> None:
    # the standard library writes integers of any size, and spaces after separators
    content = json.dumps({"results": rows, "has_next": has_next, "next_cursor": None}).encode()
    body = decode_page(content, COLUMNS, fields)
    expected = _dict_path(rows)
    undeclared = any(r.keys() - COLUMNS.keys() for r in rows)
    if body is None:
        return  # the dict path decides: the sync then runs `to_arrow` on the same rows
    assert not undeclared, "an undeclared field must go the dict path, which reports it"
    assert expected is not None, "the fast path loaded a page the dict path refuses"
    assert body["has_next"] is has_next
    assert isinstance(body["results"], ArrowRows)
    assert [{k: r.get(k) for k in fields} for r in body["results"]] == [{k: r.get(k) for k in fields} for r in rows]
    table = body["results"].table(1)
    assert table.schema == expected.schema
    assert _parsed(table) == _parsed(expected)


def _kept(sent: Any, loaded: Any, ctype: str) -> bool:
    """Whether a loaded value is the value sent, type included (Python holds 1.0 == 1 == True)."""
    if sent is None or loaded is None:
        return sent is loaded
    if ctype in ("bigint", "double"):
        return type(sent) in (int, float) and loaded == sent
    return type(sent) is type(loaded) and loaded == sent


_NUMBERS = sorted(n for n, t in COLUMNS.items() if t in ("bigint", "double"))
# what Arrow converts into these columns with loss unless refused: fractions, booleans
_near_numbers = st.floats(-1e6, 1e6) | st.integers(-5, 5).map(float) | st.booleans()


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(_rows(), min_size=1, max_size=6), data=st.data())
def test_the_dict_path_loads_every_value_as_sent_or_refuses_the_page(rows: list[dict[str, Any]],
                                                                     data: st.DataObject) -> None:
    for row in rows:
        if data.draw(st.booleans()):
            row[data.draw(st.sampled_from(_NUMBERS))] = data.draw(_near_numbers)
    table = _dict_path(rows)
    if table is None:
        return
    plain = {n: t for n, t in COLUMNS.items() if t in ("text", "bigint", "double", "bool")}
    for sent, loaded in zip(rows, table.to_pylist(), strict=True):
        for name, ctype in plain.items():
            assert _kept(sent.get(name), loaded[name], ctype), (name, sent.get(name), loaded[name])


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(_rows(), min_size=2, max_size=6), data=st.data())
def test_a_subset_of_a_decoded_page_keeps_its_own_rows(rows: list[dict[str, Any]], data: st.DataObject) -> None:
    body = decode_page(json.dumps({"results": rows}).encode(), COLUMNS, FIELDS)
    if body is None:
        return
    light = body["results"]
    kept = data.draw(st.lists(st.sampled_from(range(len(rows))), unique=True))
    subset = light.subset([light[i] for i in kept])
    for row in subset:
        row["project_id"] = 1
    assert [r["id"] for r in subset.table(1).to_pylist()] == [rows[i]["id"] for i in kept]
    assert [r["id"] for r in subset.dicts()] == [rows[i]["id"] for i in kept]
    assert all(r["project_id"] == 1 for r in subset.dicts())
    # where each row's span ends, from the page's columns, is what the readers compute from a whole row
    assert subset.end_us("end_time", "ongoing") == [_end_us(RECORDINGS, rows[i]) for i in kept]
    assert subset.end_us("end_time", None) == [_end_us(dataclasses.replace(RECORDINGS, ongoing=None), rows[i])
                                               for i in kept]


def test_contradictions_and_odd_pages_go_the_dict_path() -> None:
    good = {"id": "a", "start_time": "2026-01-01T00:00:00Z"}
    assert decode_page(orjson.dumps({"results": [good]}), COLUMNS, FIELDS) is not None
    for bad in ({"click_count": "12"}, {"click_count": 2**64}, {"viewed": 1}, {"id": 5},
                {"start_time": 1700000000}, {"start_time": "yesterday"}, {"recording_duration": "1"},
                {"recording_duration": 2**60 + 1}):
        assert decode_page(json.dumps({"results": [{**good, **bad}]}).encode(), COLUMNS, FIELDS) is None, bad
        assert _dict_path([{**good, **bad}]) is None, bad  # and the dict path names it
    # what Arrow's conversion would change (1.5 into 1, true into 1.0) is refused on both paths
    for lossy in ({"click_count": 1.5}, {"recording_duration": True}, {"recording_duration": False}):
        assert decode_page(orjson.dumps({"results": [{**good, **lossy}]}), COLUMNS, FIELDS) is None, lossy
        with pytest.raises(SchemaViolation, match=f"declared .* {next(iter(lossy.values()))!r}"):
            to_arrow("session_recordings", [{**good, **lossy}], COLUMNS, drift=Drift())
    # an integral float is an integer without loss
    assert to_arrow("t", [{"n": 2.0}], {"n": "bigint"}, drift=Drift()).column("n").to_pylist() == [2]
    for odd in (b"[]", b"{}", b'{"results": []}', b'{"results": [1]}', b'{"results": {}}', b"{", b""):
        assert decode_page(odd, COLUMNS, FIELDS) is None, odd


def test_a_new_field_goes_the_dict_path_once_then_is_ignored() -> None:
    content = orjson.dumps({"results": [{"id": "a", "brand_new": {"x": 1}}]})
    assert decode_page(content, COLUMNS, FIELDS) is None
    body = decode_page(content, COLUMNS, FIELDS, ignored={"brand_new"})
    assert body is not None and "brand_new" not in body["results"].table(1).column_names


def test_a_sync_decodes_recordings_pages_straight_into_columns(
    fake: FakePostHog, options: SyncOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        body = decode_page(*args, **kwargs)
        outcomes.append(body is not None)
        return body

    monkeypatch.setattr("sources.posthog.sync.decode_page", spy)
    assert arrow.decode_page is decode_page
    result = sync(dataclasses.replace(options, resources=["session_recordings"], page_sizes={"session_recordings": 50}))
    assert result.ok
    stored = sum(len(fake.truth(p, "session_recordings")) for p in PROJECTS)
    assert len(outcomes) >= stored // 50 and all(outcomes)
