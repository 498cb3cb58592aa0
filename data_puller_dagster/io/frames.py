"""Frame checks, partition assignment and dtype bookkeeping shared by every destination.

Why one module: "replace exactly this slice" only means the same thing in five stores if the rows are
assigned to partitions by one function, and "read returns the dtypes that were written" only holds if
every store records and restores dtypes the same way.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, timedelta

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


_NAT = np.iinfo(np.int64).min  # NaT as int64
_NS_PER_DAY = 86_400 * 10**9


def check_frame(table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> pd.DataFrame:
    """Validate a frame against the write contract and return it ready to store.

    Ready means: column names are safe identifiers, dtypes are ones every store can round-trip,
    timestamps are truncated to microseconds (DuckDB and Postgres keep microseconds, so Parquet does
    too and the three stores hold identical rows), and every row falls inside the slice.

    Inside `CheckedFrame.active()` for this very frame, table and slice (the router already checked
    it), the frame is returned as is: the checks ran once for every destination of the write.
    """
    active = _ACTIVE.get()
    if active is not None and active.frame is df and active.table == table and active.part == part:
        return df
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
    # One factorize of the symbols serves the missing-symbol, stray-symbol and primary-key checks.
    symbol_codes, symbols = _factorize(df["symbol"])
    if (symbol_codes < 0).any():
        raise FrameContractError(f"{where}: {int(df['symbol'].isna().sum())} row(s) have no symbol")
    ts_i8 = _i8(df["ts"])
    nat = ts_i8 == _NAT
    if table.layer not in NAT_LAYERS and nat.any():
        raise FrameContractError(
            f"{where}: {int(df['ts'].isna().sum())} row(s) have NaT ts; only quarantine tables may hold "
            "rows without a timestamp"
        )
    stray = sorted(set(symbols) - set(part.displays))
    if stray:
        raise FrameContractError(
            f"{where}: rows for symbol(s) {stray} outside the slice's symbols {part.displays}; "
            "write each symbol's rows with a slice that contains it"
        )
    if table.primary_key and not _strictly_increasing(df, table.primary_key, symbol_codes):
        # Not provably unique by the cheap test (rows not in key order, or a repeated key): hash them.
        dup = df.duplicated(list(table.primary_key), keep=False)
        if dup.any():
            first = df.loc[dup, list(table.primary_key)].head(3).to_dict("records")
            raise FrameContractError(
                f"{where}: {int(dup.sum())} row(s) share a primary key {table.primary_key} (e.g. {first}); "
                "deduplicate before returning the output"
            )
    lo, hi = pd.Timestamp(part.start_ts).value, pd.Timestamp(part.end_ts).value
    outside = ~nat & ((ts_i8 < lo) | (ts_i8 >= hi))
    if outside.any():
        bad = df["ts"][outside]
        raise FrameContractError(
            f"{where}: {int(outside.sum())} row(s) with ts outside {part.start}..{part.end} "
            f"(e.g. {bad.min()} .. {bad.max()}); trim warm-up rows before returning the output"
        )
    return truncate_to_us(df)


def _factorize(s: pd.Series) -> tuple[np.ndarray, list[object]]:
    """pd.factorize of a column (codes, distinct values; missing -> code -1), with a shortcut for a
    column holding one string (a frame of one symbol, one timeframe): one vectorized comparison
    instead of hashing every row."""
    if len(s) and isinstance(first := s.iloc[0], str):
        try:
            if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":
                same = (s == first).to_numpy(dtype=bool, na_value=False)  # Arrow compute, no Python strs
            else:
                same = np.asarray(np.asarray(s.array, dtype=object) == first, dtype=bool)  # no copy
        except TypeError:  # an element that does not compare to a str (pd.NA in an object column)
            same = None
        if same is not None and bool(same.all()):
            return np.zeros(len(s), dtype=np.intp), [first]
    codes, uniques = pd.factorize(s)
    return codes, list(uniques)


def _i8(s: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch of a datetime64[ns] column (NaT as int64 min), without a copy."""
    arr = s.array
    return arr.asi8 if hasattr(arr, "asi8") else s.to_numpy().view("i8")


def _strictly_increasing(df: pd.DataFrame, columns: tuple[str, ...], symbol_codes: np.ndarray) -> bool:
    """Whether every row's key is strictly greater than the previous row's (lexicographically over
    `columns`, each as integer codes), which proves the keys unique in O(n).

    Why: frames arrive sorted by (symbol, ts), so this settles the primary-key check without hashing
    every key as DataFrame.duplicated does (~0.2 s per million rows). False only means "not proven";
    the caller then runs the exact check.
    """
    if len(df) < 2:
        return True
    greater = np.zeros(len(df) - 1, dtype=bool)
    equal = np.ones(len(df) - 1, dtype=bool)
    for c in columns:
        s = df[c]
        if c == "symbol":
            codes = symbol_codes
        elif isinstance(s.dtype, pd.DatetimeTZDtype) or (
            isinstance(s.dtype, np.dtype) and s.dtype.kind == "M"
        ):
            codes = _i8(s)  # NaT is int64 min: two NaT keys compare equal, as duplicated() counts them
        elif isinstance(s.dtype, np.dtype) and s.dtype.kind in "iu":
            codes = s.to_numpy()
        else:  # strings, floats, nullable integers, booleans: factorize (missing values share code -1)
            codes = _factorize(s)[0]
        before, after = codes[:-1], codes[1:]
        greater |= equal & (after > before)
        equal &= after == before
    return bool(greater.all())


def truncate_to_us(df: pd.DataFrame) -> pd.DataFrame:
    """Floor sub-microsecond timestamps (copying only when some exist)."""
    out = df
    for c in df.columns:
        dtype = df[c].dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            unit = dtype.unit
        elif isinstance(dtype, np.dtype) and dtype.kind == "M":
            unit = np.datetime_data(dtype)[0]
        else:
            continue
        if unit == "ns":  # coarser units cannot hold sub-microsecond values
            values = _i8(df[c])
            rest = values % 1000 != 0
            if rest.any() and (rest & (values != _NAT)).any():  # NaT's int64 is not a multiple of 1000
                if out is df:
                    out = df.copy()
                out[c] = df[c].dt.floor("us")
    return out


def partition_of_rows(df: pd.DataFrame, part: PartitionSlice) -> tuple[np.ndarray, np.ndarray]:
    """(symbol key, UTC day as datetime64[D]) of every row, vectorized; NaT rows go to the first day."""
    codes, displays = _factorize(df["symbol"])
    keys = np.array([partition_key(d) for d in displays] + [None], dtype=object)[codes]  # per symbol, not row
    return keys, _days(df, part).astype("datetime64[D]")


def _days(df: pd.DataFrame, part: PartitionSlice) -> np.ndarray:
    """Days since the epoch (int64) of every row's UTC day; NaT rows get the slice's first day."""
    ts = _i8(df["ts"])
    days = ts // _NS_PER_DAY
    nat = ts == _NAT
    if nat.any():
        days[nat] = (part.start - date(1970, 1, 1)).days
    return days


def partition_ranges(
    df: pd.DataFrame, part: PartitionSlice
) -> tuple[np.ndarray | None, list[tuple[str, date, int, int]]]:
    """The rows of each (symbol key, day) partition as contiguous ranges: `(order, [(key, day, start, stop)])`.

    `order` is None when the rows already come grouped by partition (a frame sorted by symbol and ts,
    the usual case): the ranges then index the frame itself, so a store converts the frame to Arrow
    once and slices it (zero copy) instead of gathering every partition's rows. Otherwise `order` is the
    stable permutation that groups them (rows keep their order within a partition) and the ranges index
    the reordered rows. Partitions without rows are absent; ranges come in (key, day) order.
    """
    n = len(df)
    if n == 0:
        return None, []
    codes, displays = _factorize(df["symbol"])
    row_keys = [partition_key(d) for d in displays]
    keys = sorted(set(row_keys))
    rank = np.array([keys.index(k) for k in row_keys], dtype=np.int64)[codes]
    days = _days(df, part)
    first = int(days.min())
    span = int(days.max()) - first + 1
    group = rank * span + (days - first)
    order = None
    if n > 1 and bool((group[1:] < group[:-1]).any()):
        order = np.argsort(group, kind="stable")
        group = group[order]
    starts = np.concatenate([[0], np.flatnonzero(group[1:] != group[:-1]) + 1])
    stops = np.concatenate([starts[1:], [n]])
    epoch = date(1970, 1, 1)
    return order, [
        (keys[g // span], epoch + timedelta(days=first + g % span), int(a), int(b))
        for g, a, b in zip(group[starts].tolist(), starts.tolist(), stops.tolist(), strict=True)
    ]


class CheckedFrame:
    """A frame that passed check_frame for (table, part), and its Arrow table, built on first use.

    Why: one routed write sends the same frame to several destinations; each would check it and convert
    it to Arrow again (for a year of 1m raw rows ~0.5 s per conversion). While `active()`, check_frame
    returns this frame at once and to_arrow returns the one Arrow table. Only for a frame that passed
    check_frame for this table and slice (or a row subset of one, restricted to the slice's symbols),
    and that nobody modifies while it is active.
    """

    def __init__(self, table: TableRef, frame: pd.DataFrame, part: PartitionSlice):
        self.table = table
        self.frame = frame
        self.part = part
        self._arrow: pa.Table | None = None
        self._lock = threading.Lock()

    def arrow(self) -> pa.Table:
        with self._lock:
            if self._arrow is None:
                self._arrow = _convert(self.frame)
            return self._arrow

    @contextmanager
    def active(self) -> Iterator[CheckedFrame]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


# Per thread and task (a ContextVar), so concurrent writes in other threads never see this frame.
_ACTIVE: ContextVar[CheckedFrame | None] = ContextVar("data_puller_checked_frame", default=None)


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """The frame as the Arrow table every store writes (no index; strings as `string`, whatever their
    pandas storage), converted once per routed write (see CheckedFrame)."""
    active = _ACTIVE.get()
    if active is not None and active.frame is df:
        return active.arrow()
    return _convert(df)


def _convert(df: pd.DataFrame) -> pa.Table:
    """pandas -> Arrow. `string[pyarrow]` columns arrive as `large_string`: cast to `string` (a copy of
    the offsets only) so a table's stored schema is the same for either pandas string storage."""
    arrow = pa.Table.from_pandas(df, preserve_index=False)
    for i, f in enumerate(arrow.schema):
        if pa.types.is_large_string(f.type):
            arrow = arrow.set_column(i, f.with_type(pa.string()), arrow.column(i).cast(pa.string()))
    return arrow


# Recorded dtypes whose store round trip (to_arrow, then arrow_to_pandas + restore_dtypes on read)
# gives back the same dtype and the same values; a frame with any other column is always read back.
EXACT_ROUND_TRIP_DTYPES = frozenset({
    "int64", "Int64", "float64", "bool", "string", "string[pyarrow]",
    "datetime64[ns, UTC]", "datetime64[us, UTC]", "datetime64[ns]", "datetime64[us]",
})  # fmt: skip


def reads_back_as_is(df: pd.DataFrame, part: PartitionSlice) -> bool:
    """Whether reading `part` back from a Parquet store, right after a whole write of `df` for it,
    returns a frame equal to `df` itself: same columns, dtypes and values, rows in the same order,
    RangeIndex.

    True when every dtype round-trips exactly (EXACT_ROUND_TRIP_DTYPES), check_frame leaves the frame
    as is (no sub-microsecond timestamps to floor), the rows already come grouped by (symbol key, day)
    in the slice's key order (the order the day files are read in) and the index is 0..n-1. An empty
    frame is never handed over (its read is `empty_frame`, whose index differs).
    """
    if not len(df) or not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
        return False
    if any(dtype_name(t) not in EXACT_ROUND_TRIP_DTYPES for t in df.dtypes):
        return False
    if truncate_to_us(df) is not df:
        return False
    order, _ = partition_ranges(df, part)
    return order is None


def redact_url(url: str) -> str:
    """A URL without its user-info (credentials must never reach logs or metadata)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@]*@", r"\1***@", url)


# ------------------------------------------------------------------------------------------ dtypes
def dtype_map(df: pd.DataFrame) -> dict[str, str]:
    """Column -> pandas dtype string, as recorded next to the data to restore it on read."""
    return {str(c): dtype_name(t) for c, t in df.dtypes.items()}


def dtype_name(dtype: object) -> str:
    """The recorded name of a dtype: str(dtype), except that Arrow-backed strings are `string[pyarrow]`.

    Why: str() of both pandas string storages is "string", so a read would turn `string[pyarrow]`
    columns into `string[python]` ones. `string` (python storage) stays as recorded before.
    """
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow" and dtype.na_value is pd.NA:
        return "string[pyarrow]"
    return str(dtype)


def pandas_dtype(name: str) -> object:
    """The dtype a recorded name stands for (`str` is pandas' NaN-variant string dtype, not numpy's)."""
    if name == "str":
        return pd.StringDtype(na_value=np.nan)
    return pd.api.types.pandas_dtype(name)


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
        want = pandas_dtype(t)
        out[c] = s if _same_dtype(s.dtype, want) else s.astype(want)
    # copy=False: the columns are this read's own, copying them again only costs time and memory.
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)), copy=False)


def _same_dtype(have: object, want: object) -> bool:
    if isinstance(have, pd.StringDtype) or isinstance(want, pd.StringDtype):
        # StringDtype("pyarrow") == StringDtype("python") is True: compare storage and NA too.
        return (
            isinstance(have, pd.StringDtype)
            and isinstance(want, pd.StringDtype)
            and (have.storage, have.na_value is pd.NA) == (want.storage, want.na_value is pd.NA)
        )
    return have == want


_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64())


def arrow_to_pandas(table: pa.Table, dtypes: dict[str, str] | None = None) -> pd.DataFrame:
    """Arrow -> pandas keeping integers exact (Int64, not float64 with NaN) and strings as "string".

    With the recorded `dtypes`, string columns go straight to their recorded string storage: for
    `string[pyarrow]` that wraps the Arrow data (no Python str objects), where converting to
    `string[python]` first and casting after would build every string twice.
    """
    mapping = {
        **dict.fromkeys(_INT_TYPES, pd.Int64Dtype()),
        pa.string(): pd.StringDtype(),
        pa.large_string(): pd.StringDtype(),
    }
    direct: dict[str, pd.StringDtype] = {}
    for name, t in (dtypes or {}).items():
        if t in ("string[pyarrow]", "str") and name in table.column_names:
            f = table.schema.field(name)
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                direct[name] = pandas_dtype(t)  # type: ignore[assignment]
    if not direct:
        return table.to_pandas(types_mapper=mapping.get)
    rest = table.drop_columns(list(direct)).to_pandas(types_mapper=mapping.get)
    columns = {
        c: pd.Series(direct[c].__from_arrow__(table.column(c)), name=c) if c in direct else rest[c]
        for c in table.column_names
    }
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows), copy=False)


def empty_frame(dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=pandas_dtype(t)) for c, t in dtypes.items()})


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
        dtype = pandas_dtype(dtype)
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
    if pd.api.types.is_string_dtype(dtype):  # "string" (python or pyarrow storage), object (assumed str)
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
