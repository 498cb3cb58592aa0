"""Derived timeframes: larger bars built from base candles, equal to what the exchange serves natively.

Why not `df.resample().agg(first/max/min/last)`: Binance fills minutes without trades with *zero-trade
filler candles* (volume 0, O=H=L=C = the previous close). The exchange builds its 5m/1h/1d bars from
trades, so a filler's price never becomes a bar's open, high or low. Naive resampling makes the bar
open at the previous close whenever the bar starts with a quiet minute (the freqtrade XRP/ETH fixture:
~25 % of 5m opens wrong). So, per bar:

- OHLC come from the candles that *traded* (volume != 0; unknown volume, e.g. forex, counts as
  traded): open = first traded open, high = max traded high, low = min traded low, close = last
  traded close.
- A bar with no trade at all is itself a zero-trade bar: O=H=L=C taken from its fillers (which
  carry the previous close), volume 0 -- exactly what the exchange serves for such a bar.
- volume, quote_volume, trades are sums over all candles (fillers add 0); they stay null where all
  inputs are null (forex volume).
- A bar is emitted when at least one base candle falls in it; a period with no base candles at all
  is a gap, not a bar. `source_candles` counts the base candles used, and `complete` is True only when
  every base candle the market calendar expects in that bar is present (a closure is not missing:
  a Friday forex 4h bar that ends at the 17:00 New York close is complete with fewer candles).
- `is_final` is True only when every base candle was final and the newest fetch happened after the
  bar's end (a bar still being formed is never final, even if its candles so far are).
- Bar boundaries follow `calendars.bin_labels` (epoch grid; equity/index 1h/4h from the session
  open; equity daily = session date; forex daily = New York 17:00 trading day), the same convention
  as `calendars.expected_grid`, so derived bars line up with the expected grid of the target timeframe.
- `source` is that of the newest candle in the bar (the archive and REST serve the same data).

Partitions: a bar belongs to the UTC day of its label `ts` (the storage contract assigns every row by
the UTC day of `ts`). A bar's base candles may lie on other UTC days than its label: a forex daily bar
labelled Tuesday 00:00 UTC is the New York trading day Monday 17:00 -> Tuesday 17:00, so it starts on
Monday 21:00/22:00 UTC. `partition_read_days` says how many neighbouring days of base candles a day's
bars can draw on, and `resample_days` builds exactly the bars labelled in a day range. Because every
field of a bar depends only on the candles of that bar (and the calendar), bars built day by day from
those windows equal the bars built from the whole history over the same stored candles.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.transform.calendars import DEFAULT_FOREX, ForexSession, bin_labels, expected_grid
from data_puller_dagster.transform.canonical import CANONICAL_COLUMNS, CANONICAL_DTYPES

RESAMPLED_DTYPES: dict[str, str] = {**CANONICAL_DTYPES, "complete": "bool", "source_candles": "Int64"}
RESAMPLED_COLUMNS: list[str] = list(RESAMPLED_DTYPES)


class ResampleError(ValueError):
    """The frame cannot be resampled to the requested timeframe (mixed or coarser base timeframe)."""


def empty_resampled() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in RESAMPLED_DTYPES.items()})


def _base_timeframe(df: pd.DataFrame, target_tf: str) -> str:
    tfs = pd.unique(df["timeframe"].dropna())
    if len(tfs) != 1:
        raise ResampleError(
            f"resample needs candles of one base timeframe, got {sorted(map(str, tfs))}; "
            "resample each timeframe's frame separately"
        )
    base = str(tfs[0])
    if not timeframes.is_finer_or_equal(base, target_tf):
        raise ResampleError(
            f"cannot build {target_tf} bars from {base} candles; the target must be a whole multiple "
            f"of the base timeframe (configure derived_timeframes coarser than {base})"
        )
    return base


def _expected_per_bin(
    asset_class: str, base_tf: str, target_tf: str, labels: pd.DatetimeIndex, forex: ForexSession
) -> pd.Series:
    """Expected base candles per target bar label (0-count labels absent)."""
    pad = pd.Timedelta(days=2)
    grid = expected_grid(asset_class, base_tf, labels.min() - pad, labels.max() + pd.Timedelta(seconds=timeframes.seconds(target_tf)) + pad, forex=forex)
    glabels = bin_labels(grid, asset_class, target_tf, forex=forex)
    return pd.Series(1, index=glabels).groupby(level=0).sum()


def resample(
    df: pd.DataFrame,
    target_tf: str,
    asset_class: str,
    *,
    forex: ForexSession = DEFAULT_FOREX,
) -> pd.DataFrame:
    """Build `target_tf` bars from canonical base candles of one timeframe (one or many symbols).

    Returns canonical columns (timeframe = target) + `complete` bool + `source_candles` Int64, sorted
    by (symbol, ts). Rules in the module docstring.
    """
    timeframes.check_timeframe(target_tf)
    if df.empty:
        return empty_resampled()
    base_tf = _base_timeframe(df, target_tf)

    ts = pd.DatetimeIndex(df["ts"])
    labels = bin_labels(ts, asset_class, target_tf, forex=forex)
    volume = df["volume"]
    zero = (volume == 0).fillna(False) | (volume.isna() & (df["trades"] == 0).fillna(False))
    traded = ~zero.to_numpy(dtype=bool)

    grid_base = expected_grid(
        asset_class, base_tf, ts.min(), ts.max() + pd.Timedelta(seconds=timeframes.seconds(base_tf)), forex=forex
    )
    work = pd.DataFrame(
        {
            "symbol": df["symbol"].to_numpy(),
            "label": labels,
            "ts_ns": ts.asi8,
            "open_t": df["open"].where(traded).to_numpy(),
            "high_t": df["high"].where(traded).to_numpy(),
            "low_t": df["low"].where(traded).to_numpy(),
            "close_t": df["close"].where(traded).to_numpy(),
            "open_a": df["open"].to_numpy(),
            "high_a": df["high"].to_numpy(),
            "low_a": df["low"].to_numpy(),
            "close_a": df["close"].to_numpy(),
            "volume": volume.to_numpy(),
            "trades": df["trades"].astype("Float64").to_numpy(dtype="float64", na_value=np.nan),
            "quote_volume": df["quote_volume"].to_numpy(),
            "fetched_at": df["fetched_at"].to_numpy("datetime64[ns]"),
            "is_final": df["is_final"].to_numpy(dtype=bool),
            "source": df["source"].to_numpy(),
            "in_grid": ts.isin(grid_base),
        }
    ).sort_values(["symbol", "ts_ns"], kind="stable")
    g = work.groupby(["symbol", "label"], sort=True)
    bars = g.agg(
        open_t=("open_t", "first"),
        high_t=("high_t", "max"),
        low_t=("low_t", "min"),
        close_t=("close_t", "last"),
        open_a=("open_a", "first"),
        high_a=("high_a", "max"),
        low_a=("low_a", "min"),
        close_a=("close_a", "last"),
        fetched_at=("fetched_at", "max"),
        is_final=("is_final", "all"),
        source=("source", "last"),
        source_candles=("ts_ns", "size"),
        in_grid=("in_grid", "sum"),
    )
    sums = g[["volume", "trades", "quote_volume"]].sum(min_count=1)
    bars = bars.join(sums).reset_index()

    bar_labels = pd.DatetimeIndex(bars["label"])
    expected = _expected_per_bin(asset_class, base_tf, target_tf, bar_labels, forex)
    exp = expected.reindex(bar_labels).fillna(0).to_numpy(dtype="int64")
    bar_end = bar_labels + pd.Timedelta(seconds=timeframes.seconds(target_tf))
    fetched = pd.DatetimeIndex(bars["fetched_at"]).tz_localize("UTC")

    out = pd.DataFrame(
        {
            "ts": bar_labels,
            "symbol": bars["symbol"],
            "asset_class": asset_class,
            "timeframe": target_tf,
            "source": bars["source"],
            "open": bars["open_t"].fillna(bars["open_a"]),
            "high": bars["high_t"].fillna(bars["high_a"]),
            "low": bars["low_t"].fillna(bars["low_a"]),
            "close": bars["close_t"].fillna(bars["close_a"]),
            "volume": bars["volume"],
            "trades": bars["trades"].round(),
            "quote_volume": bars["quote_volume"],
            "fetched_at": fetched,
            "is_final": bars["is_final"].to_numpy() & np.asarray(fetched >= bar_end),
            "complete": (exp > 0) & (bars["in_grid"].to_numpy() >= exp),
            "source_candles": bars["source_candles"],
        }
    )
    out = out.astype(RESAMPLED_DTYPES)
    return out[RESAMPLED_COLUMNS].reset_index(drop=True)


# Probe windows for `partition_read_days`: a month around each DST change of a reference year (US
# 2024-03-10 / 2024-11-03, EU 2024-03-31 / 2024-10-27), so both UTC offsets of every supported clock
# are seen. Bin offsets repeat weekly apart from DST, so these windows see every case.
_PROBES = (("2024-03-03", "2024-04-07"), ("2024-10-20", "2024-11-10"))


@functools.lru_cache(maxsize=64)
def partition_read_days(
    asset_class: str, base_tf: str, target_tf: str, forex: ForexSession = DEFAULT_FOREX
) -> tuple[int, int]:
    """(days_before, days_after): the UTC days around day D whose base candles can fall in a bar
    labelled in D. (1, 0) for forex daily bars (the New York trading day starts the evening before,
    21:00/22:00 UTC); (0, 0) for bars on the epoch grid (crypto, forex intraday); (0, 1) for NYSE
    bars of 1h and longer, which also bin post-market candles of their New York date that fall on the
    next UTC day (after 20:00 New York); a market that never sends those reads one idle day.

    Why probe instead of a table: the answer follows from `calendars.bin_labels`, so it is computed
    from it -- every base-timeframe instant (traded or not: off-hours candles are binned too) over
    both DST regimes -- and cannot drift from the bars' convention. Cached; runs at definition time.
    """
    _base_timeframe_check(base_tf, target_tf)
    before = after = 0
    for lo, hi in _PROBES:
        ts = pd.date_range(lo, hi, freq=timeframes.pandas_freq(base_tf), tz="UTC", inclusive="left")
        label_day = bin_labels(ts, asset_class, target_tf, forex=forex).asi8 // _DAY_NS
        candle_day = ts.asi8 // _DAY_NS
        before = max(before, int((label_day - candle_day).max()))
        after = max(after, int((candle_day - label_day).max()))
    return max(before, 0), max(after, 0)


def resample_days(
    df: pd.DataFrame,
    target_tf: str,
    asset_class: str,
    first_day: date,
    last_day: date,
    *,
    forex: ForexSession = DEFAULT_FOREX,
) -> pd.DataFrame:
    """The `target_tf` bars labelled in UTC days [first_day, last_day] (the partitions they belong to).

    `df` must hold the base candles of those days widened by `partition_read_days`; candles of the
    neighbouring days only complete the bars at the edges, and the bars labelled on neighbouring days
    (partial here) are dropped -- they belong to, and are built by, those days' partitions.
    """
    bars = resample(df, target_tf, asset_class, forex=forex)
    start = datetime.combine(first_day, time(0), tzinfo=UTC)
    end = datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=UTC)
    keep = (bars["ts"] >= start) & (bars["ts"] < end)
    return bars[keep].reset_index(drop=True)


_DAY_NS = 86_400 * 10**9


def _base_timeframe_check(base_tf: str, target_tf: str) -> None:
    timeframes.check_timeframe(base_tf)
    timeframes.check_timeframe(target_tf)
    if not timeframes.is_finer_or_equal(base_tf, target_tf):
        raise ResampleError(
            f"cannot build {target_tf} bars from {base_tf} candles; configure derived_timeframes "
            f"that are whole multiples of {base_tf}"
        )


__all__ = [
    "CANONICAL_COLUMNS",
    "RESAMPLED_COLUMNS",
    "RESAMPLED_DTYPES",
    "ResampleError",
    "empty_resampled",
    "partition_read_days",
    "resample",
    "resample_days",
]
