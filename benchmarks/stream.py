"""The live stream path (issue 18): 200 symbols x 1m kline events into Redis.

- `throughput`: candle updates per second one core sustains through the path (parse a micro-batch of
  combined-stream messages with orjson, hold/gap state, conflate, normalize + pandera validation, route
  to Redis: final candles with candle-time ids, every row into the updates stream), on prebuilt
  messages fed as fast as the path takes them (no network: the path's own cost).
- `latency`: the fake Binance websocket server (fakes/binance_ws.py) in a child process serving 200
  symbols x 1m at a clock 60x real time (a candle a second per symbol: 200 final candles a second in one
  burst, plus 3 in-progress updates per candle), the real client and runner in this process; per routed
  row, time.time() after its Router.write returned (XADD done) minus the server's event time `E`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import in_child, row

REDIS_URL = os.environ.get("DATA_PULLER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
N_SYMBOLS = 200
DAY = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)).normalize()


def _symbols() -> list[str]:
    return [f"S{i:03d}USDT" for i in range(N_SYMBOLS)]


def _config(data_dir: Path, prefix: str, ws_url: str = "ws://127.0.0.1:9", rest_url: str = "http://127.0.0.1:9",
            updates: bool = True):  # fmt: skip
    """Live candles to Redis: final candles (`updates=False`), or also every update (in_progress route)."""
    from data_puller_dagster.config import parse_config

    live = {"type": "redis_stream", "url": REDIS_URL, "stream": prefix + ":{feed}:{table}:{symbol_key}"}
    if updates:
        live["updates_stream"] = prefix + ":{feed}:{table}:{symbol_key}:u"

    return parse_config({
        "storage": {"data_dir": str(data_dir)},
        "sources": {"binance": {"base_url": rest_url, "ws_url": ws_url, "use_archive": False}},
        "feeds": [{"name": "bench", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                   "symbols": _symbols(), "start_date": "2024-01-01"}],
        "destinations": {"live": live},
        "routes": [{"id": "live", "match": {"realtime": True}, "destinations": ["live"], "in_progress": updates}],
        "stream": {"initial_backfill": "none", "store_flush_seconds": 3600, "log_interval_seconds": 3600},
    }, env={})  # fmt: skip


def _cleanup(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)


_TEMPLATE = (
    '{"stream":"%s@kline_1m","data":{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,"s":"%s","i":"1m","f":1,'
    '"L":9,"o":"100.00000000","c":"%.8f","h":"101.00000000","l":"99.00000000","v":"%d.00000000","n":%d,"x":%s,'
    '"q":"1000.00000000","V":"0.50000000","Q":"50.00000000","B":"0"}}}'
)


def _messages(candles: int, updates: int = 4) -> list[bytes]:
    """Combined-stream kline messages: per candle minute, `updates` in-progress events of every symbol,
    then every symbol's final event (the order Binance sends them in)."""
    out = []
    t0 = int(DAY.value // 10**6)
    symbols = [(s, s.lower()) for s in _symbols()]
    for c in range(candles):
        t = t0 + c * 60_000
        for j in range(updates + 1):
            x = "true" if j == updates else "false"
            out.extend((_TEMPLATE % (low, t, s, t, t + 59_999, s, 100 + j * 0.01, j + 1, j + 1, x)).encode()
                       for s, low in symbols)  # fmt: skip
    return out


def throughput(quick: bool) -> list[dict[str, Any]]:
    import tempfile

    from data_puller_dagster.stream.routing import LiveRouters
    from data_puller_dagster.stream.runner import FeedStream

    candles = 20 if quick else 100
    msgs = _messages(candles)
    rows = []
    for batch in (500, 2000):
        prefix = f"bench{os.getpid()}{batch}"
        with tempfile.TemporaryDirectory() as d:
            cfg = _config(Path(d), prefix)

            async def build(cfg=cfg) -> FeedStream:  # the stream objects want a running loop
                from data_puller_dagster.assets.naming import table_ref

                return FeedStream(cfg, cfg.feeds[0], LiveRouters(cfg, [table_ref(cfg.feeds[0], "live", "1m")]))

            fs = asyncio.run(build())
            now = time.time_ns()
            warm = msgs[: N_SYMBOLS * 5]  # the first minute: connections, imports, first XADDs
            fs._cycle([], warm, [now] * len(warm), [0] * len(warm), [])
            todo = msgs[len(warm):]
            cpu0, t0 = time.process_time(), time.perf_counter()
            for i in range(0, len(todo), batch):
                part = todo[i : i + batch]
                fs._cycle([], part, [time.time_ns()] * len(part), [0] * len(part), [])
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            c = fs.pipe.counters
            assert c.finals_routed == N_SYMBOLS * candles, c
            fs.routers.close()
            _cleanup(prefix)
        rows.append(row(f"stream path, micro-batches of {batch} updates (200 symbols x 1m -> Redis)", len(todo),
                        wall, target=">= 20k updates/s on one core",
                        note=f"CPU {cpu:.2f} s ({len(todo) / cpu / 1000:.0f}k updates per CPU second); "
                             f"{c.finals_routed - N_SYMBOLS} finals + {c.updates_routed} "
                             f"conflated updates XADDed; {c.batches - 1} batches"))  # fmt: skip
    return rows


def _serve_ws(start_ms: int, speed: float, q: Any, stop: Any) -> None:
    from data_puller_dagster_tests.fakes.binance import generate_klines
    from data_puller_dagster_tests.fakes.binance_ws import FakeBinanceWS

    series = {(s, "1m"): generate_klines(DAY, 1440, "1m", seed=i) for i, s in enumerate(_symbols())}
    with FakeBinanceWS(series, start_ms=start_ms, speed=speed, updates_per_candle=3, ping_interval=20.0) as fake:
        q.put((fake.url, fake.rest.url))
        stop.wait()


def _latency(seconds: float, updates: bool) -> tuple[np.ndarray, np.ndarray, Any, float, int]:
    import tempfile

    from data_puller_dagster.stream.runner import run_async

    finals_lat: list[np.ndarray] = []
    updates_lat: list[np.ndarray] = []
    path_lat: list[np.ndarray] = []  # receipt -> XADD done, final candles: the client's own part
    t_start = [0.0]

    def on_routed(event_ms: np.ndarray, received_ns: np.ndarray, final: np.ndarray, done_ns: int) -> None:
        if time.monotonic() < t_start[0]:  # the first seconds: connection, first batches
            return
        lat = done_ns / 1e6 - event_ms
        finals_lat.append(lat[final])
        updates_lat.append(lat[~final])
        path_lat.append((done_ns - received_ns[final]) / 1e6)

    prefix = f"benchlat{os.getpid()}{int(updates)}"
    with in_child(_serve_ws, int(DAY.value // 10**6) + 60_000 * 60, 60.0) as (ws_url, rest_url), \
            tempfile.TemporaryDirectory() as d:  # fmt: skip
        cfg = _config(Path(d), prefix, ws_url, rest_url, updates)
        t_start[0] = time.monotonic() + 3.0
        cpu0 = time.process_time()
        streams = asyncio.run(run_async(cfg, cfg.feeds, duration=seconds, on_routed=on_routed))
        cpu = time.process_time() - cpu0
        _cleanup(prefix)
    c = streams[0].pipe.counters
    return np.concatenate(finals_lat), np.concatenate(updates_lat), c, cpu, np.concatenate(path_lat)


def latency(quick: bool) -> list[dict[str, Any]]:
    seconds = 8.0 if quick else 20.0
    rows = []
    for updates in (False, True):
        f, u, c, cpu, path = _latency(seconds, updates)
        routed = "final candles + every update (in_progress route, updates_stream)" if updates else "final candles"
        note = (f"finals: median {np.median(f):.1f} ms, p99 {np.percentile(f, 99):.1f} ms, max {f.max():.1f} ms "
                f"({len(f)})" + (f"; updates: median {np.median(u):.1f} ms, p99 {np.percentile(u, 99):.1f} ms"
                                 if updates else "")
                + f"; of which receipt -> XADD (the client): median {np.median(path):.1f} ms, p99 "
                f"{np.percentile(path, 99):.1f} ms; "
                f"{c.events} events in {seconds:.0f} s, client CPU {cpu / seconds * 100:.0f} % of a core")  # fmt: skip
        rows.append(row(f"stream latency, event time E -> XADD done, 200 symbols x 1m at x60, {routed}",
                        len(f) + (len(u) if updates else 0), seconds, target="p99 < 50 ms", note=note,
                        p99_ms=float(np.percentile(f, 99))))  # fmt: skip
    return rows


CASES = {"throughput": throughput, "latency": latency}
