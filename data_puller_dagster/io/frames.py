"""Frame checks, partition assignment and dtype bookkeeping shared by every destination.

Why one module: "replace exactly this slice" only means the same thing in five stores if the rows are
assigned to partitions by one function, and "read returns the dtypes that were written" only holds if
every store records and restores dtypes the same way.
"""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa

from data_puller_dagster.io.errors import FrameContractError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.symbols import check_name, partition_key

# Layers whose rows may carry a NaT `ts` (unparseable timestamps are quarantined, not dropped).
NAT_LAYERS = frozenset({"quarantine"})
# Column that SQL stores add to NaT-capable tables so a NaT row stays attached to its partition day.
PARTITION_DATE_COLUMN = "partition_date"


def check_frame(table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> pd.DataFrame:
    """Validate a frame against the write contract and return it ready to store.

    Ready means: column names are safe identifiers, dtypes are ones every store can round-trip,
    timestamps are truncated to microseconds (DuckDB and Postgres keep microseconds, so Parquet does
    too and the three stores hold identical rows), and every row falls inside the slice.
    """
    where = f"table {table.qualified}, slice {part.describe()}"
    if not isinstance(df, pd.DataFrame):
        raise FrameContractError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("symbol", "ts") if c not in df.columns]
    if missing:
        raise FrameContractError(
            f"{where}: frame lacks column(s) {missing}; every stored frame needs symbol and ts"
        )
    if df.columns.duplicated().any():
        raise FrameContractError(
            f"{where}: duplicated column names {sorted(df.columns[df.columns.duplicated()])}"
        )
    for c in df.columns:
        try:
            check_name(str(c), "column name")
        except ValueError as e:
            raise FrameContractError(f"{where}: {e}") from None
        if c == PARTITION_DATE_COLUMN and table.layer in NAT_LAYERS:
            raise FrameContractError(f"{where}: column {c!r} is reserved for the stores; rename it")
        sql_type(df[c].dtype, "duckdb", f"{where}, column {c!r}")  # raises on unsupported dtypes
    if str(df["ts"].dtype) != "datetime64[ns, UTC]":
        raise FrameContractError(
            f"{where}: column ts has dtype {df['ts'].dtype}, expected datetime64[ns, UTC]; "
            "convert with pd.to_datetime(..., utc=True)"
        )
    if df["symbol"].isna().any():
        raise FrameContractError(f"{where}: {int(df['symbol'].isna().sum())} row(s) have no symbol")
    if table.layer not in NAT_LAYERS and df["ts"].isna().any():
        raise FrameContractError(
            f"{where}: {int(df['ts'].isna().sum())} row(s) have NaT ts; only quarantine tables may hold "
            "rows without a timestamp"
        )
    stray = sorted(set(df["symbol"].unique()) - set(part.displays))
    if stray:
        raise FrameContractError(
            f"{where}: rows for symbol(s) {stray} outside the slice's symbols {part.displays}; "
            "write each symbol's rows with a slice that contains it"
        )
    if table.primary_key:
        dup = df.duplicated(list(table.primary_key), keep=False)
        if dup.any():
            first = df.loc[dup, list(table.primary_key)].head(3).to_dict("records")
            raise FrameContractError(
                f"{where}: {int(dup.sum())} row(s) share a primary key {table.primary_key} (e.g. {first}); "
                "deduplicate before returning the output"
            )
    ts = df["ts"]
    outside = ts.notna() & ((ts < part.start_ts) | (ts >= part.end_ts))
    if outside.any():
        bad = ts[outside]
        raise FrameContractError(
            f"{where}: {int(outside.sum())} row(s) with ts outside {part.start}..{part.end} "
            f"(e.g. {bad.min()} .. {bad.max()}); trim warm-up rows before returning the output"
        )
    return truncate_to_us(df)


def truncate_to_us(df: pd.DataFrame) -> pd.DataFrame:
    """Floor sub-microsecond timestamps (copying only when some exist)."""
    out = df
    for c in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[c].dtype):
            values = df[c].array.asi8 if hasattr(df[c].array, "asi8") else df[c].to_numpy().view("i8")
            valid = ~pd.isna(df[c]).to_numpy()
            if (values[valid] % 1000 != 0).any():
                if out is df:
                    out = df.copy()
                out[c] = df[c].dt.floor("us")
    return out


def partition_of_rows(df: pd.DataFrame, part: PartitionSlice) -> tuple[np.ndarray, np.ndarray]:
    """(symbol key, UTC day as datetime64[D]) of every row, vectorized; NaT rows go to the first day."""
    displays = df["symbol"].astype("string")
    mapping = {d: partition_key(d) for d in displays.unique() if not pd.isna(d)}  # per symbol, not row
    keys = displays.map(mapping).to_numpy(dtype=object)
    days = df["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    days[np.isnat(days)] = np.datetime64(part.start, "D")
    return keys, days


def partition_indices(df: pd.DataFrame, part: PartitionSlice) -> dict[tuple[str, date], np.ndarray]:
    """Row positions of each (symbol key, day) of the slice; partitions without rows are absent."""
    if df.empty:
        return {}
    keys, days = partition_of_rows(df, part)
    groups = pd.DataFrame({"k": keys, "d": days}).groupby(["k", "d"], sort=True).indices
    return {(k, pd.Timestamp(d).date()): idx for (k, d), idx in groups.items()}


def redact_url(url: str) -> str:
    """A URL without its user-info (credentials must never reach logs or metadata)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@]*@", r"\1***@", url)


# ------------------------------------------------------------------------------------------ dtypes
def dtype_map(df: pd.DataFrame) -> dict[str, str]:
    """Column -> pandas dtype string, as recorded next to the data to restore it on read."""
    return {str(c): str(t) for c, t in df.dtypes.items()}


def restore_dtypes(df: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """Cast a frame read back from a store to the dtypes recorded at write time."""
    out = {}
    for c, t in dtypes.items():
        if c not in df.columns:
            continue
        s = df[c]
        if t.startswith("datetime64") and "," in t:  # tz-aware
            if not isinstance(s.dtype, pd.DatetimeTZDtype):
                s = pd.to_datetime(s, utc=True)
            s = s.dt.tz_convert(t.split(",", 1)[1].strip(" ]"))
        elif t.startswith("datetime64") and isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_localize(None)
        out[c] = s.astype(t) if str(s.dtype) != t else s
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas keeping integers exact (Int64, not float64 with NaN) and strings as "string"."""
    mapping = {
        pa.int8(): pd.Int64Dtype(),
        pa.int16(): pd.Int64Dtype(),
        pa.int32(): pd.Int64Dtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.string(): pd.StringDtype(),
        pa.large_string(): pd.StringDtype(),
    }
    return table.to_pandas(types_mapper=mapping.get)


def empty_frame(dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


_SQL_TYPES = {
    # kind: (duckdb, postgres)
    "tz": ("TIMESTAMPTZ", "timestamptz"),
    "naive": ("TIMESTAMP", "timestamp"),
    "float": ("DOUBLE", "double precision"),
    "int": ("BIGINT", "bigint"),
    "bool": ("BOOLEAN", "boolean"),
    "str": ("VARCHAR", "text"),
}


def dtype_kind(dtype: object, where: str = "") -> str:
    """The storage kind of a pandas dtype; raises FrameContractError for dtypes no store round-trips."""
    if isinstance(dtype, str):
        dtype = pd.api.types.pandas_dtype(dtype)
    if isinstance(dtype, pd.DatetimeTZDtype):
        if str(dtype.tz) != "UTC":
            raise FrameContractError(
                f"{where}: timestamps must be UTC, got {dtype}; use .dt.tz_convert('UTC')"
            )
        return "tz"
    if pd.api.types.is_datetime64_dtype(dtype):
        return "naive"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_string_dtype(dtype):  # "string" and object (assumed to hold str)
        return "str"
    raise FrameContractError(
        f"{where}: dtype {dtype} cannot be stored; use one of string, Int64/int64, float64, bool, "
        "datetime64[ns, UTC]"
    )


def sql_type(dtype: object, dialect: str, where: str = "") -> str:
    duck, pg = _SQL_TYPES[dtype_kind(dtype, where)]
    return duck if dialect == "duckdb" else pg


def drift_message(store: str, table: TableRef, have: dict[str, str], want: dict[str, str]) -> str:
    """Name exactly which columns were added, removed or changed type."""
    added = sorted(set(want) - set(have))
    removed = sorted(set(have) - set(want))
    changed = [f"{c}: {have[c]} -> {want[c]}" for c in sorted(set(have) & set(want)) if have[c] != want[c]]
    return (
        f"{store} table {table.qualified}: the frame's columns differ from the existing table "
        f"(added {added}, removed {removed}, changed type {changed}); keep the schema stable, or drop/rename "
        f"the table {table.qualified} and rematerialize its partitions"
    )
