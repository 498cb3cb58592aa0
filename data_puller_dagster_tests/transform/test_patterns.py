"""Candlestick pattern flags (TA-Lib CDL*) as enriched columns: equal to TA-Lib's own output over the
whole real series, and a day built alone equal to the same day inside a range, bit for bit, including
three-candle patterns whose first candles are on the previous UTC day."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib

from data_puller_dagster.assets.partitions import days_for_candles
from data_puller_dagster.config import ConfigError, IndicatorsConfig, parse_config
from data_puller_dagster.transform.indicators import (
    READY_COLUMN,
    compute_indicators,
    compute_indicators_by_day,
    enriched_columns,
    indicator_columns,
    warmup_candles,
)
from data_puller_dagster.transform.patterns import lookback, pattern_columns
from data_puller_dagster_tests.transform.canonical_series import btcusdt_1h, eurusd_1h

ALL = IndicatorsConfig(patterns=list(IndicatorsConfig.TALIB_PATTERNS))
DAY = pd.Timedelta(days=1)
THREE_CANDLE = ("morningstar", "eveningstar", "3whitesoldiers", "3blackcrows", "3inside", "3outside")


def talib_flags(series: pd.DataFrame, name: str) -> np.ndarray:
    o, h, lo, c = (series[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close"))
    return getattr(talib, "CDL" + name.upper())(o, h, lo, c).astype("float64")


def by_day(series: pd.DataFrame, cfg: IndicatorsConfig, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    lb = days_for_candles(series["asset_class"].iloc[0], "1h", warmup_candles(cfg))
    return compute_indicators_by_day(series, cfg, start=start, end=end, lookback_days=lb)


def test_config_names_are_talibs_pattern_functions() -> None:
    installed = tuple(f[3:].lower() for f in talib.get_function_groups()["Pattern Recognition"])
    assert IndicatorsConfig.TALIB_PATTERNS == installed
    with pytest.raises(ConfigError, match=r"indicators\.patterns: 'engulf' \(item 1\) is not a TA-Lib candlestick"):
        parse_config(
            {"feeds": [{"name": "c", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
                        "symbols": ["BTCUSDT"], "start_date": "2024-01-01"}],
             "indicators": {"patterns": ["doji", "engulf"]}},
            env={},
        )  # fmt: skip


@pytest.mark.parametrize("load", [btcusdt_1h, eurusd_1h], ids=["BTCUSDT_1h", "EURUSD_1h"])
def test_flags_equal_talib_over_the_whole_series(load) -> None:
    series = load()
    start, end = series["ts"].min().floor("D"), series["ts"].max().floor("D") + DAY
    daily = by_day(series, ALL, start, end)
    whole = compute_indicators(series, ALL)
    assert daily["ts"].tolist() == series["ts"].tolist()
    ready = daily[READY_COLUMN].to_numpy()
    assert ready.mean() > 0.9
    fired = {}
    for name in ALL.patterns:
        ref = talib_flags(series, name)
        col = f"cdl_{name}"
        np.testing.assert_array_equal(daily[col].to_numpy()[ready], ref[ready], err_msg=col)
        got = whole[col].to_numpy()
        assert np.isnan(got[: lookback(name)]).all(), col  # no "no pattern" claims without the history
        np.testing.assert_array_equal(got[lookback(name) :], ref[lookback(name) :], err_msg=col)
        fired[name] = int((ref != 0).sum())
    for name in ("engulfing", "doji", "hammer", "harami", "shootingstar"):
        assert fired[name] > 10, (name, fired[name])  # real patterns, not an all-zero comparison
    assert all(fired[name] > 0 for name in ("morningstar", "eveningstar", "3inside", "3outside")), fired


@pytest.mark.parametrize("load", [btcusdt_1h, eurusd_1h], ids=["BTCUSDT_1h", "EURUSD_1h"])
def test_a_day_alone_equals_the_day_inside_a_range_bit_for_bit(load) -> None:
    series = load()
    cfg = IndicatorsConfig(patterns=[*THREE_CANDLE, "engulfing", "doji", "hikkake"])
    lo, hi = pd.Timestamp("2021-02-01", tz="UTC"), pd.Timestamp("2021-03-01", tz="UTC")
    if series["ts"].iloc[-1] < lo:  # the EUR/USD fixture is 2017-2018
        lo, hi = pd.Timestamp("2017-06-01", tz="UTC"), pd.Timestamp("2017-07-01", tz="UTC")
    ranged = by_day(series, cfg, lo, hi)
    cols = pattern_columns(cfg)
    days = ranged["ts"].dt.floor("D")
    at_midnight = 0
    for d in pd.DatetimeIndex(days.unique()):
        alone = by_day(series[series["ts"] < d + DAY], cfg, d, d + DAY)  # as a one-day run reads
        inside = ranged[(days == d).to_numpy()].reset_index(drop=True)
        assert alone[cols].to_numpy().tobytes() == inside[cols].to_numpy().tobytes(), d
        hours = inside["ts"].dt.hour.to_numpy()
        three = inside[[f"cdl_{p}" for p in THREE_CANDLE]].to_numpy()
        at_midnight += int(((three != 0) & (hours[:, None] < 2)).sum())  # spans the previous day
    assert at_midnight > 0


def test_patterns_are_enriched_columns_after_the_indicators() -> None:
    cfg = IndicatorsConfig(patterns=["engulfing", "doji"])
    assert enriched_columns(cfg) == [*indicator_columns(cfg), "cdl_engulfing", "cdl_doji"]
    assert enriched_columns(IndicatorsConfig()) == indicator_columns(IndicatorsConfig())  # off by default
    out = compute_indicators(btcusdt_1h().iloc[:200], cfg)
    assert (out[["cdl_engulfing", "cdl_doji"]].dtypes == "float64").all()
    # TA-Lib >= 0.6: +-80 is the weaker engulfing (one end of the bodies equal)
    assert set(np.unique(out["cdl_engulfing"].dropna())) <= {-100.0, -80.0, 0.0, 80.0, 100.0}
