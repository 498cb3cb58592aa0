"""LLM training examples from enriched candles (the files and manifest: llm_files.py).

Decisions (each one chosen so that a dataset built day by day equals the one built from the whole
history at once, byte for byte):

- **Eligibility.** A candle yields an example when its ts is in [start, end), it has the history it
  needs (`llm_features.history_candles`: `context_window` predecessors, one more in bps encoding, the
  volume profile's lookback) among the rows *present* in the data (a closed market or a missing candle
  does not disqualify; the number of missing grid slots is recorded as `metadata.context_gap_candles`)
  and a known successor: the next row, provided it falls no later than the end of the
  `lookahead_days`-th UTC day after the candle's own day (the asset reads the next day partition, so a
  Friday-evening forex candle whose successor is on Sunday has no example in either mode). With
  `lookback_days`, that whole history must also lie within that many UTC days before the candle's day
  (pass the asset's read window; then a long outage cannot make the two modes disagree).
- **Filters, in this order, each counted:** no context, no successor, stride, low quality, embargo,
  token budget. Stride keeps candles whose index on the epoch-anchored timeframe grid is a multiple of
  `stride`, so it does not depend on where a batch starts. Quality is that of the candle's UTC day
  (`quality_by_day`); a day missing from the mapping is not excluded and gets `data_quality: null`.
  The token budget drops lines whose `llm_tokens` estimate exceeds `max_tokens_per_example`.
- **Splits by time** (`split.validation_start` / `split.test_start`, UTC midnight). Embargo: an example
  is dropped when the first row of its history or its successor is in another split than the candle
  itself, so no context (and no target) crosses a split boundary.
- **Features and numbers**: llm_features.py (groups, absolute or bps encoding, the patterns cell);
  volume profile: volume_profile.py; line layouts: llm_lines.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.config import DatasetConfig, DatasetSplitConfig, FeedConfig, IndicatorsConfig
from data_puller_dagster.transform.indicators import READY_COLUMN
from data_puller_dagster.transform.llm_features import (
    VOLUME_ASSET_CLASSES,
    FeatureError,
    FeatureSet,
    encode_numeric,
    has_volume,
    history_candles,
    pattern_text,
    profile_lookback,
    resolve_features,
)
from data_puller_dagster.transform.llm_files import (
    EXAMPLE_COLUMNS,
    SPLITS,
    DatasetInputError,
    empty_examples,
    write_dataset,
)
from data_puller_dagster.transform.llm_lines import (
    PCT_DECIMALS,
    SCHEMA_VERSION,
    LineInputs,
    chat_lines,
    seed_lines,
)
from data_puller_dagster.transform.llm_tokens import estimate_lines
from data_puller_dagster.transform.volume_profile import volume_profile

__all__ = [
    "EXAMPLE_COLUMNS", "SCHEMA_VERSION", "SPLITS", "VOLUME_ASSET_CLASSES", "DatasetInputError", "ExampleBatch",
    "build_examples", "empty_examples", "example_fields", "has_volume", "split_codes", "write_dataset",
]  # fmt: skip

RETURN_DECIMALS = 8
QUALITY_DECIMALS = 4
_NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class ExampleBatch:
    """Examples of one symbol over [start, end) and why the other candles of that range have none."""

    frame: pd.DataFrame  # ts (UTC), symbol, split, line (one serialized JSON object, no newline)
    candidates: int  # candles with ts in [start, end)
    excluded_no_context: int
    excluded_no_successor: int
    excluded_stride: int
    excluded_low_quality: int
    excluded_embargo: int
    excluded_token_budget: int = 0

    @property
    def emitted(self) -> int:
        return len(self.frame)


def features_for(feed: FeedConfig, dataset: DatasetConfig, indicators: IndicatorsConfig) -> FeatureSet:
    """The resolved feature selection; DatasetInputError (naming the fix) when it cannot be served."""
    try:
        return resolve_features(feed, dataset, indicators)
    except FeatureError as e:
        raise DatasetInputError(str(e)) from None


def example_fields(feed: FeedConfig, dataset: DatasetConfig, indicators: IndicatorsConfig) -> list[str]:
    """Cells of every context row and of `current`, in order (the rows layout also starts with ts)."""
    return features_for(feed, dataset, indicators).fields


def split_codes(ts_ns: np.ndarray, split: DatasetSplitConfig) -> np.ndarray:
    """0 train, 1 validation, 2 test for each UTC ns timestamp (boundaries at UTC midnight)."""
    big = np.iinfo(np.int64).max
    val = pd.Timestamp(split.validation_start, tz="UTC").value if split.validation_start else big
    test = pd.Timestamp(split.test_start, tz="UTC").value if split.test_start else big
    return np.where(ts_ns >= test, 2, np.where(ts_ns >= val, 1, 0)).astype(np.int8)


def _utc_ns(t: pd.Timestamp | datetime, what: str) -> int:
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise DatasetInputError(f"{what}={t!r} has no timezone; pass a UTC timestamp (e.g. tz='UTC')")
    return int(ts.tz_convert("UTC").as_unit("ns").value)


def _prepare(enriched: pd.DataFrame, feed: FeedConfig, need: list[str], target: str) -> pd.DataFrame:
    """Check the input is one symbol's enriched candles of the dataset timeframe; return them ts-sorted."""
    missing = [c for c in dict.fromkeys(["ts", "symbol", target, READY_COLUMN, *need]) if c not in enriched.columns]
    if missing:
        raise DatasetInputError(
            f"build_examples needs enriched candles; columns {missing} are missing (has "
            f"{list(enriched.columns)}); pass the output of compute_indicators with the same indicators config"
        )
    symbols = enriched["symbol"].unique()
    if len(symbols) > 1:
        raise DatasetInputError(
            f"build_examples takes one symbol at a time, got {sorted(map(str, symbols))}; group by symbol first"
        )
    if "timeframe" in enriched.columns and len(enriched):
        tfs = sorted(map(str, enriched["timeframe"].unique()))
        if tfs != [feed.llm_timeframe]:
            raise DatasetInputError(
                f"feed {feed.name!r} builds examples from {feed.llm_timeframe} candles but got timeframe(s) "
                f"{tfs}; pass the enriched table of {feed.llm_timeframe}"
            )
    df = enriched.sort_values("ts", kind="stable").reset_index(drop=True)
    ts = pd.DatetimeIndex(df["ts"]).as_unit("ns").asi8
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        dup = df["ts"].iloc[int(np.flatnonzero(np.diff(ts) == 0)[0])]
        raise DatasetInputError(
            f"{symbols[0]!r} has duplicate candles at {dup}; deduplicate the enriched rows before building"
        )
    prices = df[target].to_numpy(dtype="float64")
    if np.isnan(prices).any():
        bad = df["ts"].iloc[int(np.flatnonzero(np.isnan(prices))[0])]
        raise DatasetInputError(f"{symbols[0]!r} has no {target} at {bad}; quarantine rows without prices")
    return df


def build_examples(
    enriched: pd.DataFrame,
    *,
    feed: FeedConfig,
    dataset: DatasetConfig,
    indicators: IndicatorsConfig,
    start: pd.Timestamp,
    end: pd.Timestamp,
    quality_by_day: Mapping[date, float] | None = None,
    lookback_days: int | None = None,
    lookahead_days: int = 1,
) -> ExampleBatch:
    """One JSON line per eligible candle of one symbol with ts in [start, end). See the module docstring.

    `enriched` must cover [start - history candles, end + 1 candle] (earlier and next partitions).
    """
    fs = features_for(feed, dataset, indicators)
    target = dataset.target_column
    need_cols = ["close", *fs.numeric, *fs.patterns, *(["high", "low", "volume"] if fs.volume_profile else [])]
    df = _prepare(enriched, feed, need_cols, target)
    lo, hi = _utc_ns(start, "start"), _utc_ns(end, "end")
    ts = pd.DatetimeIndex(df["ts"]).as_unit("ns").asi8
    n, h = len(df), history_candles(fs, dataset)
    cand = np.flatnonzero((ts >= lo) & (ts < hi))
    if len(cand) == 0:
        return ExampleBatch(empty_examples(), 0, 0, 0, 0, 0, 0)
    tf_ns = timeframes.seconds(feed.llm_timeframe) * 10**9
    day = ts[cand] - ts[cand] % _NS_PER_DAY
    first = np.maximum(cand - h, 0)
    nxt = np.minimum(cand + 1, n - 1)

    ok_ctx = cand >= h
    if lookback_days is not None:
        ok_ctx &= ts[first] >= day - lookback_days * _NS_PER_DAY
    ok_next = (cand + 1 < n) & (ts[nxt] < day + (lookahead_days + 1) * _NS_PER_DAY)
    ok_stride = (ts[cand] // tf_ns) % dataset.stride == 0
    quality = np.full(len(cand), np.nan)
    if quality_by_day is not None:
        days, inverse = np.unique(day, return_inverse=True)
        per_day = [quality_by_day.get(pd.Timestamp(d, tz="UTC").date(), np.nan) for d in days]  # per day
        quality = np.asarray(per_day, dtype="float64")[inverse]
    low = quality < dataset.min_quality  # NaN (unknown) compares False: not excluded
    codes = split_codes(ts, dataset.split)
    embargo = (codes[first] != codes[cand]) | (codes[nxt] != codes[cand])

    stage = ok_ctx
    no_ctx = int((~ok_ctx).sum())
    no_next = int((stage & ~ok_next).sum())
    stage = stage & ok_next
    no_stride = int((stage & ~ok_stride).sum())
    stage = stage & ok_stride
    n_low = int((stage & low).sum())
    stage = stage & ~low
    n_emb = int((stage & embargo).sum())
    keep = stage & ~embargo
    idx = cand[keep]
    counts = (len(cand), no_ctx, no_next, no_stride, n_low, n_emb)
    if len(idx) == 0:
        return ExampleBatch(empty_examples(), *counts)

    inp = _line_inputs(df, ts, idx, fs, feed, dataset, indicators, quality[keep], codes, tf_ns)
    lines = (seed_lines if dataset.format == "seed" else chat_lines)(inp, feed, dataset, fs)
    over = 0
    if dataset.max_tokens_per_example is not None:
        fits = estimate_lines(lines) <= dataset.max_tokens_per_example
        over = int((~fits).sum())
        idx, lines = idx[fits], [ln for ln, ok in zip(lines, fits.tolist(), strict=True) if ok]
    symbol = str(df["symbol"].iloc[0])
    frame = pd.DataFrame(
        {
            "ts": pd.Series(pd.DatetimeIndex(ts[idx]).tz_localize("UTC"), dtype="datetime64[ns, UTC]"),
            "symbol": pd.Series([symbol] * len(idx), dtype="string"),
            "split": pd.Series(np.asarray(SPLITS, dtype=object)[codes[idx]], dtype="string"),
            "line": pd.Series(lines, dtype="string"),
        }
    )
    return ExampleBatch(frame if len(idx) else empty_examples(), *counts, excluded_token_budget=over)


def _line_inputs(
    df: pd.DataFrame, ts: np.ndarray, idx: np.ndarray, fs: FeatureSet, feed: FeedConfig,
    dataset: DatasetConfig, indicators: IndicatorsConfig, quality: np.ndarray, codes: np.ndarray, tf_ns: int,
) -> LineInputs:  # fmt: skip
    """Values of the rows from the first history row to the last successor, each encoded once."""
    w, h = dataset.context_window, history_candles(fs, dataset)
    span = slice(int(idx[0] - h), int(idx[-1] + 2))
    part = df.iloc[span]
    p_ts = ts[span]
    close_all = df["close"].to_numpy(dtype="float64")
    prev_close = np.r_[np.nan, close_all][span]  # row r's previous present close (NaN for the first row)
    values = encode_numeric(part, prev_close, fs, feed, dataset, indicators)
    i = idx - span.start
    tv = np.round(part[dataset.target_column].to_numpy(dtype="float64"), feed.decimals) + 0.0
    cur_t, next_t = tv[i], tv[i + 1]
    ret = np.round(next_t / cur_t - 1.0, RETURN_DECIMALS) + 0.0
    direction = np.where(next_t > cur_t, "up", np.where(next_t < cur_t, "down", "flat"))
    reference = np.round(part["close"].to_numpy(dtype="float64")[i], feed.decimals) + 0.0
    ready = part[READY_COLUMN].to_numpy(dtype=bool)
    csum = np.concatenate([[0], np.cumsum(ready)])
    meta = {
        "ctx_gap": ((p_ts[i] - p_ts[i - w]) // tf_ns - w).tolist(),
        "next_gap": ((p_ts[i + 1] - p_ts[i]) // tf_ns - 1).tolist(),
        "ready": ((csum[i + 1] - csum[i - w]) == w + 1).tolist(),
        "quality": np.round(quality, QUALITY_DECIMALS).tolist(),
    }
    return LineInputs(
        values=values,
        patterns=pattern_text(part, fs) if fs.patterns else None,
        p_ts=p_ts,
        i=i,
        symbol=str(df["symbol"].iloc[0]),
        target=dataset.target_column,
        next_t=next_t,
        ret=ret,
        direction=direction,
        reference=reference,
        profile=_profile(part, i, fs, feed, dataset, reference) if fs.volume_profile else None,
        split_names=np.asarray(SPLITS, dtype=object)[codes[idx]],
        meta=meta,
    )


def _profile(
    part: pd.DataFrame, i: np.ndarray, fs: FeatureSet, feed: FeedConfig, dataset: DatasetConfig, ref: np.ndarray
) -> np.ndarray:
    """E x (5 + buckets): low, high, poc, va_low, va_high (absolute or bps of the current close), then
    the volume share of each bucket in percent; all NaN where the profile is null."""
    buckets = dataset.volume_profile_buckets
    if fs.profile_null_reason is not None:
        return np.full((len(i), 5 + buckets), np.nan)
    prof = volume_profile(
        part["high"].to_numpy(dtype="float64"),
        part["low"].to_numpy(dtype="float64"),
        part["volume"].to_numpy(dtype="float64"),
        i,
        profile_lookback(dataset),
        buckets,
    )
    prices = np.stack([prof.low, prof.high, prof.poc, prof.va_low, prof.va_high], axis=1)
    if dataset.price_encoding == "bps":
        prices = np.round((prices / ref[:, None] - 1.0) * 1e4, 1)
    else:
        prices = np.round(prices, feed.decimals)
    out = np.concatenate([prices, np.round(prof.share * 100.0, PCT_DECIMALS)], axis=1) + 0.0
    out[~prof.valid] = np.nan
    return out
