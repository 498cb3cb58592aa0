"""The live table in Dagster: the external asset, the `<feed>__live_progress` sensor (real Parquet/DuckDB
stores, real SQLite instance, evaluated through the Definitions) and the live_matches_batch check of a
real normalized run (fake Binance over HTTP)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.test_utils import freeze_time

from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.config import parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

DAY = date(2024, 1, 2)
SENSOR = "crypto__live_progress"


def config(tmp_path, binance_url: str = "http://127.0.0.1:9", **extra):
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": {"binance": {"base_url": binance_url, "use_archive": False, "max_retries": 1}},
            "feeds": [{
                "name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                "symbols": ["BTCUSDT", "ETHUSDT"], "start_date": "2024-01-01", "end_date": "2024-01-04",
            }],
            "runs": {"retry_max": 0},
            "automation": {"schedule": {"enabled": False}, "gap_sensor": {"enabled": False}},
            **extra,
        },
        env={},
    )  # fmt: skip


def live_rows(symbol: str, klines: pd.DataFrame) -> pd.DataFrame:
    """Canonical closed 1m candles from fake-Binance klines (what the stream stores), column-wise."""
    return pd.DataFrame({
        "ts": pd.to_datetime(klines["open_time"], unit="ms", utc=True).astype("datetime64[ns, UTC]"),
        "symbol": pd.array([symbol] * len(klines), dtype="string"),
        "asset_class": pd.array(["crypto"] * len(klines), dtype="string"),
        "timeframe": pd.array(["1m"] * len(klines), dtype="string"),
        "source": pd.array(["binance"] * len(klines), dtype="string"),
        **{c: klines[c].to_numpy("float64") for c in ("open", "high", "low", "close", "volume")},
        "trades": pd.array(klines["trades"].to_numpy(), dtype="Int64"),
        "quote_volume": klines["quote_volume"].to_numpy("float64"),
        "fetched_at": pd.to_datetime(klines["close_time"] + 1, unit="ms", utc=True).astype("datetime64[ns, UTC]"),
        "is_final": np.ones(len(klines), dtype=bool),
    })  # fmt: skip


def write_live(cfg, df: pd.DataFrame, symbol: str, day: date = DAY) -> None:
    part = PartitionSlice(symbols={symbol: symbol}, start=day, end=day)
    Router(cfg).write(table_ref(cfg.feed("crypto"), "live", "1m"), df, part)


def tick(defs, instance, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as ctx:
        result = defs.get_sensor_def(SENSOR)(ctx)
        assert isinstance(result, dg.SensorResult)
        return result, result.cursor


def test_live_asset_and_sensor_definitions(tmp_path):
    cfg = config(tmp_path)
    defs = build_definitions(cfg)
    spec = next(
        s for s in defs.resolve_all_asset_specs() if s.key == asset_key(cfg.feed("crypto"), "live", "1m")
    )
    assert (
        spec.group_name == "crypto" and spec.tags["layer"] == "live" and {"parquet", "duckdb"} <= spec.kinds
    )
    assert "data-puller stream" in spec.description
    assert defs.get_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.STOPPED
    norm = defs.get_assets_def(asset_key(cfg.feed("crypto"), "normalized", "1m"))
    assert "live_matches_batch" in {c.name for c in norm.check_specs}

    on = build_definitions(
        config(tmp_path, automation={"live_sensor": {"enabled": True, "interval_seconds": 30}})
    )
    assert on.get_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.RUNNING
    assert on.get_sensor_def(SENSOR).minimum_interval_seconds == 30

    # Live table not routed to the primary store: no asset, no sensor, no check.
    batch_only = build_definitions(
        config(tmp_path, routes=[{"id": "batch", "match": {"realtime": False}, "destinations": ["parquet"]}])
    )
    assert SENSOR not in {s.name for s in batch_only.sensors}
    norm = batch_only.get_assets_def(asset_key(cfg.feed("crypto"), "normalized", "1m"))
    assert "live_matches_batch" not in {c.name for c in norm.check_specs}


def test_sensor_observes_todays_live_rows_once(tmp_path, instance):
    cfg = config(tmp_path)
    defs = build_definitions(cfg)
    with freeze_time(datetime(2024, 1, 2, 12, 0, 30, tzinfo=UTC)):
        empty, _ = tick(defs, instance)  # no live table yet
        assert not empty.asset_events and empty.skip_reason
    btc, eth = generate_klines("2024-01-02", 721, seed=1), generate_klines("2024-01-02", 600, seed=2)
    write_live(cfg, live_rows("BTCUSDT", btc.iloc[:720]), "BTCUSDT")  # 00:00 .. 11:59
    write_live(cfg, live_rows("ETHUSDT", eth), "ETHUSDT")  # 00:00 .. 09:59
    write_live(cfg, live_rows("BTCUSDT", generate_klines("2024-01-01", 60)), "BTCUSDT", date(2024, 1, 1))

    with freeze_time(datetime(2024, 1, 2, 12, 0, 30, tzinfo=UTC)):
        result, cursor = tick(defs, instance)
        [obs] = result.asset_events
        assert obs.asset_key == asset_key(cfg.feed("crypto"), "live", "1m")
        md = {k: v.value for k, v in obs.metadata.items()}
        assert md["rows_today"] == {"BTCUSDT": 720, "ETHUSDT": 600}  # yesterday's rows are not today's
        assert md["last_candle_ts"] == {
            "BTCUSDT": "2024-01-02T11:59:00+00:00",
            "ETHUSDT": "2024-01-02T09:59:00+00:00",
        }
        assert md["lag_seconds"] == {"BTCUSDT": 30.0, "ETHUSDT": 7230.0}
        assert md["max_lag_seconds"] == 7230.0
        assert md["last_updated"] == datetime(2024, 1, 2, 12, tzinfo=UTC).timestamp()

        again, cursor2 = tick(defs, instance, cursor)  # nothing new: no observation
        assert not again.asset_events and again.skip_reason and cursor2 == cursor

        write_live(cfg, live_rows("BTCUSDT", btc), "BTCUSDT")  # the stream's next flush: one more candle
        third, _ = tick(defs, instance, cursor)
        assert third.asset_events[0].metadata["rows_today"].value == {"BTCUSDT": 721, "ETHUSDT": 600}


@pytest.fixture
def binance():
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-01-01", 4 * 1440, "1m", seed=7)}) as fake:
        yield fake


def normalize_run(defs, cfg, instance, day: str = "2024-01-02"):
    job = defs.resolve_job_def(pipeline_job_name(cfg.feed("crypto")))
    return job.execute_in_process(instance=instance, partition_key=f"{day}|BTCUSDT", raise_on_error=False)


def live_check(result) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "live_matches_batch")


def test_live_vs_batch_check_on_normalized(tmp_path, instance, binance):
    cfg = config(tmp_path, binance.url)
    defs = build_definitions(cfg)
    first = normalize_run(defs, cfg, instance)
    assert first.success
    ev = live_check(first)  # no live rows yet: nothing compared, passes
    assert ev.passed and ev.metadata["live_vs_batch"].value["candles_compared"] == 0

    part = PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=DAY, end=DAY)
    norm_table = table_ref(cfg.feed("crypto"), "normalized", "1m")
    batch = Router(cfg).read(norm_table, part).sort_values("ts").reset_index(drop=True)
    live = batch.iloc[: 1440 - 10].copy()  # the stream missed the day's last 10 minutes
    live.loc[100, "close"] += 1.5  # and saw one candle's close differently
    write_live(cfg, live, "BTCUSDT")

    second = normalize_run(defs, cfg, instance)
    assert second.success  # non-blocking: the batch is stored either way
    ev = live_check(second)
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    figures = ev.metadata["live_vs_batch"].value
    assert figures["candles_compared"] == 1430 and figures["mismatches"] == 1
    assert figures["max_abs_close_diff"] == pytest.approx(1.5) and figures["max_abs_volume_diff"] == 0.0
    assert figures["batch_only_candles"] == 10 and figures["live_only_candles"] == 0
    [bad] = ev.metadata["mismatch_sample"].value
    assert bad["close_batch"] == batch.loc[100, "close"] and pd.Timestamp(bad["ts"]) == batch.loc[100, "ts"]
    stored = Router(cfg).read(norm_table, part).sort_values("ts").reset_index(drop=True)
    assert (stored["close"].to_numpy() == batch["close"].to_numpy()).all()  # the batch stays the authority
