"""Resampling equals the exchange's native bars (freqtrade XRP/ETH 1m vs native 5m) and flags incompleteness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.resample import RESAMPLED_DTYPES, ResampleError, resample
from data_puller_dagster.transform.schemas import validate_normalized
from data_puller_dagster_tests.transform import rawframes as R

OHLCV = ["open", "high", "low", "close", "volume"]


@pytest.fixture(scope="module")
def xrp() -> tuple[pd.DataFrame, pd.DataFrame]:
    base = normalize(R.xrpeth("1m"), asset_class="crypto", timeframe="1m").data
    native = normalize(R.xrpeth("5m"), asset_class="crypto", timeframe="5m").data
    return base, native


def test_1m_to_5m_equals_native_binance_bars(xrp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, native = xrp
    bars = resample(base, "5m", "crypto")
    assert {c: str(t) for c, t in bars.dtypes.items()} == RESAMPLED_DTYPES
    assert validate_normalized(bars.drop(columns=["complete", "source_candles"])).ok
    assert bars["ts"].tolist() == native["ts"].tolist()  # 712 bars, same open times
    for c in OHLCV:  # all 712, including the 6 zero-volume native bars
        np.testing.assert_allclose(bars[c].to_numpy(), native[c].to_numpy(), rtol=1e-12, atol=0, err_msg=c)
    assert bars["complete"].all() and (bars["source_candles"] == 5).all() and bars["is_final"].all()
    assert (bars["timeframe"] == "5m").all()
    zero = bars[bars["volume"] == 0]
    assert len(zero) == 6 and (zero["trades"] == 0).all()


def test_naive_resample_would_not_match(xrp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Guards the test above: the fixture really distinguishes filler-aware from naive resampling."""
    base, native = xrp
    naive = base.set_index("ts")["open"].resample("5min").first()
    wrong = (naive.to_numpy() != native["open"].to_numpy()).mean()
    assert 0.15 < wrong < 0.35


def test_incomplete_bars_around_real_gaps() -> None:
    base = normalize(R.btcusdt_1h(), asset_class="crypto", timeframe="1h").data
    bars = resample(base, "4h", "crypto")
    incomplete = bars.loc[~bars["complete"], ["ts", "source_candles"]]
    # gaps: 12-21 15..17h, 12-25 02h, 02-11 04h, 03-06 02h, 04-20 02..03h, 04-25 05..07h
    assert incomplete["ts"].dt.strftime("%m-%d %H").tolist() == [
        "12-21 12", "12-21 16", "12-25 00", "02-11 04", "03-06 00", "04-20 00", "04-25 04",
    ]  # fmt: skip
    assert incomplete["source_candles"].tolist() == [3, 2, 3, 3, 3, 2, 1]
    assert len(bars) == 4368 // 4 and bars["source_candles"].sum() == len(base)
    assert bars["volume"].sum() == pytest.approx(base["volume"].sum(), rel=1e-12)
    day = resample(base, "1d", "crypto")
    assert (~day["complete"]).sum() == 6 and len(day) == 182
    may31 = base[base["ts"] >= "2021-05-31"]
    last = day.iloc[-1]
    assert (last["open"], last["close"]) == (may31["open"].iloc[0], may31["close"].iloc[-1])
    assert (last["high"], last["low"]) == (may31["high"].max(), may31["low"].min())


def test_forex_bars_follow_the_market_week() -> None:
    base = normalize(R.eurusd_1h(), asset_class="forex", timeframe="1h").data
    h4 = resample(base, "4h", "forex")
    # a Friday 16:00-20:00 UTC summer bar is complete; the Sunday 20:00 bar holds 1 (summer) candle
    fri = h4[h4["ts"] == pd.Timestamp("2017-04-21 16:00", tz="UTC")].iloc[0]
    sun = h4[h4["ts"] == pd.Timestamp("2017-04-23 20:00", tz="UTC")].iloc[0]
    assert fri["complete"] and fri["source_candles"] == 4
    assert sun["complete"] and sun["source_candles"] == 3  # 21:00, 22:00, 23:00 UTC
    assert h4["volume"].isna().all()  # forex: no volume stays null, never 0
    d1 = resample(base, "1d", "forex")
    assert set(d1["ts"].dt.dayofweek) <= {0, 1, 2, 3, 4, 5}
    full = d1[d1["source_candles"] == 24]
    assert full["complete"].all()
    # the extra Friday 21:00 candles fall on a Saturday label: no trading day expects them
    extra = d1[d1["ts"].dt.dayofweek == 5]
    assert len(extra) == 2 and not extra["complete"].any()


def test_multi_symbol_and_still_open_bars(xrp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    base, _ = xrp
    other = base.assign(symbol=pd.Series("XRPBTC", index=base.index, dtype="string"), close=base["close"] * 2)
    last = base["ts"].max()
    cur = base.copy()
    cur["fetched_at"] = last + pd.Timedelta(seconds=30)  # the current minute is still open
    cur["is_final"] = cur["ts"] < last
    bars = resample(pd.concat([other, cur], ignore_index=True), "5m", "crypto")
    assert bars["symbol"].tolist() == ["XRPBTC"] * 712 + ["XRPETH"] * 712
    tail = bars[bars["symbol"] == "XRPETH"].iloc[-1]
    assert not tail["is_final"] and tail["source_candles"] == 5  # 11:15..11:19, fetched 11:19:30
    assert bars[bars["symbol"] == "XRPETH"].iloc[:-1]["is_final"].all()


def test_rejects_mixed_or_coarser_base() -> None:
    base = normalize(R.btcusdt_1h(), asset_class="crypto", timeframe="1h").data
    with pytest.raises(ResampleError, match="cannot build 5m bars from 1h"):
        resample(base, "5m", "crypto")
    mixed = pd.concat([base, base.assign(timeframe=pd.Series("4h", index=base.index, dtype="string"))])
    with pytest.raises(ResampleError, match="one base timeframe"):
        resample(mixed, "1d", "crypto")
    assert list(resample(base.iloc[:0], "1d", "crypto").columns) == list(RESAMPLED_DTYPES)
