"""Derived bars built one day partition at a time equal the bars built from the whole history.

Issue 13 item 3: forex daily bars follow the New York 17:00 trading day, which straddles UTC midnight,
so a day partition that resamples only its own base candles builds wrong (Friday: 22 of 24 candles,
wrong open) or foreign (Monday..Thursday: a bar labelled the next day) bars. Every asset class /
timeframe pair of the shipped data_puller.yaml is run day by day on real series spanning a DST change.
"""

from __future__ import annotations

import functools
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.config import load_config
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.resample import partition_read_days, resample, resample_days
from data_puller_dagster_tests.transform import rawframes as R

REPO = Path(__file__).resolve().parents[2]


# Real series per (asset class, base timeframe), cut to ~5 weeks so one resample per day stays fast:
# Binance XRP/ETH 1m (2.5 days, zero-trade fillers, a partial last day); Binance BTCUSDT 1h around the
# real 2021-03-06 gap and the March DST changes; EUR/USD 1h across the EU (10-29) and US (11-05) DST
# ends, five weekends and their off-hours Friday candles.
SERIES = {
    ("crypto", "1m"): (lambda: R.xrpeth("1m"), None, None),
    ("crypto", "1h"): (R.btcusdt_1h, "2021-03-01", "2021-04-05"),
    ("forex", "1h"): (R.eurusd_1h, "2017-10-16", "2017-11-20"),
}


def _real(asset_class: str, base_tf: str) -> pd.DataFrame:
    return _load(asset_class, base_tf).copy()


@functools.cache
def _load(asset_class: str, base_tf: str) -> pd.DataFrame:
    load, lo, hi = SERIES[(asset_class, base_tf)]
    data = normalize(load(), asset_class=asset_class, timeframe=base_tf).data
    if lo is not None:
        data = data[(data["ts"] >= pd.Timestamp(lo, tz="UTC")) & (data["ts"] < pd.Timestamp(hi, tz="UTC"))]
    return data.reset_index(drop=True)


def _utc_day(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()


def day_by_day(base: pd.DataFrame, tf: str, asset_class: str) -> pd.DataFrame:
    """What the derived asset stores when every day partition runs on its own: day D reads the base
    days `partition_read_days` names and keeps the bars labelled in D."""
    before, after = partition_read_days(asset_class, str(base["timeframe"].iloc[0]), tf)
    days = _utc_day(base["ts"])
    first = days.min().date() - timedelta(days=after)
    last = days.max().date() + timedelta(days=before)
    out = []
    d = first
    while d <= last:  # one resample per partition, as in production (not a loop over candles)
        lo, hi = pd.Timestamp(d - timedelta(days=before)), pd.Timestamp(d + timedelta(days=after))
        window = base[(days >= lo) & (days <= hi)]
        out.append(resample_days(window, tf, asset_class, d, d))
        d += timedelta(days=1)
    return pd.concat(out, ignore_index=True)


def shipped_pairs() -> list[tuple[str, str, str]]:
    cfg = load_config(REPO / "data_puller.yaml")
    return [(f.asset_class, f.timeframe, tf) for f in cfg.feeds for tf in f.derived_timeframes]


PAIRS = [*shipped_pairs(), ("crypto", "1h", "4h"), ("crypto", "1h", "1d")]  # + real gaps (incomplete bars)


def test_shipped_pairs_are_covered() -> None:
    """The shipped config derives crypto 1m -> 1h, 4h, 1d and forex 1h -> 4h, 1d; equity derives none."""
    assert shipped_pairs() == [
        ("crypto", "1m", "1h"), ("crypto", "1m", "4h"), ("crypto", "1m", "1d"),
        ("forex", "1h", "4h"), ("forex", "1h", "1d"),
    ]  # fmt: skip


@pytest.mark.parametrize(("asset_class", "base_tf", "tf"), PAIRS, ids=lambda v: str(v))
def test_day_by_day_equals_whole_history(asset_class: str, base_tf: str, tf: str) -> None:
    base = _real(asset_class, base_tf)
    whole = resample(base, tf, asset_class)
    parts = day_by_day(base, tf, asset_class)
    pd.testing.assert_frame_equal(parts, whole)
    assert parts["source_candles"].sum() == len(base)  # every candle in exactly one stored bar


def test_read_windows_per_market() -> None:
    # forex daily: the New York trading day starts the evening before (21:00 UTC summer, 22:00 winter)
    assert partition_read_days("forex", "1h", "1d") == (1, 0)
    assert partition_read_days("commodity", "1h", "1d") == (1, 0)
    for ac, base, tf in [("crypto", "1m", "1h"), ("crypto", "1m", "4h"), ("crypto", "1m", "1d"), ("forex", "1h", "4h")]:
        assert partition_read_days(ac, base, tf) == (0, 0)  # epoch-grid bars stay inside a UTC day
    # NYSE: a post-market candle after 20:00 New York is on the next UTC day but in that session's bar
    assert partition_read_days("equity", "1h", "1d") == (0, 1)


def test_forex_daily_bars_straddle_utc_midnight_across_dst() -> None:
    """Guards the tests above: on this real series a same-day-only build is wrong, as reported."""
    base = _real("forex", "1h")
    whole = resample(base, "1d", "forex").set_index("ts")
    days = _utc_day(base["ts"])
    # Friday 2017-10-27 (summer, roll 21:00 UTC) and Friday 2017-11-10 (winter, roll 22:00 UTC).
    for fri, roll in (("2017-10-27", 21), ("2017-11-10", 22)):
        same_day = resample(base[days == pd.Timestamp(fri)], "1d", "forex").set_index("ts")
        label = pd.Timestamp(fri, tz="UTC")
        prev_evening = base[(base["ts"] >= label - pd.Timedelta(hours=24 - roll)) & (base["ts"] < label)]
        assert whole.loc[label, "source_candles"] == same_day.loc[label, "source_candles"] + (24 - roll)
        assert whole.loc[label, "open"] == prev_evening["open"].iloc[0] != same_day.loc[label, "open"]
        assert whole.loc[label, "complete"]
    # A Tuesday partition's own candles after the roll belong to Wednesday's bar.
    tue = resample(base[days == pd.Timestamp("2017-11-07")], "1d", "forex")
    assert tue["ts"].dt.date.tolist() == [date(2017, 11, 7), date(2017, 11, 8)]
