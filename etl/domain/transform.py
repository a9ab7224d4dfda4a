"""The contract between a pipeline's transform and the chunk task that runs it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = Mapping[str, Any]
Record = dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    """A source row the transform refused, and why (a short snake_case reason)."""

    key: Any
    reason: str


@dataclass
class BatchResult:
    """What a transform made of one batch: records to write and rows it rejected."""

    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def rejected_by_reason(self) -> Counter[str]:
        """Count of rejected rows per reason."""
        return Counter(rejection.reason for rejection in self.rejections)


Transform = Callable[[Sequence[Row]], BatchResult]


class RowRejected(ValueError):
    """Raised by a per-row transform helper to reject the row with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def map_rows(
    rows: Sequence[Row], key_column: str, transform_row: Callable[[Row], Record]
) -> BatchResult:
    """Apply a per-row transform to a batch, turning RowRejected into counted rejections."""
    result = BatchResult()
    for row in rows:
        try:
            result.records.append(transform_row(row))
        except RowRejected as rejected:
            result.rejections.append(Rejection(key=row[key_column], reason=rejected.reason))
    return result
