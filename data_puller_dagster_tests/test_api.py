"""The Python API (`data_puller_dagster.api`) against the local provider stand-ins (real HTTP) and real
stores: pull() and its report, source inference, adapters built from keyword options, DataPipeline with
Routes (a callable condition, a declarative filter, a destination object), enrich and build_llm_dataset.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

import data_puller_dagster as dp
from data_puller_dagster.config import ConfigError, IndicatorsConfig, parse_config
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.transform.indicators import compute_indicators
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData, generate_time_series

START_MS = 1704067200000  # 2024-01-01 00:00 UTC
MIN = 60_000
KEY = "td-test-key-0123456789"


@pytest.fixture
def series():
    return generate_klines("2024-01-01", 3 * 1440, "1m", seed=5)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No config file: the models' defaults, base URLs from the environment (as a notebook would run)."""
    (tmp_path / "archive").mkdir()
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", (tmp_path / "archive").as_uri())  # an empty archive copy
    monkeypatch.setenv("DATA_PULLER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATA_PULLER_CONFIG", raising=False)
    return monkeypatch


def _one(sql: str, *params: object) -> tuple:
    with duckdb.connect() as con:
        return con.execute(sql, [str(p) for p in params]).fetchone()


def _closes(frame: pd.DataFrame, lo_ms: int, hi_ms: int) -> np.ndarray:
    rows = frame[(frame["open_time"] >= lo_ms) & (frame["open_time"] < hi_ms)]
    return rows["close"].to_numpy()


def test_pull_returns_the_served_candles(env, series):
    with FakeBinance({("BTCUSDT", "1m"): series}) as fake:
        env.setenv("BINANCE_BASE_URL", fake.url)
        df = dp.pull("BTCUSDT", "1m", start="2024-01-01", end="2024-01-02")
        part = dp.pull("BTCUSDT", "1m", start="2024-01-01T10:00", end="2024-01-01T12:30")
        first = dp.pull("BTCUSDT", "1m", start="2024-01-02", limit=10)
    assert len(df) == 2 * 1440 and df["ts"].is_monotonic_increasing  # `end` as a day includes it
    assert (df["close"].to_numpy() == _closes(series, START_MS, START_MS + 2 * 1440 * MIN)).all()
    assert set(df["asset_class"]) == {"crypto"} and set(df["source"]) == {"binance"}
    assert df["is_final"].all() and list(df.columns)[:3] == ["ts", "symbol", "asset_class"]
    assert len(part) == 150 and part["ts"].iloc[0] == pd.Timestamp("2024-01-01 10:00", tz="UTC")
    assert part["ts"].iloc[-1] == pd.Timestamp("2024-01-01 12:29", tz="UTC")  # a time as `end` is exclusive
    assert len(first) == 10 and first["ts"].iloc[0] == pd.Timestamp("2024-01-02", tz="UTC")


def test_pull_report_has_quarantine_gaps_and_quality(env, series):
    broken = series.copy()
    i = 1440 + 100  # 2024-01-02 01:40: high below low
    broken.loc[i, "high"] = broken.loc[i, "low"] - 1.0
    hole = (broken["open_time"] >= START_MS + (2 * 1440 + 300) * MIN) & (
        broken["open_time"] < START_MS + (2 * 1440 + 305) * MIN
    )  # 2024-01-03 05:00 .. 05:05 missing
    with FakeBinance({("BTCUSDT", "1m"): broken[~hole]}) as fake:
        env.setenv("BINANCE_BASE_URL", fake.url)
        res = dp.pull("BTCUSDT", "1m", start="2024-01-01", end="2024-01-03", report=True)
    assert isinstance(res, dp.PullResult)
    assert len(res.data) == 3 * 1440 - 1 - 5
    assert len(res.quarantine) == 1 and res.quarantine["rule"].iloc[0] in ("high_below_low", "high_below_open_close")
    assert res.quarantine["ts"].iloc[0] == pd.Timestamp("2024-01-02 01:40", tz="UTC")
    gaps = res.gaps.to_dict("records")
    assert gaps == [
        {"symbol": "BTCUSDT", "start": pd.Timestamp("2024-01-02 01:40", tz="UTC"),
         "end": pd.Timestamp("2024-01-02 01:41", tz="UTC"), "missing": 1},
        {"symbol": "BTCUSDT", "start": pd.Timestamp("2024-01-03 05:00", tz="UTC"),
         "end": pd.Timestamp("2024-01-03 05:05", tz="UTC"), "missing": 5},
    ]  # fmt: skip
    q = res.quality.set_index("day")
    assert list(q["missing"]) == [0, 1, 5] and list(q["quarantined"]) == [0, 1, 0]
    assert q["quality_score"].iloc[0] == 1.0
    assert q["quality_score"].iloc[1] == pytest.approx((1439 / 1440) * (1 - 1 / 1440))
    assert q["rejected"].isna().all() and res.rejected.empty
    assert 0.99 < res.score < 1.0 and "1 quarantined" in repr(res)


def test_a_day_answered_with_another_interval_is_rejected(env, series):
    fivemin = generate_klines("2024-01-02", 288, "5m", seed=6)
    mixed = pd.concat([series[series["open_time"] < START_MS + 1440 * MIN], fivemin], ignore_index=True)
    with FakeBinance({("BTCUSDT", "1m"): mixed}) as fake:
        env.setenv("BINANCE_BASE_URL", fake.url)
        res = dp.pull("BTCUSDT", "1m", start="2024-01-01", end="2024-01-02", report=True)
    assert list(res.rejected["reason"]) == ["wrong_interval"]
    assert len(res.data) == 1440 and res.data["ts"].max() < pd.Timestamp("2024-01-02", tz="UTC")
    assert list(res.quality["rejected"]) == [None, "wrong_interval"]


def test_forex_is_inferred_and_weekends_are_not_gaps(env):
    values = generate_time_series("2024-01-05 00:00:00", 4 * 24, "1h", volume=False, seed=2)  # Fri..Mon
    with FakeTwelveData({("EUR/USD", "1h"): values}) as fake:
        env.setenv("TWELVEDATA_BASE_URL", fake.url)
        env.setenv("TWELVEDATA_API_KEY", KEY)
        res = dp.pull("EUR/USD", "1h", start="2024-01-05", end="2024-01-08", report=True)
    assert set(res.data["source"]) == {"twelvedata"} and set(res.data["asset_class"]) == {"forex"}
    assert res.data["volume"].isna().all()
    assert res.gaps.empty  # Friday 22:00 UTC .. Sunday 22:00 UTC is the weekend, not a gap
    assert res.quality["missing"].sum() == 0


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("BTCUSDT", ("binance", "crypto")), ("ETHBTC", ("binance", "crypto")), ("EUR/USD", ("twelvedata", "forex")),
     ("AAPL", ("twelvedata", "equity")), ("BRK.B", ("twelvedata", "equity"))],
)  # fmt: skip
def test_infer_source(symbol, expected):
    assert dp.infer_source(symbol) == expected


def test_a_config_feed_decides_the_source_and_the_feed(tmp_path):
    cfg = parse_config(
        {"feeds": [{"name": "alts", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
                    "symbols": ["XRPETH"], "start_date": "2024-01-01"}],
         "storage": {"data_dir": str(tmp_path)}}, env={},
    )  # fmt: skip
    assert dp.infer_source("XRPETH", cfg) == ("binance", "crypto")
    from data_puller_dagster.standalone.resolve import feed_for

    assert feed_for(cfg, "XRPETH", "1m").name == "alts" and feed_for(cfg, "AAPL", "1d").name == "equity"


def test_adapters_take_keyword_options_with_config_defaults(env):
    env.setenv("BINANCE_BASE_URL", "http://127.0.0.1:1")
    a = dp.BinanceAdapter(weight_budget_per_minute=1200, use_archive=False, max_concurrency=3)
    assert a.rest.base_url == "http://127.0.0.1:1" and a.archive is None  # the env var, as in the pipeline
    assert a.rest.budget.budget == 1200 and a.rest.max_concurrency == 3 and a.rest.http.connect_timeout == 5.0
    b = dp.BinanceAdapter(base_url="http://127.0.0.1:2")
    assert b.rest.budget.budget == 6000 and b.archive is not None and b.rest.bans is not None
    with pytest.raises(ConfigError, match="weight_budget_per_minute"):
        dp.BinanceAdapter(weight_budget_per_minute=5)
    t = dp.TwelveDataAdapter(api_key=KEY, base_url="http://127.0.0.1:3", credits_per_minute=55)
    assert t.http.budget.budget == 55 and t.outputsize == 5000 and "***" in repr(t) and KEY not in repr(t)
    with pytest.raises(TypeError, match="colour"):
        dp.TwelveDataAdapter(api_key=KEY, colour="red")
    for x in (a, b, t):
        x.close()


def test_pipeline_routes_with_a_callable_condition_and_a_filter(env, tmp_path, series):
    cfg = parse_config(
        {"feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                    "symbols": ["BTCUSDT"], "start_date": "2024-01-01"}],
         "storage": {"data_dir": str(tmp_path / "data")}}, env={},
    )  # fmt: skip
    everything = ParquetDestination(str(tmp_path / "all"))
    router = dp.DataRouter(
        [
            dp.Route("liquid", lambda df: df["volume"] > 0, "parquet"),  # a type: storage.parquet_root
            dp.Route("quiet", {"column": "volume", "op": "eq", "value": 0}, "duckdb", transform="backtest_ohlcv"),
            dp.Route("all", None, everything, layers=("raw", "normalized", "quarantine")),
            dp.Route("off", None, ParquetDestination(str(tmp_path / "off")), enabled=False),
        ],
        config=cfg,
    )
    with FakeBinance({("BTCUSDT", "1m"): series}) as fake:
        adapter = dp.BinanceAdapter(base_url=fake.url, use_archive=False)
        with dp.DataPipeline(adapter, dp.DataNormalizer(), router) as pipeline:
            res = pipeline.fetch_and_process("BTCUSDT", "1m", start="2024-01-02", end="2024-01-02")
    assert len(res.data) == 1440 and res.writes
    day = series[(series["open_time"] >= START_MS + 1440 * MIN) & (series["open_time"] < START_MS + 2880 * MIN)]
    zero = int((day["volume"] == 0).sum())
    assert zero > 0
    q = "SELECT count(*) AS n, count(*) FILTER (volume = 0) AS z FROM read_parquet(?, hive_partitioning=true)"
    assert _one(q, tmp_path / "data/parquet/crypto/normalized_ohlcv_1m/**/*.parquet") == (1440 - zero, 0)
    assert _one(q, tmp_path / "all/crypto/normalized_ohlcv_1m/**/*.parquet") == (1440, zero)
    assert _one("SELECT count(*) FROM read_parquet(?)", tmp_path / "all/crypto/raw_ohlcv_1m/**/*.parquet") == (1440,)
    with duckdb.connect(str(tmp_path / "data/warehouse.duckdb"), read_only=True) as con:
        cols = [r[0] for r in con.execute("DESCRIBE crypto.normalized_ohlcv_1m").fetchall()]
        assert cols == ["symbol", "ts", "open", "high", "low", "close", "volume"]  # backtest_ohlcv columns
        assert con.execute("SELECT count(*), sum(volume) FROM crypto.normalized_ohlcv_1m").fetchone() == (zero, 0)
    assert not (tmp_path / "off").exists()


def test_a_condition_must_return_a_mask():
    route = dp.Route("bad", lambda df: df["volume"].to_numpy()[:3] > 0, ParquetDestination("/nonexistent"))
    frame = pd.DataFrame({"volume": [1.0, 0.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="boolean mask of 4 rows"):
        route.mask(frame)
    assert dp.Route("all", lambda df: True).mask(frame).all()


def test_enrich_and_build_llm_dataset(env, tmp_path, series):
    with FakeBinance({("BTCUSDT", "1h"): generate_klines("2024-01-01", 10 * 24, "1h", seed=8)}) as fake:
        env.setenv("BINANCE_BASE_URL", fake.url)
        candles = dp.pull("BTCUSDT", "1h", start="2024-01-01", end="2024-01-10")
    enriched = dp.enrich(candles, {"warmup_candles": 60})
    assert len(enriched) == len(candles) and enriched["indicators_ready"].iloc[-24:].all()
    whole = compute_indicators(candles, IndicatorsConfig(warmup_candles=60))  # over the whole history
    late = enriched["ts"] >= pd.Timestamp("2024-01-05", tz="UTC")
    for col in ("sma_20", "bb_upper_20", "rsi_14"):
        np.testing.assert_allclose(enriched.loc[late, col], whole.loc[late.to_numpy(), col], rtol=1e-6)
    examples = dp.build_llm_dataset(
        enriched, dataset={"context_window": 5, "min_quality": 0.0}, out_dir=tmp_path / "ds", name="btc_1h"
    )
    assert len(examples) == 10 * 24 - 5 - 1 and examples["ts"].is_unique  # context before, successor after
    manifest = pd.read_json(tmp_path / "ds" / "manifest.json", typ="series")
    assert manifest["name"] == "btc_1h" and int(manifest["total_rows"]) == len(examples)


def test_notebook_quickstart_runs_as_a_script(tmp_path):
    """examples/notebook_quickstart.py, cell after cell, against the stand-in (base URLs from env vars)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "notebook_quickstart.py"
    (tmp_path / "archive").mkdir()
    with FakeBinance({("BTCUSDT", "1h"): generate_klines("2024-01-01", 7 * 24, "1h", seed=4)}) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATA_PULLER_", "BINANCE_"))}
        env.update(BINANCE_BASE_URL=fake.url, BINANCE_ARCHIVE_URL=(tmp_path / "archive").as_uri(),
                   DATA_PULLER_HOME=str(tmp_path / "home"), QUICKSTART_OUT=str(tmp_path / "qs"))  # fmt: skip
        res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "PullResult(168 candle(s)" in res.stdout
    assert "stored 144 liquid candles" in res.stdout  # 168 minus the 24 zero-volume candles of the series
    assert (tmp_path / "qs" / "dataset" / "manifest.json").is_file()
    stored = sorted(p.name for p in (tmp_path / "qs" / "all" / "crypto").iterdir())
    assert stored == ["normalized_ohlcv_1h", "quarantine_ohlcv_1h", "raw_ohlcv_1h"]
