"""`sync.batched`: consecutive Arrow pages of one table become one dlt item, nothing lost or reordered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dlt
import pyarrow as pa
import pytest
from dlt.extract.items import DataItemWithMeta
from hypothesis import given, settings
from hypothesis import strategies as st

from sources.posthog.sync import batched

# (table name, rows, wrapped in hints?); a plain dict stands for an item that is not an Arrow page
items_strategy = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 7), st.booleans()),
        st.just({"not": "a table"}),
    ),
    max_size=30,
)


def build(specs: list[Any]) -> list[Any]:
    """Items with consecutive ids over all tables, so order and completeness can be checked."""
    out, counter = [], 0
    for spec in specs:
        if isinstance(spec, dict):
            out.append(spec)
            continue
        name, rows, hinted = spec
        table = pa.table({"id": list(range(counter, counter + rows))})
        counter += rows
        out.append(dlt.mark.with_hints(table, dlt.mark.make_hints(table_name=name), create_table_variant=True)
                   if hinted else table)
    return out


def flat(items: list[Any]) -> list[tuple[str | None, Any]]:
    """Per row (or non-table item), the table it went to and its id."""
    rows: list[tuple[str | None, Any]] = []
    for item in items:
        if isinstance(item, DataItemWithMeta):
            rows += [(item.meta.hints["table_name"], i) for i in item.data.column("id").to_pylist()]
        elif isinstance(item, pa.Table):
            rows += [(None, i) for i in item.column("id").to_pylist()]
        else:
            rows.append((None, repr(item)))
    return rows


@settings(max_examples=200, deadline=None)
@given(items_strategy, st.integers(1, 12))
def test_batched_keeps_every_row_in_order_and_joins_only_alike_pages(specs: list[Any], limit: int) -> None:
    items = build(specs)
    out = list(batched(iter(items), rows=limit))
    assert flat(out) == flat(items)
    hinted = [i for i in items if isinstance(i, DataItemWithMeta)]
    joined = [i for i in out if isinstance(i, DataItemWithMeta)]
    assert len(joined) <= len(hinted)
    for item in joined:
        source = [i for i in hinted if i.data.column("id")[0] == item.data.column("id")[0]]
        # a batch is bigger than the limit only when one page alone is
        assert item.data.num_rows <= max(limit, source[0].data.num_rows)
    # two neighbouring hinted pages of one table that fit together are never left apart
    for left, right in zip(joined, joined[1:], strict=False):
        adjacent = out.index(right) == out.index(left) + 1
        same = left.meta.hints == right.meta.hints
        if adjacent and same:
            assert left.data.num_rows + right.data.num_rows > limit


def test_batched_hands_on_what_was_read_before_an_error() -> None:
    pages = build([("a", 3, True), ("a", 2, True)])

    def failing() -> Iterator[Any]:
        yield from pages
        raise RuntimeError("PostHog went away")

    out: list[Any] = []
    with pytest.raises(RuntimeError, match="went away"):
        for item in batched(failing(), rows=100):
            out.append(item)
    assert flat(out) == flat(pages)
    assert len(out) == 1  # joined, then the error
