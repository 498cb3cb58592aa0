"""Rows of a frame grouped by the (symbol key, UTC day) partitions of a window, without copying the frame.

Why integer day numbers and contiguous slices: a year of 1m candles is half a million rows and 366
partitions per layer. Formatting every row's day as a string and grouping on string keys took seconds
per call; a row's day is `ts // one day`, its symbol is matched to the window's once, and rows already
ordered by (symbol, ts) (every layer's output is) are sliced where they lie (other orders are sorted
once, as positions). Plain pandas/numpy: the assets' per-partition metadata (assets/partition_metadata.py)
and the library's gap and quality figures (transform/gap_figures.py) both group rows with this code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from data_puller_dagster.io.tables import PartitionSlice

SIGNIFICANT_DIGITS = 4
EPOCH = date(1970, 1, 1)
# Ticks of one UTC day per datetime64 unit.
TICKS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
NAT = np.iinfo(np.int64).min  # NaT's int64 value
# Up to this many symbols in a window, rows are matched to them by comparing strings (a few ms per
# symbol over a year of 1m rows); more are factorized once.
FEW_SYMBOLS = 4


def sig(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`x` rounded to `digits` significant digits, so the UI shows 0.9167 rather than 0.9166666666666666."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def partition_key_of(day: object, symbol_key: str) -> str:
    """The multi-partition key string of (day, symbol): dims sorted by name -> `date|symbol`."""
    return f"{day}|{symbol_key}"


def window_partition_keys(window: PartitionSlice) -> list[str]:
    """Every partition key of the run's rectangle, day-major."""
    return [partition_key_of(d.isoformat(), k) for d in window.dates for k in window.keys]


def utc_ts(ts: pd.Series) -> pd.Series:
    """`ts` as tz-aware UTC (naive taken as UTC, unparseable as NaT): the clock partitions are cut on.

    `pd.to_datetime(ts, utc=True, errors="coerce")`, which for a column that is already tz-aware is a
    plain conversion (to_datetime would first scan it for caching)."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        return ts if str(ts.dtype.tz) == "UTC" else ts.dt.tz_convert("UTC")
    return pd.to_datetime(ts, utc=True, errors="coerce")


@dataclass(frozen=True)
class PartitionLayout:
    """Where each partition of a window lies in a frame, without copying the frame.

    The rows that belong to a partition of the window, grouped by (symbol key, day) - symbol-major, each
    group's rows in their order in `frame` - are `frame.iloc[order]`; `order` is None when that is the
    frame itself (already in that order, every row in a partition: every layer's output, sorted by
    (symbol, ts)). Group `g = key_index * days + day_index` (keys sorted, as `PartitionSlice.keys`) is
    positions `starts[g] : starts[g] + counts[g]` of that sequence.
    """

    frame: pd.DataFrame
    order: np.ndarray | None
    starts: np.ndarray
    counts: np.ndarray
    keys: tuple[str, ...]
    days: int

    def positions(self, lo: int, hi: int) -> slice | np.ndarray:
        """Row positions in `frame` of the grouped rows lo..hi (a slice when no reordering is needed)."""
        return slice(lo, hi) if self.order is None else self.order[lo:hi]

    def group(self, g: int) -> pd.DataFrame:
        """The rows of group `g` (a view when no reordering is needed)."""
        s, c = int(self.starts[g]), int(self.counts[g])
        return self.frame.iloc[self.positions(s, s + c)]

    def key_rows(self, key_index: int) -> slice | np.ndarray:
        """Row positions in `frame` of one symbol key over all the window's days."""
        lo = key_index * self.days
        hi = lo + self.days - 1
        return self.positions(int(self.starts[lo]), int(self.starts[hi] + self.counts[hi]))


def group_ids(df: pd.DataFrame, window: PartitionSlice) -> np.ndarray:
    """Per row: its group id in the window (`key_index * days + day_index`), -1 for a row of no partition.

    A row belongs to the UTC day of its `ts` and to the partition key of its display `symbol`; rows
    without a timestamp, of another symbol or outside the window's days belong to no partition.
    """
    days = window.days
    if not (len(df) and "ts" in df.columns and "symbol" in df.columns):
        return np.full(len(df), -1, dtype=np.int64)
    ts = utc_ts(df["ts"])
    ticks = ts.array.asi8
    day = np.floor_divide(ticks, TICKS_PER_DAY[ts.dt.unit]) - (window.start - EPOCH).days
    key_index = symbol_index(df["symbol"], [window.symbols[k] for k in window.keys])
    ok = (ticks != NAT) & (key_index >= 0) & (day >= 0) & (day < days)
    return np.where(ok, key_index * days + day, -1)


def symbol_index(symbol: pd.Series, displays: list[str]) -> np.ndarray:
    """Per row: the position of its symbol (by string form, as the display symbols are matched) in
    `displays`, -1 for any other symbol or none."""
    if isinstance(symbol.dtype, pd.StringDtype) and len(displays) <= FEW_SYMBOLS:
        values = np.asarray(symbol.array)  # the str objects themselves (no copy for python storage)
        out = np.full(len(values), -1, dtype=np.int64)
        try:
            for i, display in enumerate(displays):
                same = values == display
                if not (isinstance(same, np.ndarray) and same.shape == values.shape):
                    raise TypeError("no elementwise comparison")
                out[same] = i
            return out
        except TypeError:  # <NA> in the column does not compare: factorizing counts it out
            pass
    if not isinstance(symbol.dtype, pd.StringDtype | pd.CategoricalDtype):
        symbol = symbol.astype("string")
    codes, uniques = pd.factorize(symbol)
    index_of = {d: i for i, d in enumerate(displays)}
    lookup = [index_of.get(str(u), -1) for u in pd.Series(uniques).astype("string")]
    return np.array([*lookup, -1], dtype=np.int64)[codes]  # code -1 (no symbol) -> the trailing -1


def partition_layout(df: pd.DataFrame, window: PartitionSlice) -> PartitionLayout:
    """The rows of `df` grouped by the window's partitions (see PartitionLayout), sorted at most once."""
    n = len(window.keys) * window.days
    gid = group_ids(df, window)
    order = None
    if len(gid) and not (gid[0] >= 0 and bool(np.all(gid[1:] >= gid[:-1]))):
        order = np.flatnonzero(gid >= 0)
        if not bool(np.all(gid[order][1:] >= gid[order][:-1])):
            order = order[np.argsort(gid[order], kind="stable")]  # stable: a group's rows keep their order
        gid = gid[order]
    counts = np.bincount(gid, minlength=n).astype(np.int64) if len(gid) else np.zeros(n, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return PartitionLayout(
        frame=df, order=order, starts=starts, counts=counts, keys=tuple(window.keys), days=window.days
    )


def partition_counts(df: pd.DataFrame, window: PartitionSlice) -> np.ndarray:
    """Rows per group id of the window (as PartitionLayout numbers them), without reordering anything."""
    gid = group_ids(df, window)
    return np.bincount(gid[gid >= 0], minlength=len(window.keys) * window.days).astype(np.int64)


class PartitionGroups(Mapping[str, pd.DataFrame]):
    """Partition key -> that partition's rows (a slice of `layout.frame`, cut when asked for: most metadata
    needs only the layout), day-major like `window_partition_keys`; `group_of` maps a key to its group id."""

    def __init__(self, layout: PartitionLayout, empty: pd.DataFrame, group_of: dict[str, int]) -> None:
        self.layout = layout
        self.group_of = group_of
        self._empty = empty

    def __getitem__(self, key: str) -> pd.DataFrame:
        g = self.group_of[key]
        return self.layout.group(g) if self.layout.counts[g] else self._empty

    def __iter__(self) -> Iterator[str]:
        return iter(self.group_of)

    def __len__(self) -> int:
        return len(self.group_of)


def partition_groups(df: pd.DataFrame, window: PartitionSlice) -> PartitionGroups:
    """The rows of `df` per partition key of `window` (an empty frame for a partition without rows).

    A row belongs to the UTC day of its `ts` and to the partition key of its display `symbol`; rows
    without a timestamp belong to no partition (they are counted at run level). Each partition's rows
    keep their order in `df`; each frame is cut from `df` when it is looked up (a view of `df` when `df` is
    already ordered by (symbol, ts)): read them, do not write to them.
    """
    layout = partition_layout(df, window)
    keys, days = layout.keys, layout.days
    group_of = {
        partition_key_of(day.isoformat(), key): k * days + d
        for d, day in enumerate(window.dates)
        for k, key in enumerate(keys)
    }
    return PartitionGroups(layout, df.iloc[0:0], group_of)
