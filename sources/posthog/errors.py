"""What a failed PostHog request means: the exception classes and the one mapping from an answer to them.

Messages state what happened, in one line; they name no command-line flag (the CLI adds its own hints).
"""

from __future__ import annotations

import re

import httpx
import orjson

_TITLE_RE = re.compile(r"<title>\s*([^<]{1,120}?)\s*</title>", re.IGNORECASE)
_SCOPE_RE = re.compile(r"scope '([\w:*]+)'")
# recordings' numberless 429s come from ClickHouse, not from a rate limit (shared/posthog-api.md §6)
_CLICKHOUSE_429 = ("timeout", "at capacity", "simultaneous queries")
_OTHER_REGION = {"https://us.posthog.com": "eu", "https://eu.posthog.com": "us"}


class PostHogError(Exception):
    """A PostHog request failed for good; the message is one line meant for the user."""


class AuthError(PostHogError):
    """401: the key is wrong, or belongs to another region.

    `region` is the other Cloud region the key may come from (None off PostHog Cloud); `project_token`
    is set when the key is a project API key, which cannot read at all.
    """

    def __init__(self, message: str, *, region: str | None = None, project_token: bool = False) -> None:
        super().__init__(message)
        self.region, self.project_token = region, project_token


class ResourceUnavailable(PostHogError):
    """402/403/404/501 on a list endpoint: this resource cannot be read here; others may still work."""

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
    """The rate budget needs a longer wait than allowed (max_wait): stop cleanly, keep what was loaded."""


class QueryTooBig(PostHogError):
    """The recordings list query was too big for ClickHouse (504/512/513, a wait-less 429, §6): the
    same request would fail again, a smaller page or date window may not."""


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, connection trouble, a broken body)."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def detail(response: httpx.Response) -> str:
    """PostHog's one-line reason in an error body (`detail`/`error`), or an HTML page's title."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        title = _TITLE_RE.search(response.text)
        return title.group(1) if title else response.text[:200].strip()
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)
    return str(body)[:200]


def error_for(
    response: httpx.Response, where: str, host: str, *, project: int | None = None, too_big: bool = False,
    stated_wait: bool = False, project_token: bool = False,
) -> PostHogError | TransientError | None:
    """The error an answer stands for, or None for a 200 from PostHog's API and for a rate limit's 429.

    Args:
        response: the answer.
        where: the request, for messages (`GET /path?query`).
        host: the host asked.
        project: the project the request was for, if any.
        too_big: the endpoint's 504/512/513 and ClickHouse 429s mean its query was too big (§6).
        stated_wait: a 429 said how long to wait (then it is the rate limit, never ClickHouse).
        project_token: the key sent is a project API key (`phc_…`).
    """
    status = response.status_code
    html = "html" in response.headers.get("content-type", "")
    # an edge's error page is judged by its status (403 forbidden, 5xx retried); only a 200 or a 404
    # page is not PostHog's API, which answers every path under /api/ in JSON (§4, §7)
    if html and status in (200, 404):
        return NotPostHog(f"{host} answered {where} with an HTML page (HTTP {status}), not PostHog's API")
    if status == 200:
        return None
    reason = detail(response)
    if status == 429:
        if stated_wait or not any(words in reason.lower() for words in _CLICKHOUSE_429):
            return None
        # not the rate limit: ask for less, never the same again (§6)
        return QueryTooBig(f"{where}: HTTP 429 {reason[:120]}") if too_big else TransientError(f"{where}: 429 {reason}")
    if too_big and status in (504, 512, 513):
        return QueryTooBig(f"{where}: HTTP {status} {reason[:120]}")
    if status == 501:  # not in this build (a FOSS one, §7.2): asking again cannot help
        return ResourceUnavailable(f"not in this PostHog build (HTTP 501: {reason})", 501)
    if status >= 500:
        return TransientError(f"{where}: HTTP {status} {reason[:120]}")
    if status == 401:
        return _auth_error(host, reason, project_token)
    if status == 404 and "project not found" in reason.lower():
        return ProjectNotFound(f"project {project if project is not None else '?'} not found on {host}")
    if status == 403 and (scope := _SCOPE_RE.search(reason)):
        return ResourceUnavailable(f"the key lacks the scope {scope.group(1)}: add it to the personal API key (403)",
                                   status)
    if status in (402, 403, 404):
        why = {402: "not on this PostHog plan", 403: "forbidden", 404: "not on this PostHog version"}
        return ResourceUnavailable(f"{why[status]} (HTTP {status}: {reason})", status)
    return PostHogError(f"{where}: HTTP {status} {reason}")


def _auth_error(host: str, reason: str, project_token: bool) -> AuthError:
    if project_token:
        return AuthError(
            "the key is a project API key (phc_…), which can only send events: create a personal API key "
            "(Settings → Personal API keys, phx_…) and use that", project_token=True,
        )
    region = _OTHER_REGION.get(host)
    where = f"it may have been made on {region.upper()} Cloud" if region else "the host must be the key's"
    return AuthError(
        f"PostHog rejected the personal API key for {host} (401: {reason}). Keys are per region: {where}.",
        region=region,
    )

