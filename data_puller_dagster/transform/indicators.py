"""Technical indicators on canonical candles with `ta`'s formulas, bit-identical under any partitioning.

Why this module looks the way it does:

- **Bit-identical partitions.** The enriched asset computes each UTC day d from its own anchored window:
  the `warmup_candles(cfg)` candles before d (never older than the days a single-day run reads) plus d's
  candles (`day_blocks`, `compute_indicators_by_day`). The window depends on d and the stored candles
  only, and a range run computes every day's window as one column of a matrix with the same arithmetic
  a single-day run uses, so a day built alone and inside any range hold the same bits (then the JSONL
  dataset built day by day is byte-identical to one built in a range run). Two things would otherwise
  leak the start of a run into the values: exponential seeds, and the running sums of pandas' rolling
  windows (their rounding depends on where the sum started); `window_math.rolling` recomputes every window from
  its own rows instead.
- **Accuracy.** Finite-window indicators (SMA, Bollinger, stochastic, VWAP, windowed OBV) equal `ta`
  over the whole history up to float rounding (~1e-12 relative). Exponential smoothers (EMA, MACD,
  RSI's Wilder averages, ATR) remember their seed, whose weight decays as (1 - alpha)^k; `warmup_candles`
  is at least the history after which every seed weighs less than `MAX_DECAY_RESIDUAL`, so values equal
  whole-history values up to that decay (`decay_residual` tells how much, for tests and metadata).
- **OBV is windowed.** ta's OBV is a cumulative sum from wherever the series happens to start: its level
  depends on the first partition ever read and can never be partition-invariant. We publish
  `obv_<OBV_WINDOW>` = ta's OBV differenced over `OBV_WINDOW` candles (net signed volume of the last
  OBV_WINDOW candles), which is exact under any partitioning and is what a model can actually use.
- **No made-up values.** Each column is NaN until it has its full window (ta's own NaN pattern; ta's ATR
  writes zeros there, we write NaN). `indicators_ready` is True once the window has enough rows of that
  symbol for *every* indicator to be defined. Volume indicators are NaN where volume is NaN (forex).
- **Candlestick patterns** (`indicators.patterns`, transform/patterns.py) are TA-Lib's `CDL*` flags as
  columns `cdl_<name>`, computed over the same anchored day windows (one C call per day and pattern).
- **Speed.** Everything is matrix arithmetic: windows are columns, recursions are pandas `ewm` (C loop,
  column by column), rolling windows are `window` vector steps; Python loops run over symbols, window
  offsets and columns, never over candles. ta's ATR is a Python loop; ours is the same recursion.

Plain pandas/numpy, no Dagster: the asset layer calls these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from data_puller_dagster.config import IndicatorsConfig
from data_puller_dagster.transform.patterns import (
    pattern_blocks,
    pattern_columns,
    pattern_min_rows,
    patterns_of_window,
)
from data_puller_dagster.transform.window_math import atr_blocks, ewm, rolling, shift1
from data_puller_dagster.transform.window_math import average_true_range as average_true_range  # public

# Net signed volume window of the published OBV (see module docstring). Proposed config key: obv_window.
OBV_WINDOW = 20
# Largest weight an exponential smoother's seed may keep after the warm-up history.
MAX_DECAY_RESIDUAL = 1e-5
READY_COLUMN = "indicators_ready"
REQUIRED_COLUMNS = ("symbol", "ts", "high", "low", "close", "volume")  # + open when patterns are on
NS_PER_DAY = 86_400 * 10**9

# What a column's numbers are measured in; datasets round each kind to its own precision.
# "price" is a price level (MA, band, VWAP), "price_delta" a price difference (MACD, ATR), "pattern" a
# TA-Lib flag (+-100, +-200, 0).
IndicatorKind = Literal["price", "price_delta", "oscillator", "ratio", "volume", "pattern"]


class IndicatorInputError(ValueError):
    """The frame given to `compute_indicators` cannot be enriched (missing columns, duplicate candles)."""


@dataclass(frozen=True)
class IndicatorSpec:
    """One output column: its name, unit, the rows it needs before its first value, whether it needs volume."""

    column: str
    kind: IndicatorKind
    min_rows: int  # rows of the symbol (current included) before the value is defined
    uses_volume: bool = False


def indicator_specs(cfg: IndicatorsConfig) -> list[IndicatorSpec]:
    """The enabled indicators in output order. Names are stable snake_case with parameters in them."""
    specs: list[IndicatorSpec] = []
    if cfg.rsi_window:
        specs.append(IndicatorSpec(f"rsi_{cfg.rsi_window}", "oscillator", cfg.rsi_window))
    if cfg.macd:
        fast, slow, sig = cfg.macd
        specs += [
            IndicatorSpec(f"macd_{fast}_{slow}", "price_delta", slow),
            IndicatorSpec(f"macd_signal_{sig}", "price_delta", slow + sig - 1),
            IndicatorSpec("macd_hist", "price_delta", slow + sig - 1),
        ]
    if cfg.bollinger:
        w = cfg.bollinger[0]
        specs += [
            IndicatorSpec(f"bb_upper_{w}", "price", w),
            IndicatorSpec(f"bb_middle_{w}", "price", w),
            IndicatorSpec(f"bb_lower_{w}", "price", w),
            IndicatorSpec(f"bb_pctb_{w}", "ratio", w),
            IndicatorSpec(f"bb_width_{w}", "ratio", w),
        ]
    specs += [IndicatorSpec(f"ema_{w}", "price", w) for w in cfg.ema_windows]
    specs += [IndicatorSpec(f"sma_{w}", "price", w) for w in cfg.sma_windows]
    if cfg.atr_window:
        specs.append(IndicatorSpec(f"atr_{cfg.atr_window}", "price_delta", cfg.atr_window))
    if cfg.obv:
        specs.append(IndicatorSpec(f"obv_{OBV_WINDOW}", "volume", OBV_WINDOW + 1, uses_volume=True))
    if cfg.stochastic:
        w, s = cfg.stochastic
        specs += [
            IndicatorSpec(f"stoch_k_{w}", "oscillator", w),
            IndicatorSpec(f"stoch_d_{s}", "oscillator", w + s - 1),
        ]
    if cfg.vwap_window:
        specs.append(IndicatorSpec(f"vwap_{cfg.vwap_window}", "price", cfg.vwap_window, uses_volume=True))
    names = [s.column for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:  # e.g. stochastic smoothing equal to ... nothing today; keep names unique if params grow
        raise IndicatorInputError(f"indicator column names collide: {dupes}; change one of the windows")
    return specs


def indicator_columns(cfg: IndicatorsConfig, has_volume: bool = True) -> list[str]:
    """Indicator column names, in output order. `has_volume=False` drops volume-based ones (forex)."""
    return [s.column for s in indicator_specs(cfg) if has_volume or not s.uses_volume]


def indicator_kinds(cfg: IndicatorsConfig) -> dict[str, IndicatorKind]:
    """Column -> unit kind (pattern columns included), so datasets can encode each kind its own way."""
    return {**{s.column: s.kind for s in indicator_specs(cfg)}, **dict.fromkeys(pattern_columns(cfg), "pattern")}


def enriched_columns(cfg: IndicatorsConfig) -> list[str]:
    """Every column the enriched layer adds (indicators, then pattern flags), without `indicators_ready`."""
    return [s.column for s in indicator_specs(cfg)] + pattern_columns(cfg)


def min_history(cfg: IndicatorsConfig) -> int:
    """Rows of a symbol (current included) after which every enabled indicator and pattern has a value."""
    return max([s.min_rows for s in indicator_specs(cfg)] + [pattern_min_rows(cfg)])


def _smoothers(cfg: IndicatorsConfig) -> list[tuple[float, int]]:
    """(alpha, first row of the recursion) of every exponential smoother, for the decay arithmetic."""
    out: list[tuple[float, int]] = [(2.0 / (w + 1), 0) for w in cfg.ema_windows]
    if cfg.macd:
        fast, slow, sig = cfg.macd
        out += [(2.0 / (fast + 1), 0), (2.0 / (slow + 1), 0), (2.0 / (sig + 1), slow - 1)]
    if cfg.rsi_window:
        out.append((1.0 / cfg.rsi_window, 0))
    if cfg.atr_window:
        out.append((1.0 / cfg.atr_window, cfg.atr_window - 1))
    return out


def decay_residual(cfg: IndicatorsConfig, history: int) -> float:
    """Largest weight any smoother's seed still has `history` rows after the frame starts.

    The difference between a partition's value and the whole-history value is at most this times the
    difference of the two seeds (a price range for price indicators, <= 100 for RSI).
    """
    res = [(1.0 - a) ** max(history - start, 0) for a, start in _smoothers(cfg) if a < 1.0]
    return max(res, default=0.0)


def warmup_candles(cfg: IndicatorsConfig) -> int:
    """Candles of history to read before a partition: cfg.warmup_candles, raised if the indicators need more.

    "Need" is both the longest window (every value defined) and the history after which every
    exponential smoother's seed weighs less than MAX_DECAY_RESIDUAL.
    """
    need = min_history(cfg)
    for alpha, start in _smoothers(cfg):
        if 0.0 < alpha < 1.0:
            need = max(need, start + math.ceil(math.log(MAX_DECAY_RESIDUAL) / math.log(1.0 - alpha)))
    return max(cfg.warmup_candles, need)


def _indicator_blocks(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, cfg: IndicatorsConfig
) -> dict[str, np.ndarray]:
    """Every enabled indicator down each column of L x B matrices (one series per column, oldest first).

    The formulas are ta's (RSIIndicator, MACD, BollingerBands, EMA/SMA, StochasticOscillator,
    VolumeWeightedAveragePrice), written on matrices so many windows are computed in one pass. Each
    value depends only on its own column's rows up to it (elementwise numpy, windows recomputed per row
    by `_rolling`, pandas ewm column by column): a column gives the same bits alone or next to others,
    and NaN padding after a column's last row changes nothing before it.
    """
    c, h, lo, v = close, high, low, volume
    cols: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        if cfg.rsi_window:
            w = cfg.rsi_window
            diff = c - shift1(c)
            up = ewm(np.where(diff > 0, diff, 0.0), alpha=1 / w, min_periods=w)
            dn = ewm(-np.where(diff < 0, diff, 0.0), alpha=1 / w, min_periods=w)
            cols[f"rsi_{w}"] = np.where(dn == 0, 100.0, 100 - (100 / (1 + up / dn)))
        if cfg.macd:
            fast, slow, sig = cfg.macd
            macd = ewm(c, span=fast, min_periods=fast) - ewm(c, span=slow, min_periods=slow)
            signal = ewm(macd, span=sig, min_periods=sig)
            cols[f"macd_{fast}_{slow}"], cols[f"macd_signal_{sig}"] = macd, signal
            cols["macd_hist"] = macd - signal
        if cfg.bollinger:
            w, dev = cfg.bollinger
            mavg, mstd = rolling(c, w, "mean"), rolling(c, w, "std")
            hband, lband = mavg + dev * mstd, mavg - dev * mstd
            cols[f"bb_upper_{w}"], cols[f"bb_middle_{w}"], cols[f"bb_lower_{w}"] = hband, mavg, lband
            width = hband - lband
            cols[f"bb_pctb_{w}"] = (c - lband) / np.where(hband != lband, width, np.nan)
            cols[f"bb_width_{w}"] = (width / mavg) * 100
        for w in cfg.ema_windows:  # ta.trend.EMAIndicator
            cols[f"ema_{w}"] = ewm(c, span=w, min_periods=w)
        for w in cfg.sma_windows:  # ta.trend.SMAIndicator
            cols[f"sma_{w}"] = rolling(c, w, "mean")
        if cfg.atr_window:
            cols[f"atr_{cfg.atr_window}"] = atr_blocks(h, lo, c, cfg.atr_window)
        if cfg.obv:  # ta's rule: down -> -volume, else +volume; no previous close: unknown
            prev = shift1(c)
            signed = np.where(np.isnan(prev), np.nan, np.where(c < prev, -v, v))
            cols[f"obv_{OBV_WINDOW}"] = rolling(signed, OBV_WINDOW, "sum")
        if cfg.stochastic:
            w, sm = cfg.stochastic
            smin, smax = rolling(lo, w, "min"), rolling(h, w, "max")
            k = 100 * (c - smin) / (smax - smin)
            cols[f"stoch_k_{w}"], cols[f"stoch_d_{sm}"] = k, rolling(k, sm, "mean")
        if cfg.vwap_window:
            w = cfg.vwap_window
            cols[f"vwap_{w}"] = rolling((h + lo + c) / 3.0 * v, w, "sum") / rolling(v, w, "sum")
    return cols


def _checked_names(df: pd.DataFrame, cfg: IndicatorsConfig) -> list[str]:
    """The output column names, after checking `df` is canonical candles without indicator columns."""
    required = [*REQUIRED_COLUMNS, *(["open"] if cfg.patterns else [])]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise IndicatorInputError(
            f"compute_indicators needs canonical candles; columns {missing} are missing from the input "
            f"(has {list(df.columns)}); pass the normalized/derived OHLCV frame"
        )
    names = enriched_columns(cfg)
    clash = [c for c in [*names, READY_COLUMN] if c in df.columns]
    if clash:
        raise IndicatorInputError(
            f"input already has indicator columns {clash}; pass raw canonical candles, not an enriched frame"
        )
    return names


def _base_columns(cfg: IndicatorsConfig) -> list[str]:
    """open, high, low, close, volume (close stands in for open when no pattern needs it)."""
    return ["open" if cfg.patterns else "close", "high", "low", "close", "volume"]


def _symbol_order(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions of df sorted by (symbol, ts), their symbol codes, their ns timestamps); no duplicates."""
    ts = pd.DatetimeIndex(df["ts"]).as_unit("ns").asi8
    codes, _ = pd.factorize(df["symbol"], sort=True)
    order = np.lexsort((ts, codes))  # stable sort by (symbol, ts); positions into df
    s_codes, s_ts = codes[order], ts[order]
    dup = (s_codes[1:] == s_codes[:-1]) & (s_ts[1:] == s_ts[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0]) + 1
        row = df.iloc[order[i]]
        raise IndicatorInputError(
            f"{int(dup.sum())} duplicate candle(s), e.g. symbol {row['symbol']!r} at {row['ts']}; "
            "deduplicate the candles (keep the final one) before computing indicators"
        )
    return order, s_codes, s_ts


def compute_indicators(df: pd.DataFrame, cfg: IndicatorsConfig) -> pd.DataFrame:
    """Return `df` (same rows, order and index) plus float64 indicator columns and `indicators_ready`.

    `df` holds canonical rows of one or more symbols including the warm-up rows; each symbol is computed
    over its own rows in ts order (rows are treated as consecutive candles: a market that is closed has
    no rows, and a gap is not filled). Values that need more history than the frame has are NaN and
    `indicators_ready` is False on those rows. Inf from degenerate windows (e.g. zero range) becomes NaN.
    """
    names = _checked_names(df, cfg)
    n = len(df)
    values = np.full((len(names), n), np.nan)
    ready = np.zeros(n, dtype=bool)
    if n:
        order, s_codes, _ = _symbol_order(df)
        bounds = np.r_[0, np.flatnonzero(s_codes[1:] != s_codes[:-1]) + 1, n]
        need = min_history(cfg)
        base = df[_base_columns(cfg)].astype("float64").to_numpy()[order]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # one iteration per symbol
            cols = {
                k: x[:, 0] for k, x in _indicator_blocks(*(base[a:b, j, None] for j in range(1, 5)), cfg).items()
            }
            cols.update(patterns_of_window(*(base[a:b, j] for j in range(4)), cfg.patterns))
            rows = order[a:b]
            for k, name in enumerate(names):
                values[k, rows] = cols[name]
            ready[rows] = np.arange(b - a) >= need - 1
        values[~np.isfinite(values)] = np.nan
    # One float64 block for all indicators (faster than a column-by-column insert).
    extra = pd.DataFrame(values.T, columns=names, index=df.index)
    extra[READY_COLUMN] = ready
    return pd.concat([df, extra], axis=1)


# ------------------------------------------------------------------------- anchored, per UTC day
def day_blocks(
    ts_ns: np.ndarray, start_ns: int, end_ns: int, warmup: int, lookback_days: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchored windows over one symbol's ascending ns timestamps: (anchor, first, stop) per UTC day.

    For every UTC day d in [start, end) that has candles, rows [first, stop) are d's candles and
    [anchor, stop) is the window its indicators are computed from: the `warmup` candles before d, but
    none older than d - `lookback_days` (the days a single-partition run of d reads). Both bounds depend
    only on d and the stored candles, never on which range is being built: that is what makes a day
    built alone and the same day built inside a range run bit-identical.
    """
    idx = np.flatnonzero((ts_ns >= start_ns) & (ts_ns < end_ns))
    if len(idx) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    day = ts_ns[idx] // NS_PER_DAY * NS_PER_DAY
    new = np.r_[True, day[1:] != day[:-1]]
    first = idx[new]
    stop = np.r_[first[1:], idx[-1] + 1]
    floor = np.searchsorted(ts_ns, day[new] - lookback_days * NS_PER_DAY, side="left")
    return np.maximum(first - warmup, floor), first, stop


def compute_indicators_by_day(
    df: pd.DataFrame,
    cfg: IndicatorsConfig,
    *,
    start: pd.Timestamp,
    end: pd.Timestamp,
    lookback_days: int,
    warmup: int | None = None,
) -> pd.DataFrame:
    """Indicators of the candles with ts in [start, end), each UTC day from its own anchored window.

    `df` holds canonical candles of one or more symbols, including at least the `lookback_days` days
    before `start` (what the enriched asset reads). Day d's values are the indicators over the
    window `day_blocks` gives (at most `warmup` candles before d, default `warmup_candles(cfg)`, then d's
    candles), keeping d's rows: a pure function of the candles of [d - lookback_days, d], computed by the
    same code whether d is built alone or inside a range. So the day-by-day and range-run results are
    equal bit for bit (no exponential seed or running rolling sum reaches across a day's window), and
    equal to whole-history values up to `decay_residual(cfg, warmup)` for the exponential smoothers.

    Returns the rows of [start, end) sorted by (symbol, ts) with a fresh index, plus the indicator
    columns and `indicators_ready` (True where the window has `min_history(cfg)` rows up to that row).
    Vectorized: all the day windows of a symbol are the columns of one matrix computed in one pass.
    """
    names = _checked_names(df, cfg)
    warm = warmup_candles(cfg) if warmup is None else int(warmup)
    lo, hi = _utc_ns(start, "start"), _utc_ns(end, "end")
    picked: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    ready: list[np.ndarray] = []
    if len(df):
        order, s_codes, s_ts = _symbol_order(df)
        bounds = np.r_[0, np.flatnonzero(s_codes[1:] != s_codes[:-1]) + 1, len(df)]
        base = df[_base_columns(cfg)].astype("float64").to_numpy()[order]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # one iteration per symbol
            anchors, firsts, stops = day_blocks(s_ts[a:b], lo, hi, warm, lookback_days)
            if len(anchors):
                vals, rdy = _windows(base[a:b], anchors, firsts, stops, names, cfg)
                blocks.append(vals)
                ready.append(rdy)
                picked.append(order[a + firsts[0] : a + stops[-1]])  # the days' rows are contiguous
    rows = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    values = np.concatenate(blocks, axis=1) if blocks else np.empty((len(names), 0))
    values[~np.isfinite(values)] = np.nan
    out = df.iloc[rows].reset_index(drop=True)
    extra = pd.DataFrame(values.T, columns=names, index=out.index)
    extra[READY_COLUMN] = np.concatenate(ready) if ready else np.zeros(0, dtype=bool)
    return pd.concat([out, extra], axis=1)


def _windows(
    base: np.ndarray,
    anchors: np.ndarray,
    firsts: np.ndarray,
    stops: np.ndarray,
    names: list[str],
    cfg: IndicatorsConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Indicators of one symbol's day windows in one pass: window k is column k of an L x B matrix
    (rows base[anchor_k:stop_k], NaN after), computed by `_indicator_blocks`; returns the values
    (names x rows) and the ready flags of each day's own rows [first_k, stop_k), day after day."""
    lengths = stops - anchors
    depth = int(lengths.max())
    pos = anchors[None, :] + np.arange(depth)[:, None]  # depth x B positions into base
    inside = np.arange(depth)[:, None] < lengths[None, :]
    mats = [np.where(inside, base[np.minimum(pos, len(base) - 1), j], np.nan) for j in range(1, 5)]
    cols = _indicator_blocks(*mats, cfg)
    # Day k's own rows sit at depths [first_k - anchor_k, stop_k - anchor_k) of column k.
    k = np.repeat(np.arange(len(anchors)), stops - firsts)
    depth_of = np.arange(firsts[0], stops[-1]) - anchors[k]  # consecutive days: rows are contiguous
    technical = [n for n in names if n in cols]
    values = np.empty((len(names), len(k)))
    for r, name in enumerate(technical):
        values[r] = cols[name][depth_of, k]
    if cfg.patterns:  # TA-Lib over each day's window, rows after the technical indicators (names order)
        values[len(technical) :] = pattern_blocks(base[:, :4], anchors, firsts, stops, cfg.patterns)
    return values, depth_of >= min_history(cfg) - 1


def _utc_ns(t: pd.Timestamp, what: str) -> int:
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise IndicatorInputError(f"{what}={t!r} has no timezone; pass a UTC timestamp (e.g. tz='UTC')")
    return int(ts.tz_convert("UTC").as_unit("ns").value)
