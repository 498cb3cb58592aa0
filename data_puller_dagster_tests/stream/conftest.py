"""Helpers for the live-stream tests: a fake Binance (websocket + REST, one virtual clock), configs on
them, a unique Redis key prefix (keys deleted afterwards), and readers of what reached Redis and the
stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import redis

from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.symbols import partition_key
from data_puller_dagster_tests.fakes.binance import generate_klines
from data_puller_dagster_tests.fakes.binance_ws import FakeBinanceWS
from data_puller_dagster_tests.io.test_stream_destinations import REDIS_URL, need

SYMBOLS = ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
# A past UTC day: candle times never reach "now" (no future_ts), and the whole run stays on one day.
DAY = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)).normalize()


def day_ms(minutes: int = 0) -> int:
    return int(DAY.value // 1_000_000) + minutes * 60_000


def fake_binance(symbols: list[str] = SYMBOLS, *, start_minute: int = 30, **kw: Any) -> FakeBinanceWS:
    """1m candles of `symbols` for DAY; the virtual clock starts `start_minute` minutes into the day."""
    series = {(s, "1m"): generate_klines(DAY, 1440, "1m", seed=i + 1) for i, s in enumerate(symbols)}
    kw.setdefault("speed", 600.0)
    kw.setdefault("ping_interval", 0.25)
    kw.setdefault("pong_timeout", 1.0)
    return FakeBinanceWS(series, start_ms=day_ms(start_minute), **kw)


def live_config(tmp_path: Path, fake: FakeBinanceWS, prefix: str | None, symbols: list[str] = SYMBOLS,
                **sections: Any) -> AppConfig:  # fmt: skip
    """Parquet + DuckDB for live and batch tables and, with a Redis prefix, a Redis route with
    in_progress: true: final candles in `<prefix>:{feed}:{table}:{symbol_key}`, every update in `...:updates`."""
    raw: dict[str, Any] = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": {"binance": {"base_url": fake.rest.url, "ws_url": fake.url, "use_archive": False,
                                "max_retries": 2, "ws_reconnect_base_seconds": 0.05,
                                "ws_reconnect_max_seconds": 0.5, "ws_watchdog_seconds": 3.0}},
        "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                   "symbols": symbols, "start_date": "2024-01-01"}],
        "stream": {"store_flush_seconds": 0.3, "log_interval_seconds": 1.0, "shutdown_timeout_seconds": 3.0},
        "routes": [{"id": "warehouse", "match": {"realtime": True}, "destinations": ["parquet", "duckdb"]},
                   {"id": "batch", "match": {"realtime": False}, "destinations": ["parquet", "duckdb"]}],
    }  # fmt: skip
    if prefix is not None:
        raw["destinations"] = {"live": {
            "type": "redis_stream", "url": REDIS_URL, "stream": prefix + ":{feed}:{table}:{symbol_key}",
            "updates_stream": prefix + ":{feed}:{table}:{symbol_key}:updates"}}  # fmt: skip
        raw["routes"].append({"id": "live_redis", "match": {"realtime": True}, "destinations": ["live"],
                              "in_progress": True})  # fmt: skip
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(raw.get(k), dict) else v
    return parse_config(raw, env={})


@pytest.fixture
def prefix():
    need(REDIS_URL, "Redis")
    p = f"tlive{os.getpid()}{os.urandom(3).hex()}"
    yield p
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{p}:*"):
        r.delete(key)


def redis_entries(key: str) -> list[tuple[str, dict]]:
    """(entry id, candle) of every entry of a stream."""
    r = redis.Redis.from_url(REDIS_URL)
    return [(i.decode(), orjson.loads(f[b"data"])) for i, f in r.xrange(key)]


def stored(cfg: AppConfig, store: str, symbols: list[str] = SYMBOLS) -> pd.DataFrame:
    table = table_ref(cfg.feeds[0], "live", "1m")
    part = PartitionSlice({partition_key(s): s for s in symbols}, DAY.date(), DAY.date())
    return Router(cfg).store(store).read(table, part)


def expected_finals(fake: FakeBinanceWS, symbol: str, through: pd.Timestamp) -> pd.DataFrame:
    """The server's candles of DAY from midnight through `through` (the REST fake's float values)."""
    f = fake.produced_finals(symbol, "1m")
    ts = pd.to_datetime(f["open_time"], unit="ms", utc=True)
    return f[(ts >= DAY) & (ts <= through)].reset_index(drop=True)
