"""SQLAlchemy engines, the source reader, and bulk loading for the sample data."""

from __future__ import annotations

import csv
import io
import select
import tempfile
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table, create_engine, event, exc, text
from sqlalchemy.engine import make_url

from etl.domain.chunks import (
    ChunkKey,
    KeySpan,
    as_chunk_key,
    consecutive_key_boundaries,
    count_chunks,
    plan_from_key_ends,
)
from etl.domain.windows import ReadScope
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
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 10,
            "application_name": "nightly-etl",
            **(ssl_args or {}),
        },
    )
    event.listen(engine, "checkout", _refuse_a_connection_the_server_closed)
    return engine


def _refuse_a_connection_the_server_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection's check at checkout, without a round trip.

    A server that ends a connection (a restart, a killed backend, an idle timeout) sends
    its reason and closes it, so the socket of an idle connection has something to read
    only then. Raising DisconnectionError has the pool drop it and connect anew. A ping
    (pool_pre_ping) asks the server instead: a round trip on every checkout, four a chunk,
    each a wait for a busy machine's scheduler (docs/performance.md)."""
    if getattr(dbapi_connection, "closed", 0):
        raise exc.DisconnectionError("the connection was closed")
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is not None and _readable(fileno()):
        raise exc.DisconnectionError("the server ended the connection while it was pooled")


def _readable(fd: int) -> bool:
    """Whether the socket has something to read (or was closed), without waiting."""
    if hasattr(select, "poll"):  # no limit on the descriptor's number, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


class SqlSource:
    """Reads a pipeline's source: its rows and keys to plan chunks by, and its rows one
    key range at a time."""

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

    def key_span(self, window: ReadScope | None = None) -> KeySpan:
        """How many rows (with a key) the source holds now, or the window does, and their
        smallest and largest key."""
        keyed, params = self._keyed_filter(window)
        # The ends by ORDER BY, not MIN/MAX: PostgreSQL has no MIN(uuid), and the order is
        # the one the chunks' ranges compare in (the column's collation, a type's own).
        # Identifiers only, validated by Source and quoted; values are bound.
        if self._source.query is not None and self._engine.dialect.name == "postgresql":
            # A query is run once, its keys kept: three runs of a query that filters cost
            # three passes over its source (2.35 s against 0.82 s at 1,000,000 orders).
            keys = f"SELECT {self._key} AS etl_key FROM {self._from}{keyed}"  # nosec B608
            first = "SELECT etl_key FROM etl_keys ORDER BY etl_key"
            statement = (
                f"WITH etl_keys AS MATERIALIZED ({keys}) "  # nosec B608
                f"SELECT (SELECT COUNT(*) FROM etl_keys), ({first} LIMIT 1), "
                f"({first} DESC LIMIT 1)"
            )
        else:  # a table: the key's index answers the ends, and the count scans it
            statement = (
                f"SELECT (SELECT COUNT(*) FROM {self._from}{keyed}), "  # nosec B608
                f"{self._table_key_ends(keyed)}"
            )
        with self._engine.connect() as conn:
            count, low, high = conn.execute(text(statement), params).one()
        if not count:
            return KeySpan(rows=0)
        return KeySpan(rows=int(count), key_min=as_chunk_key(low), key_max=as_chunk_key(high))

    def key_boundaries(
        self, chunk_size: int, span: KeySpan, window: ReadScope | None = None
    ) -> list[ChunkKey]:
        """The first key of each of the chunks that share the span's rows evenly
        (etl.domain.chunks.chunk_starts), once each, among the rows of the window with
        keys in ``[span.key_min, span.key_max]``.

        One ordered pass over the keys, numbered by row_number(): with an index on the key
        PostgreSQL walks the index (about 0.3 s for a million rows), without one it sorts.
        Consecutive integer keys need no pass: their boundaries are worked out.
        """
        if not span.rows or span.key_min is None or span.key_max is None:
            return []
        if (worked_out := consecutive_key_boundaries(span, chunk_size)) is not None:
            return worked_out
        where, params = self._window_filter(window)
        clause = " AND " + where.removeprefix(" WHERE ") if where else ""
        # Identifiers only, validated by Source and quoted; values are bound. A row
        # numbered past the span's count (written since) starts no chunk: at most
        # `chunks` chunks, the number check_chunk_count allowed.
        query = (
            "SELECT DISTINCT etl_key FROM ("  # nosec B608
            f"SELECT {self._key} AS etl_key, row_number() OVER (ORDER BY {self._key}) AS etl_row "
            f"FROM {self._from} "
            f"WHERE {self._key} >= :etl_key_min AND {self._key} <= :etl_key_max{clause}"
            ") AS etl_keys "
            "WHERE etl_row <= :etl_rows "
            "AND ((etl_row - 1) * :etl_chunks) % :etl_rows < :etl_chunks "
            "ORDER BY etl_key"
        )
        bounds = {
            "etl_key_min": span.key_min,
            "etl_key_max": span.key_max,
            "etl_rows": span.rows,
            "etl_chunks": count_chunks(span.rows, chunk_size),
        }
        with self._engine.connect() as conn:
            keys = conn.execute(text(query), {**bounds, **params}).scalars()
            return [as_chunk_key(key) for key in keys]

    def plan_keys(
        self, chunk_size: int, max_chunks: int, window: ReadScope | None = None
    ) -> tuple[KeySpan, list[ChunkKey]]:
        """The span of the window's keys and the boundaries of the chunks that share its
        rows evenly (key_span, then key_boundaries); no boundaries when the rows would
        make more than ``max_chunks`` chunks (a plan the caller refuses, whose boundaries
        are not worth a pass).

        A query on PostgreSQL is run once for both, in one statement: its keys kept,
        counted and numbered in key order. Run twice (the span, then the boundaries) it
        cost two passes over its source, a query that filters costing most of a plan
        (1.9 s against 1.0 s at 1,000,000 orders, 18.7 s against 10 at 10,000,000).

        A whole table on PostgreSQL whose key is a unique integer with few gaps is planned
        from its ends (etl.domain.chunks.plan_from_key_ends): no count, which took 55 to
        85 ms of a 1,000,000-row plan and grows with the table. A plan from the ends of
        more than ``max_chunks`` chunks is left to the count, which refuses it or not as
        it always did."""
        postgresql = self._engine.dialect.name == "postgresql"
        if self._source.query is not None and postgresql:
            return self._plan_query_keys(chunk_size, max_chunks, window)
        if postgresql and not self._window_filter(window)[0]:
            ends = self._dense_unique_key_ends()
            if ends is not None and count_chunks(ends.rows, chunk_size) <= max_chunks:
                return ends, consecutive_key_boundaries(ends, chunk_size) or []
        span = self.key_span(window)
        if not span.rows or count_chunks(span.rows, chunk_size) > max_chunks:
            return span, []
        return span, self.key_boundaries(chunk_size, span, window)

    def _dense_unique_key_ends(self) -> KeySpan | None:
        """The span of a table's key read from its ends alone, when the key is a unique
        integer (a primary key, or a unique index on it alone, valid and not partial) with
        few gaps by PostgreSQL's estimate of the rows; None for any other table.

        One round trip: the ends from the key's index, the estimate from the catalog (the
        rows per page at the last VACUUM or ANALYZE, times the pages now, as the planner
        estimates it, so a table that grew since is not taken for a sparse one)."""
        keyed, _ = self._keyed_filter(None)
        # Identifiers only, validated by Source and quoted; values are bound.
        statement = (
            f"SELECT {self._table_key_ends(keyed)}, "  # nosec B608
            "(SELECT CASE WHEN c.reltuples > 0 AND c.relpages > 0 THEN c.reltuples "
            "/ c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::float8) "
            "END FROM pg_class c WHERE c.oid = to_regclass(:etl_relation)) AS etl_estimate, "
            "EXISTS (SELECT FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(:etl_relation) "
            "AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indnkeyatts = 1 "
            "AND a.attname = :etl_key_name) AS etl_unique"
        )
        bounds = {"etl_relation": self._from, "etl_key_name": self._source.key_column}
        with self._engine.connect() as conn:
            found = conn.execute(text(statement), bounds).one()
        low, high = found.etl_low, found.etl_high
        if not (found.etl_unique and isinstance(low, int) and isinstance(high, int)):
            return None
        return plan_from_key_ends(low, high, found.etl_estimate)

    def _plan_query_keys(
        self, chunk_size: int, max_chunks: int, window: ReadScope | None
    ) -> tuple[KeySpan, list[ChunkKey]]:
        """plan_keys for a query on PostgreSQL. Its first row (the smallest key) and last
        (the largest) are always returned, with the row count; the rows that start a chunk
        (etl.domain.chunks.chunk_starts' test) only when the chunks are not too many."""
        keyed, params = self._keyed_filter(window)
        chunks = "((etl_rows + :etl_chunk_size - 1) / :etl_chunk_size)"  # ceil, in SQL
        # Identifiers only, validated by Source and quoted; values are bound.
        statement = (
            f"WITH etl_keys AS MATERIALIZED (SELECT {self._key} AS etl_key "  # nosec B608
            f"FROM {self._from}{keyed}), "
            # The count a scalar subquery: computed once (an InitPlan), never per row.
            "etl_numbered AS (SELECT etl_key, "
            "row_number() OVER (ORDER BY etl_key) AS etl_row, "
            "(SELECT COUNT(*) FROM etl_keys) AS etl_rows FROM etl_keys), "
            "etl_marked AS (SELECT etl_key, etl_row, etl_rows, "
            f"({chunks} <= :etl_max_chunks AND ((etl_row - 1) * {chunks}) % etl_rows "
            f"< {chunks}) AS etl_starts FROM etl_numbered) "
            "SELECT etl_key, etl_rows, etl_starts FROM etl_marked "
            "WHERE etl_starts OR etl_row = 1 OR etl_row = etl_rows ORDER BY etl_row"
        )
        bounds = {"etl_chunk_size": chunk_size, "etl_max_chunks": max_chunks}
        with self._engine.connect() as conn:
            found = conn.execute(text(statement), {**bounds, **params}).all()
        if not found:
            return KeySpan(rows=0), []
        span = KeySpan(
            rows=int(found[0].etl_rows),
            key_min=as_chunk_key(found[0].etl_key),
            key_max=as_chunk_key(found[-1].etl_key),
        )
        boundaries: list[ChunkKey] = []
        for row in found:
            key = as_chunk_key(row.etl_key)
            if row.etl_starts and (not boundaries or boundaries[-1] != key):
                boundaries.append(key)
        return span, boundaries

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

    def cursor_max(self, window: ReadScope | None = None) -> int | None:
        """The largest value of an integer cursor now (None: the source is empty): the
        upper end of a window planned now."""
        column = self._engine.dialect.identifier_preparer.quote(self._source.cursor_column or "")
        where, params = self._window_filter(window)
        with self._engine.connect() as conn:
            # Identifiers only, validated by Source and quoted; values are bound.
            value = conn.execute(
                text(f"SELECT MAX({column}) FROM {self._from}{where}"),  # nosec B608
                params,
            ).scalar()
        return None if value is None else int(value)

    def read_range(
        self,
        key_lo: ChunkKey,
        key_hi: ChunkKey,
        batch_size: int,
        window: ReadScope | None = None,
        *,
        key_hi_inclusive: bool = False,
    ) -> Generator[list[dict[str, Any]]]:
        """Stream the rows with ``key_lo <= key < key_hi`` (``<= key_hi`` when
        ``key_hi_inclusive``) and in the window, in key order, in batches of dicts.

        A server-side cursor keeps memory at one batch whatever the chunk size. On
        PostgreSQL the rows come from psycopg2's own cursor, as the driver types them:
        half the cost of SQLAlchemy's streamed rows and mappings (docs/performance.md).
        """
        query, params = self._range_query(key_lo, key_hi, key_hi_inclusive, window)
        names = list(self._source.columns)
        if self._engine.dialect.name != "postgresql":
            with self._engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                    text(query), params
                )
                for partition in result.partitions(batch_size):
                    yield [dict(zip(names, row, strict=True)) for row in partition]
            return
        # In psycopg2's own style (%(name)s, a literal % doubled), as for COPY.
        compiled = text(query).bindparams(**params).compile(dialect=self._engine.dialect)
        raw = self._engine.raw_connection()
        try:
            cursor: Any = raw.cursor(name="etl_read_range")  # named: a server-side cursor
            cursor.itersize = batch_size
            cursor.execute(str(compiled), compiled.params)
            while rows := cursor.fetchmany(batch_size):
                yield [dict(zip(names, row, strict=True)) for row in rows]
            cursor.close()
            raw.rollback()  # the cursor's transaction; nothing was written
        finally:
            raw.close()  # back to the pool, which rolls back a read abandoned midway

    @property
    def copies_text(self) -> bool:
        """Whether read_range_text works here (PostgreSQL's COPY)."""
        return self._engine.dialect.name == "postgresql"

    def read_range_text(
        self,
        key_lo: ChunkKey,
        key_hi: ChunkKey,
        window: ReadScope | None = None,
        *,
        key_hi_inclusive: bool = False,
    ) -> Iterator[pa.Table]:
        """The rows of read_range as PostgreSQL prints them, in Arrow tables of text (an
        integer key column as int64, NULL as null), for a pipeline's columnar transform.

        COPY is several times faster than a cursor and makes no Python object per value.
        Timestamps are printed in UTC, in ISO style, whatever the server's defaults. The
        chunk's CSV goes to a temporary file (not memory: a worker's peak stays small
        whatever the chunk size) and is parsed a block at a time.
        """
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        query, params = self._range_query(key_lo, key_hi, key_hi_inclusive, window)
        # In psycopg2's own style (%(name)s, a literal % doubled), for COPY.
        compiled = text(query).bindparams(**params).compile(dialect=self._engine.dialect)
        # A chunk of an integer key has int bounds (etl.domain.chunks.as_chunk_key); any
        # other key (text, UUID, time, decimal) stays text, as COPY prints it.
        key_type = pa.int64() if isinstance(key_lo, int) else pa.string()
        with tempfile.TemporaryFile() as spool:
            raw = self._engine.raw_connection()
            try:
                cursor: Any = raw.cursor()  # psycopg2's, for mogrify and copy_expert
                cursor.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
                statement = cursor.mogrify(str(compiled), compiled.params).decode()
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
                        column: key_type if column == self._source.key_column else pa.string()
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
        key_lo: ChunkKey,
        key_hi: ChunkKey,
        key_hi_inclusive: bool,
        window: ReadScope | None,
    ) -> tuple[str, dict[str, Any]]:
        # The one place a chunk becomes SQL: its key range and the run's scope. A text
        # bound is compared as the key column's own type (PostgreSQL reads the untyped
        # literal as such).
        where, params = self._window_filter(window)
        clause = " AND " + where.removeprefix(" WHERE ") if where else ""
        below = "<=" if key_hi_inclusive else "<"
        # Identifiers only, validated by Source and quoted; values are bound.
        query = (
            f"SELECT {self._columns} FROM {self._from} "  # nosec B608
            f"WHERE {self._key} >= :etl_key_lo AND {self._key} {below} :etl_key_hi"
            f"{clause} ORDER BY {self._key}"
        )
        return query, {"etl_key_lo": key_lo, "etl_key_hi": key_hi, **params}

    def _table_key_ends(self, keyed: str) -> str:
        """The smallest and largest key of the table's rows in ``keyed`` (a _keyed_filter),
        as two columns, etl_low and etl_high: each one step of the key's index."""
        first = f"SELECT {self._key} FROM {self._from}{keyed} ORDER BY {self._key}"  # nosec B608
        return f"({first} LIMIT 1) AS etl_low, ({first} DESC LIMIT 1) AS etl_high"

    def _keyed_filter(self, window: ReadScope | None) -> tuple[str, dict[str, Any]]:
        """The window's filter with the rows that have a key only (the plan's rows)."""
        where, params = self._window_filter(window)
        keyed = f" WHERE {self._key} IS NOT NULL" + (
            " AND " + where[len(" WHERE ") :] if where else ""
        )
        return keyed, params

    def _window_filter(self, window: ReadScope | None) -> tuple[str, dict[str, Any]]:
        # The rows of a run's scope (" WHERE ..." or ""), and every value its SQL binds:
        # the query source's own parameters, the interval of a partitioned source
        # (start <= time < end), the cursor window of an incremental one (low < c <= high).
        # The planner's names start with etl_, which a run's params may not.
        if window is None:
            return "", {}
        quote = self._engine.dialect.identifier_preparer.quote
        conditions = []
        params = window.bindings(self._source.query_parameters)
        if window.time_column is not None:
            column = quote(window.time_column)
            conditions += [f"{column} >= :etl_interval_start", f"{column} < :etl_interval_end"]
            params |= {
                "etl_interval_start": window.interval.start,
                "etl_interval_end": window.interval.end,
            }
        if window.cursor is not None:
            cursor = quote(window.cursor.column)
            conditions.append(f"{cursor} <= :etl_cursor_high")
            params["etl_cursor_high"] = window.cursor.high
            if window.cursor.low is not None:
                conditions.append(f"{cursor} > :etl_cursor_low")
                params["etl_cursor_low"] = window.cursor.low
        return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


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
