"""The part writer against moto's S3 server: parts go up with S3's own SHA-256
checksum, for the server to verify; a large one as a multipart upload, streamed, that
reads back whole with the sha256 and ETag the ledger records."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import json
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from etl.adapters.s3 import S3PartWriter, make_s3_client
from etl.bootstrap import Services
from etl.formats.encoding import JsonLinesGzipWriter

from builders import keys_under, read_json_lines_gzip

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# S3's smallest part is 5 MiB: an 11 MiB body goes up in three parts.
IN_5_MIB_PARTS = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)


@pytest.fixture
def multipart_writer(services: Services) -> S3PartWriter:
    """The session's part writer, uploading in 5 MiB parts from 5 MiB on."""
    return S3PartWriter(services.parts.client, services.parts.bucket, transfer=IN_5_MIB_PARTS)


def new_key() -> str:
    """A part key no test has used."""
    return f"it/{uuid.uuid4()}/part-00000.bin"


def put_bytes(
    writer: S3PartWriter, body: bytes, *, key: str | None = None, hashed: bytes | None = None
) -> tuple[str, str]:
    """``body`` put as a part (one row) at ``key`` (a new one by default), with the sha256
    of ``hashed`` (``body`` itself by default); its key and ETag."""
    key = key or new_key()
    etag = writer.put_part(
        key,
        io.BytesIO(body),
        content_type="application/octet-stream",
        sha256=hashlib.sha256(body if hashed is None else hashed).hexdigest(),
        rows=1,
    )
    return key, etag


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
    assert sorted(keys_under(services.parts, f"{prefix}/a/")) == [
        f"{prefix}/a/_SUCCESS",
        f"{prefix}/a/_manifest.json",
    ]
    assert json.loads(services.parts.get_bytes(f"{prefix}/a/_manifest.json")) == {"x": 1}


def s3_checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_s3_records_the_parts_own_sha256_checksum(services: Services) -> None:
    body = b"".join(f'{{"order_id": {i}}}\n'.encode() for i in range(1000))
    key = f"it/{uuid.uuid4()}/part-00000.jsonl"

    services.parts.put_part(
        key,
        io.BytesIO(body),
        content_type="application/x-ndjson",
        sha256=hashlib.sha256(body).hexdigest(),
        rows=1000,
    )

    attributes = services.parts.client.get_object_attributes(
        Bucket=services.parts.bucket, Key=key, ObjectAttributes=["Checksum"]
    )
    assert attributes["Checksum"]["ChecksumSHA256"] == s3_checksum(body)


def test_a_part_over_the_threshold_is_uploaded_in_parts_and_reads_back_whole(
    multipart_writer: S3PartWriter,
) -> None:
    body = os.urandom(11 * MIB)

    key, etag = put_bytes(multipart_writer, body)

    assert etag.strip('"').endswith("-3"), etag  # the ETag of a three-part upload
    assert multipart_writer.part_metadata(key) == {
        "bytes": len(body),
        "etag": etag,
        "sha256": hashlib.sha256(body).hexdigest(),
        "rows": "1",
    }
    assert multipart_writer.get_bytes(key) == body


def test_a_multipart_part_carries_each_parts_checksum_and_their_composite(
    multipart_writer: S3PartWriter,
) -> None:
    writer = multipart_writer
    body = os.urandom(11 * MIB)

    key, etag = put_bytes(writer, body)

    # S3's checksum of a multipart object: the SHA-256 of its parts' SHA-256 digests.
    digests = [
        hashlib.sha256(body[at : at + 5 * MIB]).digest() for at in range(0, len(body), 5 * MIB)
    ]
    attributes = writer.client.get_object_attributes(
        Bucket=writer.bucket, Key=key, ObjectAttributes=["Checksum", "ETag"]
    )
    assert attributes["Checksum"] == {
        "ChecksumSHA256": s3_checksum(b"".join(digests)),
        "ChecksumType": "COMPOSITE",
    }
    assert etag.strip('"').endswith("-3")
    assert hashlib.sha256(writer.get_bytes(key)).digest() == hashlib.sha256(body).digest()


class ChecksumVerifyingProxy:
    """In front of moto's S3 server, the check S3 makes on upload and moto 5.2.5 does not:
    a request whose ``x-amz-checksum-sha256`` is not the SHA-256 of the body that
    arrives is refused with 400 BadDigest (AWS's answer), and nothing is stored. With
    ``corrupt_in_transit`` set, the proxy first flips one byte of every body it checks, as
    a faulty network path would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.corrupt_in_transit = False
        self.refused: list[str] = []
        self.requests: list[str] = []  # "PUT /bucket/key", in order
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_request(self) -> None:
                proxy.requests.append(f"{self.command} {self.path.split('?')[0]}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                claimed = self.headers.get("x-amz-checksum-sha256")
                if claimed is not None and body:
                    if proxy.corrupt_in_transit:
                        body = bytes([body[0] ^ 0xFF]) + body[1:]
                    if s3_checksum(body) != claimed:
                        proxy.refused.append(f"{self.command} {self.path}")
                        self.answer(400, {"Content-Type": "application/xml"}, BAD_DIGEST)
                        return
                connection = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                relayed = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in {"connection", "transfer-encoding", "content-length"}
                }
                self.answer(response.status, relayed, answer, response.getheader("Content-Length"))
                connection.close()

            def answer(
                self, status: int, headers: dict[str, str], body: bytes, length: str | None = None
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", length or str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_request

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


BAD_DIGEST = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>BadDigest</Code>'
    b"<Message>The SHA256 you specified did not match the calculated checksum.</Message>"
    b"</Error>"
)


@pytest.fixture
def verifying(
    services: Services, s3_endpoint: str
) -> Iterator[tuple[ChecksumVerifyingProxy, S3PartWriter]]:
    """A part writer whose uploads go through the checksum-verifying proxy, in 5 MiB parts
    from 5 MiB on."""
    proxy = ChecksumVerifyingProxy(s3_endpoint)
    client = make_s3_client(proxy.url, services.settings.s3_region)
    yield proxy, S3PartWriter(client, services.parts.bucket, transfer=IN_5_MIB_PARTS)
    proxy.close()


@pytest.mark.parametrize("size", [64 * 1024, 11 * MIB], ids=["single PUT", "multipart"])
def test_honest_bytes_pass_the_servers_checksum_check(
    verifying: tuple[ChecksumVerifyingProxy, S3PartWriter], size: int
) -> None:
    proxy, writer = verifying
    body = os.urandom(size)

    key, _ = put_bytes(writer, body)

    assert proxy.refused == []
    assert writer.get_bytes(key) == body


@pytest.mark.parametrize("size", [64 * 1024, 11 * MIB], ids=["single PUT", "multipart"])
def test_bytes_changed_on_the_way_are_refused_and_nothing_is_stored(
    verifying: tuple[ChecksumVerifyingProxy, S3PartWriter], size: int
) -> None:
    proxy, writer = verifying
    proxy.corrupt_in_transit = True
    key = new_key()

    with pytest.raises(ClientError) as refused:
        put_bytes(writer, os.urandom(size), key=key)

    assert refused.value.response["Error"]["Code"] == "BadDigest"
    assert proxy.refused  # the first PUT (or part) already
    assert writer.part_metadata(key) is None
    uploads = writer.client.list_multipart_uploads(Bucket=writer.bucket, Prefix=key)
    assert uploads.get("Uploads", []) == []  # an upload refused midway is aborted


def test_a_part_whose_bytes_are_not_those_hashed_is_refused(
    verifying: tuple[ChecksumVerifyingProxy, S3PartWriter],
) -> None:
    proxy, writer = verifying
    key = new_key()

    with pytest.raises(ClientError, match="BadDigest"):
        put_bytes(writer, b'{"order_id": 2}\n', key=key, hashed=b'{"order_id": 1}\n')

    assert proxy.refused == [f"PUT /{writer.bucket}/{key}"]
    assert writer.part_metadata(key) is None


def test_a_part_is_checked_by_s3s_answer_to_its_put_with_no_second_request(
    verifying: tuple[ChecksumVerifyingProxy, S3PartWriter],
) -> None:
    proxy, writer = verifying
    body = os.urandom(64 * 1024)

    key, etag = put_bytes(writer, body)

    assert proxy.requests == [f"PUT /{writer.bucket}/{key}"]
    assert writer.part_metadata(key) == {
        "bytes": len(body),
        "etag": etag,
        "sha256": hashlib.sha256(body).hexdigest(),
        "rows": "1",
    }
