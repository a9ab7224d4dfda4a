"""Encoding records into part files: deterministic bytes, counted and hashed as written."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

FORMATS = {"jsonl.gz": "application/gzip"}


@dataclass(frozen=True)
class PartStats:
    """What was written: row count, compressed size and sha256 of the compressed bytes."""

    rows: int
    bytes: int
    sha256: str


class _HashingSink:
    """A write-only file that hashes and counts what passes through to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    def flush(self) -> None:
        self._target.flush()


class JsonLinesGzipWriter:
    """Writes records as gzip-compressed JSON Lines.

    The output is byte-for-byte deterministic for the same records (gzip mtime 0, no
    file name in the header, stable key order), so a chunk written twice yields the same
    object and the same sha256.
    """

    extension = "jsonl.gz"

    def __init__(self, target: IO[bytes], compresslevel: int = 6) -> None:
        self._sink = _HashingSink(target)
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._sink, compresslevel=compresslevel, mtime=0
        )
        self._rows = 0

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, one JSON object a line."""
        lines = [
            json.dumps(record, separators=(",", ":"), ensure_ascii=False) for record in records
        ]
        if lines:
            self._gzip.write(("\n".join(lines) + "\n").encode("utf-8"))
            self._rows += len(lines)

    def close(self) -> PartStats:
        """Finish the gzip stream and return what was written."""
        self._gzip.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


def read_json_lines_gzip(data: bytes) -> list[dict[str, Any]]:
    """Decode a whole jsonl.gz part (for readers and tests)."""
    text = gzip.decompress(data).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line]
