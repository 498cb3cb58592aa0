"""Candle timeframes: the one table every layer agrees on.

Providers name intervals differently (Binance `1h`, Twelve Data `1h`/`1min`/`1day`); the project speaks
its own names everywhere and each adapter maps them in one place.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, get_args

import pandas as pd

Timeframe = Literal["1m", "5m", "15m", "30m", "1h", "4h", "1d"]
TIMEFRAMES: tuple[str, ...] = get_args(Timeframe)

_SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "4h": 14400,
    "1d": 86400,
}


def check_timeframe(tf: str) -> str:
    """Return `tf` if supported, else raise ValueError with the allowed values."""
    if tf not in _SECONDS:
        raise ValueError(f"{tf!r} is not a supported timeframe; use one of {', '.join(TIMEFRAMES)}")
    return tf


def seconds(tf: str) -> int:
    return _SECONDS[check_timeframe(tf)]


def to_timedelta(tf: str) -> timedelta:
    return timedelta(seconds=seconds(tf))


def pandas_freq(tf: str) -> str:
    """Pandas offset alias for the grid of `tf` (fixed-length, anchored at the Unix epoch)."""
    s = seconds(tf)
    return f"{s // 60}min" if s < 86400 else "1D"


def candles_per_day(tf: str) -> int:
    return 86400 // seconds(tf)


def lookback_days(tf: str, candles: int) -> int:
    """Whole UTC-day partitions needed to hold `candles` earlier candles of `tf` (24/7 market)."""
    per_day = candles_per_day(tf)
    return -(-candles // per_day)  # ceil division


def floor(ts: pd.Series | pd.DatetimeIndex, tf: str) -> pd.Series | pd.DatetimeIndex:
    """Align timestamps down to the `tf` grid."""
    if isinstance(ts, pd.Series):
        return ts.dt.floor(pandas_freq(tf))
    return ts.floor(pandas_freq(tf))


def is_finer_or_equal(a: str, b: str) -> bool:
    """True if `b` can be built from `a` (b is a whole multiple of a)."""
    return seconds(b) % seconds(a) == 0 and seconds(b) >= seconds(a)


# Provider interval names -> seconds: Twelve Data (`1min`, `1h`, `1day`, `1week`, `1month`) and Binance
# (`1m`, `1h`, `1d`, `1w`, `1M`). Months are counted as 30 days: only ever compared, never used on a grid.
_UNIT_SECONDS: dict[str, int] = {
    "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "day": 86400,
    "w": 604800, "week": 604800, "M": 2592000, "month": 2592000, "mo": 2592000,
}  # fmt: skip


def interval_seconds(text: str) -> int | None:
    """Seconds of a provider's interval name (`5min`, `1h`, `1day`, `5m`...), None if not recognised.

    Why: a response states its own interval (Twelve Data `meta.interval`); comparing it with the one
    asked for is how a wrong-interval answer is told apart from real data.
    """
    s = str(text).strip()
    i = 0
    while i < len(s) and s[i].isdigit():
        i += 1
    if i == 0 or s[i:] not in _UNIT_SECONDS:
        return None
    return int(s[:i]) * _UNIT_SECONDS[s[i:]]


def describe_seconds(sec: int) -> str:
    """A duration as the project's timeframe name when it is one (`300` -> `5m`), else e.g. `7m30s`."""
    for name, s in _SECONDS.items():
        if s == sec:
            return name
    if sec % 86400 == 0:
        return f"{sec // 86400}d"
    if sec % 3600 == 0:
        return f"{sec // 3600}h"
    if sec % 60 == 0:
        return f"{sec // 60}m"
    return f"{sec}s" if sec < 60 else f"{sec // 60}m{sec % 60}s"
