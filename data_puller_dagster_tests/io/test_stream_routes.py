"""A stream destination declared in the config file, routed to by a real Dagster run: the normalized
candles of the run's partition arrive in Redis (the real server), once, however often the run repeats."""

from __future__ import annotations

import os

import dagster as dg
import orjson
import pytest
import redis

from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.config import ConfigError, parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.assets.test_pipeline import read, run
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines
from data_puller_dagster_tests.io.test_stream_destinations import REDIS_URL, need


def stream_config(tmp_path, binance_url: str, prefix: str, **top):
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": {"binance": {"base_url": binance_url, "use_archive": False, "max_retries": 1}},
            "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                       "derived_timeframes": ["1h"], "symbols": ["BTCUSDT"], "start_date": "2024-01-01",
                       "end_date": "2024-01-03"}],
            "dataset": {"enabled": False},
            "destinations": {"live": {"type": "redis_stream", "url": REDIS_URL,
                                      "stream": prefix + ":{feed}:{table}:{symbol_key}"}},
            "routes": [
                {"id": "warehouse", "destinations": ["parquet", "duckdb"]},
                {"id": "ticker", "match": {"layer": ["normalized", "derived"]}, "destinations": ["live"],
                 "batch_size": 500},
            ],
            "runs": {"retry_max": 0},
            **top,
        },
        env={},
    )  # fmt: skip


@pytest.fixture
def prefix():
    need(REDIS_URL, "Redis")
    p = f"t{os.getpid()}{os.urandom(3).hex()}"
    yield p
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{p}:*"):
        r.delete(key)


def test_a_run_publishes_its_partition_to_the_configured_stream_once(tmp_path, prefix) -> None:
    series = generate_klines("2024-01-01", 3 * 1440, "1m", seed=5)
    with FakeBinance({("BTCUSDT", "1m"): series}) as fake:
        cfg = stream_config(tmp_path, fake.url, prefix)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        job = pipeline_job_name(cfg.feed("crypto"))
        for _ in range(2):  # a retried/re-executed run must not duplicate what consumers see
            result = run(defs, job, instance, "2024-01-02")
            assert result.success
    r = redis.Redis.from_url(REDIS_URL)
    minute = r.xrange(f"{prefix}:crypto:normalized_ohlcv_1m:BTCUSDT")
    hourly = r.xrange(f"{prefix}:crypto:ohlcv_1h:BTCUSDT")
    stored = read(cfg, "normalized", "1m", "2024-01-02", "2024-01-02")
    assert len(minute) == len(stored) == 1440 and len(hourly) == 24
    first = orjson.loads(minute[0][1][b"data"])
    assert minute[0][0] == f"{int(stored['ts'].iloc[0].value // 10**6)}-0".encode()
    assert first["close"] == stored["close"].iloc[0] and first["symbol"] == "BTCUSDT"
    closes = [orjson.loads(f[b"data"])["close"] for _, f in minute]
    assert closes == stored["close"].tolist()
    mat = instance.get_latest_materialization_event(
        dg.AssetKey(["crypto", table_ref(cfg.feed("crypto"), "normalized", "1m").name])
    )
    assert mat is not None


def test_a_stream_cannot_be_the_primary_store(tmp_path, prefix) -> None:
    with pytest.raises(ConfigError) as e:
        stream_config(tmp_path, "http://127.0.0.1:9", prefix, storage={"data_dir": str(tmp_path), "primary": "live"})
    assert any(
        p.startswith("storage.primary: 'live' is a stream destination, which cannot be read back") for p in e.value.problems
    ), e.value.problems
