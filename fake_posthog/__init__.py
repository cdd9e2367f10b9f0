"""Stateful, deterministic fake of the PostHog API endpoints the exporter reads (stdlib, orjson and httpx).

Behaviour follows the real server (see the project's PostHog API notes): DRF paging, the recordings
list's own paging with partial rows at a window edge, virtual property definitions, soft-deleted
subscriptions in Postgres storage order (older servers; `subscription_order="ordering"` for newer ones),
detail rows shaped like PostHog's retrieve serializers and the real error bodies. Rows are generated on
demand from their index, so a million recordings cost no memory up front.

Parts: `recordings` (the recordings list and its window arithmetic), `lists` (the DRF lists), `faults`
(injected failures, throttles, ClickHouse limits), `versions` (the fields each PostHog version sends, and
the endpoints newer ones removed), `server` (HTTP and an in-process transport), `core` (`FakePostHog`:
construction, clock, routing). `python -m fake_posthog` serves one until killed.
"""

from __future__ import annotations

from .base import FakeRequest, parse_iso_s
from .core import FakePostHog

__all__ = ["FakePostHog", "FakeRequest", "parse_iso_s"]
