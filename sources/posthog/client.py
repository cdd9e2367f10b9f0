"""The one PostHog HTTP client: the configured httpx client, authentication and sending, paced and retried.

What an answer means is `errors.py`, when to try again `retries.py`, the key's rate budget `pacing.py`
and the paging shapes `paging.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from tenacity import RetryCallState

from . import paging
from .errors import NotPostHog, TransientError, detail, error_for
from .pacing import GENERAL, BucketStats, Pacer
from .paging import QueryLimits
from .retries import Throttled, check_pace, duration, retrying, stated_wait

if TYPE_CHECKING:
    from .report import Job

logger = logging.getLogger("posthog_export")

REGION_HOSTS = {"us": "https://us.posthog.com", "eu": "https://eu.posthog.com"}


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


def normalize_host(host: str) -> str:
    """Expand the `us`/`eu` shortcuts and strip a trailing slash."""
    return REGION_HOSTS.get(host.strip().lower(), host.strip()).rstrip("/")


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
        max_wait_s: float = 3600.0,  # as PostHogSettings (settings.py), which builds the clients we use
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
        self._retrying = retrying(max_attempts, backoff_s, sleep)
        self._server_date: tuple[datetime, float] | None = None  # the newest `Date` header, and when it came

    def server_time(self) -> datetime:
        """PostHog's clock: the newest `Date` answer header plus the time since, else this machine's clock.

        Whether a recording expired is PostHog's `now()` against its `expiry_time` (§7.1), not ours.
        """
        with self._lock:
            if self._server_date is None:
                return datetime.now(UTC)
            date, at = self._server_date
            return date + timedelta(seconds=max(0.0, time.monotonic() - at))

    def _note_date(self, response: httpx.Response) -> None:
        try:
            date = parsedate_to_datetime(response.headers["date"]).astimezone(UTC)
        except (KeyError, TypeError, ValueError):
            return
        with self._lock:
            if self._server_date is None or date >= self._server_date[0]:
                self._server_date = (date, time.monotonic())

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def _count(self, name: str, job: Job | None) -> None:
        """Count a request, 429 or retry on the key's totals, and on the job's run when there is one."""
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
            if job is not None:
                setattr(job.run, name, getattr(job.run, name) + 1)

    def _before_sleep(self, job: Job | None, retry_state: RetryCallState) -> None:
        self._count("retries", job)
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        with self._lock:
            self.stats.waited_s += wait
        error = retry_state.outcome.exception() if retry_state.outcome else None
        logger.warning("%s; retrying in %.0f s", error, wait)

    def get(
        self, path: str, params: Mapping[str, Any] | None = None, job: Job | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """GET a path under the host and return the decoded JSON body (by `decode` where it returns one).

        5xx answers, transport errors and broken bodies are retried up to `max_attempts`; 429s are not
        attempts: they are waited out (the whole key waits) for up to `max_wait_s` in all per request.
        The request counts on `job`'s run (besides the key's totals); calls without a job (project
        discovery, probes) count on the totals only.
        """
        retrying = self._retrying.copy(before_sleep=partial(self._before_sleep, job))
        return retrying(self._get_once, path, dict(params or {}), Throttled(), job, decode)

    def _pace(self, path: str, now: float, job: Job | None) -> float:
        """Wait until the key's buckets would allow GET `path`; returns the time waited until."""
        buckets = _buckets(job)
        while True:
            with self._lock:
                wait, why = self.pacer.delay(buckets, now)
            if wait <= 0:
                return now
            check_pace(wait, self.max_wait_s, _what(path, job), why)
            if wait >= 30:
                logger.warning("%s: %s, waiting %s", _what(path, job), why, duration(wait))
            # other threads may have waited meanwhile (a test's virtual clock moves only on sleeps)
            left = min(wait, now + wait - self._clock())
            if left > 0:
                self._sleep(left)
                with self._lock:
                    self.stats.paced_s += left
                    self.pacer.buckets_for(buckets)[-1].stats.paced_s += left
            # a test's sleep may not move the clock: never recheck at a time before the one waited for
            now = max(self._clock(), now + wait)

    def _send(
        self, path: str, params: dict[str, Any], where: str, throttled: Throttled, job: Job | None
    ) -> httpx.Response:
        """Paced requests, each holding one of the key's in-flight slots, until one is not a 429."""
        now, buckets = self._clock(), _buckets(job)
        while True:
            now = self._pace(path, now, job)
            with self._in_flight:
                with self._lock:
                    now = max(now, self._clock())
                    if self.pacer.delay(buckets, now)[0] > 0:
                        continue  # another thread took the slot, or a 429 came, while this one waited
                    self.pacer.take(buckets, now)
                self._count("requests", job)
                try:
                    response = self._http.get(path, params=params)
                except httpx.ConnectError as error:
                    if "name or service not known" in str(error).lower() or "nodename nor servname" in str(error):
                        raise NotPostHog(f"cannot find host {self.host} (DNS lookup failed)") from error
                    raise TransientError(f"{where}: {type(error).__name__}: {error}") from error
                except (httpx.TransportError, httpx.DecodingError) as error:
                    raise TransientError(f"{where}: {type(error).__name__}: {error}") from error
                self._note_date(response)
                # the read response and its stream point at each other: without this the page's bytes wait
                # for a full garbage collection, which decoding into untracked structs seldom triggers
                response.stream = httpx.ByteStream(b"")
                if response.status_code != 429:
                    with self._lock:
                        self.pacer.answered(buckets, now)
                    return response
                # still holding the slot: no other request goes out before the key knows of this 429
                self._throttled(response, path, where, now, throttled, job)

    def _get_once(
        self, path: str, params: dict[str, Any], throttled: Throttled, job: Job | None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        where = f"GET {path}" + (f"?{httpx.QueryParams(params)}" if params else "")
        response = self._send(path, params, where, throttled, job)
        error = error_for(response, where, self.host, project=job.project_id if job else None,
                          too_big=job is not None and job.endpoint.too_big, project_token=self._project_token)
        if error is not None:
            raise error
        if decode is not None and (body := decode(response.content)) is not None:
            return body
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as error:
            raise TransientError(f"{where}: invalid or truncated JSON in the response") from error

    def _throttled(
        self, response: httpx.Response, path: str, where: str, sent_at: float, throttled: Throttled, job: Job | None
    ) -> None:
        """Make the whole key wait out a 429, or stop cleanly when that exceeds the request's max wait."""
        self._count("throttled", job)
        reason = detail(response)
        stated = stated_wait(response, reason)
        error = error_for(response, where, self.host, too_big=job is not None and job.endpoint.too_big,
                          stated_wait=stated is not None)
        buckets = _buckets(job)
        if error is not None:
            with self._lock:  # not the rate limit: the server accepted the request
                self.pacer.answered(buckets, sent_at)
                self.pacer.buckets_for(buckets)[-1].stats.throttled += 1
            raise error
        now = self._clock()
        wait = throttled.wait(stated, now, self.backoff_s)
        with self._lock:
            self.pacer.throttled(buckets, sent_at, now, wait)  # the wait itself is paced, in `_pace`
        throttled.check(now + wait, self.max_wait_s, _what(path, job))
        self._count("retries", job)
        logger.info("%s: 429 %s; retrying in %.0f s", where, reason, wait)  # long waits are announced by _pace

    def pages(
        self, path: str, params: Mapping[str, Any], shape: str, limits: QueryLimits | None = None,
        job: Job | None = None, decode: Callable[[bytes], Any] | None = None,
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """Yield (rows, body) for every page of a list (see `paging.pages`), each request counted on `job`;
        `decode` may decode a page's bytes itself (see `arrow.decode_page`)."""
        return paging.pages(
            partial(self.get, job=job), path, params, shape, limits, partial(self._count, "retries", job), decode,
        )


def _what(path: str, job: Job | None) -> str:
    """What a request is for, in messages: the job's endpoint, else the path."""
    return job.endpoint.name if job is not None else path


def _buckets(job: Job | None) -> tuple[str, ...]:
    """The key's rate buckets a request spends: its endpoint's, else the general one."""
    return job.endpoint.buckets if job is not None else GENERAL
