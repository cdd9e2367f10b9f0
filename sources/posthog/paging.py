"""Both paging shapes of PostHog's lists: `has_next` (recordings) and DRF's `next` links.

Paging ends only on the API's own end signal, never on a short page; a `next` pointing back at a page
already read continues by offset instead (shared/posthog-api.md §7).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from .errors import PagingError, QueryTooBig

logger = logging.getLogger("posthog_export")

MIN_PAGE = 100
MAX_PAGE = 50_000  # HogQL caps a SELECT at this many rows (§7.1)
Get = Callable[..., Any]  # (path, params, decode=...) -> the body, decoded by `decode` where it returns one
Page = tuple[list[dict[str, Any]], dict[str, Any]]
Decode = Callable[[bytes], Any]
_TAIL = 1024  # where a keyset page names its successor: after `results` (§7.1)
_MORE = re.compile(rb'"has_next"\s*:\s*true')
_CURSOR = re.compile(rb'"next_cursor"\s*:\s*"([^"\\]+)"')


@dataclass(frozen=True)
class Undecoded:
    """A page's body as it came: `pages` decodes it while the next page is fetched."""

    content: bytes


class QueryLimits:
    """The largest recordings page PostHog answered in time, learned once and shared by every project.

    A page size that was too big is not asked for again in the run, unless the date window had to be
    narrowed too: then the window, not the size, was the trouble, and the size doubles back page by page
    until one is too big again. `size` is kept in the resource state so the next run starts from it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.size: int | None = None
        self.floor = MIN_PAGE
        self._configured = 0
        self._growing = False

    def start(self, configured: int, stored: int | None = None) -> None:
        """Take the configured page size (its floor: a 16th, 10 to 100 rows) and a size a run stored."""
        with self._lock:
            self.floor = min(MIN_PAGE, max(10, configured // 16), configured)
            self._configured = max(self._configured, configured)
            for size in (configured, stored):
                if size:
                    self.size = min(self.size or size, max(int(size), self.floor))

    def cap(self, limit: int) -> int:
        """The page size to ask for: `limit`, unless a bigger one timed out."""
        with self._lock:
            return min(limit, self.size) if self.size else limit

    def shrink(self, tried: int) -> int | None:
        """Half of a page size that was too big, or None at the floor (then narrow the date window)."""
        with self._lock:
            if tried <= self.floor:
                return None
            smaller = max(self.floor, tried // 2)
            self.size = min(self.size or smaller, smaller)
            self._growing = False
            return smaller

    def regrow(self) -> None:
        """The window was narrowed: let the page size double again after each page answered in time."""
        with self._lock:
            self._growing = True

    def answered(self, limit: int) -> None:
        """A page of `limit` rows was answered in time."""
        with self._lock:
            if self._growing and self.size and limit >= self.size:
                self.size = min(self._configured, self.size * 2)


def pages(
    get: Get, path: str, params: Mapping[str, Any], paging: str, limits: QueryLimits | None,
    shrunk: Callable[[], None], decode: Decode | None = None,
) -> Iterator[Page]:
    """Yield (rows, body) for every page of a list read with `get`, ending only on the API's own end signal.

    `has_next` lists (recordings, §7.1) page by the keyset cursor where the server offers one;
    otherwise, listed by `start_time` ascending, each page starts at the last page's last start
    (`date_from`), because offset pages without a tiebreaker shift when rows expire, are deleted
    or tie (§7.1): the caller drops rows it already has. DRF lists follow `next`. With `limits`, a page
    too big for ClickHouse is asked for again at half the size (`QueryTooBig` escapes at the floor;
    `shrunk` is called for each smaller ask). While the caller works on one page, the next is fetched.

    With `decode` (a page's bytes to its body, or None for the JSON path) pages are decoded here, and the
    next keyset page is asked for from the cursor at the end of the undecoded body, so the server works
    while this page decodes; the decoded body's own cursor decides, and a page asked for by another
    cursor is dropped.
    """
    pages_read: set[frozenset[tuple[str, str]]] = {_page_id(params)}
    fetch = get if decode is None else partial(get, decode=Undecoded)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        current, body = _page(fetch, path, dict(params), limits, shrunk)
        while True:
            guess = _cursor_ahead(paging, current, body)
            ahead = pool.submit(_page, fetch, path, guess, limits, shrunk) if guess is not None else None
            if isinstance(body, Undecoded):
                body = _decoded(get, path, current, body, decode)
            rows: list[dict[str, Any]] = body["results"]
            following = _following(path, paging, current, body, pages_read)
            # a page grown to read past a tie group is sent as it is: too big, the caller narrows the window
            grown = following is not None and int(following.get("limit", 0)) > int(current.get("limit", 0))
            upcoming: Future[tuple[dict[str, Any], Any]] | None
            if ahead is not None and following == guess:
                upcoming = ahead
            else:
                if ahead is not None:
                    ahead.cancel()  # asked for by a cursor the decoded body does not name: dropped
                upcoming = (
                    pool.submit(_page, fetch, path, following, None if grown else limits, shrunk)
                    if following is not None else None
                )
            yield rows, body
            if upcoming is None:
                return
            current, body = upcoming.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _page(
    get: Get, path: str, params: dict[str, Any], limits: QueryLimits | None, shrunk: Callable[[], None]
) -> tuple[dict[str, Any], Any]:
    """GET one page (and the params it was read with), halving its size while it is too big."""
    while True:
        if limits is not None and "limit" in params:
            params = {**params, "limit": limits.cap(int(params["limit"]))}
        try:
            body = get(path, params)
        except QueryTooBig as error:
            smaller = limits.shrink(int(params.get("limit", 50))) if limits is not None else None
            if smaller is None:
                raise
            # the same size would time out again (§6): every later page of the run asks for less
            shrunk()
            logger.warning("%s; asking for pages of %d", error, smaller)
            params = {**params, "limit": smaller}
            continue
        if not isinstance(body, Undecoded):
            _check(path, body)
        if limits is not None and "limit" in params:
            limits.answered(int(params["limit"]))
        return params, body


def _check(path: str, body: Any) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise PagingError(f"GET {path}: the response has no `results` list")


def _decoded(get: Get, path: str, params: dict[str, Any], body: Undecoded, decode: Decode | None) -> Any:
    """An undecoded page's body: by `decode`, else as JSON; a broken one is asked for again by `get`,
    whose retries cover broken bodies."""
    decoded = decode(body.content) if decode is not None else None
    if decoded is None:
        try:
            decoded = orjson.loads(body.content)
        except orjson.JSONDecodeError:
            decoded = get(path, params, decode=decode)
    _check(path, decoded)
    return decoded


def _cursor_ahead(paging: str, params: dict[str, Any], body: Any) -> dict[str, Any] | None:
    """The params of the keyset page after an undecoded one, as the end of its body names them (a guess
    its decoded body confirms), or None."""
    if paging != "has_next" or not isinstance(body, Undecoded):
        return None
    tail = body.content[-_TAIL:]
    cursors = _CURSOR.findall(tail)
    if not cursors or not _MORE.search(tail):
        return None
    return {**{k: v for k, v in params.items() if k != "offset"}, "after": cursors[-1].decode()}


def _following(
    path: str, paging: str, params: dict[str, Any], body: dict[str, Any], pages_read: set[frozenset[tuple[str, str]]]
) -> dict[str, Any] | None:
    """The params of the page after this one, or None at the API's own end signal."""
    rows = body["results"]
    if paging == "has_next":
        if not body.get("has_next"):
            return None
        if not rows:
            raise PagingError(f"GET {path}: an empty page says it has a next page")
        if body.get("next_cursor"):
            following = {k: v for k, v in params.items() if k != "offset"}
            return {**following, "after": body["next_cursor"]}
        if params.get("order") == "start_time" and params.get("order_direction") == "ASC" and \
                rows[-1].get("start_time"):
            last = rows[-1]["start_time"]
            following = {**{k: v for k, v in params.items() if k != "offset"}, "date_from": last}
            if "date_from" in params and _same_time(last, params["date_from"]):
                # a whole page starts at one time: only a bigger page gets past it
                if len(rows) >= MAX_PAGE:
                    raise PagingError(f"GET {path}: more than {MAX_PAGE} recordings start at {last}")
                following["limit"] = min(MAX_PAGE, 2 * int(params.get("limit", len(rows))))
            return following
        return {**params, "offset": int(params.get("offset", 0)) + len(rows)}
    next_url = body.get("next")
    if not next_url:
        return None
    # keep our own host and path: `next` may name an internal host behind a proxy
    following = dict(parse_qsl(urlsplit(next_url).query))
    if _page_id(following) in pages_read:
        # a `next` pointing back at a page already read: continue by offset instead
        if not rows:
            return None
        following = {**params, "offset": int(params.get("offset", 0)) + len(rows)}
    pages_read.add(_page_id(following))
    return following


def _same_time(a: str, b: str) -> bool:
    try:
        return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return a == b


def _page_id(params: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """A page's identity: its query parameters, with the default offset made explicit."""
    return frozenset({"offset": "0", **{k: str(v) for k, v in params.items()}}.items())
