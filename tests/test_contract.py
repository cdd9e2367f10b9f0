"""The column contract: the endpoint table and the fake against shared/posthog-fields.json.

Every field PostHog sends (in any version) must be a declared column or a child table, every declared column
must be a field PostHog sends (or `Endpoint.derived`), and the fake must send exactly the fields of the version
it plays. The next PostHog change recorded in posthog-fields.json fails here instead of landing as silent
nulls. Endpoints are found by iterating ENDPOINTS, so a new one is checked once it is in the table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_posthog import FakePostHog
from fake_posthog.versions import VARIANTS
from pipelines.runner import SyncOptions, run_sync
from sources.posthog import ENDPOINTS
from sources.posthog.endpoints import Endpoint

FIELDS_JSON = Path(os.environ.get("POSTHOG_FIELDS_JSON")
                   or Path(__file__).resolve().parents[2] / "shared" / "posthog-fields.json")
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# ENDPOINTS name -> posthog-fields.json name, where they differ
JSON_NAMES = {"session_recording_playlist_items": "session_recording_playlist_recordings"}
# ENDPOINTS entries posthog-fields.json does not describe, with the reason (none so far)
NOT_IN_JSON: dict[str, str] = {}
# (endpoint, field) pairs allowed to differ from the JSON, with the reason (none so far)
EXCEPTIONS: dict[tuple[str, str], str] = {}
# fields a row has only under a condition the variants cannot say
ROW_CONDITIONS: dict[tuple[str, str], Callable[[dict[str, Any]], bool]] = {
    ("property_definitions", "virtual"): lambda row: str(row.get("id", "")).startswith("$builtin_"),  # §7.5
}
# JSON types and the declared column types that hold them without loss
COMPATIBLE = {
    "string": {"text"}, "uuid": {"text"}, "integer": {"bigint", "double"}, "number": {"double"},
    "boolean": {"bool"}, "datetime": {"timestamp"}, "object": {"json"}, "array": {"json"},
}


def _document() -> dict[str, Any]:
    if not FIELDS_JSON.is_file():
        pytest.fail(f"no {FIELDS_JSON} (set POSTHOG_FIELDS_JSON to the copy of shared/posthog-fields.json)")
    return json.loads(FIELDS_JSON.read_text())["endpoints"]  # type: ignore[no-any-return]


def _entry(endpoint: Endpoint) -> dict[str, Any]:
    document = _document()
    name = JSON_NAMES.get(endpoint.name, endpoint.name)
    if name not in document:
        pytest.fail(f"{endpoint.name}: no entry {name!r} in posthog-fields.json; map it in JSON_NAMES or list "
                    "it in NOT_IN_JSON with the reason")
    entry = document[name]
    if "fields_from" in entry:  # the same rows as another endpoint (playlist recordings = recordings)
        entry = {**document[entry["fields_from"]], **{k: v for k, v in entry.items() if k != "fields_from"}}
    return entry


def _fields(endpoint: Endpoint) -> dict[str, dict[str, Any]]:
    """Every field of the endpoint's rows in any version: the list row's, and the detail row's where we read it."""
    entry = _entry(endpoint)
    fields = dict(entry["fields"])
    if endpoint.detail:
        fields.update(entry.get("retrieve_fields", {}))
    return fields


def _variant_fields(endpoint: Endpoint, variant: str | None) -> set[str]:
    """The fields a list row has in one version (fields with `only_in` exist only in those)."""
    return {name for name, spec in _entry(endpoint)["fields"].items()
            if variant is None or variant in spec.get("only_in", [variant])}


CHECKED = [name for name in ENDPOINTS if name not in NOT_IN_JSON]


@pytest.mark.parametrize("name", CHECKED)
def test_declared_columns_are_exactly_the_fields_posthog_sends(name: str) -> None:
    endpoint = ENDPOINTS[name]
    fields = _fields(endpoint)
    declared = set(endpoint.columns) - set(endpoint.derived)
    excepted = {f for (e, f) in EXCEPTIONS if e == name}
    not_sent = sorted(declared - set(fields) - excepted)
    not_declared = sorted(set(fields) - declared - set(endpoint.children) - excepted)
    assert not not_sent, f"{name}: declared columns PostHog never sends: {not_sent} (remove, or add to derived)"
    assert not not_declared, f"{name}: PostHog sends fields no column or child table holds: {not_declared}"
    assert set(endpoint.derived) <= set(endpoint.columns) and not set(endpoint.derived) & set(fields), \
        f"{name}: derived columns must be declared and must not be PostHog fields"
    for field, spec in fields.items():
        if field in endpoint.children:
            assert spec["type"] == "array", f"{name}.{field}: a child table from a {spec['type']}"
            continue
        if (name, field) in EXCEPTIONS:
            continue
        # a retyped column keeps its earlier type only in tables made before; new tables get this one
        declared_type = endpoint.columns[field]
        assert declared_type in COMPATIBLE[spec["type"]], \
            f"{name}.{field}: PostHog sends {spec['type']}, declared {declared_type}"


@pytest.mark.parametrize("name", CHECKED)
def test_endpoints_posthog_removed_are_marked_removed(name: str) -> None:
    status = _entry(ENDPOINTS[name]).get("status", "")
    assert ("removed" in status) == (ENDPOINTS[name].removed is not None), \
        f"{name}: posthog-fields.json says {status!r}, the endpoint table removed={ENDPOINTS[name].removed!r}"


def test_every_listed_exception_is_still_needed() -> None:
    for name, reason in NOT_IN_JSON.items():
        assert name in ENDPOINTS and reason
        assert JSON_NAMES.get(name, name) not in _document(), f"{name} is in posthog-fields.json now: check it"
    for (name, field), reason in EXCEPTIONS.items():
        endpoint = ENDPOINTS[name]
        differs = (field in endpoint.columns) != (field in _fields(endpoint) or field in endpoint.children)
        assert differs and reason, f"{name}.{field} agrees with posthog-fields.json now: drop the exception"


def _fake_versions() -> Iterator[tuple[str, str | None]]:
    """(endpoint, version) for every version switch the fake has; endpoints without one: (endpoint, None)."""
    for name in CHECKED:
        variants = _entry(ENDPOINTS[name]).get("variants")
        fake_name = name if name in VARIANTS else JSON_NAMES.get(name, name)
        if fake_name in VARIANTS:
            yield from ((name, v) for v in VARIANTS[fake_name])
        elif variants:  # the fake plays one version: the first (newest) listed
            yield name, next(iter(variants))
        else:
            yield name, None


def _path_pattern(endpoint: Endpoint) -> re.Pattern[str]:
    """The endpoint's list path (posthog-fields.json `path`) as a pattern over request paths."""
    template = _entry(endpoint)["path"]
    return re.compile(re.sub(r":\w+", "[^/]+", re.escape(template).replace(r"\:", ":")).rstrip("/") + "/?")


class _Recorder(httpx.BaseTransport):
    """The fake's in-process transport, keeping every JSON body with its request path."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.bodies = inner, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        content = response.read()
        if response.status_code == 200:
            self.bodies.append((request.url.path, json.loads(content)))
        return httpx.Response(response.status_code, headers=response.headers, content=content)


@pytest.mark.parametrize(("name", "variant"), list(_fake_versions()))
def test_the_fake_sends_exactly_the_fields_of_each_version(tmp_path: Path, name: str, variant: str | None) -> None:
    endpoint = ENDPOINTS[name]
    fake_name = name if name in VARIANTS else JSON_NAMES.get(name, name)
    versions = {fake_name: variant} if variant is not None and fake_name in VARIANTS else None
    fake = FakePostHog(project_ids=[1], now=NOW, recordings=40, desktop_recordings=4, segments=2, summaries=6,
                       subscriptions=12, property_definitions=6, group_types=1, versions=versions)
    recorder = _Recorder(fake.transport())
    options = SyncOptions(
        project_ids=[1], api_key=fake.api_key, host="http://127.0.0.1:9", resources=[name],
        output=str(tmp_path / "contract.duckdb"), pipelines_dir=str(tmp_path / "pipelines"),
        pipeline_name="contract", rate_limit_plan="none", allow_insecure_http=True, quiet=True,
    )
    result = run_sync(options, transport=recorder)
    assert result.ok, result.failures
    pattern = _path_pattern(endpoint)
    rows = [row for path, body in recorder.bodies if pattern.fullmatch(path) and isinstance(body, dict)
            for row in body.get("results") or ()]
    assert rows, f"{name}: no list rows read from the fake (path {pattern.pattern})"
    expected = _variant_fields(endpoint, variant)
    for row in rows:
        wanted = {f for f in expected if ROW_CONDITIONS.get((name, f), lambda _: True)(row)}
        assert set(row) == wanted, (f"{name} ({variant or 'one version'}): missing {sorted(wanted - set(row))}, "
                                    f"not in posthog-fields.json {sorted(set(row) - wanted)}")
