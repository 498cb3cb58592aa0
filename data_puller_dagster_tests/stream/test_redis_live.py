"""The Redis streams destination on a live table (real Redis): final candles keep candle-time ids
(exactly once, whatever in-progress updates came first); in-progress updates go only to
`updates_stream` (Redis-generated ids), or are counted as skipped without it."""

from __future__ import annotations

import pandas as pd
import pytest

from data_puller_dagster.config import FeedConfig
from data_puller_dagster.io.destinations.redis_stream_store import RedisStreamDestination, RedisStreamOptions
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.stream.pipeline import quarantine_ref
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster_tests.io.test_stream_destinations import REDIS_URL
from data_puller_dagster_tests.stream.conftest import DAY, redis_entries

FEED = FeedConfig(name="crypto", source="binance", asset_class="crypto", timeframe="1m", symbols=["BTCUSDT"],
                  start_date="2024-01-01")  # fmt: skip
PART = PartitionSlice({"BTCUSDT": "BTCUSDT"}, DAY.date(), DAY.date())


def candles(minutes: list[int], final: list[bool], close: float = 10.0) -> pd.DataFrame:
    n = len(minutes)
    df = pd.DataFrame({
        "ts": [DAY + pd.Timedelta(minutes=m) for m in minutes], "symbol": "BTCUSDT", "asset_class": "crypto",
        "timeframe": "1m", "source": "binance_ws", "open": 10.0, "high": 12.0, "low": 9.0, "close": close,
        "volume": 1.0, "trades": 3, "quote_volume": 10.0, "fetched_at": pd.Timestamp.now(tz="UTC"), "is_final": final,
    }, index=range(n))  # fmt: skip
    return df.astype(CANONICAL_DTYPES)


@pytest.mark.parametrize("updates", [True, False])
def test_updates_never_take_a_final_candles_id(prefix, updates) -> None:
    from data_puller_dagster.assets.naming import table_ref

    table = table_ref(FEED, "live", "1m")
    opts = {"url": REDIS_URL, "stream": prefix + ":{table}:{symbol_key}"}
    if updates:
        opts["updates_stream"] = prefix + ":{table}:{symbol_key}:updates"
    dest = RedisStreamDestination(RedisStreamOptions(**opts))
    md1 = dest.publish(table, candles([0, 1], [True, False], 10.5), PART)  # candle 1 still forming
    md2 = dest.publish(table, candles([1, 2], [True, False], 11.0), PART)  # candle 1 closed, 2 forming
    dest.publish(table, candles([1, 2], [True, False], 11.0), PART)  # the same batch again
    dest.close()
    finals = redis_entries(f"{prefix}:live_ohlcv_1m:BTCUSDT")
    step = 60_000
    assert [i for i, _ in finals] == [f"{DAY.value // 10**6 + m * step}-0" for m in (0, 1)]
    assert all(c["is_final"] for _, c in finals) and finals[1][1]["close"] == 11.0
    assert md1["skipped_in_progress"] == md2["skipped_in_progress"] == 1
    ups = redis_entries(f"{prefix}:live_ohlcv_1m:BTCUSDT:updates")
    if updates:  # every row of the route, at least once (the repeated batch appears again)
        assert [(c["ts"][11:16], c["is_final"]) for _, c in ups] == [
            ("00:00", True), ("00:01", False), ("00:01", True), ("00:02", False), ("00:01", True), ("00:02", False)]
    else:
        assert ups == []


def test_live_and_quarantine_tables_are_distinct_from_the_batch_tables() -> None:
    from data_puller_dagster.assets.naming import table_ref

    live = table_ref(FEED, "live", "1m")
    assert (live.name, live.layer, live.primary_key) == ("live_ohlcv_1m", "live", ("symbol", "ts"))
    q = quarantine_ref(FEED)
    assert (q.name, q.layer, q.primary_key) == ("live_quarantine_ohlcv_1m", "quarantine", None)
    assert {live.name, q.name}.isdisjoint({table_ref(FEED, layer, "1m").name for layer in ("normalized", "quarantine")})


def test_ws_url_comes_from_binance_ws_url(monkeypatch) -> None:
    from data_puller_dagster.config import BinanceSourceConfig

    monkeypatch.setenv("BINANCE_WS_URL", "wss://data-stream.binance.vision/")
    assert BinanceSourceConfig().ws_url == "wss://data-stream.binance.vision"
    monkeypatch.delenv("BINANCE_WS_URL")
    assert BinanceSourceConfig().ws_url == "wss://stream.binance.com:9443"
    with pytest.raises(ValueError, match="not a websocket base URL"):
        BinanceSourceConfig(ws_url="https://stream.binance.com/ws")
