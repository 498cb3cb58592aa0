"""End to end through Dagster: the real asset graph against local fake providers (real HTTP) and real
stores (Parquet + DuckDB), for single partitions, day ranges, quarantine and the blocking check."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pandas as pd
import pytest

from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.automation.jobs import dataset_job_name, pipeline_job_name
from data_puller_dagster.config import parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.indicators import compute_indicators
from data_puller_dagster.transform.resample import resample
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData, generate_time_series

START = "2024-01-01"


def crypto_config(tmp_path, binance_url: str, **feed_overrides):
    feed = {
        "name": "crypto",
        "source": "binance",
        "asset_class": "crypto",
        "timeframe": "1m",
        "derived_timeframes": ["1h"],
        "enrich_timeframes": ["1h"],
        "dataset_timeframe": "1h",
        "symbols": ["BTCUSDT", "ETHUSDT"],
        "start_date": START,
        "end_date": "2024-01-04",
        **feed_overrides,
    }
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": {"binance": {"base_url": binance_url, "use_archive": False, "max_retries": 1}},
            "feeds": [feed],
            "indicators": {"warmup_candles": 60},
            "dataset": {"context_window": 5, "min_quality": 0.0},
            "runs": {"retry_max": 0},
        },
        env={},
    )


@pytest.fixture
def btc_series():
    return generate_klines(START, 4 * 1440, "1m", seed=7)


@pytest.fixture
def binance(btc_series):
    with FakeBinance({("BTCUSDT", "1m"): btc_series}) as fake:
        yield fake


def run(defs, job: str, instance, start: str, end: str | None = None, symbol: str = "BTCUSDT"):
    job_def = defs.resolve_job_def(job)
    if end is None:
        return job_def.execute_in_process(
            instance=instance, partition_key=f"{start}|{symbol}", raise_on_error=False
        )
    return job_def.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": f"{start}|{symbol}",
            "dagster/asset_partition_range_end": f"{end}|{symbol}",
        },
        raise_on_error=False,
    )


def read(cfg, layer: str, tf: str, start: str, end: str, symbols=None, feed_name="crypto") -> pd.DataFrame:
    feed = cfg.feed(feed_name)
    keys = symbols or {"BTCUSDT": "BTCUSDT"}
    part = PartitionSlice(symbols=keys, start=date.fromisoformat(start), end=date.fromisoformat(end))
    return Router(cfg).read(table_ref(feed, layer, tf), part).sort_values(["symbol", "ts"]).reset_index(drop=True)


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_single_partition_through_every_layer(tmp_path, binance, btc_series):
    cfg = crypto_config(tmp_path, binance.url)
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.ephemeral()

    result = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, "2024-01-02")
    assert result.success
    assert checks(result) == {
        "schema_valid": True,
        "no_duplicate_conflicts": True,
        "no_ohlc_violations": True,
        "complete_against_calendar": True,
        "fresh": True,
        "live_matches_batch": True,  # no live rows: nothing to compare
    }

    norm = read(cfg, "normalized", "1m", "2024-01-01", "2024-01-04")
    assert len(norm) == 1440  # only the requested day was fetched and stored
    assert norm["ts"].min() == pd.Timestamp("2024-01-02", tz="UTC")
    day = btc_series[(btc_series["open_time"] >= 1704153600000) & (btc_series["open_time"] < 1704240000000)]
    assert (norm["close"].to_numpy() == day["close"].to_numpy()).all()
    assert int((norm["trades"] == 0).sum()) == int((day["trades"] == 0).sum()) > 0  # zero-trade kept

    hourly = read(cfg, "derived", "1h", "2024-01-02", "2024-01-02")
    assert len(hourly) == 24 and hourly["complete"].all()
    enriched = read(cfg, "enriched", "1h", "2024-01-02", "2024-01-02")
    assert len(enriched) == 24 and "rsi_14" in enriched.columns

    # Parquet and DuckDB hold the same rows.
    duck = Router(cfg).destination("duckdb").read(
        table_ref(cfg.feed("crypto"), "normalized", "1m"),
        PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=date(2024, 1, 2), end=date(2024, 1, 2)),
    )
    pd.testing.assert_frame_equal(norm, duck.sort_values(["symbol", "ts"]).reset_index(drop=True))

    mat = instance.get_latest_materialization_event(asset_key(cfg.feed("crypto"), "normalized", "1m"))
    md = mat.asset_materialization.metadata
    assert md["dagster/row_count"].value == 1440
    assert md["missing_candles"].value == 0 and md["quality_score"].value == 1.0
    assert mat.asset_materialization.partition == "2024-01-02|BTCUSDT"


def test_day_range_equals_day_by_day_and_is_idempotent(tmp_path, binance):
    cfg = crypto_config(tmp_path, binance.url)
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.ephemeral()
    job = pipeline_job_name(cfg.feed("crypto"))

    for d in ("2024-01-01", "2024-01-02", "2024-01-03"):
        assert run(defs, job, instance, d).success
    day_by_day = read(cfg, "enriched", "1h", "2024-01-01", "2024-01-03")

    # The same days as one backfill run (one symbol, a date range).
    assert run(defs, job, instance, "2024-01-01", "2024-01-03").success
    ranged = read(cfg, "enriched", "1h", "2024-01-01", "2024-01-03")
    assert len(ranged) == 72
    cols = [c for c in ranged.columns if c != "fetched_at"]
    pd.testing.assert_frame_equal(ranged[cols], day_by_day[cols])

    # Partition boundaries do not change the numbers: equal to indicators over the whole history.
    norm = read(cfg, "normalized", "1m", "2024-01-01", "2024-01-03")
    whole = compute_indicators(resample(norm, "1h", "crypto"), cfg.indicators)
    for col in ("rsi_14", "sma_20", "atr_14", "bb_upper_20"):
        pd.testing.assert_series_equal(ranged[col], whole[col].reset_index(drop=True), check_names=False)

    # Idempotent: materializing again leaves exactly one copy everywhere.
    assert run(defs, job, instance, "2024-01-01", "2024-01-03").success
    again = read(cfg, "normalized", "1m", "2024-01-01", "2024-01-03")
    assert len(again) == 3 * 1440 and not again.duplicated(["symbol", "ts"]).any()


def test_dataset_after_pipeline(tmp_path, binance):
    cfg = crypto_config(tmp_path, binance.url)
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.ephemeral()
    feed = cfg.feed("crypto")
    assert run(defs, pipeline_job_name(feed), instance, "2024-01-01", "2024-01-03").success
    assert run(defs, dataset_job_name(feed), instance, "2024-01-01", "2024-01-02").success
    examples = read(cfg, "dataset", "1h", "2024-01-01", "2024-01-02")
    # 48 candles; the first 5 lack context; the last of 01-02 has its successor in 01-03.
    assert len(examples) == 48 - 5
    assert examples["ts"].is_unique


def test_bad_rows_are_quarantined_not_dropped(tmp_path, btc_series):
    bad = btc_series.copy()
    i = 1440 + 100  # 2024-01-02 01:40
    bad.loc[i, "high"] = bad.loc[i, "low"] - 1.0  # high below low: a corrupt candle
    with FakeBinance({("BTCUSDT", "1m"): bad}) as fake:
        cfg = crypto_config(tmp_path, fake.url)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        result = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, "2024-01-02")
    assert result.success  # a quarantined row is a warning, not a failed run
    c = checks(result)
    assert c["schema_valid"] and not c["no_ohlc_violations"]
    quarantine = read(cfg, "quarantine", "1m", "2024-01-02", "2024-01-02")
    assert len(quarantine) == 1
    assert quarantine["ts"].iloc[0] == pd.Timestamp("2024-01-02 01:40", tz="UTC")
    assert quarantine["rule"].iloc[0] in ("high_below_low", "high_below_open_close")
    norm = read(cfg, "normalized", "1m", "2024-01-02", "2024-01-02")
    assert len(norm) == 1439
    hourly = read(cfg, "derived", "1h", "2024-01-02", "2024-01-02")
    assert not hourly.loc[hourly["ts"] == pd.Timestamp("2024-01-02 01:00", tz="UTC"), "complete"].iloc[0]
    assert int(hourly["complete"].sum()) == 23


def forex_config(tmp_path, url: str):
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": {"twelvedata": {"base_url": url, "api_key": "td-test-key-0123456789", "max_retries": 0}},
            "feeds": [
                {
                    "name": "forex",
                    "source": "twelvedata",
                    "asset_class": "forex",
                    "timeframe": "1h",
                    "derived_timeframes": ["4h"],
                    "symbols": ["EUR/USD"],
                    "start_date": START,
                    "end_date": "2024-01-05",
                }
            ],
            "runs": {"retry_max": 0},
        },
        env={},
    )


def test_blocking_check_stops_downstream_and_keeps_stored_data(tmp_path):
    values = generate_time_series("2024-01-01 00:00:00", 5 * 24, "1h", volume=False, seed=3)
    with FakeTwelveData({("EUR/USD", "1h"): values}) as fake:
        cfg = forex_config(tmp_path, fake.url)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        job = pipeline_job_name(cfg.feed("forex"))
        assert run(defs, job, instance, "2024-01-02", symbol="EURUSD").success
        good = read(cfg, "normalized", "1h", "2024-01-02", "2024-01-02", {"EURUSD": "EUR/USD"}, "forex")
        assert len(good) == 24

        # The provider now answers with 5-minute bars for the 1h request (ignoring `interval`): 11 of
        # every 12 rows are off the hourly grid and quarantined; the remainder must not be trusted.
        wrong = generate_time_series("2024-01-02 00:00:00", 288, "5m", volume=False, seed=4)
        fake.respond_with({"meta": {"symbol": "EUR/USD", "interval": "1h"}, "values": wrong.to_dict("records"),
                           "status": "ok"}, n=5)
        result = run(defs, job, instance, "2024-01-02", symbol="EURUSD")

    assert not result.success
    assert checks(result)["schema_valid"] is False
    executed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert not any("ohlcv_4h" in s or "enriched" in s for s in executed)  # downstream never ran
    after = read(cfg, "normalized", "1h", "2024-01-02", "2024-01-02", {"EURUSD": "EUR/USD"}, "forex")
    pd.testing.assert_frame_equal(after, good)  # what was stored survives
    derived_mats = [
        e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
        and "ohlcv_4h" in e.asset_key.to_user_string()
    ]
    assert derived_mats == []
    quarantine = read(cfg, "quarantine", "1h", "2024-01-02", "2024-01-02", {"EURUSD": "EUR/USD"}, "forex")
    assert len(quarantine) == 264 and set(quarantine["rule"]) == {"misaligned_ts"}


def test_overlapping_pages_are_deduplicated_and_foreign_rows_kept_out(tmp_path, btc_series):
    with FakeBinance({("BTCUSDT", "1m"): btc_series}) as fake:
        fake.duplicates = 5  # every page repeats the 5 candles before its startTime
        cfg = crypto_config(tmp_path, fake.url)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        result = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, "2024-01-02")
    assert result.success
    feed = cfg.feed("crypto")
    raw_md = instance.get_latest_materialization_event(asset_key(feed, "raw", "1m")).asset_materialization.metadata
    assert raw_md["rows_outside_window"].value == 5  # the day before, sent with the first page
    raw = read(cfg, "raw", "1m", "2024-01-02", "2024-01-02")
    assert len(raw) == 1440 + 5 * 1  # second page repeats 5 candles of this day
    # The normalize report counts the whole run: it is on the run's schema check, not on each partition.
    schema = next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_valid")
    assert schema.metadata["normalize/duplicates_identical"].value == 5
    assert len(read(cfg, "normalized", "1m", "2024-01-02", "2024-01-02")) == 1440


def test_missing_candles_are_reported_per_day_and_make_the_symbol_stale(tmp_path, btc_series):
    day_end = 1704240000000  # 2024-01-03 00:00 UTC
    holed = btc_series[(btc_series["open_time"] < day_end - 3 * 60_000) | (btc_series["open_time"] >= day_end)]
    with FakeBinance({("BTCUSDT", "1m"): holed}) as fake:
        cfg = crypto_config(tmp_path, fake.url)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        result = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, "2024-01-02")
    assert result.success
    c = checks(result)
    assert c["schema_valid"] and not c["complete_against_calendar"] and not c["fresh"]
    md = instance.get_latest_materialization_event(
        asset_key(cfg.feed("crypto"), "normalized", "1m")
    ).asset_materialization.metadata
    assert md["missing_candles"].value == 3 and md["gap_segments"].value == 1
    assert md["missing_by_day"].value == {"2024-01-02": {"BTCUSDT": 3}}
    assert 0 < md["quality_score"].value < 1
