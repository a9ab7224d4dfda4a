"""What ``python -m bench`` measures the pipeline against, beside the naive script:

- the honest limit of each format: the source's rows moved into that format with no
  Python per row and no transform at all, over two processes (one per core), each
  taking half the source's key range. What the machine costs to read, encode, compress
  and store these rows: no pipeline that also transforms them can be faster. (The
  records made by orders_daily's transform written in SQL were no limit: PostgreSQL
  evaluates that SQL slower than Arrow does, and the pipeline beat it twice over.)
- the best peer: a plain ``multiprocessing.Pool(2)`` script doing the pipeline's job
  (its chunks, its row transform, jsonl.gz, one PUT a chunk, a manifest).

Each function returns a Baseline, timed from its start (processes started inside the
timing) to its last PUT.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy.engine import make_url

from etl.adapters.db import SqlSource, make_engine
from etl.domain.chunks import ChunkRange, plan_chunks
from etl.formats.encoding import DEFAULT_COMPRESSION
from etl.pipelines.orders import ORDERS_COLUMNS, ORDERS_DAILY, transform_orders

PROCESSES = 2  # one per core
# Large reads for the compressor: per-call overhead vanishes, memory stays small.
BLOCK_BYTES = 8 * 1024 * 1024
# The pipeline's levels: gzip for jsonl.gz, zstd inside Parquet.
GZIP_LEVEL = DEFAULT_COMPRESSION["jsonl.gz"]
ZSTD_LEVEL = DEFAULT_COMPRESSION["parquet"]
# Parquet row groups of at least 64k rows, as issue 16 asks of the pipeline.
ROW_GROUP_ROWS = 65_536
# The peer's batch: what its server-side cursor fetches and its transform takes at once.
PEER_BATCH = 5000
# COPY's CSV with a quote and a delimiter that never occur in JSON text: each value
# comes out verbatim (the text format would double every backslash).
VERBATIM_CSV = "FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02'"


@dataclass(frozen=True)
class Where:
    """Where a baseline's processes read and write; picklable, for the pool."""

    dsn: dict[str, Any]
    s3_endpoint: str
    s3_region: str
    bucket: str


@dataclass
class Baseline:
    """What one baseline did: its wall time, the records it wrote and their bytes
    (uncompressed JSON text where it has one, and as stored)."""

    wall_s: float
    records: int
    bytes_out: int
    raw_bytes: int | None = None
    parts: int = 0


def where_of(database_url: str, s3_endpoint: str, s3_region: str, bucket: str) -> Where:
    """The psycopg2 arguments of a SQLAlchemy URL, and the S3 to write to."""
    url = make_url(database_url)
    dsn = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return Where({k: v for k, v in dsn.items() if v is not None}, s3_endpoint, s3_region, bucket)


def plan(database_url: str, chunk_size: int) -> list[ChunkRange]:
    """orders_daily's chunks of ``chunk_size`` rows, by the product's own planner."""
    engine = make_engine(database_url)
    try:
        source = SqlSource(engine, ORDERS_DAILY.source)
        span = source.key_span()
        return plan_chunks(span, source.key_boundaries(chunk_size, span))
    finally:
        engine.dispose()


def halves(database_url: str) -> list[ChunkRange]:
    """The source's keys in two ranges even in rows, one a process."""
    engine = make_engine(database_url)
    try:
        rows = SqlSource(engine, ORDERS_DAILY.source).key_span().rows
    finally:
        engine.dispose()
    return plan(database_url, -(-rows // PROCESSES))


def _connect(where: Where) -> Any:
    import psycopg2

    return psycopg2.connect(**where.dsn)


def _s3(where: Where) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=where.s3_endpoint or None, region_name=where.s3_region)


def _in_range(half: ChunkRange, column: str) -> tuple[str, tuple[Any, Any]]:
    below = "<=" if half.key_hi_inclusive else "<"
    return f"{column} >= %s AND {column} {below} %s", (half.key_lo, half.key_hi)


def _json_half(job: tuple[Where, ChunkRange]) -> tuple[int, int, int]:
    """One process of the jsonl.gz limit: PostgreSQL's own JSON of the half's rows
    (``row_to_json``), spooled by COPY, compressed in large blocks by zlib-ng, one PUT.
    Returns (records, JSON bytes, gzip bytes)."""
    # zlib-ng: zlib's format and levels, in C, the fastest gzip at levels 4 to 6 here. ISA-L
    # (isal) is faster still but has no level above 3, so it would not be the same job.
    from zlib_ng import zlib_ng

    where, half = job
    condition, bounds = _in_range(half, "id")
    query = (
        "SELECT row_to_json(r)::text FROM ("
        f"SELECT {', '.join(ORDERS_COLUMNS)} FROM orders WHERE {condition} ORDER BY id) AS r"
    )
    connection = _connect(where)
    try:
        with tempfile.TemporaryFile() as spool, tempfile.TemporaryFile() as packed:
            with connection.cursor() as cursor:
                cursor.execute("SET TimeZone = 'UTC'")
                statement = cursor.mogrify(query, bounds).decode()
                cursor.copy_expert(f"COPY ({statement}) TO STDOUT WITH ({VERBATIM_CSV})", spool)
            raw_bytes = spool.tell()
            spool.seek(0)
            compressor = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, 31)  # 31: gzip
            records = 0
            while block := spool.read(BLOCK_BYTES):
                records += block.count(b"\n")
                packed.write(compressor.compress(block))
            packed.write(compressor.flush())
            size = packed.tell()
            packed.seek(0)
            _s3(where).put_object(
                Bucket=where.bucket, Key=f"bench/limit/part-{half.index}.jsonl.gz", Body=packed
            )
    finally:
        connection.close()
    return records, raw_bytes, size


# The source's columns in Arrow, as COPY prints them (amount numeric(14, 3)).
def _source_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("customer_email", pa.string()),
            ("amount", pa.decimal128(14, 3)),
            ("currency", pa.string()),
            ("status", pa.string()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def _parquet_half(job: tuple[Where, ChunkRange]) -> tuple[int, int, int]:
    """One process of the parquet limit: COPY's CSV of the half's rows to a file, read
    by Arrow in the columns' own types, written as Parquet (zstd 3, row groups of 64k
    rows), one PUT. Returns (records, CSV bytes, Parquet bytes)."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    where, half = job
    schema = _source_schema()
    condition, bounds = _in_range(half, "id")
    query = f"SELECT {', '.join(ORDERS_COLUMNS)} FROM orders WHERE {condition} ORDER BY id"
    connection = _connect(where)
    try:
        with (
            tempfile.NamedTemporaryFile(suffix=".csv") as spool,
            tempfile.NamedTemporaryFile(suffix=".parquet") as packed,
        ):
            with connection.cursor() as cursor:
                # COPY prints timestamptz as "2026-01-01 00:00:07+00", which Arrow reads.
                cursor.execute("SET TimeZone = 'UTC'")
                statement = cursor.mogrify(query, bounds).decode()
                cursor.copy_expert(f"COPY ({statement}) TO STDOUT WITH (FORMAT csv)", spool)
            spool.flush()
            raw_bytes = spool.tell()
            table = pa_csv.read_csv(
                spool.name,
                # One thread: a process per core is the parallelism.
                read_options=pa_csv.ReadOptions(column_names=schema.names, use_threads=False),
                convert_options=pa_csv.ConvertOptions(column_types=schema),
            )
            pq.write_table(
                table,
                packed.name,
                compression="zstd",
                compression_level=ZSTD_LEVEL,
                row_group_size=ROW_GROUP_ROWS,
            )
            with open(packed.name, "rb") as body:
                size = body.seek(0, 2)
                body.seek(0)
                _s3(where).put_object(
                    Bucket=where.bucket, Key=f"bench/limit/part-{half.index}.parquet", Body=body
                )
    finally:
        connection.close()
    return table.num_rows, raw_bytes, size


def limit(output_format: str, where: Where, parts: list[ChunkRange]) -> Baseline:
    """The honest limit of ``output_format`` ("jsonl.gz" or "parquet"): one process per
    range of ``parts`` (the source's halves), from the processes' start to both PUTs."""
    work = {"jsonl.gz": _json_half, "parquet": _parquet_half}[output_format]
    began = time.monotonic()
    with multiprocessing.Pool(len(parts)) as pool:
        done = pool.map(work, [(where, part) for part in parts], chunksize=1)
    wall = time.monotonic() - began
    return Baseline(
        wall,
        records=sum(records for records, _, _ in done),
        raw_bytes=sum(raw for _, raw, _ in done),
        bytes_out=sum(size for _, _, size in done),
        parts=len(done),
    )


# The peer: the script a competent author writes for the job, with nothing of the
# pipeline's (no ledger, no broker, no checks) but its planner and its row transform.

_peer: dict[str, Any] = {}


def _peer_start(where: Where) -> None:
    """Each pool process connects to the database and S3 once."""
    _peer["where"] = where
    _peer["db"] = _connect(where)
    _peer["s3"] = _s3(where)


def _utc(moment: datetime) -> str:
    """The row transform's timestamps (datetimes in UTC) as the pipeline writes them."""
    return moment.isoformat().replace("+00:00", "Z")


def _peer_chunk(chunk: ChunkRange) -> dict[str, Any]:
    """One chunk: a server-side cursor, a dict per row, the row transform a batch at a
    time, json.dumps per record, gzip at the pipeline's level, one PUT."""
    where: Where = _peer["where"]
    connection = _peer["db"]
    condition, bounds = _in_range(chunk, "id")
    body = io.BytesIO()
    records = rejected = raw_bytes = 0
    with connection.cursor(name=f"chunk_{chunk.index}") as cursor:
        cursor.itersize = PEER_BATCH
        cursor.execute(
            f"SELECT {', '.join(ORDERS_COLUMNS)} FROM orders WHERE {condition} ORDER BY id", bounds
        )
        with gzip.GzipFile(fileobj=body, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as out:
            while rows := list(islice(cursor, PEER_BATCH)):
                batch = [dict(zip(ORDERS_COLUMNS, row, strict=True)) for row in rows]
                result = transform_orders(batch)
                lines = [
                    json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=_utc)
                    + "\n"
                    for record in result.records
                ]
                text = "".join(lines).encode()
                out.write(text)
                raw_bytes += len(text)
                records += len(result.records)
                rejected += len(result.rejections)
    connection.rollback()  # the named cursor's transaction; nothing was written
    data = body.getvalue()
    key = f"bench/peer/part-{chunk.index:05d}.jsonl.gz"
    _peer["s3"].put_object(Bucket=where.bucket, Key=key, Body=data)
    return {
        "key": key,
        "rows": records,
        "rejected": rejected,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "raw_bytes": raw_bytes,
    }


def peer(where: Where, database_url: str, chunk_size: int) -> Baseline:
    """The pool-of-2 script: plan the pipeline's chunks, transform them in a
    ``multiprocessing.Pool(2)``, then PUT the manifest. Timed from the start (planning
    and the pool's start inside) to the manifest written."""
    began = time.monotonic()
    chunks = plan(database_url, chunk_size)
    with multiprocessing.Pool(PROCESSES, initializer=_peer_start, initargs=(where,)) as pool:
        parts = pool.map(_peer_chunk, chunks, chunksize=1)
    manifest = {
        "parts": [{k: v for k, v in part.items() if k != "raw_bytes"} for part in parts],
        "total_rows": sum(part["rows"] for part in parts),
        "rejected_rows": sum(part["rejected"] for part in parts),
    }
    _s3(where).put_object(
        Bucket=where.bucket, Key="bench/peer/manifest.json", Body=json.dumps(manifest).encode()
    )
    wall = time.monotonic() - began
    return Baseline(
        wall,
        records=manifest["total_rows"],
        bytes_out=sum(part["bytes"] for part in parts),
        raw_bytes=sum(part["raw_bytes"] for part in parts),
        parts=len(parts),
    )
