"""Technical indicators on canonical candles, computed with `ta`, partition-invariant by construction.

Why this module looks the way it does:

- **Partition invariance.** The enriched asset computes one day at a time from that day plus
  `warmup_candles(cfg)` earlier candles. Finite-window indicators (SMA, Bollinger, stochastic, VWAP,
  windowed OBV) are then exact. Exponential smoothers (EMA, MACD, RSI's Wilder averages, ATR) remember
  their seed forever, but its weight decays as (1 - alpha)^k; `warmup_candles` is at least the history
  after which every smoother's seed weighs less than `MAX_DECAY_RESIDUAL`, so partition values equal
  whole-history values up to that decay (`decay_residual` tells how much, for tests and metadata).
- **OBV is windowed.** ta's OBV is a cumulative sum from wherever the series happens to start: its level
  depends on the first partition ever read and can never be partition-invariant. We publish
  `obv_<OBV_WINDOW>` = ta's OBV differenced over `OBV_WINDOW` candles (net signed volume of the last
  OBV_WINDOW candles), which is exact under any partitioning and is what a model can actually use.
- **No made-up values.** Each column is NaN until it has its full window (ta's own NaN pattern; ta's ATR
  writes zeros there, we write NaN). `indicators_ready` is True once the frame has enough rows of that
  symbol for *every* indicator to be defined. Volume indicators are NaN where volume is NaN (forex).
- **Speed.** ta's ATR is a Python loop (~2.6 s per 1M rows); `average_true_range` is the same Wilder
  recursion as a pandas `ewm` (C loop), equal to ta's to ~1e-12.

Plain pandas/numpy, no Dagster: the asset layer calls these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from ta.momentum import RSIIndicator, StochasticOscillator
from ta.trend import MACD
from ta.volatility import BollingerBands
from ta.volume import VolumeWeightedAveragePrice

from data_puller_dagster.config import IndicatorsConfig

# Net signed volume window of the published OBV (see module docstring). Proposed config key: obv_window.
OBV_WINDOW = 20
# Largest weight an exponential smoother's seed may keep after the warm-up history.
MAX_DECAY_RESIDUAL = 1e-5
READY_COLUMN = "indicators_ready"
REQUIRED_COLUMNS = ("symbol", "ts", "high", "low", "close", "volume")

# What a column's numbers are measured in; datasets round each kind to its own precision.
IndicatorKind = Literal["price", "oscillator", "ratio", "volume"]


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
            IndicatorSpec(f"macd_{fast}_{slow}", "price", slow),
            IndicatorSpec(f"macd_signal_{sig}", "price", slow + sig - 1),
            IndicatorSpec("macd_hist", "price", slow + sig - 1),
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
        specs.append(IndicatorSpec(f"atr_{cfg.atr_window}", "price", cfg.atr_window))
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
    """Column -> unit kind, so datasets can round prices, oscillators, ratios and volumes differently."""
    return {s.column: s.kind for s in indicator_specs(cfg)}


def min_history(cfg: IndicatorsConfig) -> int:
    """Rows of a symbol (current included) after which every enabled indicator has a value."""
    return max((s.min_rows for s in indicator_specs(cfg)), default=1)


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


def average_true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int) -> np.ndarray:
    """Wilder's ATR exactly as `ta.volatility.AverageTrueRange`, vectorized, NaN instead of ta's zeros.

    ta seeds with the mean of the first `window` true ranges (the first one is high - low, there is no
    previous close) and then runs atr = (atr * (n - 1) + tr) / n in a Python loop. That recursion is an
    `ewm(alpha=1/n, adjust=False)` started at the seed, which pandas runs in C.
    """
    high = np.asarray(high, dtype="float64")
    low = np.asarray(low, dtype="float64")
    close = np.asarray(close, dtype="float64")
    n = len(close)
    out = np.full(n, np.nan)
    if n < window:
        return out
    prev = np.empty(n)
    prev[0] = np.nan
    prev[1:] = close[:-1]
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))  # fmax skips the NaN prev
    seeded = tr.copy()
    seeded[: window - 1] = np.nan
    seeded[window - 1] = tr[:window].mean()
    return pd.Series(seeded).ewm(alpha=1.0 / window, adjust=False).mean().to_numpy()


def _one_symbol(frame: pd.DataFrame, cfg: IndicatorsConfig) -> dict[str, np.ndarray]:
    """Every enabled indicator for one symbol's rows (sorted by ts, fresh RangeIndex)."""
    close, high, low, volume = frame["close"], frame["high"], frame["low"], frame["volume"]
    cols: dict[str, np.ndarray] = {}
    if cfg.rsi_window:
        cols[f"rsi_{cfg.rsi_window}"] = RSIIndicator(close, window=cfg.rsi_window).rsi().to_numpy()
    if cfg.macd:
        fast, slow, sig = cfg.macd
        m = MACD(close, window_slow=slow, window_fast=fast, window_sign=sig)
        cols[f"macd_{fast}_{slow}"] = m.macd().to_numpy()
        cols[f"macd_signal_{sig}"] = m.macd_signal().to_numpy()
        cols["macd_hist"] = m.macd_diff().to_numpy()
    if cfg.bollinger:
        w, dev = cfg.bollinger
        bb = BollingerBands(close, window=w, window_dev=dev)
        cols[f"bb_upper_{w}"] = bb.bollinger_hband().to_numpy()
        cols[f"bb_middle_{w}"] = bb.bollinger_mavg().to_numpy()
        cols[f"bb_lower_{w}"] = bb.bollinger_lband().to_numpy()
        cols[f"bb_pctb_{w}"] = bb.bollinger_pband().to_numpy()
        cols[f"bb_width_{w}"] = bb.bollinger_wband().to_numpy()
    for w in cfg.ema_windows:  # ta.trend.EMAIndicator is exactly this ewm; called directly to skip copies
        cols[f"ema_{w}"] = close.ewm(span=w, min_periods=w, adjust=False).mean().to_numpy()
    for w in cfg.sma_windows:  # ta.trend.SMAIndicator is exactly this rolling mean
        cols[f"sma_{w}"] = close.rolling(w, min_periods=w).mean().to_numpy()
    if cfg.atr_window:
        cols[f"atr_{cfg.atr_window}"] = average_true_range(
            high.to_numpy(), low.to_numpy(), close.to_numpy(), cfg.atr_window
        )
    if cfg.obv:
        c = close.to_numpy()
        v = volume.to_numpy()
        signed = np.empty(len(c))
        signed[0:1] = np.nan  # no previous close: direction unknown
        signed[1:] = np.where(c[1:] < c[:-1], -v[1:], v[1:])  # ta's rule: down -> -volume, else +volume
        cols[f"obv_{OBV_WINDOW}"] = (
            pd.Series(signed).rolling(OBV_WINDOW, min_periods=OBV_WINDOW).sum().to_numpy()
        )
    if cfg.stochastic:
        w, s = cfg.stochastic
        so = StochasticOscillator(high, low, close, window=w, smooth_window=s)
        cols[f"stoch_k_{w}"] = so.stoch().to_numpy()
        cols[f"stoch_d_{s}"] = so.stoch_signal().to_numpy()
    if cfg.vwap_window:
        vw = VolumeWeightedAveragePrice(high, low, close, volume, window=cfg.vwap_window)
        cols[f"vwap_{cfg.vwap_window}"] = vw.volume_weighted_average_price().to_numpy()
    return cols


def compute_indicators(df: pd.DataFrame, cfg: IndicatorsConfig) -> pd.DataFrame:
    """Return `df` (same rows, order and index) plus float64 indicator columns and `indicators_ready`.

    `df` holds canonical rows of one or more symbols including the warm-up rows; each symbol is computed
    over its own rows in ts order (rows are treated as consecutive candles: a market that is closed has
    no rows, and a gap is not filled). Values that need more history than the frame has are NaN and
    `indicators_ready` is False on those rows. Inf from degenerate windows (e.g. zero range) becomes NaN.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise IndicatorInputError(
            f"compute_indicators needs canonical candles; columns {missing} are missing from the input "
            f"(has {list(df.columns)}); pass the normalized/derived OHLCV frame"
        )
    specs = indicator_specs(cfg)
    names = [s.column for s in specs]
    clash = [c for c in [*names, READY_COLUMN] if c in df.columns]
    if clash:
        raise IndicatorInputError(
            f"input already has indicator columns {clash}; pass raw canonical candles, not an enriched frame"
        )
    n = len(df)
    values = np.full((len(names), n), np.nan)
    ready = np.zeros(n, dtype=bool)
    if n:
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
        bounds = np.r_[0, np.flatnonzero(s_codes[1:] != s_codes[:-1]) + 1, n]
        need = min_history(cfg)
        base = df[["high", "low", "close", "volume"]].astype("float64").to_numpy()[order]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # one iteration per symbol
            part = pd.DataFrame(base[a:b], columns=["high", "low", "close", "volume"])
            cols = _one_symbol(part, cfg)
            rows = order[a:b]
            for k, name in enumerate(names):
                values[k, rows] = cols[name]
            ready[rows] = np.arange(b - a) >= need - 1
        values[~np.isfinite(values)] = np.nan
    # One float64 block for all indicators (faster than a column-by-column insert).
    extra = pd.DataFrame(values.T, columns=names, index=df.index)
    extra[READY_COLUMN] = ready
    return pd.concat([df, extra], axis=1)
