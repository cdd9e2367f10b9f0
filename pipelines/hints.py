"""Which flag to change, for errors whose message states only what happened (sources name no CLI flags)."""

from __future__ import annotations

from sources.posthog.errors import AuthError, BudgetExhausted, NotPostHog, ProjectNotFound
from sources.posthog.settings import SettingsError

# a setting's flag, for errors about it: settings.py names the setting only
FLAGS = {
    "project_ids": "--project-id", "host": "--host", "allow_insecure_http": "--allow-insecure-http",
    "lookback_days": "--lookback-days", "rate_limit_plan": "--rate-limit-plan", "resources": "--resources",
    "max_wait_minutes": "--max-wait-minutes",
}


def hint(error: BaseException | None) -> str:
    """The command-line hint for an error, or "" when no flag would help."""
    if isinstance(error, SettingsError):
        flag = FLAGS.get(error.field)
        return f"{flag} or sources.posthog.{error.field}" if flag else ""
    if isinstance(error, AuthError):
        if error.project_token:
            return ""
        if error.region:
            return f"use --host {error.region}"
        return "check that --host matches the key (us, eu or your self-hosted URL)"
    if isinstance(error, ProjectNotFound):
        return "check --project-id and --host"
    if isinstance(error, NotPostHog):
        return "check --host: us, eu or your PostHog URL"
    if isinstance(error, BudgetExhausted):
        return "or raise --max-wait-minutes"
    return ""


def with_hint(message: str, error: BaseException | None) -> str:
    """`message`, followed by the error's hint if it has one."""
    found = hint(error)
    return f"{message.rstrip('.')} ({found})" if found else message
