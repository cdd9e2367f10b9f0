"""PostHog versions: which fields a row has on which server, and the endpoints newer servers removed.

Rows are generated with every field any version sends; `_shaped` cuts one down to the version chosen per
resource (`FakePostHog(versions={"subscriptions": "mid_2026"})`, or `fake.versions[...] = ...` between
syncs). Variant names are those of shared/posthog-fields.json; the first of each is the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import State, _check, _err

VARIANTS: dict[str, tuple[str, ...]] = {
    # older servers send `storage` instead of the newest-only fields (§7.1)
    "session_recordings": ("newest", "older"),
    # older servers call the title `name`, and their detail rows have `extra_input_context` (§7.2)
    "session_group_summaries": ("newer", "older"),
    # newest: read-only `resource_type`; some mid-2026 versions: `content_type` + `ai_config`; older: neither,
    # no `enabled`/`prompt`/summary fields, and the 402 gate (§7.4)
    "subscriptions": ("newest", "mid_2026", "older"),
    # enterprise-taxonomy orgs get the documented shape, others a plain one (§7.5)
    "property_definitions": ("enterprise", "plain"),
}
_RECORDINGS_NEWEST = ("retention_period_days", "expiry_time", "recording_ttl", "snapshot_library", "has_summary",
                      "summary_outcome", "external_references", "matches_filters")
_SUBSCRIPTIONS_NEWER = ("insight_short_id", "resource_name", "dashboard_export_insights", "prompt", "enabled",
                        "integration_id", "summary_enabled", "summary_prompt_guide")
_DEFINITIONS_PLAIN = ("id", "name", "is_numerical", "property_type", "tags", "is_seen_on_filtered_events",
                      "is_optimized", "virtual")
# a FOSS build (no ee/) answers the removed summaries with 501 instead of 404 (§7.2)
FOSS_SUMMARIES = {"detail": "AI session summaries are unavailable in this FOSS deployment."}
REMOVABLE = ("session_group_summaries", "desktop_recordings")  # gone from the newest servers (§7.2, §7.3)


class Versions(State):
    """The version switches of `FakePostHog`."""

    versions: dict[str, str]
    removed: set[str]
    foss: bool

    def _init_versions(self, versions: Mapping[str, str] | None, removed: Sequence[str], foss: bool) -> None:
        self.versions = {r: v[0] for r, v in VARIANTS.items()}
        for resource, variant in (versions or {}).items():
            if variant not in VARIANTS.get(_check(resource), ()):
                raise ValueError(f"{resource} has no version {variant!r}; expected one of {VARIANTS.get(resource)}")
            self.versions[resource] = variant
        unknown = set(removed) - set(REMOVABLE)
        if unknown:
            raise ValueError(f"only {REMOVABLE} were removed from PostHog, not {sorted(unknown)}")
        self.removed, self.foss = set(removed), foss

    def _gone(self, resource: str) -> tuple[int, Any] | None:
        """The answer of a server where `resource` was removed (list and detail), if it is."""
        if resource not in self.removed:
            return None
        if self.foss and resource == "session_group_summaries":
            return 501, dict(FOSS_SUMMARIES)
        return 404, _err("invalid_request", "not_found", "Not found.")

    def _payment_gate(self, resource: str, status: int) -> None:
        if resource == "subscriptions" and status == 402 and self.versions["subscriptions"] != "older":
            # PR #59624 removed the gate: newer servers list subscriptions on every plan (§7.4)
            raise ValueError("only older servers answer subscriptions with 402: use versions={'subscriptions': "
                             "'older'}")

    def _shaped(self, resource: str, row: dict[str, Any], detail: bool = False) -> dict[str, Any]:
        """`row` as the chosen version of `resource` sends it (a new dict when anything changes)."""
        variant = self.versions.get(resource)
        if resource == "session_recordings" and variant == "older":
            row = {k: v for k, v in row.items() if k not in _RECORDINGS_NEWEST}
            row["storage"] = "object_storage_lts" if row["recording_duration"] > 1800 else "object_storage"
        elif resource == "session_group_summaries" and variant == "older":
            row = {("name" if k == "title" else k): v for k, v in row.items()}
            if detail:
                row["extra_input_context"] = None
        elif resource == "subscriptions":
            kind = row["resource_type"]
            row = {k: v for k, v in row.items() if k not in ("resource_type", "ai_config")}
            if variant == "newest":
                row["resource_type"] = kind
            elif variant == "mid_2026":
                row["content_type"] = kind
                row["ai_config"] = {"model": "gpt-4.1", "planner_model": "o3"} if kind == "ai_prompt" else None
            else:
                for name in _SUBSCRIPTIONS_NEWER:
                    row.pop(name, None)
        elif resource == "property_definitions" and variant == "plain":
            row = {k: row.get(k) for k in _DEFINITIONS_PLAIN if k in row or k == "is_optimized"}
        return row
