"""S3: writing parts, the manifest and the success marker; reading them back."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from etl.domain.outputs import StoredObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

# Parts from 64 MiB go up as a multipart upload, 16 MiB a request, read from the
# spooled file.
_TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024
)
# DeleteObjects takes at most 1,000 keys a request.
_DELETE_BATCH = 1000


def make_s3_client(endpoint_url: str, region: str) -> S3Client:
    """A boto3 S3 client; an empty endpoint means real AWS."""
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)


class PartNotStored(RuntimeError):
    """Reading a part back right after writing it found other bytes (or none)."""


class S3PartWriter:
    """Puts a run's objects into one bucket, each under a deterministic key."""

    def __init__(self, client: S3Client, bucket: str, transfer: TransferConfig = _TRANSFER) -> None:
        self.client = client
        self.bucket = bucket
        self.transfer = transfer

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (local stand-ins; real buckets are provisioned)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def bucket_problem(self) -> str | None:
        """None if the bucket answers HEAD, else why not."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def put_part(
        self, key: str, body: IO[bytes], *, content_type: str, sha256: str, rows: int
    ) -> str:
        """Upload a part with S3's own SHA-256 checksum, so S3 verifies the bytes it
        receives against the hash computed while the part was written and refuses them
        (BadDigest) if they differ; return its ETag. The sha256 and row count ride along
        as object metadata. Raises PartNotStored if S3 holds other bytes.

        S3 answers an upload with the checksum it stored, so that answer is the check: no
        second request. A store that does not send it back (moto's multipart uploads,
        some S3 look-alikes) is asked with a HEAD.
        """
        size = body.seek(0, 2)
        body.seek(0)
        extra: dict[str, Any] = {
            "ContentType": content_type,
            "Metadata": {"sha256": sha256, "rows": str(rows)},
        }
        if size < self.transfer.multipart_threshold:
            expected = _base64_digest(bytes.fromhex(sha256))
            answer: dict[str, Any] = dict(
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=expected,
                    **extra,
                )
            )
            parts = 1
        else:
            expected, parts, answer = self._put_multipart(key, body, sha256, extra)
        # A multipart object's checksum is the checksum of its parts' checksums, which
        # S3 shows as "<base64>-<parts>" (and moto without the suffix).
        stored = {expected, f"{expected}-{parts}"}
        if answer.get("ChecksumSHA256") is not None:
            if answer["ChecksumSHA256"] not in stored:
                raise PartNotStored(f"S3 does not hold the part just written at {key}")
            return str(answer["ETag"])
        head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        if (
            head.get("ChecksumSHA256") not in stored
            or head["ContentLength"] != size
            or head.get("Metadata", {}).get("sha256") != sha256
        ):
            raise PartNotStored(f"S3 does not hold the part just written at {key}")
        return str(head["ETag"])

    def _put_multipart(
        self, key: str, body: IO[bytes], sha256: str, extra: dict[str, Any]
    ) -> tuple[str, int, dict[str, Any]]:
        """A multipart upload, each part with its SHA-256 checksum for S3 to verify;
        returns the object's (composite) checksum, its number of parts and S3's answer to
        the completion. The bytes
        sent must hash to ``sha256`` as a whole, or the upload is abandoned."""
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", **extra
        )["UploadId"]
        whole = hashlib.sha256()
        digests: list[bytes] = []
        parts: list[CompletedPartTypeDef] = []
        try:
            while data := body.read(self.transfer.multipart_chunksize):
                whole.update(data)
                digest = hashlib.sha256(data).digest()
                checksum = _base64_digest(digest)
                number = len(parts) + 1
                etag = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )["ETag"]
                parts.append({"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum})
                digests.append(digest)
            if whole.hexdigest() != sha256:
                # S3 checked each part against what was read; this ties what was read
                # to what was written.
                raise PartNotStored(
                    f"the part for {key} read back from its spool file is not the part "
                    "that was written"
                )
            answer = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Parts of an abandoned upload are stored (and billed) until aborted.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        composite = _base64_digest(hashlib.sha256(b"".join(digests)).digest())
        return composite, len(parts), dict(answer)

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        """Upload a small JSON document."""
        body = json.dumps(document, indent=2, sort_keys=False).encode("utf-8")
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )

    def put_marker(self, key: str) -> None:
        """Upload an empty marker object."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")

    def part_metadata(self, key: str) -> dict[str, Any] | None:
        """The size and our metadata of an object, or None if it does not exist."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return {"bytes": head["ContentLength"], "etag": head["ETag"], **head.get("Metadata", {})}

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix``, with its size and when it was written."""
        found: list[StoredObject] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(
                StoredObject(item["Key"], item["Size"], item["LastModified"], item["ETag"])
                for item in page.get("Contents", [])
            )
        return found

    def download(self, key: str, target: IO[bytes]) -> bool:
        """Write the object into ``target`` (streamed); False if it does not exist."""
        try:
            self.client.download_fileobj(self.bucket, key, target, Config=self.transfer)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def delete_keys(self, keys: list[str]) -> None:
        """Delete objects, 1,000 a request (unordered within one); raises if S3 refuses any."""
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise RuntimeError(
                    f"S3 refused to delete {len(errors)} objects, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )


def _base64_digest(digest: bytes) -> str:
    # S3's checksum headers carry the digest in base64, not hex.
    return base64.b64encode(digest).decode("ascii")


class LocalS3:
    """An S3 stand-in (moto's server) on a free loopback port, for the demo and tests."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def __enter__(self) -> LocalS3:
        # werkzeug logs every request moto serves; keep the demo's output readable.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


@contextlib.contextmanager
def in_process_s3() -> Iterator[None]:
    """Every S3 client made inside answers from memory (moto), for the embedded demo."""
    from moto import mock_aws

    with mock_aws():
        yield
