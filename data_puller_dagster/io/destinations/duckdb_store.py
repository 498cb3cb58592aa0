"""DuckDB destination: one database file, one schema per feed, one table per asset.

Why connections are opened per call and never kept: DuckDB lets one process at a time open a file for
writing, and Dagster runs each step in its own process. Every write and read opens the file, does its
work in one transaction and closes it; a process that finds the file locked retries with jittered
exponential backoff and raises LockTimeoutError (naming the file and the timeout) if it stays locked.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import duckdb
import pandas as pd
import pyarrow as pa
from pydantic import Field

from data_puller_dagster.io.destinations.base import DestinationKind, DestinationOptions
from data_puller_dagster.io.errors import LockTimeoutError, SchemaDriftError
from data_puller_dagster.io.frames import (
    NAT_LAYERS,
    PARTITION_DATE_COLUMN,
    arrow_to_pandas,
    check_frame,
    drift_message,
    dtype_map,
    empty_frame,
    partition_of_rows,
    restore_dtypes,
    sql_type,
    to_arrow,
)
from data_puller_dagster.io.tables import PartitionSlice, TableRef

if TYPE_CHECKING:
    from data_puller_dagster.config import StorageConfig

T = TypeVar("T")
DEFAULT_LOCK_TIMEOUT = 300.0
COMMENT_PREFIX = "data_puller dtypes: "


def q(name: str) -> str:
    """Quote an identifier (names are already validated by check_name; quoting is belt and braces)."""
    return '"' + name.replace('"', '""') + '"'


def _is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, duckdb.IOException) and ("lock" in text or "conflicting" in text)


class DuckDBOptions(DestinationOptions):
    path: Path | None = Field(None, description="The DuckDB file; default storage.duckdb_path")
    lock_timeout_seconds: float = Field(
        DEFAULT_LOCK_TIMEOUT, gt=0, description="How long a write waits for another process's lock."
    )


class DuckDBDestination:
    """Tables in a DuckDB file; partitions replaced with DELETE + INSERT in one transaction."""

    name = "duckdb"
    kind: ClassVar[DestinationKind] = "store"
    Options = DuckDBOptions

    @classmethod
    def from_options(cls, options: DuckDBOptions, storage: StorageConfig) -> DuckDBDestination:
        path = options.path.expanduser().absolute() if options.path else storage.duckdb_file
        return cls(path, options.lock_timeout_seconds)

    def __init__(self, path: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    def _create_file(self) -> None:
        """Create the warehouse file atomically if it does not exist yet.

        Why: `duckdb.connect` creates a missing file in place, so a second process opening it while the
        first is still writing its header gets "not a valid DuckDB database file" (not a lock error, so
        not retried): parallel runs' first writes to a new warehouse failed. Here the empty database is
        made under a temporary name and hard-linked into place, which fails if another process got there
        first; either way the file that appears is complete. Init files of crashed creators older than
        an hour are removed, so they cannot pile up.
        """
        if self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.path.name}."
        now = time.time()
        for old in self.path.parent.glob(f"{prefix}*.init*"):
            try:
                if now - old.stat().st_mtime > 3600:
                    old.unlink()
            except OSError:
                pass
        tmp = self.path.with_name(f"{prefix}{os.getpid()}.{threading.get_ident()}.init")
        try:
            duckdb.connect(str(tmp)).close()
            os.link(tmp, self.path)
        except FileExistsError:
            pass  # another process created it first
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)

    def _with_connection(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `work` on a fresh connection, retrying while another process holds the file lock."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        attempts = 0
        while True:
            attempts += 1
            try:
                con = duckdb.connect(str(self.path))
            except Exception as e:
                if not _is_lock_error(e):
                    raise
                if time.monotonic() + delay > deadline:
                    raise LockTimeoutError(
                        f"DuckDB file {self.path} stayed locked by another process for {self.lock_timeout:.0f} s "
                        f"({attempts} attempts); close other sessions on it (a DuckDB CLI or notebook holding "
                        "it open) or raise the lock timeout"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 1.0)
                continue
            try:
                return work(con)
            finally:
                con.close()

    # ------------------------------------------------------------------------------------- write
    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        df = check_frame(table, df, part)
        dtypes = dtype_map(df)
        arrow = to_arrow(df)  # shared with the other destinations of a routed write
        has_pdate = table.layer in NAT_LAYERS
        if has_pdate:
            _, days = partition_of_rows(df, part)
            arrow = arrow.append_column(PARTITION_DATE_COLUMN, pa.array(days, type=pa.date32()))
        columns = {str(c): sql_type(t, "duckdb") for c, t in df.dtypes.items()}
        if has_pdate:
            columns[PARTITION_DATE_COLUMN] = "DATE"
        self._create_file()

        def work(con: duckdb.DuckDBPyConnection) -> None:
            # The whole slice (every day of a range run) in one transaction: one DELETE of the range,
            # one INSERT of all its rows straight from Arrow.
            con.execute("BEGIN TRANSACTION")
            try:
                self._ensure_table(con, table, columns, dtypes)
                where, params = _slice_condition(part, has_pdate)
                con.execute(f"DELETE FROM {q(table.feed)}.{q(table.name)} WHERE {where}", params)  # noqa: S608 - quoted identifiers, values are parameters
                if arrow.num_rows:  # an empty slice (no quarantined rows, say) only clears the range
                    con.register("__frame", arrow)
                    cols = ", ".join(q(c) for c in columns)
                    insert = (
                        f"INSERT INTO {q(table.feed)}.{q(table.name)} ({cols}) SELECT {cols} FROM __frame"  # noqa: S608
                    )
                    con.execute(insert)
                    con.unregister("__frame")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        self._with_connection(work)
        return {"rows": len(df), "location": f"{self.path}:{table.feed}.{table.name}"}

    def _ensure_table(
        self, con: duckdb.DuckDBPyConnection, table: TableRef, columns: dict[str, str], dtypes: dict[str, str]
    ) -> None:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(table.feed)}")
        existing = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [table.feed, table.name],
        ).fetchall()
        if not existing:
            defs = [f"{q(c)} {t}" for c, t in columns.items()]
            if table.primary_key:
                defs.append(f"PRIMARY KEY ({', '.join(q(c) for c in table.primary_key)})")
            con.execute(f"CREATE TABLE {q(table.feed)}.{q(table.name)} ({', '.join(defs)})")
            self._set_dtypes(con, table, dtypes)
            return
        have = {c: t for c, t in existing}
        want = {c: ("TIMESTAMP WITH TIME ZONE" if t == "TIMESTAMPTZ" else t) for c, t in columns.items()}
        if have != want:
            raise SchemaDriftError(drift_message("duckdb", table, have, want))
        if self._dtypes(con, table) != dtypes:
            # Same store types, different pandas flavour (e.g. object vs string): the latest wins.
            self._set_dtypes(con, table, dtypes)

    @staticmethod
    def _set_dtypes(con: duckdb.DuckDBPyConnection, table: TableRef, dtypes: dict[str, str]) -> None:
        """Record the pandas dtypes in the table comment so reads restore exactly what was written."""
        comment = (COMMENT_PREFIX + json.dumps(dtypes)).replace("'", "''")
        con.execute(f"COMMENT ON TABLE {q(table.feed)}.{q(table.name)} IS '{comment}'")

    @staticmethod
    def _dtypes(con: duckdb.DuckDBPyConnection, table: TableRef) -> dict[str, str] | None:
        rows = con.execute(
            "SELECT comment FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
            [table.feed, table.name],
        ).fetchall()
        if not rows:
            return None
        comment = rows[0][0] or ""
        return json.loads(comment[len(COMMENT_PREFIX) :]) if comment.startswith(COMMENT_PREFIX) else {}

    # -------------------------------------------------------------------------------------- read
    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """One SELECT for the whole slice."""
        if not self.path.exists():
            return pd.DataFrame()
        has_pdate = table.layer in NAT_LAYERS

        def work(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, str] | None, pa.Table | None]:
            dtypes = self._dtypes(con, table)
            if not dtypes:
                return dtypes, None
            where, params = _slice_condition(part, has_pdate)
            cols = ", ".join(q(c) for c in dtypes)
            query = f"SELECT {cols} FROM {q(table.feed)}.{q(table.name)} WHERE {where}"  # noqa: S608
            return dtypes, con.sql(query, params=params).to_arrow_table()

        dtypes, arrow = self._with_connection(work)
        if not dtypes:
            return pd.DataFrame()
        if arrow is None or arrow.num_rows == 0:
            return empty_frame(dtypes)
        return restore_dtypes(arrow_to_pandas(arrow, dtypes), dtypes)


def _slice_condition(part: PartitionSlice, has_pdate: bool) -> tuple[str, list[Any]]:
    """WHERE clause selecting exactly the slice's partitions (values as parameters)."""
    symbols = part.displays
    marks = ", ".join("?" for _ in symbols)
    if has_pdate:
        return f"symbol IN ({marks}) AND {PARTITION_DATE_COLUMN} BETWEEN ? AND ?", [
            *symbols,
            part.start,
            part.end,
        ]
    return f"symbol IN ({marks}) AND ts >= ? AND ts < ?", [*symbols, part.start_ts, part.end_ts]
