"""Candlestick (price-action) pattern flags with TA-Lib's `CDL*` functions, exact under any partitioning.

Why TA-Lib (the `ta-lib` wheel, which bundles the C library): it is the reference implementation of
the 61 classic patterns and pandas-ta delegates to it for all but doji/inside; pandas-ta itself needs
Python >= 3.12 (this project runs 3.11) and is a large dependency for two patterns of its own.

Why the values are exact day by day: TA-Lib compares each candle with trailing averages of earlier
candles' bodies and shadows ("candle settings", 5-10 candles), kept as running sums started at the
first candle of the array it is given, so the last bits of a flag's inputs depend on where the array
starts. The enriched asset therefore gives TA-Lib exactly the same array for a UTC day whether that day
is built alone or inside a range: the day's anchored window (`indicators.day_blocks`: the warm-up
candles before the day plus the day). Flags before a pattern's own lookback are NaN (TA-Lib writes 0
there, which would claim "no pattern" without the history to know).

Values are TA-Lib's: +100 bullish, -100 bearish, 0 none; +-80 for the weaker form of engulfing and
harami (TA-Lib >= 0.6: one end of the bodies equal), +-200 for a confirmed hikkake; float64 so the
column can also be NaN. Columns are `cdl_<name>`, named by TA-Lib's function without `CDL`.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from data_puller_dagster.config import IndicatorsConfig

PREFIX = "cdl_"


def pattern_columns(cfg: IndicatorsConfig) -> list[str]:
    """Enriched column names of the configured patterns, in config order."""
    return [PREFIX + p for p in cfg.patterns]


@cache
def _function(name: str):  # noqa: ANN202 - a TA-Lib C function
    import talib  # imported only when patterns are configured (it loads the C library)

    return getattr(talib, "CDL" + name.upper())


@cache
def lookback(name: str) -> int:
    """Candles TA-Lib needs before the first candle it can flag (its `lookback`, default settings)."""
    from talib import abstract

    return int(abstract.Function("CDL" + name.upper()).lookback)


def pattern_min_rows(cfg: IndicatorsConfig) -> int:
    """Rows of a symbol (current included) after which every configured pattern has a value."""
    return max((lookback(p) + 1 for p in cfg.patterns), default=1)


def patterns_of_window(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, names: list[str]
) -> dict[str, np.ndarray]:
    """Every pattern over one contiguous candle window (oldest first): TA-Lib's flags, NaN in its lookback."""
    o, h, lo, c = (np.ascontiguousarray(a, dtype=np.float64) for a in (open_, high, low, close))
    out: dict[str, np.ndarray] = {}
    for name in names:  # one C call per pattern over the whole window
        flags = _function(name)(o, h, lo, c).astype(np.float64)
        flags[: lookback(name)] = np.nan
        out[PREFIX + name] = flags
    return out


def pattern_blocks(
    ohlc: np.ndarray, anchors: np.ndarray, firsts: np.ndarray, stops: np.ndarray, names: list[str]
) -> np.ndarray:
    """Flags of the rows [first_k, stop_k) of every day k, each computed over its window [anchor_k, stop_k).

    `ohlc` is one symbol's N x 4 open/high/low/close in ts order. Returns len(names) x rows, day after
    day (the days' rows are contiguous). One TA-Lib call per day window and pattern: a loop over days,
    never over candles; the window, hence every bit of the result, depends only on the day.
    """
    rows = int(stops[-1] - firsts[0]) if len(firsts) else 0
    out = np.empty((len(names), rows))
    at = 0
    for a, f, s in zip(anchors.tolist(), firsts.tolist(), stops.tolist(), strict=True):  # one per day
        flags = patterns_of_window(ohlc[a:s, 0], ohlc[a:s, 1], ohlc[a:s, 2], ohlc[a:s, 3], names)
        for k, name in enumerate(names):
            out[k, at : at + s - f] = flags[PREFIX + name][f - a :]
        at += s - f
    return out
