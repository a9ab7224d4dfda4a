"""SQLAlchemy engines, the source reader, and bulk loading for the sample data."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table, create_engine, text
from sqlalchemy.engine import make_url

from etl.domain.windows import CursorWindow
from etl.pipelines.base import Source

if TYPE_CHECKING:
    import pyarrow as pa

# How much of COPY's CSV Arrow parses at a time: about 8,000 orders rows. Larger blocks
# are barely faster and cost a worker tens of MB more at its peak (docs/performance.md).
_COPY_BLOCK_BYTES = 1024 * 1024


def make_engine(url: str, pool_size: int = 5, ssl_args: dict[str, str] | None = None) -> Engine:
    """A pooled engine that checks a connection before use, so a restarted server or a
    killed backend costs a reconnect rather than a failed chunk. ``ssl_args`` are
    libpq's TLS arguments (Settings.database_ssl_args)."""
    if make_url(url).get_backend_name() == "sqlite":
        # Embedded mode: one file shared by the threads of one process.
        return create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 10,
            "application_name": "nightly-etl",
            **(ssl_args or {}),
        },
    )


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


class SqlSource:
    """Reads a pipeline's source: its key bounds, and its rows one key range at a time."""

    def __init__(self, engine: Engine, source: Source) -> None:
        self._engine = engine
        self._source = source
        preparer = engine.dialect.identifier_preparer
        self._key = preparer.quote(source.key_column)
        self._columns = ", ".join(preparer.quote(column) for column in source.columns)
        if source.table is not None:
            self._from = ".".join(preparer.quote(part) for part in source.table.split("."))
        else:
            self._from = f"({source.query}) AS etl_source"

    def key_bounds(self, window: CursorWindow | None = None) -> tuple[int | None, int | None]:
        """The smallest and largest key now in the source, or in the window (None, None
        when empty)."""
        where, params = self._window_filter(window)
        with self._engine.connect() as conn:
            row = conn.execute(
                # Identifiers only, validated by Source and quoted; values are bound.
                text(f"SELECT MIN({self._key}), MAX({self._key}) FROM {self._from}{where}"),  # nosec B608
                params,
            ).one()
        low, high = row
        return (None if low is None else int(low), None if high is None else int(high))

    def cursor_upper_bound(self, lag_s: int) -> datetime:
        """The database's clock less the lag: the upper end of a window planned now.

        The database's clock, not ours: it is the clock that stamps the cursor column.
        """
        with self._engine.connect() as conn:
            moment: datetime | str = conn.execute(text("SELECT CURRENT_TIMESTAMP")).scalar_one()
        if isinstance(moment, str):  # SQLite answers with text, in UTC
            moment = datetime.fromisoformat(moment)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment - timedelta(seconds=lag_s)

    def read_range(
        self, key_lo: int, key_hi: int, batch_size: int, window: CursorWindow | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Stream the rows with ``key_lo <= key < key_hi`` (and in the window) in key
        order, in batches.

        A server-side cursor keeps memory at one batch whatever the chunk size.
        """
        query, params = self._range_query(key_lo, key_hi, window, lambda name: f":{name}")
        with self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                text(query), params
            )
            for partition in result.mappings().partitions(batch_size):
                yield [dict(row) for row in partition]

    @property
    def copies_text(self) -> bool:
        """Whether read_range_text works here (PostgreSQL's COPY)."""
        return self._engine.dialect.name == "postgresql"

    def read_range_text(
        self, key_lo: int, key_hi: int, window: CursorWindow | None = None
    ) -> Iterator[pa.Table]:
        """The rows of read_range as PostgreSQL prints them, in Arrow tables of text (the
        key column as int64, NULL as null), for a pipeline's columnar transform.

        COPY is several times faster than a cursor and makes no Python object per value.
        Timestamps are printed in UTC, in ISO style, whatever the server's defaults. The
        chunk's CSV goes to a temporary file (not memory: a worker's peak stays small
        whatever the chunk size) and is parsed a block at a time.
        """
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        query, params = self._range_query(key_lo, key_hi, window, lambda name: f"%({name})s")
        with tempfile.TemporaryFile() as spool:
            raw = self._engine.raw_connection()
            try:
                cursor: Any = raw.cursor()  # psycopg2's, for mogrify and copy_expert
                cursor.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
                statement = cursor.mogrify(query, params).decode()
                cursor.copy_expert(f"COPY ({statement}) TO STDOUT WITH (FORMAT csv)", spool)
                cursor.close()
                raw.rollback()  # ends the SET LOCALs; nothing was written
            finally:
                raw.close()
            if spool.tell() == 0:
                return
            spool.seek(0)
            columns = list(self._source.columns)
            reader = pa_csv.open_csv(
                spool,
                # One thread: a worker process per core is the parallelism.
                read_options=pa_csv.ReadOptions(
                    column_names=columns, block_size=_COPY_BLOCK_BYTES, use_threads=False
                ),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                # COPY writes NULL as an empty field and an empty string as "".
                convert_options=pa_csv.ConvertOptions(
                    column_types={
                        column: pa.int64() if column == self._source.key_column else pa.string()
                        for column in columns
                    },
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])

    def _range_query(
        self,
        key_lo: int,
        key_hi: int,
        window: CursorWindow | None,
        bind: Callable[[str], str],
    ) -> tuple[str, dict[str, Any]]:
        # The one place a chunk becomes SQL: its key range and `low < cursor <= high`.
        # ``bind`` writes a placeholder in the driver's style.
        where, params = self._window_filter(window, bind)
        clause = " AND " + where.removeprefix(" WHERE ") if where else ""
        # Identifiers only, validated by Source and quoted; values are bound.
        query = (
            f"SELECT {self._columns} FROM {self._from} "  # nosec B608
            f"WHERE {self._key} >= {bind('key_lo')} AND {self._key} < {bind('key_hi')}{clause} "
            f"ORDER BY {self._key}"
        )
        return query, {"key_lo": key_lo, "key_hi": key_hi, **params}

    def _window_filter(
        self, window: CursorWindow | None, bind: Callable[[str], str] = lambda name: f":{name}"
    ) -> tuple[str, dict[str, Any]]:
        if window is None:
            return "", {}
        cursor = self._engine.dialect.identifier_preparer.quote(window.column)
        where = f" WHERE {cursor} <= {bind('cursor_high')}"
        params: dict[str, Any] = {"cursor_high": window.high}
        if window.low is not None:
            where += f" AND {cursor} > {bind('cursor_low')}"
            params["cursor_low"] = window.low
        return where, params


def replace_table(engine: Engine, table: Table, rows: Iterable[tuple[Any, ...]]) -> int:
    """Drop and recreate ``table`` and load ``rows`` into it; returns the row count.

    On PostgreSQL the rows go through COPY, which is an order of magnitude faster than
    INSERTs for the million-row tables the benchmark seeds.
    """
    table.drop(engine, checkfirst=True)
    table.create(engine)
    if engine.dialect.name == "postgresql":
        return _copy_into(engine, table, rows)
    names = [column.name for column in table.columns]
    total = 0
    with engine.begin() as conn:
        for batch in _batches(rows, 5000):
            conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in batch])
            total += len(batch)
    return total


def _copy_into(engine: Engine, table: Table, rows: Iterable[tuple[Any, ...]]) -> int:
    names = ", ".join(f'"{column.name}"' for column in table.columns)
    copy_sql = f'COPY "{table.name}" ({names}) FROM STDIN WITH (FORMAT csv)'
    total = 0
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()  # psycopg2's cursor, for copy_expert
        for batch in _batches(rows, 100_000):
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            # csv writes None as an empty unquoted field, which COPY reads as NULL.
            writer.writerows(batch)
            buffer.seek(0)
            cursor.copy_expert(copy_sql, buffer)
            total += len(batch)
        cursor.close()
        raw.commit()
    finally:
        raw.close()
    return total


def _batches(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch
