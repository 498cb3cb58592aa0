"""Gaps: candles the market calendar expects but the data lacks, reported as segments.

Why segments and not a percentage: "99.7 % complete" does not tell an operator (or the gap-filling
sensor) what to re-fetch; "2020-12-21 15:00 .. 18:00, 3 candles" does. Market closures (weekends,
holidays, overnight for equities) are never gaps because the expected grid comes from
`calendars.expected_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.transform.calendars import DEFAULT_FOREX, ForexSession, expected_grid

SEGMENT_DTYPES: dict[str, str] = {
    "start": "datetime64[ns, UTC]",
    "end": "datetime64[ns, UTC]",
    "missing": "int64",
}


@dataclass(frozen=True)
class GapReport:
    """Gaps of one series over [window_start, window_end).

    `segments`: one row per run of consecutive missing expected candles (consecutive in the *expected*
    grid, so a gap spanning a weekend is one segment): `start` = open time of the first missing candle,
    `end` = close time of the last missing candle (exclusive end, = its open time + timeframe),
    `missing` = candles missing in the run. `unexpected` counts present candles the calendar does not
    expect (e.g. a forex bar after the Friday close); they are neither gaps nor errors.
    """

    segments: pd.DataFrame
    missing_index: pd.DatetimeIndex
    expected: int
    present: int
    unexpected: int
    window_start: pd.Timestamp
    window_end: pd.Timestamp

    @property
    def missing(self) -> int:
        return int(self.expected - self.present)

    @property
    def completeness(self) -> float:
        """present / expected, 1.0 when nothing was expected (a closed market is complete)."""
        return 1.0 if self.expected == 0 else self.present / self.expected

    def as_metadata(self) -> dict[str, int | float]:
        return {
            "expected_candles": int(self.expected),
            "present_candles": int(self.present),
            "missing_candles": int(self.missing),
            "gap_segments": len(self.segments),
            "unexpected_candles": int(self.unexpected),
            "completeness": float(self.completeness),
        }


def empty_segments() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in SEGMENT_DTYPES.items()})


def segments_of(missing: pd.DatetimeIndex, grid: pd.DatetimeIndex, timeframe: str) -> pd.DataFrame:
    """Group missing grid positions into runs of consecutive grid positions (vectorized)."""
    if missing.empty:
        return empty_segments()
    pos = grid.get_indexer(missing)
    pos.sort()
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(pos)])) - 1
    tf = pd.Timedelta(seconds=timeframes.seconds(timeframe))
    return pd.DataFrame(
        {
            "start": grid[pos[starts]],
            "end": grid[pos[ends]] + tf,
            "missing": (ends - starts + 1).astype("int64"),
        }
    ).astype(SEGMENT_DTYPES)


def find_gaps(
    ts: pd.Series | pd.DatetimeIndex,
    asset_class: str,
    timeframe: str,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    *,
    forex: ForexSession = DEFAULT_FOREX,
) -> GapReport:
    """Gaps of the candle open times `ts` (one symbol) against the calendar over [start, end).

    NaT and duplicate timestamps are ignored (normalize has already accounted for them). Naive
    timestamps are taken as UTC.
    """
    idx = pd.DatetimeIndex(pd.Series(ts).dropna().unique()) if len(ts) else pd.DatetimeIndex([])
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    else:
        idx = idx.tz_convert("UTC")
    grid = expected_grid(asset_class, timeframe, start, end, forex=forex)
    win_start = pd.Timestamp(start)
    win_end = pd.Timestamp(end)
    win_start = win_start.tz_localize("UTC") if win_start.tzinfo is None else win_start.tz_convert("UTC")
    win_end = win_end.tz_localize("UTC") if win_end.tzinfo is None else win_end.tz_convert("UTC")
    in_window = idx[(idx >= win_start) & (idx < win_end)]
    present_mask = grid.isin(in_window)
    missing = grid[~present_mask]
    present = int(present_mask.sum())
    return GapReport(
        segments=segments_of(missing, grid, timeframe),
        missing_index=missing,
        expected=len(grid),
        present=present,
        unexpected=int(len(in_window) - present),
        window_start=win_start,
        window_end=win_end,
    )
