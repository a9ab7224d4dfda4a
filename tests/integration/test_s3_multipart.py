"""Large parts go up as multipart uploads, streamed from the spooled file, and still
read back whole with the sha256 and ETag the ledger records (moto's S3 server)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest
from boto3.s3.transfer import TransferConfig

from etl.adapters.s3 import S3PartWriter
from etl.bootstrap import Services

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def test_a_part_over_the_threshold_is_uploaded_in_parts_and_reads_back_whole(
    services: Services,
) -> None:
    # S3's smallest part is 5 MiB: an 11 MiB body in 5 MiB parts is three of them.
    writer = S3PartWriter(
        services.parts.client,
        services.parts.bucket,
        transfer=TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB),
    )
    body = os.urandom(11 * MIB)
    sha256 = hashlib.sha256(body).hexdigest()
    key = f"it/{uuid.uuid4()}/part-00000.parquet"

    etag = writer.put_part(
        key, io.BytesIO(body), content_type="application/octet-stream", sha256=sha256, rows=1
    )

    assert etag.strip('"').endswith("-3"), etag  # the ETag of a three-part upload
    assert writer.part_metadata(key) == {
        "bytes": len(body),
        "etag": etag,
        "sha256": sha256,
        "rows": "1",
    }
    assert hashlib.sha256(writer.get_bytes(key)).hexdigest() == sha256
