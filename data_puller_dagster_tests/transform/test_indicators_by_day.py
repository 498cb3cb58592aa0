"""Indicators per UTC day from anchored windows: a day alone == the same day inside any range, bit for bit,
and still equal to `ta` over the whole history (within the documented warm-up decay)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.assets.partitions import days_for_candles
from data_puller_dagster.config import IndicatorsConfig
from data_puller_dagster.transform.indicators import (
    MAX_DECAY_RESIDUAL,
    READY_COLUMN,
    IndicatorInputError,
    compute_indicators,
    compute_indicators_by_day,
    day_blocks,
    decay_residual,
    indicator_columns,
    warmup_candles,
)
from data_puller_dagster_tests.transform.canonical_series import btcusdt_1h, eurusd_1h, xrpeth_1m
from data_puller_dagster_tests.transform.test_indicators import EXPONENTIAL, ta_reference

CFG = IndicatorsConfig()
DAY = pd.Timedelta(days=1)


def _lookback(series: pd.DataFrame) -> int:
    tf, asset_class = series["timeframe"].iloc[0], series["asset_class"].iloc[0]
    return days_for_candles(asset_class, tf, warmup_candles(CFG))


def _days(series: pd.DataFrame) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(series["ts"].dt.floor("D").unique())


def one_day(series: pd.DataFrame, d: pd.Timestamp, lookback: int) -> pd.DataFrame:
    """What a single-partition run computes: it reads exactly the days [d - lookback, d]."""
    ts = series["ts"]
    read = series[(ts >= d - lookback * DAY) & (ts < d + DAY)]
    return compute_indicators_by_day(read, CFG, start=d, end=d + DAY, lookback_days=lookback)


def in_range(series: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, lookback: int) -> pd.DataFrame:
    """What a range run computes: it reads [start - lookback, end) once."""
    ts = series["ts"]
    read = series[(ts >= start - lookback * DAY) & (ts < end)]
    return compute_indicators_by_day(read, CFG, start=start, end=end, lookback_days=lookback)


def assert_bit_identical(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a["ts"].equals(b["ts"]) and a[READY_COLUMN].equals(b[READY_COLUMN])
    x, y = a[indicator_columns(CFG)].to_numpy(), b[indicator_columns(CFG)].to_numpy()
    assert np.array_equal(np.isnan(x), np.isnan(y))
    same = (x == y) | np.isnan(x)
    assert same.all(), f"{int((~same).sum())} values differ, e.g. {x[~same][:3]} vs {y[~same][:3]}"


@pytest.mark.parametrize("loader", [btcusdt_1h, eurusd_1h, xrpeth_1m])
def test_each_day_alone_equals_the_same_day_in_any_range(loader) -> None:
    series = loader()
    lookback = _lookback(series)
    days = _days(series)[:70] if loader is not xrpeth_1m else _days(series)
    start, end = days[0], days[-1] + DAY
    whole = in_range(series, start, end, lookback)
    daily = pd.concat([one_day(series, d, lookback) for d in days], ignore_index=True)
    assert len(whole) == int(((series["ts"] >= start) & (series["ts"] < end)).sum())
    assert_bit_identical(daily, whole)
    # Ranges that start anywhere (multi_run backfills of 31 days, a run starting mid-range) agree too.
    cut = [start, days[len(days) // 3], days[len(days) // 3 + 31] if len(days) > 40 else days[-1], end]
    chunks = pd.concat(
        [in_range(series, a, b, lookback) for a, b in zip(cut[:-1], cut[1:], strict=True) if a < b],
        ignore_index=True,
    )
    assert_bit_identical(chunks, whole)


def test_computing_the_range_in_one_pass_would_not_be_bit_identical() -> None:
    """Why the windows are anchored: one pass over the range carries EMA seeds and running rolling sums
    across days, so the last bits (and, for EMAs, ~1e-5 of the seed) depend on where the run started."""
    btc = btcusdt_1h()
    lookback = _lookback(btc)
    days = _days(btc)[30:70]
    start, end = days[0], days[-1] + DAY
    ts = btc["ts"]
    one_pass = compute_indicators(btc[(ts >= start - lookback * DAY) & (ts < end)], CFG)
    one_pass = one_pass[one_pass["ts"] >= start].reset_index(drop=True)
    anchored = in_range(btc, start, end, lookback)
    x, y = one_pass[indicator_columns(CFG)].to_numpy(), anchored[indicator_columns(CFG)].to_numpy()
    assert ((x != y) & ~np.isnan(x)).sum() > 1000


@pytest.mark.parametrize("loader", [btcusdt_1h, eurusd_1h])
def test_anchored_days_stay_within_the_ta_accuracy_promise(loader) -> None:
    series = loader()
    lookback = _lookback(series)
    days = _days(series)
    got = in_range(series, days[0], days[-1] + DAY, lookback)
    ref = ta_reference(series)
    assert got["ts"].equals(series["ts"])
    resid = decay_residual(CFG, warmup_candles(CFG))
    assert 0 < resid <= MAX_DECAY_RESIDUAL
    price_range = float(series["high"].max() - series["low"].min())
    for col in indicator_columns(CFG):
        a, b = got[col].to_numpy(), ref[col].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        if col.startswith(EXPONENTIAL):
            scale = 100.0 if col.startswith("rsi_") else price_range
            np.testing.assert_allclose(a, b, rtol=0, atol=10 * resid * scale, equal_nan=True, err_msg=col)
        else:  # finite windows: exact up to float summation order
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=3e-9, equal_nan=True, err_msg=col)
    # The first days of the feed have less history: not ready there, exactly as compute_indicators says.
    assert got[READY_COLUMN].equals(compute_indicators(series, CFG)[READY_COLUMN])


def test_windows_hold_warmup_candles_and_never_reach_past_the_lookback() -> None:
    hour = 3600 * 10**9
    ts = np.arange(24 * 10, dtype=np.int64) * hour  # 10 full days from the epoch
    ts = np.delete(ts, np.arange(24 * 3, 24 * 7))  # days 3..6 missing (an outage)
    anchor, first, stop = day_blocks(ts, 2 * 24 * hour, 9 * 24 * hour, warmup=30, lookback_days=2)
    assert (ts[first] // (24 * hour)).tolist() == [2, 7, 8]  # days with candles only
    assert (stop - first).tolist() == [24, 24, 24]
    assert (first - anchor).tolist() == [30, 0, 24]  # day 7: its lookback (days 5, 6) is empty
    assert ts[anchor[2]] == 7 * 24 * hour  # day 8's window stops at its lookback floor, day 6 is absent


def test_several_symbols_and_bad_input() -> None:
    btc, fx = btcusdt_1h(), eurusd_1h()
    both = pd.concat([fx, btc], ignore_index=True).sample(frac=1.0, random_state=3)
    d = pd.Timestamp("2021-01-10", tz="UTC")
    out = compute_indicators_by_day(both, CFG, start=d, end=d + 3 * DAY, lookback_days=17)
    assert out["symbol"].tolist() == ["BTCUSDT"] * 72  # EUR/USD has no candle in those days
    assert_bit_identical(out, compute_indicators_by_day(btc, CFG, start=d, end=d + 3 * DAY, lookback_days=17))
    with pytest.raises(IndicatorInputError, match="start=.*no timezone"):
        compute_indicators_by_day(btc, CFG, start=pd.Timestamp("2021-01-10"), end=d, lookback_days=1)
    with pytest.raises(IndicatorInputError, match="duplicate candle"):
        compute_indicators_by_day(pd.concat([btc, btc.iloc[[5]]]), CFG, start=d, end=d + DAY, lookback_days=1)
    empty = compute_indicators_by_day(btc.iloc[:0], CFG, start=d, end=d + DAY, lookback_days=1)
    assert list(empty.columns) == list(out.columns) and len(empty) == 0
