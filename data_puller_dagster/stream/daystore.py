"""The current day's closed live candles (and quarantined rows) per symbol, kept for the stores.

Why in memory: a store replaces a (symbol x UTC day) partition atomically with what it is given, so
each flush hands it the whole day so far of every symbol that changed, never a fragment. Final candles
only ever arrive newer than the last one of their symbol (the watermark), so a day holds each
(symbol, ts) once. Days before the previous day are dropped once flushed. A restart restores the day
from `storage.primary`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.symbols import partition_key

NS_PER_DAY = 86_400 * 10**9
_EPOCH = date(1970, 1, 1).toordinal()


def day_of_ns(ns: int) -> date:
    return date.fromordinal(_EPOCH + ns // NS_PER_DAY)


@dataclass(frozen=True)
class DaySlice:
    """One day's frame of the symbols that changed, ready for Router.write."""

    day: date
    frame: pd.DataFrame
    part: PartitionSlice


class DayStore:
    """Per UTC day, the frames appended (each a micro-batch's rows of that day) and which symbols changed.

    Appending is O(1) (the batch frame itself, split only when it spans midnight); the work is at the
    flush, once per `stream.store_flush_seconds`: the day's frames are concatenated once (and kept as
    the day's single frame), the changed symbols' rows selected and sorted by (symbol, ts), vectorized.
    """

    def __init__(self, empty: pd.DataFrame, time_column: str = "ts"):
        self._empty = empty
        self._time = time_column
        self._frames: dict[date, list[pd.DataFrame]] = {}
        self._dirty: dict[date, set[str]] = {}
        self._lock = threading.Lock()
        self.rows = 0

    def add(self, df: pd.DataFrame, fallback_ns: np.ndarray | None = None) -> None:
        """Append rows to their UTC day. `fallback_ns`: per row, the time deciding the day of rows
        without a `ts` (quarantine)."""
        if not len(df):
            return
        ns = df[self._time].array.asi8
        if fallback_ns is not None:
            ns = np.where(ns == np.iinfo(np.int64).min, fallback_ns, ns)
        days = ns // NS_PER_DAY
        parts = [(int(days[0]), df)] if days.min() == days.max() else [
            (int(d), df[days == d].reset_index(drop=True)) for d in np.unique(days).tolist()
        ]  # fmt: skip
        with self._lock:
            for d, part in parts:
                day = day_of_ns(d * NS_PER_DAY)
                self._frames.setdefault(day, []).append(part)
                self._dirty.setdefault(day, set()).update(str(x) for x in pd.unique(part["symbol"]))
            self.rows += len(df)

    def seed(self, symbol: str, day: date, frame: pd.DataFrame) -> None:
        """The rows a store already holds for (symbol, day), placed first (a restart)."""
        if len(frame):
            with self._lock:
                self._frames.setdefault(day, []).insert(0, frame)

    def dirty(self) -> bool:
        return bool(self._dirty)

    def snapshot(self) -> list[DaySlice]:
        """Every changed day: the whole day so far of each changed symbol, sorted by (symbol, ts)."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            wholes = {}
            for day in dirty:
                frames = self._frames.get(day, [])
                whole = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
                self._frames[day] = [whole]
                wholes[day] = whole
        out = []
        for day in sorted(dirty):
            whole, symbols = wholes[day], sorted(dirty[day])
            codes, uniques = pd.factorize(whole["symbol"], sort=True)
            keep = np.isin(np.asarray(uniques, dtype=object), symbols)[codes]
            ts = whole[self._time].array.asi8
            order = np.lexsort((ts, codes))
            order = order[keep[order]]
            frame = whole.take(order).reset_index(drop=True)
            out.append(DaySlice(day, frame, PartitionSlice({partition_key(x): x for x in symbols}, day, day)))
        return out

    def mark_dirty(self, slices: list[DaySlice]) -> None:
        """A flush that failed: write these days again next time."""
        with self._lock:
            for s in slices:
                self._dirty.setdefault(s.day, set()).update(s.part.symbols.values())

    def evict_before(self, day: date) -> None:
        with self._lock:
            for d in [d for d in self._frames if d < day and d not in self._dirty]:
                del self._frames[d]

    def frame(self, symbol: str, day: date) -> pd.DataFrame:
        with self._lock:
            frames = self._frames.get(day, [])
            if not frames:
                return self._empty.copy()
            whole = pd.concat(frames, ignore_index=True)
        return whole[whole["symbol"] == symbol].sort_values(self._time, kind="stable").reset_index(drop=True)
