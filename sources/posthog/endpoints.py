"""The endpoint table: one entry per exported PostHog list endpoint.

Everything the generic code needs to know about an endpoint lives here as data: its path, paging shape,
fixed query parameters, how it syncs incrementally, the rate buckets it spends, its primary key, its
declared columns, the lists inside its rows that become child tables and the listings per row whose
members land in a table of their own (playlist items). API facts are in
`shared/posthog-api.md`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .pacing import ANALYTICS, GENERAL

# Declared column types use dlt's data type names; `json` columns hold nested objects as JSON.
ColumnType = Literal["text", "bigint", "double", "bool", "timestamp", "json"]
Paging = Literal["has_next", "drf"]
# date_from: the server filters on the cursor; watermark: we scan newest-first until below the cursor;
# full: every run reads the whole list.
SyncMode = Literal["date_from", "watermark", "full"]

USER: ColumnType = "json"  # PostHog's nested user objects (created_by, updated_by, ...)


@dataclass(frozen=True)
class Child:
    """A list inside a row that lands as its own child table, one row per element.

    Rows are keyed by (project_id, <parent>_id, position), or by the parent's own key columns plus
    position where that key is not `id` (a Replay Vision retry gives the row a new id, §7.6): list
    elements have no ids of their own (desktop transcript segments, §7.3), so the position is their
    identity. Each sync replaces all child rows of every parent it loads.
    """

    columns: Mapping[str, ColumnType]
    scalar: str | None = None  # set for lists of plain values: the column the value lands in
    path: str | None = None  # dotted path to a list nested in the row (default: the top-level field)


@dataclass(frozen=True)
class Traces:
    """Where a table's rows name a person or a recording, for `posthog-export forget` (pipelines/forget.py).

    A row is the person's when a `distinct_ids` column holds one of their distinct ids, a `persons` object
    (PostHog's person: `distinct_ids`, `uuid`, `properties.email`) lists one or has their uuid, or an
    `emails` column holds their email; such a row is erased, and the distinct ids, uuids and emails its
    person objects name become the person's too. A row whose `sessions` column holds the session id of a
    row erased so is erased as well. The person's emails are taken out of the JSON lists in `email_lists`,
    the erased session ids out of those in `session_lists`; those rows stay. Child tables follow their parent.
    """

    distinct_ids: tuple[str, ...] = ()
    persons: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    email_lists: tuple[str, ...] = ()
    session_lists: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any((self.distinct_ids, self.persons, self.emails, self.sessions, self.email_lists,
                    self.session_lists))


@dataclass(frozen=True)
class Members:
    """Which objects each row of a full listing holds, read from a listing per row (playlist members).

    Every run re-reads every parent's members and replaces them: membership changes move no timestamp
    of the parent (§7.7). `endpoint` gives the member table's name, columns, key, rate buckets and page
    size; its `path` is appended to the parent's path and `row[lookup]`.
    """

    endpoint: Endpoint
    lookup: str
    # member table column <- parent row field
    parent: Mapping[str, str]
    # member table column <- member row field
    member: tuple[str, str]
    # only parents whose field holds one of these values have members to read
    read_when: tuple[str, tuple[Any, ...]]
    # parents whose member listing pages by limit/offset; the others answer in one page, whatever is asked
    paged_when: str
    # where in a parent row PostHog counts its members
    expected: tuple[str, ...]
    # the parent column set true when PostHog may hold more members than it returned
    flag: str
    noun: str = "members"  # what the members are, in messages


@dataclass(frozen=True)
class Endpoint:
    """How one PostHog list endpoint is read and where it lands."""

    name: str
    path: str
    paging: Paging
    sync: SyncMode
    primary_key: tuple[str, ...]
    columns: Mapping[str, ColumnType]
    params: Mapping[str, str] = field(default_factory=dict)
    cursor: str | None = None
    # the key's rate buckets a request counts against; the last one is blamed for its 429s (§5)
    buckets: tuple[str, ...] = GENERAL
    # the buckets a `<path>/<id>/` read spends, where they differ from the list's (§5)
    detail_buckets: tuple[str, ...] | None = None
    # 504/512/513 and ClickHouse's wait-less 429s mean the query was too big: ask for smaller pages or
    # narrower date windows, never the same again (§6)
    too_big: bool = False
    page_size: int = 100
    detail: bool = False  # list rows are minimal: fetch `<path>/<id>/` for the full record
    children: Mapping[str, Child] = field(default_factory=dict)
    # each run lists the endpoint once per parameter set (soft-deleted rows need their own listing)
    scans: tuple[Mapping[str, str], ...] = ({},)
    # full listings whose rows can vanish upstream: each scan is one listing, keyed by a `listing` column,
    # and a proven listing deletes the stored rows it no longer holds (sync.py `read_full`)
    delete_missing: bool = False
    final_statuses: tuple[str, ...] = ()
    # scan parameters the rows do not echo back, stored as columns (property type, §7.5)
    scan_tags: tuple[str, ...] = ()
    # rows crossing the date_from edge come back partial and must not replace complete ones (§7.1):
    # a row spans `cursor` to `end` and may still grow while `ongoing` is not false; partial rows are
    # read again whole by `reread`, a parameter taking a JSON list of ids
    partial_at_edge: bool = False
    end: str | None = None
    ongoing: str | None = None
    reread: str | None = None
    # scans with type `group` expand to one per group type index this path lists (§7.5)
    group_types: str | None = None
    # full listings: (parameter, field) asking the server to sort ascending on a field rows never change;
    # servers that ignore the parameter are detected (sync.py `_honours_ordering`)
    ordering: tuple[str, str] | None = None
    # full listings: most passes over a list that keeps changing before its rows count as unproven
    max_passes: int = 4
    # key columns added after a release created the table: nullable, so an existing table can gain them;
    # its older rows (null there) are deleted once a load has written every current row again
    late_key: tuple[str, ...] = ()
    # declared columns PostHog does not send as row fields (tags we add, values lifted out of nested
    # objects): the column contract test (tests/test_contract.py) checks every other column against
    # the field lists in shared/posthog-fields.json
    derived: tuple[str, ...] = ()
    # list-row fields PostHog fills with a placeholder, the real value being only in `/:id/` (§7.1): stored
    # null from list rows rather than as if it were the value
    list_placeholders: tuple[str, ...] = ()
    # columns whose declared type changed, with the type an earlier release declared: a table created
    # then keeps that type (the data-type contract is frozen), its values converted to it (`column_types`)
    retyped: Mapping[str, ColumnType] = field(default_factory=dict)
    # when PostHog removed the endpoint (e.g. "2026"): a 404 (or a FOSS build's 501) on its list means it
    # is gone from this server, not skipped; the rows exported before stay
    removed: str | None = None
    # the columns tying a row to a person or a recording, for `forget`
    traces: Traces = Traces()
    # date_from lists that drop deleted rows without a trace (§7.1): the timestamp column a run sets on a
    # stored row it finds deleted upstream; the row is kept (pipelines/deletions.py)
    deleted_mark: str | None = None
    # PostHog's most rows per page: a larger `limit` is clipped to it (playlists, §7.7)
    max_page_size: int | None = None
    # another listing per row, `<path>/<row[lookup]>/<members.endpoint.path>/`, landing as its own table
    members: Members | None = None

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables this endpoint's resource loads (child tables aside): its own and its members'."""
        return (self.name, *((self.members.endpoint.name,) if self.members else ()))
    # columns lifted out of nested objects: column -> dotted path into the row (list them in `derived`)
    lifted: Mapping[str, str] = field(default_factory=dict)
    # watermark lists read once per row of a parent listing, whose `id` fills the `:<name>` placeholder
    # in `path` (observations per scanner, §7.6); the reader lists the parent itself, and each parent
    # keeps its own cursor
    parent: Endpoint | None = None
    # watermark: re-read the rows not final at the last sync through this csv list filter, naming the
    # row field it takes (observations' `session_id`, §7.6); None re-reads each by `<path>/<id>/`
    reread_by: str | None = None

    @property
    def ascending(self) -> bool:
        """Whether the list comes oldest first, so a stopped scan may keep its cursor."""
        return self.params.get("order_direction") == "ASC"

    def column_types(self, stored: Mapping[str, str] | None = None) -> dict[str, ColumnType]:
        """The declared columns, with a `retyped` column at its earlier type where the table has that one."""
        columns = dict(self.columns)
        for name, earlier in self.retyped.items():
            if stored and stored.get(name) == earlier:
                columns[name] = earlier
        return columns

    @property
    def key(self) -> tuple[str, ...]:
        """The table's primary key: every key starts with project_id."""
        return ("project_id", *self.primary_key)


RECORDINGS = Endpoint(
    name="session_recordings",
    path="session_recordings",
    paging="has_next",
    sync="date_from",
    primary_key=("id",),
    cursor="start_time",
    end="end_time",
    ongoing="ongoing",
    reread="session_ids",
    # the ClickHouse-backed listing has its own tier besides the analytics bucket (§5)
    buckets=("analytics", "recordings_list"),
    detail_buckets=("analytics",),  # retrieve has no listing tier
    too_big=True,
    # no API cap (HogQL stops at 50,000); list calls are the scarce budget (60/h on free plans), and a
    # page that hits the 60 s query timeout is retried at half the size
    page_size=10_000,
    partial_at_edge=True,
    # "web" and null in every list row, mobile recordings too; only `/:id/` has them (§7.1)
    list_placeholders=("snapshot_source", "snapshot_library"),
    # `id` is the session id; `viewers` lists the emails of the PostHog users who watched it
    traces=Traces(distinct_ids=("distinct_id",), persons=("person",), sessions=("id",), email_lists=("viewers",)),
    deleted_mark="deleted_at",
    derived=("deleted_at",),
    # JSON-decoded by the server (§7.1): send ISO dates with Z and no unknown params.
    params={"order": "start_time", "order_direction": "ASC"},
    columns={
        "id": "text",
        "distinct_id": "text",
        "viewed": "bool",
        "viewers": "json",
        "recording_duration": "double",
        "active_seconds": "double",
        "inactive_seconds": "double",
        "start_time": "timestamp",
        "end_time": "timestamp",
        "click_count": "bigint",
        "keypress_count": "bigint",
        "mouse_activity_count": "bigint",
        "console_log_count": "bigint",
        "console_warn_count": "bigint",
        "console_error_count": "bigint",
        "start_url": "text",
        "person": "json",
        "retention_period_days": "bigint",
        "expiry_time": "timestamp",
        "recording_ttl": "bigint",
        "snapshot_source": "text",
        "snapshot_library": "text",
        "storage": "text",
        "ongoing": "bool",
        "activity_score": "double",
        "has_summary": "bool",
        "summary_outcome": "json",
        "external_references": "json",
        "matches_filters": "bool",
        "deleted_at": "timestamp",
    },
)

SUMMARIES = Endpoint(
    name="session_group_summaries",
    path="session_group_summaries",
    paging="drf",
    sync="date_from",
    primary_key=("id",),
    cursor="created_at",
    detail=True,
    removed="2026",  # PR #80312, 2026-08-13: newer servers 404, FOSS builds 501; the rows exist nowhere else
    # a summary covers several people's sessions: an erased one leaves its list, the summary stays
    traces=Traces(session_lists=("session_ids",)),
    columns={
        "id": "text",
        "title": "text",
        "name": "text",
        "session_count": "bigint",
        "session_ids": "json",
        "summary": "json",
        "extra_summary_context": "json",
        "extra_input_context": "json",  # older servers' detail rows
        "run_metadata": "json",
        "created_at": "timestamp",
        "created_by": USER,
        "team": "bigint",
    },
)

DESKTOP = Endpoint(
    name="desktop_recordings",
    path="desktop_recordings",
    paging="drf",
    sync="watermark",
    primary_key=("id",),
    cursor="started_at",
    final_statuses=("ready", "error"),
    removed="2026",  # probably: the newest servers have no route for it (§7.3)
    # a user id (§7.3); declared json until 2026-12
    retyped={"created_by": "json"},
    columns={
        "id": "text",
        "team": "bigint",
        "created_by": "bigint",
        "sdk_upload_id": "text",
        "recall_recording_id": "text",
        "platform": "text",
        "meeting_title": "text",
        "meeting_url": "text",
        "duration_seconds": "double",
        "status": "text",
        "notes": "text",
        "error_message": "text",
        "video_url": "text",
        "video_size_bytes": "bigint",
        "transcript_text": "text",
        "summary": "text",
        "tasks_generated_at": "timestamp",
        "summary_generated_at": "timestamp",
        "started_at": "timestamp",
        "completed_at": "timestamp",
        "created_at": "timestamp",
        "updated_at": "timestamp",
    },
    children={
        "transcript_segments": Child(
            {
                "timestamp": "double",
                "speaker": "text",
                "text": "text",
                "confidence": "double",
                "is_final": "bool",
            }
        ),
        "participants": Child({"participant": "text"}, scalar="participant"),
        "extracted_tasks": Child({"title": "text", "description": "text", "assignee": "text"}),
    },
)

SUBSCRIPTIONS = Endpoint(
    name="subscriptions",
    path="subscriptions",
    paging="drf",
    sync="full",
    primary_key=("id",),
    # soft-deleted rows are hidden unless asked for, and `deleted=true` returns only them (§7.4)
    scans=({}, {"deleted": "true"}),
    # newer servers sort on request (default -created_at); older ones have no order at all (§7.4).
    # Oldest first, new subscriptions land behind the pages already read.
    ordering=("ordering", "created_at"),
    columns={
        "id": "bigint",
        # what is delivered: insight or dashboard (null on AI-prompt rows), or an AI prompt (§7.4); the kind
        # is `resource_type` on the newest servers, `content_type` (+ `ai_config`) on some mid-2026 ones
        "resource_type": "text",
        "content_type": "text",
        "ai_config": "json",
        "dashboard": "bigint",
        "insight": "bigint",
        "insight_short_id": "text",
        "resource_name": "text",
        "dashboard_export_insights": "json",
        "prompt": "text",
        "target_type": "text",
        "target_value": "text",
        "integration_id": "bigint",
        "frequency": "text",
        "interval": "bigint",
        "byweekday": "json",
        "bysetpos": "bigint",
        "count": "bigint",
        "start_date": "timestamp",
        "until_date": "timestamp",
        "next_delivery_date": "timestamp",
        "created_at": "timestamp",
        "created_by": USER,
        "deleted": "bool",
        # false once PostHog paused a broken delivery itself; null on older servers, which have no pause
        "enabled": "bool",
        "title": "text",
        "summary": "text",
        "summary_enabled": "bool",
        "summary_prompt_guide": "text",
        "invite_message": "text",  # always null in responses: PostHog does not store it
    },
)

PROPERTY_DEFINITIONS = Endpoint(
    name="property_definitions",
    path="property_definitions",
    paging="drf",
    sync="full",
    # `type`/`group_type_index` are not in the rows: we tag them (§7.5). The index is null unless
    # type is group, so it cannot be in a dlt key: `listing` (`event`, `group/1`, ...) names the scan.
    # Virtual ids repeat across listings, so the key is (listing, id).
    primary_key=("listing", "id"),
    late_key=("listing",),  # added 2026-12
    derived=("listing", "type", "group_type_index"),
    scan_tags=("type", "group_type_index"),
    delete_missing=True,
    group_types="groups_types",
    scans=(
        {"type": "event"},
        {"type": "person"},
        {"type": "session"},
        {"type": "group"},  # expanded to one scan per group type index of the project
    ),
    columns={
        "id": "text",
        "listing": "text",
        "type": "text",
        "group_type_index": "bigint",
        "name": "text",
        "description": "text",
        "tags": "json",
        "is_numerical": "bool",
        "property_type": "text",
        "is_seen_on_filtered_events": "bool",
        "is_optimized": "bool",
        "virtual": "bool",
        "hidden": "bool",
        "verified": "bool",
        "verified_at": "timestamp",
        "verified_by": USER,
        "updated_at": "timestamp",
        "updated_by": USER,
    },
)

PLAYLIST_ITEMS = Endpoint(
    name="session_recording_playlist_items",
    # `/:short_id/recordings/`: the recordings list shape (§7.1). Only membership lands here; the
    # recordings' own fields are in session_recordings (these rows can come from Postgres with nulls)
    path="recordings",
    paging="has_next",
    sync="full",
    primary_key=("playlist_id", "session_id"),
    buckets=ANALYTICS,  # ClickHouse only, no listing tier (§5)
    page_size=100,
    derived=("playlist_id", "playlist_short_id", "session_id"),
    traces=Traces(sessions=("session_id",)),  # a forgotten person's recordings leave every collection
    columns={"playlist_id": "bigint", "playlist_short_id": "text", "session_id": "text"},
)

PLAYLISTS = Endpoint(
    name="session_recording_playlists",
    path="session_recording_playlists",
    paging="drf",
    sync="full",
    primary_key=("id",),
    buckets=ANALYTICS,
    page_size=100,
    max_page_size=500,  # larger limits are clipped (§7.7)
    # deletions are never listed (§7.7): a full scan each run, and a proven one deletes what it no longer holds
    delete_missing=True,
    # oldest first on a field rows never change, with an id tiebreaker on newer servers; the six
    # synthetic rows (null timestamps) come last under ascending orders
    ordering=("order", "created_at"),
    derived=("items_partial",),
    members=Members(
        endpoint=PLAYLIST_ITEMS,
        lookup="short_id",
        parent={"playlist_id": "id", "playlist_short_id": "short_id"},
        member=("session_id", "id"),
        # saved filters hold no items: their recordings are whatever their filters match now (§7.7)
        read_when=("type", ("collection",)),
        paged_when="is_synthetic",
        expected=("recordings_counts", "collection", "count"),
        flag="items_partial",
        noun="recordings",
    ),
    columns={
        "id": "bigint",
        "short_id": "text",
        "name": "text",
        "derived_name": "text",
        "description": "text",
        "pinned": "bool",
        "created_at": "timestamp",
        "created_by": USER,
        "deleted": "bool",
        "filters": "json",
        "last_modified_at": "timestamp",
        "last_modified_by": USER,
        "recordings_counts": "json",
        "type": "text",
        "is_synthetic": "bool",
        "items_partial": "bool",
    },
)

VISION_SCANNERS = Endpoint(
    name="vision_scanners",
    path="vision/scanners",
    paging="drf",
    # no date filter and hard deletes (§7.6): a full scan (a few rows), and a scanner gone from a proven
    # listing is deleted
    sync="full",
    primary_key=("id",),
    delete_missing=True,
    columns={
        "id": "text",
        "name": "text",
        "description": "text",
        "scanner_type": "text",
        "scanner_config": "json",
        "query": "json",
        "sampling_rate": "double",
        "sampling_mode": "text",
        "provider": "text",
        "model": "text",
        "enabled": "bool",
        "emits_signals": "bool",
        "scanner_version": "bigint",
        # the counters move without updated_at (§7.6): every full scan refreshes them
        "estimated_monthly_observations": "bigint",
        "credits_per_observation": "bigint",
        "estimated_monthly_credits": "bigint",
        "credits_this_month": "bigint",
        "observations_this_month": "bigint",
        "last_swept_at": "timestamp",
        "created_at": "timestamp",
        "created_by": USER,
        "updated_at": "timestamp",
        "feedback_themes": "json",
        "user_access_level": "text",
    },
)

# the parts of an observation whose shape is fixed per scanner type (`model_output`, §7.6), as columns
_OUTPUT = "scanner_result.model_output"
_RESULT_COLUMNS: dict[str, tuple[str, ColumnType]] = {
    "scanner_type": ("scanner_snapshot.scanner_type", "text"),
    "scanner_name": ("scanner_snapshot.name", "text"),
    "scanner_version": ("scanner_snapshot.scanner_version", "bigint"),
    "signals_count": ("scanner_result.signals_count", "bigint"),
    "result_confidence": (f"{_OUTPUT}.confidence", "double"),
    "result_verdict": (f"{_OUTPUT}.verdict", "text"),  # monitor
    "result_score": (f"{_OUTPUT}.score", "double"),  # scorer
    "result_label": (f"{_OUTPUT}.label", "text"),  # scorer
    "result_title": (f"{_OUTPUT}.title", "text"),  # summarizer
    "result_summary": (f"{_OUTPUT}.summary", "text"),
    "result_intent": (f"{_OUTPUT}.intent", "text"),
    "result_outcome": (f"{_OUTPUT}.outcome", "text"),
    "result_reasoning": (f"{_OUTPUT}.reasoning", "text"),  # monitor, classifier, scorer
    "label_is_correct": ("label.is_correct", "bool"),  # a user's feedback on the result
    "label_feedback": ("label.feedback", "text"),
}

VISION_OBSERVATIONS = Endpoint(
    name="vision_observations",
    path="vision/scanners/:scanner_id/observations",
    parent=VISION_SCANNERS,
    paging="drf",
    # no date filter, newest first (`-created_at, id`, §7.6): page back to the watermark, then re-read
    # the observations not final at the last sync
    sync="watermark",
    cursor="created_at",
    final_statuses=("succeeded", "failed", "ineligible"),
    reread_by="session_id",
    # one observation per (scanner, session): a retry deletes the failed row and makes a new one with
    # a new id for the same session (§7.6), which must replace it here
    primary_key=("scanner_id", "session_id"),
    # `recording_subject_email` is the recorded person's email (PII, §7.6)
    traces=Traces(distinct_ids=("distinct_id",), emails=("recording_subject_email",), sessions=("session_id",)),
    lifted={name: path for name, (path, _) in _RESULT_COLUMNS.items()},
    derived=tuple(_RESULT_COLUMNS),
    columns={
        "id": "text",
        "scanner_id": "text",
        "session_id": "text",
        "status": "text",
        "error_reason": "text",
        "workflow_id": "text",
        "scanner_snapshot": "json",
        "scanner_result": "json",
        "triggered_by": "text",
        "triggered_by_user": USER,
        "distinct_id": "text",
        "recording_subject_email": "text",
        "previous_observation_id": "text",
        "next_observation_id": "text",
        "label": "json",
        "started_at": "timestamp",
        "completed_at": "timestamp",
        "created_at": "timestamp",
        **{name: ctype for name, (_, ctype) in _RESULT_COLUMNS.items()},
    },
    children={
        "tags": Child({"tag": "text"}, scalar="tag", path=f"{_OUTPUT}.tags"),  # classifier
        "tags_freeform": Child({"tag": "text"}, scalar="tag", path=f"{_OUTPUT}.tags_freeform"),
        "friction_points": Child({"friction_point": "text"}, scalar="friction_point",  # summarizer
                                 path=f"{_OUTPUT}.friction_points"),
        "keywords": Child({"keyword": "text"}, scalar="keyword", path=f"{_OUTPUT}.keywords"),
    },
)

# Every reader yields each key at most once per run (see sync.py), so dlt can skip de-duplicating its
# staging data: the most expensive step of a large merge.
MERGE = {"disposition": "merge", "strategy": "delete-insert", "deduplicated": True}

ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        RECORDINGS, SUMMARIES, DESKTOP, SUBSCRIPTIONS, PROPERTY_DEFINITIONS, PLAYLISTS, VISION_SCANNERS,
        VISION_OBSERVATIONS,
    )
}
