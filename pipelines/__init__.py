"""posthog-export's runner and CLI. `pipelines.run(pipeline, source)` loads a `posthog_source()` as the CLI
does: one dlt load per resource, Parquet compaction, BI views and `_sync_report`."""

from .runner import SyncResult, run

__all__ = ["run", "SyncResult"]
