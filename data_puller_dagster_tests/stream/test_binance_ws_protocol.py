"""The fake speaks Binance's kline websocket protocol, and the client keeps its rules: both against the
real local websocket server (fakes/binance_ws.py)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from data_puller_dagster.config import BinanceSourceConfig
from data_puller_dagster.sources.binance_ws import BinanceKlineStream, ConnectionBudget
from data_puller_dagster.sources.binance_ws_events import parse_events
from data_puller_dagster.sources.errors import InvalidRequestError
from data_puller_dagster.stream.pipeline import LivePipeline
from data_puller_dagster.stream.state import SymbolStates
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster_tests.stream.conftest import DAY, fake_binance, live_config, stored

KLINE_TEXT = {"o", "c", "h", "l", "v", "q", "V", "Q", "B"}


async def _recv(url: str, n: int) -> list[dict]:
    async with connect(url, ping_interval=None) as ws:
        return [orjson.loads(await ws.recv()) for _ in range(n)]


def test_raw_and_combined_streams_carry_binance_kline_events() -> None:
    with fake_binance(["BTCUSDT", "ETHUSDT"]) as fake:
        raw = asyncio.run(_recv(fake.url + "/ws/btcusdt@kline_1m", 8))
        combined = asyncio.run(_recv(fake.url + "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m", 8))
        finals = [m for m in asyncio.run(_recv(fake.url + "/ws/ethusdt@kline_1m", 12)) if m["k"]["x"]]
        rest = requests.get(fake.rest.url + "/api/v3/klines", params={"symbol": "ETHUSDT", "interval": "1m",
                            "startTime": finals[0]["k"]["t"], "limit": 1}, timeout=5).json()  # fmt: skip
        with pytest.raises(InvalidStatus) as refused:  # unknown stream: refused at the handshake
            asyncio.run(_recv(fake.url + "/ws/dogeusdt@kline_1m", 1))
    assert refused.value.response.status_code == 400
    e = raw[0]
    assert e["e"] == "kline" and e["s"] == "BTCUSDT" and isinstance(e["E"], int)
    k = e["k"]
    assert set(k) == {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}
    assert all(isinstance(k[f], str) for f in KLINE_TEXT) and isinstance(k["n"], int) and k["T"] == k["t"] + 59_999
    assert {m["stream"] for m in combined} == {"btcusdt@kline_1m", "ethusdt@kline_1m"}
    assert all(set(m) == {"stream", "data"} and m["data"]["e"] == "kline" for m in combined)
    # A final event holds exactly the REST candle's text: o, h, l, c, v, T, q, n, V, Q.
    k = finals[0]["k"]
    assert rest[0][:11] == [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"]]


def test_the_fake_enforces_the_pong_deadline_and_the_message_rate() -> None:
    async def blocked_client(url: str) -> str:
        async with connect(url, ping_interval=None) as ws:
            await ws.recv()
            time.sleep(1.0)  # the event loop is blocked: pings go unanswered past the deadline
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 2)
            except ConnectionClosed:
                return "closed"

    async def chatty_client(url: str, n: int) -> str:
        async with connect(url, ping_interval=None) as ws:
            for i in range(n):
                await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
            try:
                async with asyncio.timeout(1.0):
                    while True:
                        await ws.recv()
            except TimeoutError:
                return "open"
            except ConnectionClosed as e:
                return f"closed {e.rcvd.code if e.rcvd else None}"

    async def patient_client(url: str) -> int:
        async with connect(url, ping_interval=None) as ws:  # websockets answers pings by itself
            n, end = 0, time.monotonic() + 1.5
            while time.monotonic() < end:
                await ws.recv()
                n += 1
            return n

    with fake_binance(["BTCUSDT"], ping_interval=0.2, pong_timeout=0.5) as fake:
        url = fake.url + "/ws/btcusdt@kline_1m"
        assert asyncio.run(blocked_client(url)) == "closed"
        assert asyncio.run(patient_client(url)) > 10
        # Pongs count as incoming messages: 5 pongs a second leave no room for a request.
        assert asyncio.run(chatty_client(url, 2)) == "closed 1008"
    assert [why for _, why in fake.close_reasons] == ["pong timeout", "too many messages"]
    with fake_binance(["BTCUSDT"], ping_interval=30) as fake:
        url = fake.url + "/ws/btcusdt@kline_1m"
        assert asyncio.run(chatty_client(url, 5)) == "open"
        assert asyncio.run(chatty_client(url, 6)) == "closed 1008"
    assert [why for _, why in fake.close_reasons] == ["too many messages"]


def test_client_splits_streams_watchdog_and_rotation(tmp_path) -> None:
    """3 symbols at 2 streams per connection: 2 connections. A connection gone silent is replaced by
    the watchdog; connections are rotated at their maximum age; no final candle is lost meanwhile."""
    from data_puller_dagster.stream.runner import run_async

    with fake_binance() as fake:
        cfg = live_config(tmp_path, fake, None, sources={"binance": {
            **live_config(tmp_path, fake, None).sources.binance.model_dump(),
            "ws_streams_per_connection": 2, "ws_watchdog_seconds": 0.6, "ws_max_connection_seconds": 2.5}})  # fmt: skip

        async def run():
            task = asyncio.create_task(run_async(cfg, cfg.feeds, duration=4.6))
            await asyncio.sleep(0.8)
            await asyncio.to_thread(fake.silence)
            return await task

        streams = asyncio.run(run())
    conns = streams[0].source.connections
    assert [c.stats.symbols for c in conns] == [["BTCUSDT", "ETHUSDT"], ["XRPUSDT"]]
    reasons = sum((c.stats.close_reasons for c in conns), start=type(conns[0].stats.close_reasons)())
    assert any(r.startswith("watchdog") for r in reasons) and reasons["rotation"] >= 2, reasons
    df = stored(cfg, "parquet")
    for sym, rows in df.groupby("symbol"):
        ts = rows["ts"].sort_values()
        assert ts.iloc[0] == DAY and (ts.diff().dropna() == "1min").all(), sym


def test_refused_handshake_stops_the_stream_and_budget_limits_attempts() -> None:
    with fake_binance(["BTCUSDT"]) as fake:
        options = BinanceSourceConfig(ws_url=fake.url, base_url=fake.rest.url)
        stream = BinanceKlineStream(["DOGEUSDT"], "1m", options, lambda *a: None)
        with pytest.raises(InvalidRequestError, match="HTTP 400"):
            asyncio.run(asyncio.wait_for(stream.run(), 10))

    async def attempts() -> list[float]:
        budget = ConnectionBudget(3, window=0.5)
        t0, out = time.monotonic(), []
        for _ in range(5):
            await budget.acquire()
            out.append(time.monotonic() - t0)
        return out

    at = asyncio.run(attempts())
    assert max(at[:3]) < 0.1 and 0.45 < at[3] < 0.7 and at[4] < 0.7  # the 4th waits for the window


def test_malformed_events_are_quarantined_with_the_batch_rules() -> None:
    good = {"t": int(DAY.value // 10**6), "T": int(DAY.value // 10**6) + 59_999, "s": "BTCUSDT", "i": "1m", "f": 1,
            "L": 2, "o": "10.0", "c": "11.0", "h": "12.0", "l": "9.0", "v": "1.5", "n": 2, "x": True, "q": "15.0",
            "V": "1", "Q": "10", "B": "0"}  # fmt: skip
    events = [
        {"e": "kline", "E": 1, "s": "BTCUSDT", "k": good},
        {"e": "kline", "E": 1, "s": "BTCUSDT", "k": {**good, "t": good["t"] + 60_000, "T": good["T"] + 60_000,
                                                     "h": "8.0"}},  # high below low
        {"e": "kline", "E": 1, "s": "BTCUSDT", "k": {**good, "t": "soon", "o": 10.5}},  # no open time, number price
        {"e": "kline", "E": 1, "s": "BTCUSDT", "k": {**good, "t": good["t"] + 120_000, "T": good["t"] + 419_999}},
        {"result": None, "id": 1},
    ]  # fmt: skip
    msgs = [orjson.dumps({"stream": "btcusdt@kline_1m", "data": e}) for e in events] + [b"not json"]
    batch = parse_events(msgs, [time.time_ns()] * len(msgs), [0] * len(msgs), "1m")
    assert len(batch) == 4 and batch.skipped == 1 and batch.malformed == 1
    res = normalize(batch.raw, asset_class="crypto", timeframe="1m")
    assert sorted(res.quarantine["rule"]) == ["high_below_low", "interval_mismatch", "unparseable_ts"]
    states = SymbolStates(["BTCUSDT"], 60 * 10**9, "none")
    pipe = LivePipeline(live_feed(), live_table(), states, None)
    ready, idx, gaps = states.admit(batch)
    pipe.process(ready, idx)
    assert pipe.counters.quarantined == 3 and pipe.counters.finals_routed == 1 and not gaps
    # Rows without a ts belong to the day they were received, the others to their candle's day.
    days = {d.day: d.frame for d in pipe.quarantine.snapshot()}
    assert len(days.pop(DAY.date())) == 2 and [len(f) for f in days.values()] == [1]


def live_feed():
    from data_puller_dagster.config import FeedConfig

    return FeedConfig(name="crypto", source="binance", asset_class="crypto", timeframe="1m", symbols=["BTCUSDT"],
                      start_date="2024-01-01")  # fmt: skip


def live_table():
    from data_puller_dagster.assets.naming import table_ref

    return table_ref(live_feed(), "live", "1m")
