"""The one PostHog HTTP client: authentication, retries and both paging shapes."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .pacing import BucketStats, Pacer, recordings_list

logger = logging.getLogger("posthog_export")

REGION_HOSTS = {"us": "https://us.posthog.com", "eu": "https://eu.posthog.com"}
# PostHog states a 429's wait in the body; only newer recordings servers add Retry-After (shared/posthog-api.md §4)
_WAIT_RE = re.compile(r"available in (\d+) second", re.IGNORECASE)
# recordings' numberless 429s come from ClickHouse, not from a rate limit (§6)
_CLICKHOUSE_429 = ("timeout", "at capacity", "simultaneous queries")
_TITLE_RE = re.compile(r"<title>\s*([^<]{1,120}?)\s*</title>", re.IGNORECASE)
MAX_BACKOFF_S = 300.0
_SCOPE_RE = re.compile(r"scope '([\w:*]+)'")
MIN_PAGE = 100
MAX_PAGE = 50_000  # HogQL caps a SELECT at this many rows (§7.1)


class PostHogError(Exception):
    """A PostHog request failed for good; the message is one line meant for the user."""


class AuthError(PostHogError):
    """401: the key is wrong, or belongs to another region."""


class ResourceUnavailable(PostHogError):
    """402/403/404 on a list endpoint: this resource cannot be read here; others may still work."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ProjectNotFound(PostHogError):
    """404 "Project not found.": the project id does not exist or the key cannot see it."""


class PagingError(PostHogError):
    """The server's paging signals contradict each other; stopping beats looping or losing rows."""


class NotPostHog(PostHogError):
    """The host answered, but not like PostHog's API (an HTML page), or could not be found at all."""


class BudgetExhausted(PostHogError):
    """The rate budget needs a longer wait than allowed: stop cleanly, keep what was loaded."""


class QueryTooBig(PostHogError):
    """The recordings list query was too big for ClickHouse (504/512/513, a wait-less 429, §6): the
    same request would fail again, a smaller page or date window may not."""


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


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, connection trouble, a broken body)."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class Counters(Protocol):
    """Where a thread's requests are counted besides the client's totals (a report's ResourceRun)."""

    requests: int
    throttled: int
    retries: int


@dataclass
class ClientStats:
    """What the client did, for the run summary."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    waited_s: float = 0.0
    paced_s: float = 0.0
    # per rate bucket of the key (general, analytics, recordings_list): 429s and the rate they taught
    buckets: dict[str, BucketStats] = field(default_factory=dict)


@dataclass
class _Throttled:
    """One request's 429s: when the first came, and how many had no stated wait."""

    first_at: float | None = None
    numberless: int = 0


def normalize_host(host: str) -> str:
    """Expand the `us`/`eu` shortcuts and strip a trailing slash."""
    return REGION_HOSTS.get(host.strip().lower(), host.strip()).rstrip("/")


def _detail(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        title = _TITLE_RE.search(response.text)
        return title.group(1) if title else response.text[:200].strip()
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)
    return str(body)[:200]


class PostHogClient:
    """Reads PostHog's API with one configured httpx client.

    Args:
        host: PostHog base URL (`us`/`eu` shortcuts allowed).
        api_key: a personal API key (`phx_…`).
        max_attempts: attempts per request before a 5xx, transport error or broken body becomes an error.
        max_wait_s: longest a request may wait (for the key's budget, or 429s in all) before stopping cleanly.
        max_in_flight: requests the key may have open at once, over all threads.
        pacer: the key's rate budget (`Pacer`); shared by everything this client does.
        transport: an httpx transport, for tests.
        clock, sleep: time functions, replaceable in tests.
    """

    def __init__(
        self,
        host: str,
        api_key: str,
        *,
        max_attempts: int = 6,
        max_wait_s: float = 900.0,
        backoff_s: float = 1.0,
        timeout_s: float = 120.0,
        max_in_flight: int = 6,
        pacer: Pacer | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.host = normalize_host(host)
        self.max_wait_s = max_wait_s
        self.max_attempts = max_attempts
        self.pacer = pacer or Pacer("none")
        self.stats = ClientStats(buckets=self.pacer.stats)
        self.backoff_s = backoff_s
        self._clock, self._sleep = clock, sleep
        self._project_token = api_key.startswith("phc_")
        # one client serves every resource and project, possibly from several threads at once
        self._lock = threading.Lock()
        self._local = threading.local()
        # every thread (projects, read-ahead pages, detail workers) shares the key's budget
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        # recordings queries may run 60 s server-side (§6): the read timeout must exceed that
        self._http = httpx.Client(
            base_url=self.host,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=15.0),
            transport=transport,
            follow_redirects=True,
        )
        self._retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(max_attempts),
            wait=self._wait,
            before_sleep=self._before_sleep,
            sleep=sleep,
            reraise=True,
        )
        self._backoff = wait_exponential_jitter(multiplier=backoff_s, max=60.0, jitter=backoff_s)

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def _wait(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, TransientError) and error.wait_s is not None:
            return error.wait_s
        return self._backoff(retry_state)

    @contextmanager
    def counting(self, counters: Counters) -> Iterator[None]:
        """Count this thread's requests, 429s and retries on `counters` too, while inside."""
        previous = getattr(self._local, "counters", None)
        self._local.counters = counters
        try:
            yield
        finally:
            self._local.counters = previous

    def _count(self, name: str) -> None:
        counters = getattr(self._local, "counters", None)
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
            if counters is not None:
                setattr(counters, name, getattr(counters, name) + 1)

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        self._count("retries")
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        with self._lock:
            self.stats.waited_s += wait
        error = retry_state.outcome.exception() if retry_state.outcome else None
        logger.warning("%s; retrying in %.0f s", error, wait)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a path under the host and return the decoded JSON body.

        5xx answers, transport errors and broken bodies are retried up to `max_attempts`; 429s are not
        attempts: they are waited out (the whole key waits) for up to `max_wait_s` in all per request.
        """
        return self._retrying.copy()(self._get_once, path, dict(params or {}), _Throttled())

    def _pace(self, path: str, now: float) -> float:
        """Wait until the key's buckets would allow GET `path`; returns the time waited until."""
        while True:
            with self._lock:
                wait, why = self.pacer.delay(path, now)
            if wait <= 0:
                return now
            if wait > self.max_wait_s:
                raise BudgetExhausted(
                    f"{_resource(path)}: {why or 'request limit reached'}; the next request is allowed in "
                    f"{_duration(wait)}, more than the {_duration(self.max_wait_s)} --max-wait: stopped, "
                    "rerun later to continue"
                )
            if wait >= 30:
                logger.warning("%s: %s, waiting %s", _resource(path), why, _duration(wait))
            # other threads may have waited meanwhile (a test's virtual clock moves only on sleeps)
            left = min(wait, now + wait - self._clock())
            if left > 0:
                self._sleep(left)
                with self._lock:
                    self.stats.paced_s += left
                    self.pacer.buckets_for(path)[-1].stats.paced_s += left
            # a test's sleep may not move the clock: never recheck at a time before the one waited for
            now = max(self._clock(), now + wait)

    def _send(self, path: str, params: dict[str, Any], where: str, throttled: _Throttled) -> httpx.Response:
        """Paced requests, each holding one of the key's in-flight slots, until one is not a 429."""
        now = self._clock()
        while True:
            now = self._pace(path, now)
            with self._in_flight:
                with self._lock:
                    now = max(now, self._clock())
                    if self.pacer.delay(path, now)[0] > 0:
                        continue  # another thread took the slot, or a 429 came, while this one waited
                    self.pacer.take(path, now)
                self._count("requests")
                try:
                    response = self._http.get(path, params=params)
                except httpx.ConnectError as error:
                    if "name or service not known" in str(error).lower() or "nodename nor servname" in str(error):
                        raise NotPostHog(
                            f"cannot find host {self.host} (DNS lookup failed): check --host") from error
                    raise TransientError(f"{where}: {type(error).__name__}: {error}") from error
                except (httpx.TransportError, httpx.DecodingError) as error:
                    raise TransientError(f"{where}: {type(error).__name__}: {error}") from error
                if response.status_code != 429:
                    with self._lock:
                        self.pacer.answered(path, now)
                    return response
                # still holding the slot: no other request goes out before the key knows of this 429
                self._throttled(response, path, params, where, now, throttled)

    def _get_once(self, path: str, params: dict[str, Any], throttled: _Throttled) -> Any:
        where = f"GET {path}" + (f"?{httpx.QueryParams(params)}" if params else "")
        return self._decode(self._send(path, params, where, throttled), path, where)

    def _throttled(
        self, response: httpx.Response, path: str, params: dict[str, Any], where: str, sent_at: float,
        throttled: _Throttled,
    ) -> None:
        """Make the whole key wait out a 429, or stop cleanly when that exceeds the request's max wait."""
        self._count("throttled")
        detail = _detail(response)
        match = _WAIT_RE.search(detail)
        header = response.headers.get("Retry-After", "").strip()
        wait = float(match.group(1)) if match else float(header) if header.isdigit() else None
        if wait is None and any(words in detail.lower() for words in _CLICKHOUSE_429):
            with self._lock:  # not the rate limit: the server accepted the request
                self.pacer.answered(path, sent_at)
                self.pacer.buckets_for(path)[-1].stats.throttled += 1
            if recordings_list(path):  # ask for less, never the same again (§6)
                raise QueryTooBig(f"{where}: HTTP 429 {detail[:120]}")
            raise TransientError(f"{where}: 429 {detail}")
        now = self._clock()
        if wait is None:  # no number (an edge's page, say): back off exponentially, bounded by time
            wait = min(MAX_BACKOFF_S, self.backoff_s * 2**throttled.numberless) + random.uniform(0, self.backoff_s)
            throttled.numberless += 1
        else:
            wait += 1  # PostHog rounds the wait, and coming back a moment early costs another 429
        throttled.first_at = now if throttled.first_at is None else throttled.first_at
        with self._lock:
            self.pacer.throttled(path, sent_at, now, wait)  # the wait itself is paced, in `_pace`
        if now + wait - throttled.first_at > self.max_wait_s:
            raise BudgetExhausted(
                f"{_resource(path)}: rate limited for {_duration(now + wait - throttled.first_at)}, more than the "
                f"{_duration(self.max_wait_s)} --max-wait: stopped, rerun later to continue"
            )
        self._count("retries")
        logger.info("%s: 429 %s; retrying in %.0f s", where, detail, wait)  # long waits are announced by _pace

    def _decode(self, response: httpx.Response, path: str, where: str) -> Any:
        """The body of a 200, or the error a status other than 429 stands for."""
        status = response.status_code
        html = "html" in response.headers.get("content-type", "")
        # an edge's error page is judged by its status (403 forbidden, 5xx retried); only a 200 or a 404
        # page is not PostHog's API, which answers every path under /api/ in JSON (§4, §7)
        if html and status in (200, 404):
            raise NotPostHog(
                f"{self.host} answered {where} with an HTML page (HTTP {status}), not PostHog's API: "
                "check --host (us, eu or your PostHog URL)"
            )
        if status == 200:
            try:
                return orjson.loads(response.content)
            except orjson.JSONDecodeError as error:
                raise TransientError(f"{where}: invalid or truncated JSON in the response") from error
        detail = _detail(response)
        if recordings_list(path) and status in (504, 512, 513):
            raise QueryTooBig(f"{where}: HTTP {status} {detail[:120]}")
        if status >= 500:
            raise TransientError(f"{where}: HTTP {status} {detail[:120]}")
        if status == 401 and self._project_token:
            raise AuthError(
                "the key is a project API key (phc_…), which can only send events: create a personal "
                "API key (Settings → Personal API keys, phx_…) and use that"
            )
        if status == 401:
            other = {"https://us.posthog.com": "eu", "https://eu.posthog.com": "us"}.get(self.host)
            hint = f"if the key was made on {other.upper()} Cloud, use --host {other}" if other else (
                "check that --host matches it (us, eu or your self-hosted URL)")
            raise AuthError(
                f"PostHog rejected the personal API key for {self.host} (401: {detail}). Keys are per "
                f"region: {hint}."
            )
        if status == 404 and "project not found" in detail.lower():
            project = path.split("/")[3] if path.count("/") > 3 else "?"
            raise ProjectNotFound(
                f"project {project} not found on {self.host}: check --project-id and the host/region"
            )
        if status == 403 and (scope := _SCOPE_RE.search(detail)):
            raise ResourceUnavailable(
                f"the key lacks the scope {scope.group(1)}: add it to the personal API key (403)", status
            )
        if status in (402, 403, 404):
            why = {402: "not on this PostHog plan", 403: "forbidden", 404: "not on this PostHog version"}
            raise ResourceUnavailable(f"{why[status]} (HTTP {status}: {detail})", status)
        raise PostHogError(f"{where}: HTTP {status} {detail}")

    def pages(
        self, path: str, params: Mapping[str, Any], paging: str, limits: QueryLimits | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """Yield (rows, body) for every page of a list, ending only on the API's own end signal.

        `has_next` lists (recordings, §7.1) page by the keyset cursor where the server offers one;
        otherwise, listed by `start_time` ascending, each page starts at the last page's last start
        (`date_from`), because offset pages without a tiebreaker shift when rows expire, are deleted
        or tie (§7.1): the caller drops rows it already has. DRF lists follow `next`. A short page never
        ends paging. With `limits`, a page too big for ClickHouse is asked for again at half the size
        (`QueryTooBig` escapes at the floor). While the caller works on one page, the next is fetched.
        """
        counters = getattr(self._local, "counters", None)

        def fetch(page_params: dict[str, Any], capped: bool) -> tuple[dict[str, Any], dict[str, Any]]:
            with self.counting(counters):
                return self._page(path, page_params, limits if capped else None)

        pages_read: set[frozenset[tuple[str, str]]] = {_page_id(params)}
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            current, body = self._page(path, dict(params), limits)
            while True:
                rows: list[dict[str, Any]] = body["results"]
                following = _following(path, paging, current, body, pages_read)
                # a page grown to read past a tie group is sent as it is: too big, the caller narrows the window
                grown = following is not None and int(following.get("limit", 0)) > int(current.get("limit", 0))
                upcoming = pool.submit(fetch, following, not grown) if following is not None else None
                yield rows, body
                if upcoming is None:
                    return
                current, body = upcoming.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _page(
        self, path: str, params: dict[str, Any], limits: QueryLimits | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """GET one page (and the params it was read with), halving its size while it is too big."""
        while True:
            if limits is not None and "limit" in params:
                params = {**params, "limit": limits.cap(int(params["limit"]))}
            try:
                body = self.get(path, params)
            except QueryTooBig as error:
                smaller = limits.shrink(int(params.get("limit", 50))) if limits is not None else None
                if smaller is None:
                    raise
                # the same size would time out again (§6): every later page of the run asks for less
                self._count("retries")
                logger.warning("%s; asking for pages of %d", error, smaller)
                params = {**params, "limit": smaller}
                continue
            if not isinstance(body, dict) or not isinstance(body.get("results"), list):
                raise PagingError(f"GET {path}: the response has no `results` list")
            if limits is not None and "limit" in params:
                limits.answered(int(params["limit"]))
            return params, body


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


def _resource(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    return parts[3] if len(parts) > 3 else path


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _page_id(params: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """A page's identity: its query parameters, with the default offset made explicit."""
    return frozenset({"offset": "0", **{k: str(v) for k, v in params.items()}}.items())
