"""Volume profile against an independent computation (one window at a time, written here from the
definitions in transform/volume_profile.py), on real BTCUSDT 1h candles, and through the examples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.config import DatasetConfig, IndicatorsConfig
from data_puller_dagster.transform.indicators import compute_indicators
from data_puller_dagster.transform.llm_dataset import build_examples
from data_puller_dagster.transform.volume_profile import volume_profile
from data_puller_dagster_tests.transform.canonical_series import btcusdt_1h, eurusd_1h
from data_puller_dagster_tests.transform.test_llm_dataset import BTC_FEED, FX_FEED


def reference(h: np.ndarray, lo: np.ndarray, v: np.ndarray, buckets: int) -> dict[str, float | np.ndarray]:
    """One window's profile, candle by candle and bucket by bucket (no shared code with the module)."""
    wlo, whi = lo.min(), h.max()
    edges = np.linspace(wlo, whi, buckets + 1)
    vol = np.zeros(buckets)
    for hj, lj, vj in zip(h, lo, v, strict=True):
        if hj > lj:
            for b in range(buckets):
                overlap = min(hj, edges[b + 1]) - max(lj, edges[b])
                if overlap > 0:
                    vol[b] += vj * overlap / (hj - lj)
        else:
            b = 0 if whi == wlo else min(int((lj - wlo) // ((whi - wlo) / buckets)), buckets - 1)
            vol[b] += vj
    total = v.sum()
    poc = int(np.argmax(vol))
    a = z = poc
    inside = vol[poc]
    while inside < 0.7 * total and (a > 0 or z < buckets - 1):
        up = vol[z + 1] if z < buckets - 1 else -1.0
        down = vol[a - 1] if a > 0 else -1.0
        if up >= down:
            z += 1
            inside += up
        else:
            a -= 1
            inside += down
    return {
        "low": wlo, "high": whi, "poc": (edges[poc] + edges[poc + 1]) / 2, "va_low": edges[a],
        "va_high": edges[z + 1], "share": vol / total, "area": inside / total,
    }  # fmt: skip


@pytest.mark.parametrize(("lookback", "buckets"), [(100, 24), (20, 7), (2, 2)])
def test_profile_equals_independent_computation_on_real_candles(lookback: int, buckets: int) -> None:
    btc = btcusdt_1h()
    h, lo, v = (btc[k].to_numpy(dtype="float64") for k in ("high", "low", "volume"))
    flat = np.flatnonzero((btc["high"] == btc["low"]).to_numpy())  # the real zero-volume O=H=L=C candles
    ends = np.unique(np.r_[np.arange(lookback - 1, len(btc), 13), flat + 1, flat + lookback - 1])
    ends = ends[(ends >= lookback - 1) & (ends < len(btc))]
    got = volume_profile(h, lo, v, ends, lookback, buckets)
    assert got.valid.all() and len(ends) > 300
    for k, end in enumerate(ends.tolist()):  # one window at a time, as the definitions say
        w = slice(end - lookback + 1, end + 1)
        ref = reference(h[w], lo[w], v[w], buckets)
        for key in ("low", "high", "poc", "va_low", "va_high"):
            assert getattr(got, key)[k] == pytest.approx(ref[key], rel=1e-12), (end, key)
        np.testing.assert_allclose(got.share[k], ref["share"], rtol=1e-9, atol=1e-15, err_msg=str(end))
        assert ref["area"] >= 0.7
    assert got.share.sum(axis=1) == pytest.approx(1.0)


def test_hand_computed_window() -> None:
    """Two candles over [100, 104] in 4 buckets: 10 over 100-102, 30 over 101-104."""
    h, lo, v = np.array([102.0, 104.0]), np.array([100.0, 101.0]), np.array([10.0, 30.0])
    p = volume_profile(h, lo, v, np.array([1]), 2, 4)
    np.testing.assert_allclose(p.share[0] * 40, [5.0, 15.0, 10.0, 10.0])
    assert (p.poc[0], p.va_low[0], p.va_high[0]) == (101.5, 101.0, 104.0)  # 15 + 10 + 10 = 87.5 %


def test_no_volume_is_null_and_windows_need_their_history() -> None:
    h, lo = np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0])
    p = volume_profile(h, lo, np.array([0.0, 0.0, 0.0]), np.array([2]), 3, 4)
    assert not p.valid[0] and np.isnan(p.poc[0]) and np.isnan(p.share[0]).all()
    p = volume_profile(h, lo, np.array([np.nan, 1.0, 1.0]), np.array([2]), 3, 4)
    assert not p.valid[0]
    with pytest.raises(ValueError, match="fewer than 3 candles"):
        volume_profile(h, lo, np.ones(3), np.array([1]), 3, 4)


def test_examples_carry_the_profile_or_null_for_forex() -> None:
    ind = IndicatorsConfig()
    ds = DatasetConfig(include_features=["ohlcv", "volume_profile"], context_window=10, volume_profile_lookback=30)
    btc = compute_indicators(btcusdt_1h().iloc[:400], ind)
    day = pd.Timestamp("2020-12-05", tz="UTC")
    batch = build_examples(btc, feed=BTC_FEED, dataset=ds, indicators=ind, start=day, end=day + pd.Timedelta(days=1))
    assert len(batch.frame) == 24
    line = json.loads(batch.frame["line"].iloc[5])
    end = int(np.flatnonzero(btc["ts"] == batch.frame["ts"].iloc[5])[0])
    w = slice(end - 29, end + 1)
    ref = reference(*(btc[k].to_numpy(dtype="float64")[w] for k in ("high", "low", "volume")), 24)
    prof = line["volume_profile"]
    assert prof["poc"] == round(ref["poc"], 8) and prof["va_high"] == round(ref["va_high"], 8)
    assert prof["volume_pct"] == [round(x * 100, 1) for x in ref["share"]]
    assert len(line["context"]) == 10  # the profile's 30 candles do not lengthen the context

    fx = compute_indicators(eurusd_1h().iloc[:400], ind)
    day = pd.Timestamp("2017-04-26", tz="UTC")
    batch = build_examples(fx, feed=FX_FEED, dataset=ds, indicators=ind, start=day, end=day + pd.Timedelta(days=1))
    assert len(batch.frame) > 0
    assert all(json.loads(x)["volume_profile"] is None for x in batch.frame["line"])
