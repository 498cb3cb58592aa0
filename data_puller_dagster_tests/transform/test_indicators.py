"""Indicators on real candles: equal to `ta`, partition-invariant, honest about missing history/volume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ta
from ta.volatility import AverageTrueRange

from data_puller_dagster.config import IndicatorsConfig
from data_puller_dagster.transform.canonical import CANONICAL_COLUMNS, empty_canonical
from data_puller_dagster.transform.indicators import (
    MAX_DECAY_RESIDUAL,
    OBV_WINDOW,
    READY_COLUMN,
    IndicatorInputError,
    average_true_range,
    compute_indicators,
    decay_residual,
    indicator_columns,
    indicator_specs,
    min_history,
    warmup_candles,
)
from data_puller_dagster_tests.transform.canonical_series import FIXTURES, btcusdt_1h, eurusd_1h, xrpeth_1m

CFG = IndicatorsConfig()
EXPONENTIAL = ("rsi_", "macd", "ema_", "atr_")  # columns whose values carry a decaying seed


def ta_reference(df: pd.DataFrame, cfg: IndicatorsConfig = CFG) -> pd.DataFrame:
    """Every default indicator straight from `ta` over the given contiguous series (the oracle)."""
    c, h, lo, v = (df[k].reset_index(drop=True) for k in ("close", "high", "low", "volume"))
    macd = ta.trend.MACD(c, 26, 12, 9)
    bb = ta.volatility.BollingerBands(c, 20, 2.0)
    so = ta.momentum.StochasticOscillator(h, lo, c, 14, 3)
    atr = AverageTrueRange(h, lo, c, 14).average_true_range().to_numpy().copy()
    atr[:13] = np.nan  # ta writes 0.0 where it has no value; ours is NaN there
    obv = ta.volume.OnBalanceVolumeIndicator(c, v).on_balance_volume()
    ref = {
        "rsi_14": ta.momentum.RSIIndicator(c, 14).rsi(),
        "macd_12_26": macd.macd(),
        "macd_signal_9": macd.macd_signal(),
        "macd_hist": macd.macd_diff(),
        "bb_upper_20": bb.bollinger_hband(),
        "bb_middle_20": bb.bollinger_mavg(),
        "bb_lower_20": bb.bollinger_lband(),
        "bb_pctb_20": bb.bollinger_pband(),
        "bb_width_20": bb.bollinger_wband(),
        "ema_12": ta.trend.EMAIndicator(c, 12).ema_indicator(),
        "ema_26": ta.trend.EMAIndicator(c, 26).ema_indicator(),
        "ema_50": ta.trend.EMAIndicator(c, 50).ema_indicator(),
        "sma_20": ta.trend.SMAIndicator(c, 20).sma_indicator(),
        "sma_50": ta.trend.SMAIndicator(c, 50).sma_indicator(),
        "atr_14": atr,
        f"obv_{OBV_WINDOW}": obv - obv.shift(OBV_WINDOW),  # net signed volume of the last window
        "stoch_k_14": so.stoch(),
        "stoch_d_3": so.stoch_signal(),
        "vwap_14": ta.volume.VolumeWeightedAveragePrice(h, lo, c, v, 14).volume_weighted_average_price(),
    }
    return pd.DataFrame({k: np.asarray(s, dtype="float64") for k, s in ref.items()})


def test_default_columns_are_the_documented_names() -> None:
    assert indicator_columns(CFG) == [
        "rsi_14", "macd_12_26", "macd_signal_9", "macd_hist", "bb_upper_20", "bb_middle_20",
        "bb_lower_20", "bb_pctb_20", "bb_width_20", "ema_12", "ema_26", "ema_50", "sma_20", "sma_50",
        "atr_14", "obv_20", "stoch_k_14", "stoch_d_3", "vwap_14",
    ]  # fmt: skip
    assert indicator_columns(CFG, has_volume=False) == [
        c for c in indicator_columns(CFG) if c not in ("obv_20", "vwap_14")
    ]
    off = IndicatorsConfig(rsi_window=None, macd=None, bollinger=None, ema_windows=[], sma_windows=[5],
                           atr_window=None, obv=False, stochastic=None, vwap_window=None)  # fmt: skip
    assert indicator_columns(off) == ["sma_5"]


def test_whole_series_equals_ta_on_btc() -> None:
    btc = btcusdt_1h()
    out = compute_indicators(btc, CFG)
    ref = ta_reference(btc)
    for col in ref.columns:
        got = out[col].to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(ref[col].to_numpy())), col
        np.testing.assert_allclose(
            got, ref[col].to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=col
        )
    assert out[CANONICAL_COLUMNS].equals(btc)


def test_vectorized_atr_matches_ta_loop_to_1e9() -> None:
    for series in (btcusdt_1h(), xrpeth_1m(), eurusd_1h()):
        for window in (2, 14, 50):
            h, lo, c = (series[k] for k in ("high", "low", "close"))
            theirs = AverageTrueRange(h, lo, c, window).average_true_range().to_numpy()
            ours = average_true_range(h.to_numpy(), lo.to_numpy(), c.to_numpy(), window)
            assert np.isnan(ours[: window - 1]).all() and not np.isnan(ours[window - 1 :]).any()
            assert np.max(np.abs(ours[window - 1 :] - theirs[window - 1 :])) <= 1e-9


def test_atr_matches_stockcharts_oracle() -> None:
    cs = pd.read_csv(FIXTURES / "ta_oracle" / "cs-atr.csv")
    ours = average_true_range(cs["High"].to_numpy(), cs["Low"].to_numpy(), cs["Close"].to_numpy(), 14)
    np.testing.assert_allclose(ours[13:], cs["ATR"].to_numpy()[13:], atol=1e-9)
    assert np.isnan(ours[:13]).all()


def _partition_by_partition(series: pd.DataFrame, cfg: IndicatorsConfig, warmup: int) -> pd.DataFrame:
    """What the enriched asset does: each UTC day from the day + `warmup` earlier candles, then sliced."""
    day = series["ts"].dt.floor("D")
    parts = []
    for d in day.unique():
        first = int(np.argmax((day == d).to_numpy()))
        last = int(np.flatnonzero((day == d).to_numpy())[-1])
        window = series.iloc[max(first - warmup, 0) : last + 1]
        enriched = compute_indicators(window, cfg)
        parts.append(enriched[enriched["ts"].dt.floor("D") == d])
    return pd.concat(parts)


@pytest.mark.parametrize("loader", [btcusdt_1h, eurusd_1h])
def test_partition_by_partition_equals_ta_over_whole_series(loader) -> None:
    series = loader()
    warmup = warmup_candles(CFG)
    daily = _partition_by_partition(series, CFG, warmup)
    assert daily.index.equals(series.index)  # every candle exactly once, same order
    ref = ta_reference(series)
    whole = compute_indicators(series, CFG)
    assert daily[READY_COLUMN].equals(whole[READY_COLUMN])
    resid = decay_residual(CFG, warmup)
    assert 0 < resid <= MAX_DECAY_RESIDUAL
    price_range = float(series["high"].max() - series["low"].min())
    for col in indicator_columns(CFG):
        got, want = daily[col].to_numpy(), ref[col].to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want)), col
        if col.startswith(EXPONENTIAL):
            # |partition - whole| <= residual seed weight x seed discrepancy (a price range, or 100 for RSI)
            scale = 100.0 if col.startswith("rsi_") else price_range
            np.testing.assert_allclose(
                got, want, rtol=0, atol=10 * resid * scale, equal_nan=True, err_msg=col
            )
        else:  # finite windows are exact up to float summation order
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=col)


def test_short_warmup_visibly_breaks_partition_invariance() -> None:
    """The tolerance above has teeth: 60 warm-up candles leave EMA50 far outside it."""
    btc = btcusdt_1h()
    daily = _partition_by_partition(btc, CFG, 60)
    ref = ta_reference(btc)
    tol = 10 * decay_residual(CFG, warmup_candles(CFG)) * float(btc["high"].max() - btc["low"].min())
    assert np.nanmax(np.abs(daily["ema_50"].to_numpy() - ref["ema_50"].to_numpy())) > 10 * tol


def test_warmup_covers_windows_and_decay() -> None:
    assert warmup_candles(CFG) == 300  # the configured value already suffices for the defaults
    assert decay_residual(CFG, 300) <= MAX_DECAY_RESIDUAL
    slow = IndicatorsConfig(ema_windows=[200], warmup_candles=300)
    w = warmup_candles(slow)
    assert w > 300 and decay_residual(slow, w) <= MAX_DECAY_RESIDUAL < decay_residual(slow, w - 1)
    assert warmup_candles(IndicatorsConfig(warmup_candles=0, ema_windows=[], macd=None, rsi_window=None,
                                           atr_window=None, sma_windows=[400])) == 400  # fmt: skip


def test_not_ready_rows_are_nan_not_invented() -> None:
    btc = btcusdt_1h().iloc[:120]
    out = compute_indicators(btc, CFG)
    need = min_history(CFG)
    assert need == 50
    assert not out[READY_COLUMN].iloc[: need - 1].any() and out[READY_COLUMN].iloc[need - 1 :].all()
    for spec in indicator_specs(CFG):
        col = out[spec.column]
        assert col.iloc[: spec.min_rows - 1].isna().all(), spec.column
        assert col.iloc[spec.min_rows - 1 :].notna().all(), spec.column
    assert out.loc[out[READY_COLUMN], indicator_columns(CFG)].notna().all().all()


def test_forex_without_volume_gives_null_volume_indicators() -> None:
    fx = eurusd_1h()
    out = compute_indicators(fx, CFG)
    assert out["obv_20"].isna().all() and out["vwap_14"].isna().all()
    ready = out[out[READY_COLUMN]]
    assert len(ready) == len(fx) - min_history(CFG) + 1
    assert ready[indicator_columns(CFG, has_volume=False)].notna().all().all()


def test_zero_volume_fillers_do_not_produce_inf() -> None:
    """XRP/ETH has runs of up to 8 zero-volume O=H=L=C fillers: 0/0 windows are unknown (NaN), not inf."""
    xrp = xrpeth_1m()
    cfg = IndicatorsConfig(vwap_window=5, stochastic=(5, 3))
    out = compute_indicators(xrp, cfg)
    assert not np.isinf(out[indicator_columns(cfg)].to_numpy()).any()
    flat = (xrp["volume"] == 0).rolling(5).sum().eq(5).to_numpy()  # 5 filler candles in a row
    assert flat.sum() > 10
    assert np.isnan(out["vwap_5"].to_numpy()[flat]).all()
    assert np.isnan(out["stoch_k_5"].to_numpy()[flat]).all()  # zero high-low range over the window
    assert out.loc[out[READY_COLUMN] & ~flat, "vwap_5"].notna().all()


def test_several_symbols_in_any_order_equal_each_alone() -> None:
    btc, xrp = btcusdt_1h(), xrpeth_1m()
    both = pd.concat([btc, xrp], ignore_index=True)
    shuffled = both.sample(frac=1.0, random_state=7)  # arbitrary row order and index
    out = compute_indicators(shuffled, CFG)
    assert out.index.equals(shuffled.index) and out[CANONICAL_COLUMNS].equals(shuffled)
    for alone in (btc, xrp):
        expect = compute_indicators(alone, CFG)
        got = out[out["symbol"] == alone["symbol"].iloc[0]].sort_values("ts")
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expect.reset_index(drop=True))


def test_empty_input_has_the_same_columns_and_dtypes() -> None:
    out = compute_indicators(empty_canonical(), CFG)
    full = compute_indicators(btcusdt_1h().iloc[:5], CFG)
    assert (
        list(out.columns) == list(full.columns) == [*CANONICAL_COLUMNS, *indicator_columns(CFG), READY_COLUMN]
    )
    assert out.dtypes.equals(full.dtypes)
    assert (out[indicator_columns(CFG)].dtypes == "float64").all() and out[READY_COLUMN].dtype == bool


def test_bad_input_is_rejected_with_the_fix() -> None:
    btc = btcusdt_1h().iloc[:30]
    with pytest.raises(IndicatorInputError, match="duplicate candle.*BTCUSDT.*deduplicate"):
        compute_indicators(pd.concat([btc, btc.iloc[[3]]]), CFG)
    with pytest.raises(IndicatorInputError, match=r"\['volume'\] are missing"):
        compute_indicators(btc.drop(columns="volume"), CFG)
    with pytest.raises(IndicatorInputError, match="already has indicator columns"):
        compute_indicators(compute_indicators(btc, CFG), CFG)
