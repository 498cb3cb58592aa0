"""The raw rows of a window of (symbol x UTC day) partitions, fetched symbol by symbol with one adapter.

Why here and not in the raw asset: the asset, the library (`data_puller_dagster.api`) and `data-puller
pull` must store exactly the same raw rows for the same request: every symbol over [window start,
window end), the adapter closed afterwards, and rows the provider sent for other times counted and kept
out (a day partition can only hold its own candles). What each caller does with an error differs (the
asset turns the ones a retry cannot fix into a non-retried Dagster failure, the command prints one
line), so errors go through `on_error`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.sources.base import SourceAdapter, raw_empty
from data_puller_dagster.sources.errors import SourceError


@dataclass(frozen=True)
class RawWindow:
    """What `fetch_window` got: `frame` (the window's rows, in symbol order), `outside` (rows the
    provider sent for other times, not in `frame`) and `fallbacks` (Binance archive days that failed
    verification and were fetched over REST instead; empty for other adapters)."""

    frame: pd.DataFrame
    outside: int
    fallbacks: list[Any] = field(default_factory=list)


def fetch_window(
    adapter: SourceAdapter,
    window: PartitionSlice,
    timeframe: str,
    layout: str,
    *,
    on_symbol: Callable[[str], None] | None = None,
    on_error: Callable[[str, SourceError], None] | None = None,
    close: bool = True,
) -> RawWindow:
    """Fetch every symbol of `window` over its days with `adapter` (closed afterwards when `close`).

    `layout` is the raw layout of the source ("binance" or "twelvedata": the empty frame's dtypes).
    `on_symbol(display)` runs before each symbol's fetch (logs, progress); `on_error(display, err)`
    runs for a SourceError and may raise something else instead (the error is re-raised when it returns).
    """
    frames: list[pd.DataFrame] = []
    try:
        for key in window.keys:
            display = window.symbols[key]
            if on_symbol is not None:
                on_symbol(display)
            try:
                frames.append(adapter.fetch(display, timeframe, window.start_ts, window.end_ts))
            except SourceError as err:
                if on_error is not None:
                    on_error(display, err)
                raise
    finally:
        if close:
            adapter.close()
    fallbacks = list(getattr(adapter, "checksum_fallbacks", []))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0] if frames else raw_empty(layout)
    return keep_inside(df, window, fallbacks)


def keep_inside(df: pd.DataFrame, window: PartitionSlice, fallbacks: Sequence[Any] = ()) -> RawWindow:
    """The rows of `df` inside the window's days (rows without a timestamp stay: normalize quarantines
    them), and how many were outside."""
    inside = df["ts"].isna() | ((df["ts"] >= window.start_ts) & (df["ts"] < window.end_ts))
    outside = int((~inside).sum())
    if outside:
        df = df[inside].reset_index(drop=True)
    return RawWindow(df, outside, list(fallbacks))
