"""The part writer against moto's S3 server."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pytest

from etl.bootstrap import Services
from etl.domain.encoding import JsonLinesGzipWriter, read_json_lines_gzip

pytestmark = pytest.mark.integration


def test_a_part_round_trips_with_its_checksum_as_metadata(services: Services) -> None:
    buffer = io.BytesIO()
    writer = JsonLinesGzipWriter(buffer)
    writer.write_records([{"order_id": i, "note": "é"} for i in range(1000)])
    stats = writer.close()
    key = f"it/{uuid.uuid4()}/part-00000.jsonl.gz"

    etag = services.parts.put_part(
        key, buffer, content_type="application/gzip", sha256=stats.sha256, rows=stats.rows
    )

    data = services.parts.get_bytes(key)
    assert hashlib.sha256(data).hexdigest() == stats.sha256
    assert read_json_lines_gzip(data)[999] == {"order_id": 999, "note": "é"}
    assert services.parts.part_metadata(key) == {
        "bytes": stats.bytes,
        "etag": etag,
        "sha256": stats.sha256,
        "rows": "1000",
    }
    [listed] = services.parts.list_objects(key)
    assert (listed.size, listed.etag) == (stats.bytes, etag)  # one listing checks a run


def test_missing_objects_have_no_metadata_and_listing_is_by_prefix(services: Services) -> None:
    prefix = f"it/{uuid.uuid4()}"
    assert services.parts.part_metadata(f"{prefix}/nothing") is None
    services.parts.put_json(f"{prefix}/a/_manifest.json", {"x": 1})
    services.parts.put_marker(f"{prefix}/a/_SUCCESS")
    services.parts.put_marker(f"{prefix}/b/_SUCCESS")
    assert sorted(services.parts.list_keys(f"{prefix}/a/")) == [
        f"{prefix}/a/_SUCCESS",
        f"{prefix}/a/_manifest.json",
    ]
    assert json.loads(services.parts.get_bytes(f"{prefix}/a/_manifest.json")) == {"x": 1}
