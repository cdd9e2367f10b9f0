"""Keyset pages are asked for from the cursor at the end of the undecoded body (`paging.pages` with a
`decode`), so the server works while the client decodes; the decoded body's own cursor always decides."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sources.posthog.client import PostHogClient

from .test_client import client_for


def _body(rows: list[Any], cursor: str | None, *, results_last: bool = False) -> bytes:
    keys = {"has_next": cursor is not None, "version": 4, **({"next_cursor": cursor} if cursor else {})}
    return orjson.dumps({**keys, "results": rows} if results_last else {"results": rows, **keys})


def test_the_next_page_is_asked_for_while_this_one_decodes() -> None:
    pages = [[{"id": f"{p}-{i}"} for i in range(3)] for p in range(4)]
    asked = [threading.Event() for _ in pages]

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("after", 0))
        asked[page].set()
        cursor = str(page + 1) if page + 1 < len(pages) else None
        return httpx.Response(200, content=_body(pages[page], cursor))

    overlapped: list[bool] = []

    def decode(content: bytes) -> Any:
        body = orjson.loads(content)
        page = int(body["results"][0]["id"].split("-")[0])
        if page + 1 < len(pages):  # the next page's request arrives before this page is decoded
            overlapped.append(asked[page + 1].wait(timeout=3))
        return body

    seen: list[httpx.Request] = []
    got = [r["id"] for rows, _ in client_for(handler, seen).pages("/x/", {"limit": 3}, "has_next", decode=decode)
           for r in rows]
    assert got == [r["id"] for page in pages for r in page]
    assert overlapped == [True] * (len(pages) - 1)
    assert [r.url.params.get("after") for r in seen] == [None, "1", "2", "3"]


_row = st.fixed_dictionaries({"n": st.integers(0, 9)}, optional={
    # a row whose own values end the body with words that look like the page's cursor
    "nested": st.fixed_dictionaries({"has_next": st.just(True), "next_cursor": st.sampled_from(["decoy", "2"])}),
})


@settings(max_examples=60, deadline=None)
@given(pages=st.lists(st.lists(_row, min_size=1, max_size=3), min_size=1, max_size=5),
       results_last=st.lists(st.booleans(), min_size=5, max_size=5),
       broken=st.sets(st.integers(0, 4)), declined=st.sets(st.integers(0, 4)))
def test_guessed_cursors_never_change_what_is_read(
    pages: list[list[dict[str, Any]]], results_last: list[bool], broken: set[int], declined: set[int]
) -> None:
    lock = threading.Lock()
    answered: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after", "0")
        if after == "decoy":
            return httpx.Response(200, content=_body([{"decoy": True}], None))
        page = int(after)
        with lock:
            answered[after] = answered.get(after, 0) + 1
            first = answered[after] == 1
        rows = [{**r, "id": f"{page}-{i}"} for i, r in enumerate(pages[page])]
        content = _body(rows, str(page + 1) if page + 1 < len(pages) else None, results_last=results_last[page])
        # the first answer of a `broken` page is cut short (a dropped connection): the client asks again
        return httpx.Response(200, content=content[:-2] if first and page in broken else content)

    def decode(content: bytes) -> Any:  # as `arrow.decode_page`: None where the JSON path must decide
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            return None
        return None if int(body["results"][0]["id"].split("-")[0]) in declined else body

    seen: list[httpx.Request] = []
    client: PostHogClient = client_for(handler, seen)
    got = [r["id"] for rows, _ in client.pages("/x/", {"limit": 3}, "has_next", decode=decode) for r in rows]
    assert got == [f"{p}-{i}" for p, page in enumerate(pages) for i in range(len(page))]
    # each page asked for once, once more where its first answer broke, and at most one guess per page
    assert all(answered.get(str(p), 0) >= 1 + (p in broken) for p in range(len(pages)))
    assert len(seen) <= 2 * len(pages) + len(broken)
