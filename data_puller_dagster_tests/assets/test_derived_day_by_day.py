"""Issue 13 item 3 through Dagster: the shipped feeds' derived layers, one day partition per run.

The shipped data_puller.yaml (crypto 1m -> 1h, 4h, 1d; forex 1h -> 4h, 1d) runs raw -> normalized ->
derived day by day on a real DagsterInstance against the fake Twelve Data and Binance servers (real
HTTP, real wire format) serving real candles: EUR/USD 1h over ten days with Monday..Thursday, a weekend
and the US DST end (2017-11-05), and Binance XRP/ETH 1m for a crypto feed (its last day is partial).
The stored derived tables must equal the bars resampled from the whole stored normalized history.
Before the fix, forex 1d failed on every Monday..Thursday partition (a bar labelled the next day) and
stored Friday's bar from 22 of its 24 candles with the wrong open.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from data_puller_dagster.assets.feed import build_all_assets
from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.config import parse_config
from data_puller_dagster.io.io_manager import build_io_manager
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.resample import resample
from data_puller_dagster_tests.fakes.binance import FakeBinance
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "data_puller_dagster_tests" / "fixtures"
FOREX_DAYS = (date(2017, 10, 29), date(2017, 11, 7))  # Sun .. Tue: Mon-Fri, a weekend, 11-05 DST end
CRYPTO_DAYS = (date(2019, 10, 11), date(2019, 10, 13))  # the XRP/ETH file ends 10-13 11:19 (partial day)


def eurusd_values() -> pd.DataFrame:
    """backtesting.py EUR/USD 1h in Twelve Data's forex value layout (strings, no volume)."""
    raw = pd.read_csv(FIXTURES / "backtesting_py" / "EURUSD.csv", index_col=0, parse_dates=True)
    out = pd.DataFrame({"datetime": raw.index.strftime("%Y-%m-%d %H:%M:%S")})
    for c in ("open", "high", "low", "close"):
        out[c] = raw[c.capitalize()].map("{:.5f}".format).to_numpy()
    return out


def xrpeth_klines() -> pd.DataFrame:
    """freqtrade's Binance XRP/ETH 1m candles as kline rows (trades: 0 for zero-volume fillers, else 1;
    quote volume close * volume -- the file has neither, only zero vs non-zero matters to resampling)."""
    a = np.asarray(json.loads((FIXTURES / "freqtrade" / "XRP_ETH-1m.json").read_text()), dtype="float64")
    ot = a[:, 0].astype("int64")
    return pd.DataFrame({
        "open_time": ot, "open": a[:, 1], "high": a[:, 2], "low": a[:, 3], "close": a[:, 4], "volume": a[:, 5],
        "close_time": ot + 59_999, "quote_volume": a[:, 4] * a[:, 5], "trades": (a[:, 5] > 0).astype("int64"),
        "taker_buy_base": 0.0, "taker_buy_quote": 0.0, "ignore": "0",
    })  # fmt: skip


def shipped_config(tmp_path: Path, binance_url: str, twelvedata_url: str):
    """data_puller.yaml as shipped, pointed at the fakes and at the fixtures' days."""
    data = yaml.safe_load((REPO / "data_puller.yaml").read_text())
    data["storage"]["data_dir"] = str(tmp_path / "data")
    data["sources"]["binance"].update(base_url=binance_url, use_archive=False, max_retries=0)
    data["sources"]["twelvedata"].update(
        base_url=twelvedata_url, api_key="td-test-key-0123456789", max_retries=0, credits_per_minute=800
    )  # the fake does not meter credits; the free plan's 8/minute would only make the test wait
    data["runs"]["retry_max"] = 0
    days = {"crypto": CRYPTO_DAYS, "forex": FOREX_DAYS}
    for feed in data["feeds"]:
        if feed["name"] in days:
            feed["start_date"], feed["end_date"] = (d.isoformat() for d in days[feed["name"]])
    return parse_config(data, env={})


def read(cfg, feed_name: str, layer: str, tf: str, symbol: tuple[str, str], days: tuple[date, date]) -> pd.DataFrame:
    part = PartitionSlice(symbols={symbol[0]: symbol[1]}, start=days[0], end=days[1])
    table = table_ref(cfg.feed(feed_name), layer, tf)
    return Router(cfg).read(table, part).sort_values(["symbol", "ts"]).reset_index(drop=True)


def materialize_day_by_day(cfg, feed_name: str, symbol_key: str, days: tuple[date, date]) -> list[str]:
    """One run per day partition, in date order, of raw -> normalized (+quarantine) -> derived."""
    feed = cfg.feed(feed_name)
    keys = [asset_key(feed, layer, feed.timeframe) for layer in ("raw", "normalized", "quarantine")]
    keys += [asset_key(feed, "derived", tf) for tf in feed.derived_timeframes]
    assets = build_all_assets(cfg)
    instance = dg.DagsterInstance.ephemeral()
    failed = []
    d = days[0]
    while d <= days[1]:
        result = dg.materialize(
            assets,
            selection=keys,
            partition_key=f"{d.isoformat()}|{symbol_key}",
            instance=instance,
            resources={"io_manager": build_io_manager(cfg)},
            raise_on_error=False,
        )
        if not result.success:
            failed.append(f"{d:%a %Y-%m-%d}: {_first_error(result)}")
        d += timedelta(days=1)
    return failed


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for e in result.all_events:
        if e.event_type_value == "STEP_FAILURE":
            err = e.event_specific_data.error
            while err.cause is not None:  # the FrameContractError under Dagster's handle-output wrapper
                err = err.cause
            return f"{e.step_key}: {err.message.strip()[:300]}"
    return "run failed"


def whole_history(cfg, feed_name: str, tf: str, symbol: tuple[str, str], days: tuple[date, date]) -> pd.DataFrame:
    """Bars resampled from every stored base candle at once, those labelled in the run's days."""
    feed = cfg.feed(feed_name)
    norm = read(cfg, feed_name, "normalized", feed.timeframe, symbol, days)
    bars = resample(norm, tf, feed.asset_class)
    lo, hi = pd.Timestamp(days[0], tz="UTC"), pd.Timestamp(days[1] + timedelta(days=1), tz="UTC")
    return bars[(bars["ts"] >= lo) & (bars["ts"] < hi)].reset_index(drop=True)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("day_by_day")
    with FakeBinance({("BTCUSDT", "1m"): xrpeth_klines()}) as binance, FakeTwelveData(
        {("EUR/USD", "1h"): eurusd_values()}
    ) as td:
        cfg = shipped_config(tmp, binance.url, td.url)
        failed = {
            "forex": materialize_day_by_day(cfg, "forex", "EURUSD", FOREX_DAYS),
            "crypto": materialize_day_by_day(cfg, "crypto", "BTCUSDT", CRYPTO_DAYS),
        }
    return cfg, failed


def test_every_day_partition_succeeds(stores) -> None:
    _, failed = stores
    assert failed == {"forex": [], "crypto": []}


@pytest.mark.parametrize(
    ("feed_name", "tf", "symbol", "days"),
    [
        ("forex", "4h", ("EURUSD", "EUR/USD"), FOREX_DAYS),
        ("forex", "1d", ("EURUSD", "EUR/USD"), FOREX_DAYS),
        ("crypto", "1h", ("BTCUSDT", "BTCUSDT"), CRYPTO_DAYS),
        ("crypto", "4h", ("BTCUSDT", "BTCUSDT"), CRYPTO_DAYS),
        ("crypto", "1d", ("BTCUSDT", "BTCUSDT"), CRYPTO_DAYS),
    ],
)
def test_stored_derived_equals_whole_history(stores, feed_name, tf, symbol, days) -> None:
    cfg, _ = stores
    stored = read(cfg, feed_name, "derived", tf, symbol, days)
    expected = whole_history(cfg, feed_name, tf, symbol, days)
    assert len(expected) > 0
    pd.testing.assert_frame_equal(stored, expected, check_dtype=False)
    assert (stored.dtypes == expected.dtypes).all()


def test_forex_daily_bars_are_new_york_trading_days(stores) -> None:
    cfg, _ = stores
    d1 = read(cfg, "forex", "derived", "1d", ("EURUSD", "EUR/USD"), FOREX_DAYS).set_index("ts")
    norm = read(cfg, "forex", "normalized", "1h", ("EURUSD", "EUR/USD"), FOREX_DAYS).set_index("ts")
    # Monday 10-30 .. Friday 11-03 and Monday 11-06 .. Tuesday 11-07: whole trading days, 24 candles each
    weekdays = [pd.Timestamp(s, tz="UTC") for s in ("2017-10-30", "2017-10-31", "2017-11-01", "2017-11-02",
                                                    "2017-11-03", "2017-11-06", "2017-11-07")]
    assert d1.loc[weekdays, "complete"].all()
    assert (d1.loc[weekdays, "source_candles"] == 24).all()
    # Friday 11-03 (New York summer time) opens Thursday 21:00 UTC; Tuesday 11-07 (winter) Monday 22:00.
    for label, first in (("2017-11-03", "2017-11-02 21:00"), ("2017-11-07", "2017-11-06 22:00")):
        assert d1.loc[pd.Timestamp(label, tz="UTC"), "open"] == norm.loc[pd.Timestamp(first, tz="UTC"), "open"]
