"""Parquet to object storage: two syncs into a local S3-compatible server (moto) leave no duplicates."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from packaging.version import Version

from fake_posthog import FakePostHog
from pipelines.runner import SyncOptions
from sources.posthog import ENDPOINTS

from .conftest import PROJECTS, sync
from .test_sync import COMPARED, _norm, truth_rows

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed: pip install -e '.[dev]'")
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[dev]'")
pytest.importorskip("s3fs", reason="s3fs (dlt[s3]) is not installed: pip install -e '.[dev]'")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

BUCKET = "posthog-export"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1 with one empty bucket; dlt's filesystem credentials point at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {**CREDENTIALS, "endpoint_url": endpoint}.items():
            monkeypatch.setenv(f"DESTINATION__FILESYSTEM__CREDENTIALS__{name.upper()}", value)
        client = boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


def _table(s3: Any, prefix: str) -> tuple[list[str], pa.Table]:
    """The object names under `prefix` and the rows of its Parquet files."""
    names = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    parts = [pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=n)["Body"].read()))
             for n in names if n.endswith(".parquet")]
    return names, pa.concat_tables(parts, promote_options="permissive")


def test_parquet_on_s3_has_no_duplicates_after_two_syncs(s3: Any, fake: FakePostHog, options: SyncOptions) -> None:
    options.destination = "parquet"
    options.output = f"s3://{BUCKET}/export"
    sync(options)
    fake.soft_delete_subscription(2, next(s["id"] for s in fake.truth(2, "subscriptions") if not s["deleted"]))
    fake.advance(3 * 3600)
    sync(options)
    for resource in ENDPOINTS:
        names, table = _table(s3, f"export/posthog/{resource}/")
        assert len(names) == 1, names  # compacted into one file, nothing left over
        columns = COMPARED[resource]
        rows = zip(*(table.column(c).to_pylist() for c in ["project_id", *columns]), strict=True)
        landed = [(r[0], *(_norm(c, v) for c, v in zip(columns, r[1:], strict=True))) for r in rows]
        assert len(landed) == len(set(landed)), resource
        assert set(landed) == truth_rows(fake, resource), resource
    names, segments = _table(s3, "export/posthog/desktop_recordings__transcript_segments/")
    keys = list(zip(*(segments.column(c).to_pylist() for c in ["project_id", "desktop_recording_id", "position"]),
                    strict=True))
    assert len(names) == 1 and len(keys) == len(set(keys)) > 0


@pytest.mark.xfail(
    Version(duckdb.__version__) >= Version("2"), strict=True,
    reason="dlt 1.31's filesystem SQL client calls DuckDB relation.fetchone() (gone in DuckDB 2) to create the "
    "bucket secret, so pipeline.dataset() cannot open a bucket",
)
def test_status_reads_parquet_on_s3(
    s3: Any, fake: FakePostHog, options: SyncOptions, capsys: pytest.CaptureFixture[str]
) -> None:
    from .test_status import status_json

    options.destination = "parquet"
    options.output = f"s3://{BUCKET}/export"
    sync(options)
    doc = status_json(capsys, "--destination", "parquet", "--output", options.output,
                      "--pipeline-name", options.pipeline_name)
    assert doc["state_found"] and doc["output"] == options.output
    assert {(e["project_id"], e["resource"]): e["rows"] for e in doc["resources"]} == {
        (p, r): len(fake.truth(p, r)) for p in PROJECTS for r in ENDPOINTS
    }
    assert {e["status"] for e in doc["resources"]} == {"ok"}
