"""Each (day, symbol) partition's own figures for `<feed>/normalized_ohlcv_<tf>`.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.assets.partition_metadata import (
    TICKS_PER_DAY,
    PartitionGroups,
    PartitionLayout,
    partition_counts,
    partition_key_of,
    partition_layout,
    sig,
    utc_ts,
)
from data_puller_dagster.config import FeedConfig
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.calendars import expected_grid
from data_puller_dagster.transform.quality import data_quality_score

# Metadata key the gap-filling sensor reads: {"YYYY-MM-DD": {"<symbol key>": missing candles}}.
MISSING_BY_DAY = "missing_by_day"


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


def partition_metadata(fig: dict[str, Any]) -> dict[str, Any]:
    """The figures of one partition as Dagster metadata (the frame's rows/range come from frame_metadata)."""
    md: dict[str, Any] = {
        "quality_score": dg.MetadataValue.float(sig(fig["score"])),
        "completeness": dg.MetadataValue.float(sig(fig["completeness"])),
        "missing_candles": dg.MetadataValue.int(fig["missing"]),
        "gap_segments": dg.MetadataValue.int(fig["segments"]),
        "rows_in": dg.MetadataValue.int(fig["rows_in"]),
        "quarantined_rows": dg.MetadataValue.int(fig["quarantined"]),
        MISSING_BY_DAY: dg.MetadataValue.json({fig["day"]: {fig["symbol"]: fig["missing"]}}),
    }
    rej = fig["rejected"]
    if rej is not None:
        md["rejected"] = dg.MetadataValue.text(f"{rej.reason}: {rej.detail} (the stored version stays)")
    return md


def missing_table(figures: dict[str, dict[str, Any]]) -> dg.MetadataValue:
    """Day x symbol x missing candles for the partitions with gaps: where the completeness check failed."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("day", "string"), dg.TableColumn("symbol", "string"),
            dg.TableColumn("missing", "int"), dg.TableColumn("gap_segments", "int"),
            dg.TableColumn("completeness", "float"),
        ]
    )  # fmt: skip
    records = [
        dg.TableRecord({"day": f["day"], "symbol": f["symbol"], "missing": f["missing"],
                        "gap_segments": f["segments"], "completeness": sig(f["completeness"])})
        for f in figures.values() if f["missing"]
    ]  # fmt: skip
    return dg.MetadataValue.table(records, schema=schema)
