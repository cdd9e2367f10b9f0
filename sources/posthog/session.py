"""What the resources of one `posthog_source()` share: settings, the paced client, the report, readers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from .arrow import Drift
from .client import PostHogClient
from .endpoints import ENDPOINTS, Endpoint
from .report import SyncReport
from .settings import PostHogSettings, SettingsError
from .sync import Context, StoredTable, start_feeds

logger = logging.getLogger("posthog_export")


@dataclass
class Session:
    """One source's run: its settings, its one client (pacing is per key), its report, its contexts.

    Nothing here sends a request until a resource is read: building a source (an orchestrator loading its
    definitions) stays offline, even with `project_ids = "all"`.
    """

    settings: PostHogSettings
    client: PostHogClient
    report: SyncReport
    endpoints: list[Endpoint]
    contexts: dict[str, Context] = field(default_factory=dict)
    # set when the run ends: readers started ahead stop
    cancelled: threading.Event = field(default_factory=threading.Event)
    _project_ids: list[int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls, settings: PostHogSettings, resources: list[str] | None, client: PostHogClient | None,
        report: SyncReport | None,
    ) -> Session:
        """The session of a source: the client is built from the settings unless one is given."""
        unknown = sorted(set(resources or ()) - ENDPOINTS.keys())
        if unknown:
            raise SettingsError("resources", f"unknown resources {unknown}; choose from {sorted(ENDPOINTS)}")
        if not settings.project_ids and not settings.all_projects:
            raise SettingsError("project_ids", "no project id: set sources.posthog.project_ids (ids, or all)")
        session = cls(
            settings=settings,
            client=client if client is not None else settings.client(),
            report=report if report is not None else SyncReport(),
            endpoints=[e for e in ENDPOINTS.values() if not resources or e.name in resources],
        )
        base = Context(
            client=session.client,
            report=session.report,
            lookback=timedelta(days=float(settings.lookback_days)),
            initial_date_from=settings.initial_date_from,
            evolve=settings.evolve_schema,
            page_sizes=dict(settings.page_sizes or {}),
            cancelled=session.cancelled,
        )
        session.contexts = {e.name: replace(base, drift=Drift(), feeds={}) for e in session.endpoints}
        return session

    def project_ids(self) -> list[int]:
        """The projects to read: the configured ids, or with `all` every project the key can read (asked
        once, on first use)."""
        with self._lock:
            if self._project_ids is None:
                self._project_ids = self._discover() if self.settings.all_projects else list(
                    self.settings.project_ids)
            return self._project_ids

    def _discover(self) -> list[int]:
        pages = self.client.pages("/api/projects/", {"limit": 100}, "drf")
        ids = [int(project["id"]) for page, _ in pages for project in page]
        if not ids:
            raise SettingsError("project_ids", f"the key can read no projects on {self.client.host}: check the "
                                "key's project access")
        logger.info("found %d projects: %s", len(ids), ", ".join(map(str, ids)))
        return ids

    def know_stored(self, tables: Mapping[str, StoredTable]) -> None:
        """What the destination holds per resource before the run (column types, rows per project)."""
        for name, ctx in self.contexts.items():
            ctx.stored = tables.get(name, StoredTable({}, {}))

    def read_ahead(self, states: Mapping[str, Mapping[str, Any]], resources: Iterable[str]) -> None:
        """Start the readers of `resources` now, from `states` (`{resource: {project_id: state}}`, the
        pipeline's last committed ones), so each reads while dlt loads the ones before it."""
        ids, names = self.project_ids(), set(resources)
        for endpoint in (e for e in self.endpoints if e.name in names):
            start_feeds(endpoint, self.contexts[endpoint.name], ids, states.get(endpoint.name, {}))

    def close(self) -> None:
        """Stop readers still running ahead and close the client."""
        self.cancelled.set()
        self.client.close()
