"""Which features an example carries and how each number is written (absolute or basis points).

Feature groups are the seed design's names: `ohlcv`, `technical_indicators`, `volume_profile`,
`price_action_patterns`; columns may be named one by one (`close`, `rsi_14`, `cdl_engulfing`).
`include_features` omitted = ohlcv + technical_indicators (what datasets held before groups existed);
ohlcv is implied unless an OHLCV name is listed, so `[rsi_14]` still means OHLCV plus rsi_14.

Pattern flags are not written as one number per pattern per candle (16 patterns x 100 candles of
"0.0" would be most of an example's tokens): each row has one `patterns` text cell naming the
patterns that fired on that candle, `engulfing+` bullish, `engulfing-` bearish (TA-Lib's sign; its
+-80 weak engulfing/harami are written like +-100, `++`/`--` are its +-200, a confirmed hikkake; a
doji is always `+`), space-separated, empty when none, null before enough history.

Numbers (`price_encoding`):
- absolute: prices and price-like indicators rounded to the feed's decimals, volumes and OBV too,
  oscillators (RSI, stochastic) to 4 decimals, ratios (%b, width) to 6.
- bps: open/high/low/close in basis points against the previous candle's close (a return), price
  levels (MA, bands, VWAP) against the candle's own close, price differences (MACD, ATR) as bps of it,
  all to 0.1 bp; oscillators to 1 decimal, ratios to 3, volumes and OBV to 3 significant digits.
  Every value depends only on its own row and the previous one, so rows are still serialized once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_puller_dagster.config import AppConfig, DatasetConfig, FeedConfig, IndicatorsConfig
from data_puller_dagster.transform.indicators import indicator_columns, indicator_kinds
from data_puller_dagster.transform.patterns import PREFIX, pattern_columns

# Asset classes whose provider delivers volume; others get no volume fields (forex, commodity, index on
# Twelve Data). Config-based, not data-based, so every batch of a feed has the same fields.
VOLUME_ASSET_CLASSES = frozenset({"crypto", "equity"})
OHLC = ("open", "high", "low", "close")
OHLCV = (*OHLC, "volume")
GROUPS = DatasetConfig.FEATURE_GROUPS
OSCILLATOR_DECIMALS = 4
RATIO_DECIMALS = 6
BPS_DECIMALS = 1
BPS_OSCILLATOR_DECIMALS = 1
BPS_RATIO_DECIMALS = 3
VOLUME_SIGNIFICANT = 3
PATTERNS_FIELD = "patterns"


class FeatureError(ValueError):
    """include_features asks for something the feed or the indicators config does not produce."""


@dataclass(frozen=True)
class FeatureSet:
    """The resolved selection: numeric row fields, pattern columns, volume profile on or off."""

    groups: tuple[str, ...]
    numeric: tuple[str, ...]
    patterns: tuple[str, ...]  # cdl_* columns written into the `patterns` text cell
    volume_profile: bool  # the group is selected (values may still be null: see profile_null_reason)
    profile_null_reason: str | None

    @property
    def fields(self) -> list[str]:
        """Names of a row's cells, in order (after `ts` in the rows layout)."""
        return [*self.numeric, *([PATTERNS_FIELD] if self.patterns else [])]


def has_volume(feed: FeedConfig) -> bool:
    """Whether examples of this feed carry volume, volume-based indicators and a volume profile."""
    return feed.asset_class in VOLUME_ASSET_CLASSES


def resolve_features(feed: FeedConfig, dataset: DatasetConfig, indicators: IndicatorsConfig) -> FeatureSet:
    """Expand groups, check every named column is produced; raises FeatureError naming the fix."""
    vol = has_volume(feed)
    wanted = list(dataset.include_features or ("ohlcv", "technical_indicators"))
    if not any(w == "ohlcv" or w in OHLCV for w in wanted):
        wanted.insert(0, "ohlcv")
    patterns = pattern_columns(indicators)
    available = [*OHLCV, *indicator_columns(indicators, has_volume=True), *patterns]
    unknown = [w for w in wanted if w not in GROUPS and w not in available]
    if unknown:
        raise FeatureError(
            f"dataset.include_features names {unknown}, which the indicators config does not produce; "
            f"use some of {available} (or enable the indicator or pattern in `indicators`)"
        )
    if "price_action_patterns" in wanted and not patterns:
        raise FeatureError(
            "dataset.include_features names price_action_patterns but indicators.patterns is empty; list "
            "TA-Lib patterns there, e.g. indicators.patterns: [engulfing, doji, hammer, shootingstar, harami]"
        )
    expand = {
        "ohlcv": [*OHLC, *(["volume"] if vol else [])],
        "technical_indicators": indicator_columns(indicators, has_volume=vol),
        "price_action_patterns": patterns,
        "volume_profile": [],
    }
    cols: list[str] = []
    for w in wanted:
        cols += expand.get(w, [w])
    cols = list(dict.fromkeys(cols))
    profile = "volume_profile" in wanted
    reason = None
    if profile and not vol:
        reason = (
            f"feed {feed.name!r} ({feed.asset_class}, {feed.source}) has no volume: the provider sends none "
            "for this asset class, so every example's volume_profile is null"
        )
    return FeatureSet(
        groups=tuple(g for g in GROUPS if g in wanted),
        numeric=tuple(c for c in cols if not c.startswith(PREFIX)),
        patterns=tuple(c for c in cols if c.startswith(PREFIX)),
        volume_profile=profile,
        profile_null_reason=reason,
    )


def history_candles(features: FeatureSet, dataset: DatasetConfig) -> int:
    """Rows an example needs before its candle: the context, its first row's predecessor in bps mode
    (a return needs the previous close), and the volume profile's lookback (which ends at the candle)."""
    need = dataset.context_window + (1 if dataset.price_encoding == "bps" else 0)
    if features.volume_profile and features.profile_null_reason is None:
        need = max(need, profile_lookback(dataset) - 1)
    return need


def profile_lookback(dataset: DatasetConfig) -> int:
    return dataset.volume_profile_lookback or dataset.context_window


def feature_problems(cfg: AppConfig) -> list[str]:
    """`path: problem` lines for include_features that a feed or the indicators cannot serve, for config
    load (the per-model validators check names; this checks them against the indicators config)."""
    problems = []
    for i, feed in enumerate(cfg.feeds):
        try:
            resolve_features(feed, cfg.dataset_for(feed), cfg.indicators)
        except FeatureError as e:
            problems.append(f"{e} (feeds[{i}] {feed.name})")
    return problems


# ------------------------------------------------------------------------------------- number encoding
def _significant(x: np.ndarray, digits: int) -> np.ndarray:
    """Round to `digits` significant digits by exact decimal scaling (integer power-of-ten steps)."""
    out = np.array(x, dtype=np.float64)
    nz = np.isfinite(out) & (out != 0)
    mag = np.floor(np.log10(np.abs(out[nz]))).astype(np.int64) - (digits - 1)
    v = out[nz]
    up = mag < 0
    scale_up = 10.0 ** (-mag[up])  # exact powers of ten up to 1e22
    v[up] = np.round(v[up] * scale_up) / scale_up
    scale_dn = 10.0 ** mag[~up]
    v[~up] = np.round(v[~up] / scale_dn) * scale_dn
    out[nz] = v
    return out


def encode_numeric(
    part: pd.DataFrame, prev_close: np.ndarray, features: FeatureSet, feed: FeedConfig,
    dataset: DatasetConfig, indicators: IndicatorsConfig,
) -> np.ndarray:  # fmt: skip
    """Rows x numeric-fields matrix of the values as written (rounded; -0.0 made 0.0)."""
    kinds = {**indicator_kinds(indicators), **dict.fromkeys(OHLC, "ohlc"), "volume": "volume"}
    close = part["close"].to_numpy(dtype="float64")
    bps = dataset.price_encoding == "bps"
    out = np.empty((len(part), len(features.numeric)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, f in enumerate(features.numeric):
            x = part[f].to_numpy(dtype="float64")
            kind = kinds[f]
            if not bps:
                d = {"oscillator": OSCILLATOR_DECIMALS, "ratio": RATIO_DECIMALS}.get(kind, feed.decimals)
                out[:, k] = np.round(x, d)
            elif kind == "ohlc":
                out[:, k] = np.round((x / prev_close - 1.0) * 1e4, BPS_DECIMALS)
            elif kind == "price":
                out[:, k] = np.round((x / close - 1.0) * 1e4, BPS_DECIMALS)
            elif kind == "price_delta":
                out[:, k] = np.round(x / close * 1e4, BPS_DECIMALS)
            elif kind == "oscillator":
                out[:, k] = np.round(x, BPS_OSCILLATOR_DECIMALS)
            elif kind == "ratio":
                out[:, k] = np.round(x, BPS_RATIO_DECIMALS)
            else:  # volume
                out[:, k] = _significant(x, VOLUME_SIGNIFICANT)
    out[~np.isfinite(out)] = np.nan
    return out + 0.0


def pattern_text(part: pd.DataFrame, features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """(one bytes cell per row naming the fired patterns, e.g. `engulfing+ doji+`, b"" when none;
    True where some flag is unknown (NaN)). Vectorized per pattern column (a loop over patterns only)."""
    n = len(part)
    acc = np.zeros(n, dtype="S1")
    unknown = np.zeros(n, dtype=bool)
    for col in features.patterns:
        v = part[col].to_numpy(dtype="float64")
        unknown |= np.isnan(v)
        name = col[len(PREFIX) :].encode()
        tok = np.select(
            [v >= 200, v > 0, v <= -200, v < 0], [name + b"++", name + b"+", name + b"--", name + b"-"], b""
        )
        joined = np.char.add(np.char.add(acc, b" "), tok)
        acc = np.where(tok == b"", acc, np.where(acc == b"", tok, joined))
    return acc, unknown
