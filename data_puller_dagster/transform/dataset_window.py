"""LLM examples of a window of days from enriched candles of one or more symbols, each symbol on its own.

Why here and not in the dataset asset: the asset and the library's `build_llm_dataset()` must emit the
same lines for the same candles: per symbol in (symbol, ts) order, each day's examples gated on that
day's completeness against the market calendar (`quality_by_day`, `dataset.min_quality`). Plain pandas.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from data_puller_dagster.config import DatasetConfig, FeedConfig, IndicatorsConfig
from data_puller_dagster.transform.calendars import expected_grid
from data_puller_dagster.transform.llm_dataset import build_examples, empty_examples


def quality_by_day(enriched: pd.DataFrame, feed: FeedConfig, tf: str) -> dict[date, float]:
    """Completeness of each UTC day's candles against the market calendar (1.0 when the market was shut).

    Used to drop examples from days below `dataset.min_quality`.
    """
    if enriched.empty:
        return {}
    start = enriched["ts"].min().floor("D")
    end = enriched["ts"].max().floor("D") + pd.Timedelta(days=1)
    grid = expected_grid(feed.asset_class, tf, start, end)
    expected = pd.Series(1, index=grid).groupby(grid.date).sum()
    present_ts = pd.DatetimeIndex(enriched["ts"]).intersection(grid)
    present = pd.Series(1, index=present_ts).groupby(present_ts.date).sum()
    ratio = (present.reindex(expected.index, fill_value=0) / expected).clip(upper=1.0)
    days = pd.Index(pd.DatetimeIndex(enriched["ts"]).date).unique()
    return {d: float(ratio.get(d, 1.0)) for d in days}


def window_examples(
    enriched: pd.DataFrame,
    *,
    feed: FeedConfig,
    dataset: DatasetConfig,
    indicators: IndicatorsConfig,
    start: pd.Timestamp,
    end: pd.Timestamp,
    lookback_days: int | None,
    lookahead_days: int = 1,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """(examples of the candles with ts in [start, end), examples excluded: {"low_quality": n,
    "token_budget": n}).

    `enriched` holds the enriched candles of `feed.llm_timeframe` for one or more symbols, including
    the context before `start` and the candle after `end` (what the dataset asset reads).
    """
    tf = feed.llm_timeframe
    frames = []
    excluded = {"low_quality": 0, "token_budget": 0}
    for _, rows in enriched.groupby("symbol", sort=True):  # one iteration per symbol
        rows = rows.sort_values("ts", kind="stable").reset_index(drop=True)
        batch = build_examples(
            rows,
            feed=feed,
            dataset=dataset,
            indicators=indicators,
            start=start,
            end=end,
            quality_by_day=quality_by_day(rows, feed, tf),
            lookback_days=lookback_days,
            lookahead_days=lookahead_days,
        )
        frames.append(batch.frame)
        excluded["low_quality"] += int(batch.excluded_low_quality)
        excluded["token_budget"] += int(batch.excluded_token_budget)
    out = pd.concat(frames, ignore_index=True) if frames else empty_examples()
    return out, excluded
