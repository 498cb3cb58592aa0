"""An example destination plug-in: each table in a SQLite file, partitions replaced in one transaction.

It implements the store contract of data_puller_dagster.io.destinations.base (write replaces every
symbol x day of the slice, read returns the slice with the dtypes written) with nothing but the
standard library and the helpers data-puller-dagster exports for stores: check_frame (the write
contract), dtype_map/restore_dtypes/empty_frame (exact dtypes back), partition days as UTC ranges.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pydantic import Field

from data_puller_dagster.config import StorageConfig
from data_puller_dagster.io.destinations.base import DestinationOptions
from data_puller_dagster.io.frames import check_frame, dtype_map, empty_frame, restore_dtypes
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES


class SQLiteOptions(DestinationOptions):
    path: Path | None = Field(None, description="The SQLite file; default <storage.data_dir>/candles.sqlite")


def _ns(t: Any) -> int:
    return int(pd.Timestamp(t).value)


def _ident(name: str) -> str:
    # Table and feed names are validated identifiers (TableRef checks them); quote anyway.
    return '"' + name.replace('"', '""') + '"'


class SQLiteDestination:
    """Table `<feed>__<table>` per table; ts stored as integer nanoseconds (UTC)."""

    name = "sqlite"
    kind: ClassVar[str] = "store"
    Options = SQLiteOptions

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def from_options(cls, options: SQLiteOptions, storage: StorageConfig) -> SQLiteDestination:
        return cls(options.path or storage.data_dir / "candles.sqlite")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS _dtypes (tbl TEXT PRIMARY KEY, dtypes TEXT NOT NULL)")
        return con

    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        df = check_frame(table, df, part)
        tbl = f"{table.feed}__{table.name}"
        out = df.copy()
        for c in out.columns:
            if isinstance(out[c].dtype, pd.DatetimeTZDtype):  # nanoseconds since the epoch, UTC
                out[c] = out[c].astype("int64").astype(object).where(out[c].notna(), None)
            elif out[c].dtype == "string" or str(out[c].dtype) in ("Int64", "boolean"):
                # nullable pandas dtypes -> plain objects SQLite takes (None for NA)
                out[c] = out[c].astype(object).where(out[c].notna(), None)
        with self._connect() as con:  # one transaction: the old rows stay until it commits
            cols = ", ".join(_ident(c) for c in out.columns)
            con.execute(f"CREATE TABLE IF NOT EXISTS {_ident(tbl)} ({cols})")
            for symbol in part.symbols.values():
                con.execute(
                    f"DELETE FROM {_ident(tbl)} WHERE symbol = ? AND ts >= ? AND ts < ?",  # noqa: S608
                    (symbol, _ns(part.start_ts), _ns(part.end_ts)),
                )
            marks = ", ".join("?" * len(out.columns))
            con.executemany(
                f"INSERT INTO {_ident(tbl)} ({cols}) VALUES ({marks})",  # noqa: S608
                out.itertuples(index=False, name=None),
            )
            con.execute(
                "INSERT OR REPLACE INTO _dtypes VALUES (?, ?)", (tbl, json.dumps(dtype_map(df)))
            )
        return {"rows": len(df), "location": str(self.path)}

    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        tbl = f"{table.feed}__{table.name}"
        with self._connect() as con:
            row = con.execute("SELECT dtypes FROM _dtypes WHERE tbl = ?", (tbl,)).fetchone()
            if row is None:  # never written: the canonical table's columns, no rows
                return empty_frame(dict(CANONICAL_DTYPES))
            dtypes = json.loads(row[0])
            marks = ", ".join("?" * len(part.symbols))
            df = pd.read_sql_query(
                f"SELECT * FROM {_ident(tbl)} WHERE symbol IN ({marks}) AND ts >= ? AND ts < ? "  # noqa: S608
                "ORDER BY symbol, ts",
                con,
                params=[*part.symbols.values(), _ns(part.start_ts), _ns(part.end_ts)],
            )
        for c, t in dtypes.items():
            if t.startswith("datetime64") and c in df.columns:
                df[c] = pd.to_datetime(df[c], utc=True)
        return restore_dtypes(df, dtypes)
