"""The source's settings: defaults and validation, resolved through dlt's config injection.

Every caller — the CLI, `posthog_source()` in a user's own pipeline, an orchestrator — resolves the same
`PostHogSettings` from the same places, in dlt's order: explicit arguments, then `SOURCES__POSTHOG__*`
environment variables, then `[sources.posthog]` in `.dlt/secrets.toml` and `.dlt/config.toml`, then the
defaults below. The key may also come from the conventional `POSTHOG_PERSONAL_API_KEY`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Dict, List, Optional, Union  # noqa: UP035 - dlt resolves these annotations at runtime
from urllib.parse import urlsplit

import httpx
from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

from .client import REGION_HOSTS, PostHogClient, normalize_host
from .endpoints import ENDPOINTS
from .pacing import PLANS, Pacer

SECTIONS = ("sources", "posthog")
KEY_ENV = "POSTHOG_PERSONAL_API_KEY"
DEFAULT_HOST = REGION_HOSTS["us"]
CLOUD_HOSTS = ("us.posthog.com", "eu.posthog.com", "app.posthog.com")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
RATE_LIMIT_PLANS = (*PLANS, "none")
_ID_TOKENS = re.compile(r"[^\s,\[\]\"']+")
Clock = tuple[Callable[[], float], Callable[[float], None]]


class SettingsError(ValueError):
    """A setting is missing or invalid; `field` names it (the CLI maps it to its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def default_plan(host: str) -> str:
    """`free` (the strictest limits) on PostHog Cloud; `none` elsewhere, because self-hosted PostHog
    throttles only with RATE_LIMIT_ENABLED (shared/posthog-api.md §5). 429s are honoured either way."""
    return "free" if urlsplit(host).hostname in CLOUD_HOSTS else "none"


def parse_project_ids(value: Any) -> tuple[list[int], bool]:
    """Project ids from an argument, a TOML list or an environment variable (`12345`, `1,2`, `[1, 2]`),
    and whether `all` (every project the key can read) was asked for."""
    if value is None:
        return [], False
    items = value if isinstance(value, list | tuple) else [value]
    tokens = [token for item in items for token in _ID_TOKENS.findall(str(item))]
    bad = [t for t in tokens if t != "all" and not t.isdigit()]
    if bad:
        raise SettingsError("project_ids", f"a project id must be a number or all, got {bad[0]!r}")
    everything = "all" in tokens
    ids = list(dict.fromkeys(int(t) for t in tokens if t != "all"))
    if everything and ids:
        raise SettingsError("project_ids", "project ids `all` means every project: do not combine it with ids")
    return ids, everything


@configspec
class PostHogSettings(BaseConfiguration):
    """What one sync of PostHog needs; see the README's "Configuration and secrets" for each field."""

    # ids or `all`, as a list or text (`1,2`, `[1, 2]`: dlt hands TOML and env values over as text);
    # normalised to a list of ints, `all` to `all_projects`
    project_ids: Optional[Union[str, List[Union[int, str]]]] = None  # noqa: UP006, UP007, UP045
    personal_api_key: Optional[TSecretStrValue] = None  # noqa: UP045
    host: str = DEFAULT_HOST  # `us`, `eu` or a URL
    allow_insecure_http: bool = False  # a plain http:// host that is not loopback (the key in clear text)
    lookback_days: float = 1.0
    initial_date_from: str = "2020-01-01T00:00:00Z"
    evolve_schema: bool = False
    page_sizes: Optional[Dict[str, int]] = None  # noqa: UP006, UP045
    rate_limit_plan: Optional[str] = None  # noqa: UP045 - default: by host (`default_plan`)
    rate_limits: Optional[Dict[str, List[int]]] = None  # noqa: UP006, UP045
    max_wait_minutes: float = 60.0
    max_attempts: int = 6
    backoff_s: float = 1.0
    all_projects: bool = False

    def on_resolved(self) -> None:
        """Validate and normalise: host rules, project ids (with `all`), plan, page sizes, limits."""
        ids, everything = parse_project_ids(self.project_ids)
        self.project_ids, self.all_projects = ids, everything or self.all_projects
        self.host = normalize_host(str(self.host))
        url = urlsplit(self.host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SettingsError("host", f"host {self.host!r} is not a URL: use us, eu or "
                                        "https://your-posthog.example.com")
        if url.scheme == "http" and url.hostname not in LOOPBACK and not self.allow_insecure_http:
            raise SettingsError("allow_insecure_http", f"refusing plain http:// for {url.hostname}: the key "
                                "would travel in clear text; use https:// or allow insecure http")
        for name in ("lookback_days", "max_wait_minutes", "backoff_s"):
            if float(getattr(self, name)) < 0:
                raise SettingsError(name, f"{name} must be zero or more, got {getattr(self, name)}")
        if self.max_attempts < 1:
            raise SettingsError("max_attempts", f"max_attempts must be at least 1, got {self.max_attempts}")
        self.rate_limit_plan = self.rate_limit_plan or default_plan(self.host)
        if self.rate_limit_plan not in RATE_LIMIT_PLANS:
            raise SettingsError("rate_limit_plan", f"unknown rate limit plan {self.rate_limit_plan!r}; "
                                f"choose from {', '.join(RATE_LIMIT_PLANS)}")
        sizes = self.page_sizes or {}
        tables = [table for endpoint in ENDPOINTS.values() for table in endpoint.tables]
        unknown = sorted(set(sizes) - set(tables))
        if unknown or any(int(size) < 1 for size in sizes.values()):
            raise SettingsError("page_sizes", f"page_sizes takes a positive size per resource "
                                f"({', '.join(tables)}), got {dict(sizes)}")
        try:
            Pacer(self.rate_limit_plan, self.rate_limits)
        except ValueError as error:
            raise SettingsError("rate_limits", str(error)) from error

    @property
    def api_key(self) -> str | None:
        """The key: this setting, else the conventional `POSTHOG_PERSONAL_API_KEY`."""
        return str(self.personal_api_key) if self.personal_api_key else os.environ.get(KEY_ENV) or None

    @property
    def max_wait_s(self) -> float:
        """The longest wait for the rate budget, in seconds."""
        return 60.0 * float(self.max_wait_minutes)

    def client(self, transport: httpx.BaseTransport | None = None, clock: Clock | None = None) -> PostHogClient:
        """The paced, retrying PostHog client these settings describe (one per run, shared by resources).

        `clock` replaces (monotonic time, sleep) for tests that simulate hours of rate limits.
        """
        key = self.api_key
        if not key:
            raise SettingsError("personal_api_key", f"no PostHog personal API key: set {KEY_ENV} (or "
                                "sources.posthog.personal_api_key in .dlt/secrets.toml); create one under "
                                "Settings → Personal API keys")
        timing = {"clock": clock[0], "sleep": clock[1]} if clock else {}
        return PostHogClient(
            self.host,
            key,
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
            max_wait_s=self.max_wait_s,
            pacer=Pacer(self.rate_limit_plan or "none", self.rate_limits),
            transport=transport,
            **timing,  # type: ignore[arg-type]
        )


def resolve_settings(**explicit: Any) -> PostHogSettings:
    """`PostHogSettings` from explicit values (None means "not given"), then dlt's config providers."""
    given = {name: value for name, value in explicit.items() if value is not None}
    unknown = sorted(set(given) - set(PostHogSettings.get_resolvable_fields()))
    if unknown:
        raise TypeError(f"unknown settings {unknown}")
    return resolve_configuration(PostHogSettings(), sections=SECTIONS, explicit_value=given)
