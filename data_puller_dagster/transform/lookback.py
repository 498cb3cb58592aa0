"""How many whole UTC days hold a number of candles of a market: the day offset of warm-up reads.

Indicator warm-up and dataset context are counted in candles, partitions (and the library's day windows)
in days. The enriched and dataset assets read that many earlier days, and the library's `enrich()`
computes each day from the same window, so a frame enriched in a notebook equals the stored layer.
"""

from __future__ import annotations

import math

from data_puller_dagster import timeframes

# Trading days per calendar day: crypto 7/7, forex 5/7, exchange-traded ~252/365.
_DAY_SHARE = {"crypto": 1.0, "forex": 5 / 7, "equity": 252 / 365, "commodity": 252 / 365, "index": 252 / 365}
_SESSION_SECONDS = 6.5 * 3600  # NYSE regular session


def days_for_candles(asset_class: str, timeframe: str, candles: int) -> int:
    """Whole day partitions that hold at least `candles` candles of `timeframe` for this market.

    Indicator warm-up is expressed in candles; partitions are days. Closed markets (weekends, nights,
    holidays) mean fewer candles per day, so the offset is scaled by how much the market trades, plus
    a margin for long weekends and holiday runs next to the window.
    """
    if candles <= 0:
        return 0
    per_trading_day = timeframes.candles_per_day(timeframe)
    if asset_class in ("equity", "commodity", "index") and timeframe != "1d":
        per_trading_day = max(math.floor(_SESSION_SECONDS / timeframes.seconds(timeframe)), 1)
    per_calendar_day = per_trading_day * _DAY_SHARE[asset_class]
    return math.ceil(candles / per_calendar_day) + 4
