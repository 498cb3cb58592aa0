"""The live stream end to end, in process, on real servers: the fake Binance websocket + REST
(fakes/binance_ws.py), the local Redis, Parquet and DuckDB.

A run with two mid-stream drops, a serverShutdown and a pong-deadline drop must leave exactly the
server's final candles (0 missing, 0 duplicated, the REST fake's values to the last digit) in the Redis
stream and in both stores, never an in-progress update in a store or in the final-candle stream, and
resume after a restart from what the primary store holds.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pandas as pd

from data_puller_dagster.stream.runner import run_async
from data_puller_dagster_tests.stream.conftest import (
    DAY,
    SYMBOLS,
    expected_finals,
    fake_binance,
    live_config,
    redis_entries,
    stored,
)


def _chaos(fake) -> None:
    """Two drops, a serverShutdown and a pong-deadline drop, spread over the run."""
    for action in (fake.drop, fake.server_shutdown, fake.drop, fake.ignore_pongs):
        time.sleep(1.0)
        action()


def _values(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["open", "high", "low", "close", "volume", "quote_volume"]
    return df[cols].astype("float64").reset_index(drop=True)


def test_disconnects_leave_no_hole_and_no_duplicate(tmp_path, prefix) -> None:
    with fake_binance() as fake:
        cfg = live_config(tmp_path, fake, prefix)
        threading.Thread(target=_chaos, args=(fake,), daemon=True).start()
        streams = asyncio.run(run_async(cfg, cfg.feeds, duration=6.5))
        counters = streams[0].pipe.counters
        reasons = [why for _, why in fake.close_reasons]
        conns = streams[0].source.connections[0].stats
    # The four disruptions happened, and nothing else closed a connection: the client answered every
    # ping in time (0.25 s pings, 1 s deadline) and never exceeded 5 messages/s.
    assert reasons.count("dropped") == 2 and reasons.count("pong timeout") == 1, fake.close_reasons
    assert fake.shutdown_events_sent == 1 and "too many messages" not in reasons
    assert conns.reconnects >= 4 and conns.close_reasons["server shutdown"] == 1
    assert counters.finals_from_rest > 90  # the first 30 minutes of each symbol, and the missed candles
    assert counters.quarantined == 0 and counters.schema_failures == 0
    parquet, duck = stored(cfg, "parquet"), stored(cfg, "duckdb")
    for sym in SYMBOLS:
        entries = redis_entries(f"{prefix}:crypto:live_ohlcv_1m:{sym}")
        got = pd.DataFrame([c for _, c in entries])
        last = pd.Timestamp(got["ts"].iloc[-1])
        want = expected_finals(fake, sym, last)
        want_ts = pd.to_datetime(want["open_time"], unit="ms", utc=True)
        # Redis: every final candle of the day up to the last routed one, once, in order, exact values.
        assert len(got) == len(want) > 60, (sym, len(got), len(want))
        assert list(pd.to_datetime(got["ts"])) == list(want_ts)
        assert [i for i, _ in entries] == [f"{t.value // 10**6}-0" for t in want_ts]
        assert got["is_final"].all()
        pd.testing.assert_frame_equal(_values(got), _values(want))
        # The stores: the same candles (the last flush ran at shutdown), never an in-progress row.
        for store in (parquet, duck):
            rows = store[store["symbol"] == sym].sort_values("ts").reset_index(drop=True)
            assert rows["is_final"].all() and not rows["ts"].duplicated().any()
            assert list(rows["ts"]) == list(want_ts), (sym, len(rows), len(want_ts))
            pd.testing.assert_frame_equal(_values(rows), _values(want))
            assert set(rows["source"]) == {"binance", "binance_ws"}  # REST fills and websocket events
        # The updates stream: in-progress updates and the finals, each candle's last entry its final one.
        updates = pd.DataFrame([c for _, c in redis_entries(f"{prefix}:crypto:live_ohlcv_1m:{sym}:updates")])
        assert (~updates["is_final"]).sum() > 50
        closing = updates.groupby("ts")["is_final"].last()
        assert closing[closing.index <= got["ts"].iloc[-1]].all()


def test_restart_resumes_from_the_primary_store(tmp_path, prefix) -> None:
    with fake_binance(start_minute=45) as fake:
        cfg = live_config(tmp_path, fake, prefix)
        asyncio.run(run_async(cfg, cfg.feeds, duration=1.5))
        first_requests = fake.rest.klines_requests
        first = stored(cfg, "parquet")
        time.sleep(0.5)  # candles the stream misses between the two runs
        streams = asyncio.run(run_async(cfg, cfg.feeds, duration=1.5))
        starts = [int(r["params"]["startTime"]) for r in fake.rest.received[first_requests:]
                  if r["path"] == "/api/v3/klines"]  # fmt: skip
    # The second run asked REST only for what came after the stored day, not for the day again.
    last_stored = first.groupby("symbol")["ts"].max()
    assert starts and min(starts) > int(DAY.value // 10**6)
    assert min(starts) >= int(last_stored.min().value // 10**6) + 60_000
    assert streams[0].pipe.counters.stale == 0
    for sym in SYMBOLS:
        entries = redis_entries(f"{prefix}:crypto:live_ohlcv_1m:{sym}")
        ts = np.array([int(i.split("-")[0]) for i, _ in entries])
        assert (np.diff(ts) == 60_000).all() and ts[0] == int(DAY.value // 10**6), sym  # no hole, no repeat
        rows = stored(cfg, "duckdb")
        rows = rows[rows["symbol"] == sym]
        assert sorted(rows["ts"].astype("int64") // 10**6) == ts.tolist()


def test_the_library_door_streams_through_the_same_runner(tmp_path) -> None:
    """`DataPipeline.stream(symbol, timeframe)`: the live candles of one symbol reach the live table."""
    from data_puller_dagster import DataPipeline

    with fake_binance(["BTCUSDT"]) as fake:
        cfg = live_config(tmp_path, fake, None, symbols=["BTCUSDT"])
        stream = DataPipeline("binance", config=cfg).stream("BTCUSDT", "1m", duration=3.0)
    rows = stored(cfg, "parquet").sort_values("ts").reset_index(drop=True)
    want = expected_finals(fake, "BTCUSDT", rows["ts"].iloc[-1])
    assert stream.pipe.counters.finals_from_rest > 0
    assert len(rows) == len(want) > 30 and rows["is_final"].all() and not rows["ts"].duplicated().any()
    pd.testing.assert_frame_equal(_values(rows), _values(want))
