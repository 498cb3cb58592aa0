"""Postgres destination: one schema per feed (`<prefix><feed>`), one table per asset, bulk COPY.

A write is one transaction: lock the table (advisory lock, so two runs writing the same table cannot
race on the primary key), check the columns against the existing table, DELETE the slice, COPY the new
rows from an in-memory CSV (built by Arrow's vectorized CSV writer), COMMIT. Any failure rolls back, so
the previous version of every partition survives.

Reads are one `COPY (SELECT ...) TO STDOUT` parsed by Arrow's CSV reader: much faster than fetching
tuples through the DB-API for millions of rows. Timestamps travel as epoch microseconds so no time
zone or text format can alter them.

The URL may hold a password: it is never logged, and driver error messages are scrubbed of it.
"""

from __future__ import annotations

import io
import json
import queue
import re
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg2 import sql
from pydantic import Field, SecretStr, field_validator

from data_puller_dagster.io.destinations.base import DestinationKind, DestinationOptions
from data_puller_dagster.io.errors import SchemaDriftError, StorageError
from data_puller_dagster.io.frames import (
    NAT_LAYERS,
    PARTITION_DATE_COLUMN,
    arrow_to_pandas,
    check_frame,
    drift_message,
    dtype_map,
    empty_frame,
    partition_of_rows,
    redact_url,
    restore_dtypes,
    sql_type,
    to_arrow,
)
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.symbols import check_name

if TYPE_CHECKING:
    from data_puller_dagster.config import StorageConfig

COMMENT_PREFIX = "data_puller dtypes: "
COPY_CHUNK_ROWS = 65_536  # rows of CSV encoded per chunk while the server ingests the previous one
COPY_READ_SIZE = 1 << 20  # bytes psycopg2 asks the CSV stream for per call
# information_schema.columns.data_type of each type this destination creates
_PG_INFO_TYPE = {
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "double precision": "double precision",
    "bigint": "bigint",
    "boolean": "boolean",
    "text": "text",
    "date": "date",
}
_ARROW_READ_TYPE = {
    "timestamp with time zone": pa.int64(),  # selected as epoch microseconds
    "timestamp without time zone": pa.int64(),
    "double precision": pa.float64(),
    "bigint": pa.int64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
    "date": pa.date32(),
}


class PostgresError(StorageError):
    """A Postgres operation failed; the message is scrubbed of the connection URL's credentials."""


class PostgresOptions(DestinationOptions):
    url: SecretStr | None = Field(None, description="postgresql://user:pass@host/db; default storage.postgres_url")
    schema_prefix: str | None = Field(None, description="Schema name prefix; default storage.postgres_schema_prefix")

    @field_validator("url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("schema_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        return check_name(v, "schema_prefix") if v else v


class PostgresDestination:
    """Tables in a Postgres database; partitions replaced with DELETE + COPY in one transaction."""

    name = "postgres"
    kind: ClassVar[DestinationKind] = "store"
    Options = PostgresOptions

    @classmethod
    def from_options(cls, options: PostgresOptions, storage: StorageConfig) -> PostgresDestination:
        url = options.url or storage.postgres_url
        if url is None:
            raise StorageError("destination postgres needs url: or storage.postgres_url (or DATA_PULLER_POSTGRES_URL)")
        prefix = options.schema_prefix if options.schema_prefix is not None else storage.postgres_schema_prefix
        return cls(url, prefix)

    def __init__(self, url: SecretStr | str, schema_prefix: str = ""):
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        self.schema_prefix = check_name(schema_prefix, "postgres_schema_prefix") if schema_prefix else ""

    def schema(self, table: TableRef) -> str:
        return check_name(f"{self.schema_prefix}{table.feed}", "postgres schema name")

    def _scrub(self, text: str) -> str:
        """Remove the URL and any password in it from a message."""
        url = self._url.get_secret_value()
        text = text.replace(url, redact_url(url))
        m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://[^/:@]*:([^/@]+)@", url)
        if m:
            text = text.replace(m.group(1), "***")
        return text

    def _connect(self) -> Any:
        try:
            conn = psycopg2.connect(self._url.get_secret_value(), connect_timeout=15)
        except psycopg2.Error as e:
            raise PostgresError(
                f"cannot connect to Postgres at {redact_url(self._url.get_secret_value())}: "
                f"{self._scrub(str(e)).strip()}; check DATA_PULLER_POSTGRES_URL and that the server is up"
            ) from None
        return conn

    def _ident(self, table: TableRef) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema(table)), sql.Identifier(table.name))

    # ------------------------------------------------------------------------------------- write
    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        df = check_frame(table, df, part)
        dtypes = dtype_map(df)
        has_pdate = table.layer in NAT_LAYERS
        arrow = to_arrow(df)  # shared with the other destinations of a routed write
        if has_pdate:
            _, days = partition_of_rows(df, part)
            arrow = arrow.append_column(PARTITION_DATE_COLUMN, pa.array(days, type=pa.date32()))
        columns = {str(c): sql_type(t, "postgres") for c, t in df.dtypes.items()}
        if has_pdate:
            columns[PARTITION_DATE_COLUMN] = "date"

        conn = self._connect()
        try:
            self._ensure_table(conn, table, columns)
            with conn, conn.cursor() as cur:  # one transaction: commit on success, rollback on error
                cur.execute("SET LOCAL TIME ZONE 'UTC'")  # timestamps travel as UTC wall-clock text
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"data_puller:{self.schema(table)}.{table.name}",),
                )
                self._check_columns(cur, table, columns)
                self._set_dtypes(cur, table, dtypes)
                where, params = _slice_condition(part, has_pdate)
                cur.execute(sql.SQL("DELETE FROM {} WHERE ").format(self._ident(table)) + where, params)
                deleted = cur.rowcount
                if arrow.num_rows:
                    copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
                        self._ident(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                    )
                    with _CsvStream(arrow) as stream:  # CSV is built while the server ingests
                        cur.copy_expert(copy, stream, size=COPY_READ_SIZE)
        except psycopg2.Error as e:
            raise PostgresError(
                f"postgres write of {self.schema(table)}.{table.name}, slice {part.describe()} failed and was "
                f"rolled back (the previous rows are intact): {self._scrub(str(e)).strip()}"
            ) from None
        finally:
            conn.close()
        return {
            "rows": len(df),
            "deleted": deleted,
            "location": f"{redact_url(self._url.get_secret_value())}#{self.schema(table)}.{table.name}",
        }

    def _ensure_table(self, conn: Any, table: TableRef, columns: dict[str, str]) -> None:
        """Create schema and table in their own short transaction (under an advisory lock, because
        concurrent CREATE ... IF NOT EXISTS can still collide in the catalog)."""
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (self._ident(table).as_string(cur),))
            if cur.fetchone()[0] is not None:
                return
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"data_puller:ddl:{self.schema(table)}",)
            )
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema(table))))
            defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns.items()]
            if table.primary_key:
                defs.append(
                    sql.SQL("PRIMARY KEY ({})").format(
                        sql.SQL(", ").join(sql.Identifier(c) for c in table.primary_key)
                    )
                )
            cur.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    self._ident(table), sql.SQL(", ").join(defs)
                )
            )
            # Slice deletes filter on symbol and time; an index keeps them fast on tables without a PK.
            if not table.primary_key:
                key_col = PARTITION_DATE_COLUMN if table.layer in NAT_LAYERS else "ts"
                cur.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (symbol, {})").format(
                        sql.Identifier(f"{table.name}_slice_idx"), self._ident(table), sql.Identifier(key_col)
                    )
                )

    def _check_columns(self, cur: Any, table: TableRef, columns: dict[str, str]) -> None:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.schema(table), table.name),
        )
        have = dict(cur.fetchall())
        want = {c: _PG_INFO_TYPE[t] for c, t in columns.items()}
        if have != want:
            raise SchemaDriftError(drift_message("postgres", table, have, want))

    def _set_dtypes(self, cur: Any, table: TableRef, dtypes: dict[str, str]) -> None:
        """Record pandas dtypes in the table comment (transactional) so reads restore them exactly."""
        cur.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                self._ident(table), sql.Literal(COMMENT_PREFIX + json.dumps(dtypes))
            )
        )

    def _dtypes(self, cur: Any, table: TableRef) -> dict[str, str] | None:
        cur.execute(
            "SELECT d.description FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_description d ON d.objoid = c.oid AND d.objsubid = 0 "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'",
            (self.schema(table), table.name),
        )
        row = cur.fetchone()
        if row is None:
            return None
        comment = row[0] or ""
        return json.loads(comment[len(COMMENT_PREFIX) :]) if comment.startswith(COMMENT_PREFIX) else {}

    # -------------------------------------------------------------------------------------- read
    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """One `COPY (SELECT ... WHERE <slice>) TO STDOUT` for the whole slice."""
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                dtypes = self._dtypes(cur, table)
                if not dtypes:
                    return pd.DataFrame()
                cur.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s",
                    (self.schema(table), table.name),
                )
                pg_types = dict(cur.fetchall())
                select = []
                for c in dtypes:
                    if pg_types[c].startswith("timestamp"):
                        # Exact: extract() returns numeric since Postgres 14.
                        expr = sql.SQL("floor(extract(epoch from {c}) * 1000000)::bigint AS {c}")
                    else:
                        expr = sql.SQL("{c}")
                    select.append(expr.format(c=sql.Identifier(c)))
                where, params = _slice_condition(part, table.layer in NAT_LAYERS)
                query = (
                    sql.SQL("SELECT {} FROM {} WHERE ").format(sql.SQL(", ").join(select), self._ident(table))
                    + where
                )
                copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
                    sql.SQL(cur.mogrify(query, params).decode())
                )
                buf = io.BytesIO()
                cur.copy_expert(copy, buf)
        except psycopg2.Error as e:
            raise PostgresError(
                f"postgres read of {self.schema(table)}.{table.name}, slice {part.describe()} failed: "
                f"{self._scrub(str(e)).strip()}"
            ) from None
        finally:
            conn.close()
        buf.seek(0)
        text = buf.getvalue()
        if text.count(b"\n") <= 1:
            return empty_frame(dtypes)
        arrow = pacsv.read_csv(
            buf,
            convert_options=pacsv.ConvertOptions(
                column_types={c: _ARROW_READ_TYPE[pg_types[c]] for c in dtypes},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        for c in dtypes:
            if pg_types[c] == "timestamp with time zone":
                i = arrow.schema.get_field_index(c)
                arrow = arrow.set_column(i, c, pc.cast(arrow[c], pa.timestamp("us", tz="UTC")))
            elif pg_types[c] == "timestamp without time zone":
                i = arrow.schema.get_field_index(c)
                arrow = arrow.set_column(i, c, pc.cast(arrow[c], pa.timestamp("us")))
        return restore_dtypes(arrow_to_pandas(arrow, dtypes), dtypes)


class _CsvStream:
    """A file-like COPY source: the Arrow table as headerless CSV, encoded chunk by chunk on a thread.

    The bytes are exactly those of one `write_csv` of the whole table (CSV is row by row); encoding the
    next chunk (Arrow releases the GIL) overlaps the server parsing and indexing the previous one, and
    memory holds a few chunks instead of the whole CSV. An encoding error is raised from `read`, which
    aborts the COPY (and so the transaction).
    """

    def __init__(self, arrow: pa.Table, rows_per_chunk: int | None = None):
        rows_per_chunk = rows_per_chunk or COPY_CHUNK_ROWS
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._chunk = memoryview(b"")
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(
            target=self._produce, args=(arrow, rows_per_chunk), name="postgres-csv", daemon=True
        )
        self._thread.start()

    def _put(self, item: bytes | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self, arrow: pa.Table, rows: int) -> None:
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        try:
            for offset in range(0, arrow.num_rows, rows):
                if self._stop.is_set():
                    return
                buf = io.BytesIO()
                pacsv.write_csv(_timestamps_as_text(arrow.slice(offset, rows)), buf, options)
                self._put(buf.getvalue())
        except BaseException as e:  # handed to the reader, which raises it inside the COPY
            self._error = e
        finally:
            self._put(None)

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._chunk) and not self._done:
            item = self._queue.get()
            if item is None:
                self._done = True
            else:
                self._chunk, self._pos = memoryview(item), 0
        if self._error is not None:
            raise self._error
        left = len(self._chunk) - self._pos
        n = left if size is None or size < 0 else min(size, left)
        out = self._chunk[self._pos : self._pos + n].tobytes()
        self._pos += n
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> _CsvStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _timestamps_as_text(arrow: pa.Table) -> pa.Table:
    """Timestamp columns as UTC wall-clock text at microsecond precision.

    Why: Arrow's CSV writer formats timestamps ~10x slower than a cast to string does, and timestamp
    formatting dominated COPY time for million-row writes; the session runs in UTC so the text is exact.
    """
    for i, f in enumerate(arrow.schema):
        if pa.types.is_timestamp(f.type):
            naive = pc.cast(pc.cast(arrow.column(i), pa.timestamp("us", tz="UTC")), pa.timestamp("us"))
            arrow = arrow.set_column(i, f.name, pc.cast(naive, pa.string()))
    return arrow


def _slice_condition(part: PartitionSlice, has_pdate: bool) -> tuple[sql.Composable, list[Any]]:
    """WHERE clause selecting exactly the slice's partitions (values as parameters)."""
    if has_pdate:
        return (
            sql.SQL("symbol = ANY(%s) AND {} BETWEEN %s AND %s").format(
                sql.Identifier(PARTITION_DATE_COLUMN)
            ),
            [part.displays, part.start, part.end],
        )
    return sql.SQL("ts >= %s AND ts < %s AND symbol = ANY(%s)"), [part.start_ts, part.end_ts, part.displays]
