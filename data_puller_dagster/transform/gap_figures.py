"""Gaps, completeness and quality of a window of canonical candles, per (day, symbol) partition and per symbol.

Why per partition: a range run emits one materialization per partition and the UI (and the gap sensor)
read them one by one, so each must carry that day's rows, missing candles, gap segments, quarantined
rows, quality score and first/last candle, not the run's totals. Gaps are counted day by day against
the market calendar (a run of missing candles across midnight is one segment on each day), over candles
that have closed by `now`. A rejected day stores nothing new: its accepted rows are 0, so all its
candles count as missing (the gap sensor refetches it), and it carries the reason and its own counts.

Why computed for all days at once: the figures are the same as `find_gaps` over each day's own calendar
grid, but a year of 1m candles is 366 partitions, and 366 grids, masks and gap reports took seconds.
The calendar grid is built once over the window's closed part (the grid of a day is the window's grid
cut at the day's bounds, for every calendar), each symbol's final candles are looked up in it once, and
expected / present candles and gap segments per day are counted with one bincount each.

Plain pandas/numpy: the normalized asset (assets/normalized.py) turns these figures into Dagster
metadata and checks; the library (`data_puller_dagster.api`) and `data-puller gaps` report them as
tables. One code path, so the command and the UI never disagree about a gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.config import FeedConfig
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.calendars import expected_grid
from data_puller_dagster.transform.gaps import segments_of
from data_puller_dagster.transform.partition_layout import (
    TICKS_PER_DAY,
    PartitionGroups,
    PartitionLayout,
    partition_counts,
    partition_key_of,
    partition_layout,
    symbol_index,
    utc_ts,
)
from data_puller_dagster.transform.quality import data_quality_score


@dataclass(frozen=True)
class WindowGrid:
    """The candles the calendar expects over the closed part of a run's window, and which are present.

    `grid`: open times over [window start, min(window end, last closed candle)), as `expected_grid`
    gives them; `day`: each grid candle's day index in the window; `present`: per symbol key, whether a
    final candle of that symbol is at each grid candle.
    """

    grid: pd.DatetimeIndex
    day: np.ndarray
    present: dict[str, np.ndarray]


def window_grid(feed: FeedConfig, window: PartitionSlice, layout: PartitionLayout, now: pd.Timestamp) -> WindowGrid:
    """The window's expected grid and each symbol's present final candles on it (see WindowGrid)."""
    start = pd.Timestamp(window.start_ts)
    end = min(pd.Timestamp(window.end_ts), now.floor(timeframes.pandas_freq(feed.timeframe)))
    grid = expected_grid(feed.asset_class, feed.timeframe, start, end).as_unit("ns")
    ticks = grid.asi8
    day = ticks // TICKS_PER_DAY["ns"] - start.value // TICKS_PER_DAY["ns"]
    present: dict[str, np.ndarray] = {}
    frame = layout.frame
    ts = final = None
    if len(frame) and len(grid):
        ts = utc_ts(frame["ts"]).dt.as_unit("ns").array.asi8
        final = frame["is_final"].astype(bool).to_numpy()
    for k, key in enumerate(layout.keys):
        mask = np.zeros(len(grid), dtype=bool)
        rows = layout.key_rows(k)
        if ts is not None and final is not None:
            candles = ts[rows][final[rows]]
            at = np.searchsorted(ticks, candles)
            inside = at < len(ticks)
            at, candles = at[inside], candles[inside]
            mask[at[ticks[at] == candles]] = True
        present[key] = mask
    return WindowGrid(grid=grid, day=day, present=present)


def day_gap_counts(wg: WindowGrid, key: str, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected, present, gap segments) per day index of one symbol key: what `find_gaps` over each
    day's grid counts (a segment is a run of missing candles consecutive in the grid, cut at midnight)."""
    mask = wg.present[key]
    expected = np.bincount(wg.day, minlength=days)
    present = np.bincount(wg.day[mask], minlength=days)
    new_day = np.ones(len(mask), dtype=bool)
    new_day[1:] = wg.day[1:] != wg.day[:-1]
    after_present = np.ones(len(mask), dtype=bool)
    after_present[1:] = mask[:-1]
    starts = ~mask & (new_day | after_present)
    segments = np.bincount(wg.day[starts], minlength=days)
    return expected[:days], present[:days], segments[:days]


def partition_figures(
    feed: FeedConfig,
    window: PartitionSlice,
    *,
    data: pd.DataFrame,
    raw: pd.DataFrame,
    quarantine: pd.DataFrame,
    rejections: pd.DataFrame,
    now: pd.Timestamp,
    groups: PartitionGroups | None = None,
    grid: WindowGrid | None = None,
) -> dict[str, dict[str, Any]]:
    """Per partition key: plain figures (missing, segments, completeness, rows_in, quarantined, score,
    rejection) computed from that partition's rows only.

    `groups` (`partition_groups(data, window)`) and `grid` (`window_grid` of it) are reused when given.
    """
    key_of = {d: k for k, d in window.symbols.items()}
    rejected = {partition_key_of(r.day, key_of[r.symbol]): r for r in rejections.itertuples()}
    layout = groups.layout if groups is not None else partition_layout(data, window)
    wg = grid if grid is not None else window_grid(feed, window, layout, now)
    keys, days = list(layout.keys), layout.days
    raw_n = partition_counts(raw, window).tolist()
    quar_n = partition_counts(quarantine, window).tolist()
    counts = {key: [a.tolist() for a in day_gap_counts(wg, key, days)] for key in keys}
    out: dict[str, dict[str, Any]] = {}
    for d, day_date in enumerate(window.dates):
        day = day_date.isoformat()
        for k, symbol in enumerate(keys):
            key = partition_key_of(day, symbol)
            g = k * days + d
            expected, present, segments = (c[d] for c in counts[symbol])
            missing = expected - present
            completeness = 1.0 if expected == 0 else present / expected
            rej = rejected.get(key)
            rows_in = int(rej.rows_in) if rej is not None else raw_n[g]
            quarantined = int(rej.quarantined) if rej is not None else quar_n[g]
            score = data_quality_score(
                completeness=min(float(completeness), 1.0), rows_in=max(rows_in, quarantined), quarantined=quarantined
            )
            out[key] = {
                "day": day,
                "symbol": symbol,
                "missing": int(missing),
                "segments": int(segments),
                "completeness": float(completeness),
                "rows_in": rows_in,
                "quarantined": quarantined,
                "score": float(score),
                "rejected": rej,
            }
    return out


def missing_by_day(missing: pd.DatetimeIndex, key: str) -> dict[str, dict[str, int]]:
    """Missing candles per UTC day for one symbol (one vectorized group count)."""
    if missing.empty:
        return {}
    counts = pd.Series(1, index=missing).groupby(missing.strftime("%Y-%m-%d")).sum()
    return {day: {key: int(n)} for day, n in counts.items()}


def symbol_completeness(
    feed: FeedConfig, window: PartitionSlice, data: pd.DataFrame, now: pd.Timestamp, grid: WindowGrid | None = None
) -> dict[str, dict[str, Any]]:
    """Gaps and freshness per symbol against the market calendar, over candles that have closed by now.

    A symbol is stale when the calendar expected a candle after the last final one present. The gaps are
    those `find_gaps` reports over the window; they are read off the window's grid (`window_grid`, reused
    when given), which the per-partition figures share.
    """
    end = min(pd.Timestamp(window.end_ts), now.floor(timeframes.pandas_freq(feed.timeframe)))
    start = pd.Timestamp(window.start_ts)
    is_final = data["is_final"].astype(bool).to_numpy()
    displays = [feed.symbol_keys[key] for key in window.keys]
    # String columns: every symbol's rows from one pass (symbol_index compares as `==` does).
    index = symbol_index(data["symbol"], displays) if isinstance(data["symbol"].dtype, pd.StringDtype) else None
    if grid is None and end > start:
        grid = window_grid(feed, window, partition_layout(data, window), now)
    out: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(window.keys):
        if index is not None:
            of_symbol = index == i
        else:
            of_symbol = (data["symbol"] == displays[i]).to_numpy(dtype=bool, na_value=False)
        present = data["ts"][is_final & of_symbol]
        last_present = present.max() if len(present) else None
        if end <= start or grid is None:
            out[key] = {"missing": 0, "segments": 0, "expected": 0, "present": 0, "by_day": {},
                        "segment_list": [], "last": None, "stale": None}
            continue
        mask = grid.present[key]
        missing_index = grid.grid[~mask]
        segments = segments_of(missing_index, grid.grid, feed.timeframe)
        last_missing = missing_index.max() if len(missing_index) else None
        stale = None
        if last_missing is not None and (last_present is None or last_missing > last_present):
            stale = {"last_expected": str(last_missing), "last_present": str(last_present)}
        out[key] = {
            "missing": int(len(grid.grid) - int(mask.sum())),
            "segments": len(segments),
            "expected": len(grid.grid),
            "present": int(mask.sum()),
            "by_day": missing_by_day(missing_index, key),
            "segment_list": [
                {"start": str(r.start), "end": str(r.end), "missing": int(r.missing)}
                for r in segments.itertuples()
            ],
            "last": str(last_present) if last_present is not None else None,
            "stale": stale,
        }
    return out


SEGMENT_COLUMNS = {"symbol": "string", "start": "datetime64[ns, UTC]", "end": "datetime64[ns, UTC]", "missing": "int64"}
FIGURE_COLUMNS = {
    "day": "object", "symbol": "string", "rows_in": "int64", "quarantined": "int64", "missing": "int64",
    "gap_segments": "int64", "completeness": "float64", "quality_score": "float64", "rejected": "object",
}  # fmt: skip


def gap_segments(feed: FeedConfig, window: PartitionSlice, grid: WindowGrid) -> pd.DataFrame:
    """Every run of missing candles of the window's symbols, one row each (symbol, start, end, missing):
    the segments `symbol_completeness` counts, as a frame (a run across midnight is one segment)."""
    frames = []
    for key in window.keys:
        mask = grid.present[key]
        seg = segments_of(grid.grid[~mask], grid.grid, feed.timeframe)
        if len(seg):
            seg.insert(0, "symbol", window.symbols[key])
            frames.append(seg)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=d) for c, d in SEGMENT_COLUMNS.items()})
    return pd.concat(frames, ignore_index=True).astype(SEGMENT_COLUMNS)


def figures_frame(figures: dict[str, dict[str, Any]], window: PartitionSlice) -> pd.DataFrame:
    """`partition_figures` as one row per (day, symbol): rows in, quarantined, missing candles, gap
    segments, completeness, quality score and the rejection reason (None for an accepted day)."""
    rows = [
        {"day": pd.Timestamp(f["day"]).date(), "symbol": window.symbols[f["symbol"]], "rows_in": f["rows_in"],
         "quarantined": f["quarantined"], "missing": f["missing"], "gap_segments": f["segments"],
         "completeness": f["completeness"], "quality_score": f["score"],
         "rejected": None if f["rejected"] is None else str(f["rejected"].reason)}
        for f in figures.values()
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(FIGURE_COLUMNS))
    return frame.astype(FIGURE_COLUMNS).sort_values(["symbol", "day"], kind="stable", ignore_index=True)
