"""Each (symbol, day) partition is accepted or rejected on its own rows, through real Dagster runs against
local fake providers (real HTTP, real archive zips) and the real stores.

- A provider that answers a 1m request with 5m bars (REST, archive, Twelve Data meta, or bars that only
  their spacing gives away) fails the blocking check; the stored day keeps its previous version and
  nothing downstream is rebuilt from the wrong bars.
- validation.max_quarantined_fraction applies per day: a broken day inside a range run is not stored, the
  good days of the same run are, and the broken day is reported (check metadata, missing_by_day) so the
  gap sensor refetches it.
"""

from __future__ import annotations

from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.config import parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.assets.test_pipeline import checks, crypto_config, read, run
from data_puller_dagster_tests.fakes.binance import FakeArchive, FakeBinance, generate_klines, write_archive
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData, generate_time_series

DAY = "2024-01-02"
DAY_MS = 1704153600000  # 2024-01-02 00:00 UTC


def _check(result, name: str):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def _rejected(result) -> list[dict]:
    table = _check(result, "schema_valid").metadata["rejected_partitions"]
    return [dict(r.data) for r in table.records]


def _assert_kept(cfg, result, before: pd.DataFrame, hourly_before: pd.DataFrame, seen: str, asked: str):
    assert not result.success
    assert checks(result)["schema_valid"] is False
    [rej] = _rejected(result)
    assert (rej["day"], rej["symbol"], rej["reason"]) == (DAY, "BTCUSDT", "wrong_interval")
    assert f"are {seen} candles" in rej["detail"] or f"on the {seen} grid" in rej["detail"]
    assert f"asked for {asked}" in rej["detail"] or f"to a {asked} request" in rej["detail"]
    after = read(cfg, "normalized", "1m", DAY, DAY)
    pd.testing.assert_frame_equal(after, before)  # the stored 1,440-candle day stays as it was
    pd.testing.assert_frame_equal(read(cfg, "derived", "1h", DAY, DAY), hourly_before)
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert not any("ohlcv_1h" in s or "enriched" in s for s in started)  # nothing rebuilt from 5m bars


def _store_good_day(cfg):
    """Materialize DAY through the pipeline; return (defs, instance, job, stored normalized, stored 1h)."""
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.ephemeral()
    job = pipeline_job_name(cfg.feed("crypto"))
    assert run(defs, job, instance, DAY).success
    before = read(cfg, "normalized", "1m", DAY, DAY)
    assert len(before) == 1440
    return defs, instance, job, before, read(cfg, "derived", "1h", DAY, DAY)


def test_rest_answering_5m_bars_to_a_1m_request_keeps_the_stored_day(tmp_path):
    good = generate_klines("2024-01-01", 3 * 1440, "1m", seed=11)
    with FakeBinance({("BTCUSDT", "1m"): good}) as fake:
        cfg = crypto_config(tmp_path, fake.url)
        defs, instance, job, before, hourly = _store_good_day(cfg)

        # Misconfigured proxy: the 1m request is answered with real-looking 5m klines (on the 1m grid).
        fake.add("BTCUSDT", "1m", generate_klines("2024-01-01", 3 * 288, "5m", seed=12))
        result = run(defs, job, instance, DAY)
    _assert_kept(cfg, result, before, hourly, "5m", "1m")
    quarantine = read(cfg, "quarantine", "1m", DAY, DAY)
    assert len(quarantine) == 288 and set(quarantine["rule"]) == {"interval_mismatch"}


def test_archive_file_of_another_interval_keeps_the_stored_day(tmp_path):
    good = generate_klines("2024-01-01", 3 * 1440, "1m", seed=13)
    root = tmp_path / "archive"
    write_archive(root, good, "BTCUSDT", "1m", micros=True)
    with FakeArchive(root) as archive, FakeBinance({("BTCUSDT", "1m"): good}) as rest:
        cfg = crypto_config(tmp_path, rest.url)
        src = cfg.sources.binance.model_copy(update={"use_archive": True, "archive_url": archive.url})
        cfg = cfg.model_copy(update={"sources": cfg.sources.model_copy(update={"binance": src})})
        defs, instance, job, before, hourly = _store_good_day(cfg)
        assert rest.klines_requests == 0  # served from the archive

        # The wrong file is published under the 1m name (valid checksum): 5m klines in µs, 2025 format.
        write_archive(root, generate_klines("2024-01-01", 3 * 288, "5m", seed=14), "BTCUSDT", "1m", micros=True)
        result = run(defs, job, instance, DAY)
    _assert_kept(cfg, result, before, hourly, "5m", "1m")


def test_bars_whose_spacing_betrays_another_interval_are_rejected(tmp_path):
    """A proxy that rewrites close_time to look like 1m: only the grid spacing is left as evidence."""
    good = generate_klines("2024-01-01", 3 * 1440, "1m", seed=15)
    with FakeBinance({("BTCUSDT", "1m"): good}) as fake:
        cfg = crypto_config(tmp_path, fake.url)
        defs, instance, job, before, hourly = _store_good_day(cfg)

        disguised = generate_klines("2024-01-01", 3 * 288, "5m", seed=16)
        disguised["close_time"] = disguised["open_time"] + 60_000 - 1
        fake.add("BTCUSDT", "1m", disguised)
        result = run(defs, job, instance, DAY)
    _assert_kept(cfg, result, before, hourly, "5m", "1m")


def test_twelvedata_meta_interval_of_another_interval_is_rejected(tmp_path):
    values = generate_time_series("2024-01-01 00:00:00", 5 * 24, "1h", volume=False, seed=5)
    with FakeTwelveData({("EUR/USD", "1h"): values}) as fake:
        cfg = parse_config(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "sources": {"twelvedata": {"base_url": fake.url, "api_key": "td-test-key-0123456789",
                                           "max_retries": 0}},
                "feeds": [{"name": "forex", "source": "twelvedata", "asset_class": "forex", "timeframe": "1h",
                           "symbols": ["EUR/USD"], "start_date": "2024-01-01", "end_date": "2024-01-05"}],
                "runs": {"retry_max": 0},
            },
            env={},
        )  # fmt: skip
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        job = pipeline_job_name(cfg.feed("forex"))
        assert run(defs, job, instance, DAY, symbol="EURUSD").success
        sym = {"EURUSD": "EUR/USD"}
        before = read(cfg, "normalized", "1h", DAY, DAY, sym, "forex")
        assert len(before) == 24
        # 4h bars answered to the 1h request; they sit on the hourly grid, meta tells the truth.
        wrong = generate_time_series("2024-01-02 00:00:00", 6, "4h", volume=False, seed=6)
        fake.respond_with({"meta": {"symbol": "EUR/USD", "interval": "4h"}, "values": wrong.to_dict("records"),
                           "status": "ok"}, n=5)  # fmt: skip
        result = run(defs, job, instance, DAY, symbol="EURUSD")
    assert not result.success and checks(result)["schema_valid"] is False
    [rej] = _rejected(result)
    assert rej["reason"] == "wrong_interval" and "are 4h candles" in rej["detail"] and "asked for 1h" in rej["detail"]
    pd.testing.assert_frame_equal(read(cfg, "normalized", "1h", DAY, DAY, sym, "forex"), before)
    raw = read(cfg, "raw", "1h", DAY, DAY, sym, "forex")
    assert set(raw["interval"]) == {"4h"}  # the evidence is kept in the raw layer


@pytest.fixture
def broken_middle_day():
    """Three days of 1m; in the middle one every row but 24 has high below low."""
    frame = generate_klines("2024-01-01", 3 * 1440, "1m", seed=21)
    day2 = (frame["open_time"] >= DAY_MS) & (frame["open_time"] < DAY_MS + 86_400_000)
    broken = day2 & (np.arange(len(frame)) % 60 != 0)
    frame.loc[broken, "high"] = frame.loc[broken, "low"] - 1.0
    return frame


def test_quarantine_limit_is_per_day_inside_a_range_run(tmp_path, broken_middle_day):
    first = generate_klines("2024-01-01", 3 * 1440, "1m", seed=20)
    with FakeBinance({("BTCUSDT", "1m"): first}) as fake:
        cfg = crypto_config(tmp_path, fake.url)
        cfg = cfg.model_copy(
            update={"validation": cfg.validation.model_copy(update={"max_quarantined_fraction": 0.5})}
        )
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        job = pipeline_job_name(cfg.feed("crypto"))
        assert run(defs, job, instance, DAY).success
        stored_day2 = read(cfg, "normalized", "1m", DAY, DAY)

        fake.add("BTCUSDT", "1m", broken_middle_day)
        result = run(defs, job, instance, "2024-01-01", "2024-01-03")

    assert not result.success and checks(result)["schema_valid"] is False
    [rej] = _rejected(result)
    assert (rej["day"], rej["reason"], rej["rows_in"], rej["quarantined"]) == (DAY, "quarantine_limit", 1440, 1416)
    assert "validation.max_quarantined_fraction" in rej["detail"]

    norm = read(cfg, "normalized", "1m", "2024-01-01", "2024-01-03")
    days = norm["ts"].dt.strftime("%Y-%m-%d")
    # The good days of the same run are stored (new values), the broken one keeps its previous version.
    new = broken_middle_day.set_index("open_time")["close"]
    for d in ("2024-01-01", "2024-01-03"):
        got = norm[days == d]
        assert len(got) == 1440
        ms = got["ts"].astype("int64") // 1_000_000
        assert (got["close"].to_numpy() == new.loc[ms.to_numpy()].to_numpy()).all()
    pd.testing.assert_frame_equal(norm[days == DAY].reset_index(drop=True), stored_day2)

    # The broken day's rows are in quarantine; the sensor is told the day is still missing.
    quarantine = read(cfg, "quarantine", "1m", DAY, DAY)
    assert len(quarantine) == 1416
    # Each day's materialization carries its own figures: the rejected day its reason and counts.
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(cfg.feed("crypto"), "normalized", "1m")), limit=10, ascending=True
    ).records
    by_part = {r.asset_materialization.partition: r.asset_materialization.metadata for r in recs}
    md = by_part[f"{DAY}|BTCUSDT"]
    assert md["missing_by_day"].value == {DAY: {"BTCUSDT": 1440}}
    assert md["kept_stored_partitions"].value == [f"{DAY}|BTCUSDT"]
    assert md["rows_in"].value == 1440 and md["quarantined_rows"].value == 1416
    assert "stored version stays" in md["rejected"].value
    for good in ("2024-01-01", "2024-01-03"):
        assert by_part[f"{good}|BTCUSDT"]["missing_by_day"].value == {good: {"BTCUSDT": 0}}
        assert by_part[f"{good}|BTCUSDT"]["dagster/row_count"].value == 1440
        assert "rejected" not in by_part[f"{good}|BTCUSDT"]


def test_a_fully_broken_day_alone_is_not_stored(tmp_path, broken_middle_day):
    with FakeBinance({("BTCUSDT", "1m"): broken_middle_day}) as fake:
        cfg = crypto_config(tmp_path, fake.url)
        defs = build_definitions(cfg)
        instance = dg.DagsterInstance.ephemeral()
        result = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, DAY)
    assert not result.success and checks(result)["schema_valid"] is False
    feed = cfg.feed("crypto")
    part = PartitionSlice({"BTCUSDT": "BTCUSDT"}, date(2024, 1, 2), date(2024, 1, 2))
    assert len(Router(cfg).read(table_ref(feed, "normalized", "1m"), part)) == 0
    assert len(read(cfg, "quarantine", "1m", DAY, DAY)) == 1416
