"""Feedback while a sync runs: a live display on a terminal, timestamped log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from types import TracebackType
from typing import Literal

from rich.console import Console
from rich.progress import Progress, TaskID, TextColumn, TimeElapsedColumn

from sources.posthog.client import ClientStats
from sources.posthog.report import ResourceRun

from .output import is_terminal, printing_through

logger = logging.getLogger("posthog_export")
Mode = Literal["live", "log", "off"]


def default_mode(quiet: bool, console: Console | None = None) -> Mode:
    """`off` when quiet, `live` on a terminal (`console`'s, else stderr), else `log` (cron, CI, pipes)."""
    if quiet:
        return "off"
    return "live" if (console.is_terminal if console is not None else sys.stderr.isatty()) else "log"


class SyncProgress:
    """Per project and resource: pages, rows, 429s and time spent waiting on the rate budget.

    Args:
        stats: the client's counters (429s and waits are per key, shown with every line).
        mode: `live` (rich display on `console`, default stderr; log lines and `echo` print above it
            while it runs), `log` (a line per resource at most every `interval_s`), or `off`.
    """

    def __init__(
        self, stats: ClientStats, mode: Mode, interval_s: float = 10.0, console: Console | None = None
    ) -> None:
        self.stats, self.mode, self.interval_s = stats, mode, interval_s
        self._tasks: dict[tuple[int, str], TaskID] = {}
        self._logged: dict[tuple[int, str], float] = {}
        self._live: Progress | None = None
        self._printing = ExitStack()
        if mode == "live":
            self._live = Progress(
                TextColumn("{task.description}"),
                TextColumn("{task.fields[pages]:>5} pages"),
                TextColumn("{task.completed:>10,.0f} rows"),
                TextColumn("{task.fields[waits]}"),
                TimeElapsedColumn(),
                console=console or Console(stderr=True),
                redirect_stdout=is_terminal(sys.stdout),  # stdout into a pipe or file does not tear it
            )

    def __enter__(self) -> SyncProgress:
        if self._live is not None:
            self._printing.enter_context(printing_through(self._live.console))
            self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._live is not None:
            try:
                self._live.stop()
            finally:
                self._printing.close()

    def _waits(self) -> str:
        return f"{self.stats.throttled} 429s, waited {self.stats.waited_s + self.stats.paced_s:.0f} s"

    def page(self, run: ResourceRun) -> None:
        """Show that one more page of `run` was read."""
        key = (run.project_id, run.resource)
        if self._live is not None:
            if key not in self._tasks:
                label = f"{run.resource} (project {run.project_id})"
                self._tasks[key] = self._live.add_task(label, total=None, pages=0, waits="")
            self._live.update(self._tasks[key], completed=run.rows_fetched, pages=run.pages, waits=self._waits())
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._logged.get(key, 0.0) >= self.interval_s:
                self._logged[key] = now
                logger.info(
                    "%s project %s: %d pages, %d rows so far (%s)",
                    run.resource, run.project_id, run.pages, run.rows_fetched, self._waits(),
                )
