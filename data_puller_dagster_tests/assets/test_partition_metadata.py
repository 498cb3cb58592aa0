"""Issue 14: what the UI shows is true per partition.

One real Dagster run materializes a 5-day range (fake Binance over real HTTP, real Parquet + DuckDB);
each day's materialization of every layer must carry that day's own figures, computed here from the data
the fake server sent for that day, not the run's totals copied onto every day.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.automation.instance_reads import missing_for
from data_puller_dagster.automation.jobs import dataset_job_name, pipeline_job_name
from data_puller_dagster.config import parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.assets.test_pipeline import START, crypto_config, run
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

DAYS = [f"2024-01-0{i}" for i in range(1, 6)]
H = 3_600_000
T0 = int(pd.Timestamp(START, tz="UTC").value // 1_000_000)
HOLES = {T0 + (24 + 5) * H, T0 + (24 + 6) * H, T0 + (24 + 20) * H}  # day 2: two gap segments, 3 candles
BROKEN = T0 + (3 * 24 + 10) * H  # day 4: one candle with high < low (quarantined)


@pytest.fixture(scope="module")
def five_days(tmp_path_factory):
    """One pipeline run over 2024-01-01 .. 2024-01-05 for BTCUSDT at 1h; (cfg, instance, klines served)."""
    tmp = tmp_path_factory.mktemp("pm")
    klines = generate_klines(START, 5 * 24, "1h", seed=3)
    klines = klines[~klines["open_time"].isin(HOLES)].reset_index(drop=True)
    bad = klines["open_time"] == BROKEN
    klines.loc[bad, ["high", "low"]] = klines.loc[bad, ["low", "high"]].to_numpy() * [0.99, 1.01]
    with FakeBinance({("BTCUSDT", "1h"): klines}) as fake:
        cfg = crypto_config(
            tmp, fake.url, timeframe="1h", derived_timeframes=["4h"], enrich_timeframes=["4h"],
            dataset_timeframe="4h", end_date="2024-01-05",
        )  # fmt: skip
        instance = dg.DagsterInstance.ephemeral()
        defs = build_definitions(cfg)
        result = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, DAYS[0], DAYS[-1])
        assert result.success
        assert run(defs, dataset_job_name(cfg.feed("crypto")), instance, DAYS[0], DAYS[-1]).success
    return cfg, instance, result, klines


def _by_partition(instance, key: dg.AssetKey) -> dict[str, dict]:
    recs = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100, ascending=True).records
    return {r.asset_materialization.partition: r.asset_materialization.metadata for r in recs}


def _served(klines: pd.DataFrame, day: str) -> pd.DataFrame:
    ts = pd.to_datetime(klines["open_time"], unit="ms", utc=True)
    return klines[ts.dt.strftime("%Y-%m-%d") == day]


def test_each_normalized_day_carries_its_own_figures(five_days):
    cfg, instance, _, klines = five_days
    mds = _by_partition(instance, asset_key(cfg.feed("crypto"), "normalized", "1h"))
    assert sorted(mds) == [f"{d}|BTCUSDT" for d in DAYS]
    expect = {d: {"missing": 0, "segments": 0, "quarantined": 0} for d in DAYS}
    expect["2024-01-02"] = {"missing": 3, "segments": 2, "quarantined": 0}
    expect["2024-01-04"] = {"missing": 1, "segments": 1, "quarantined": 1}  # the broken candle is a gap too
    for day in DAYS:
        md = mds[f"{day}|BTCUSDT"]
        served = _served(klines, day)
        stored = len(served) - expect[day]["quarantined"]
        assert md["dagster/row_count"].value == stored, day
        assert md["missing_candles"].value == expect[day]["missing"], day
        assert md["gap_segments"].value == expect[day]["segments"], day
        assert md["quarantined_rows"].value == expect[day]["quarantined"], day
        assert md["rows_in"].value == len(served), day
        first = pd.Timestamp(served["open_time"].min(), unit="ms", tz="UTC")
        last = pd.Timestamp(served["open_time"].max(), unit="ms", tz="UTC")
        if day == "2024-01-04":
            last = max(t for t in pd.to_datetime(served["open_time"], unit="ms", utc=True) if t.value // 10**6 != BROKEN)
        assert md["first_candle"].value == first.isoformat(), day
        assert md["last_candle"].value == last.isoformat(), day
        assert md["missing_by_day"].value == {day: {"BTCUSDT": expect[day]["missing"]}}, day
        assert missing_for(dict(md), f"{day}|BTCUSDT") == expect[day]["missing"]
        score = md["quality_score"].value
        assert score == (1.0 if expect[day]["missing"] == 0 else pytest.approx(stored / 24 * (1 - expect[day]["quarantined"] / len(served)), abs=1e-4))
        assert len(repr(score)) <= 7, f"{day}: quality score printed as {score!r}"  # 4 significant digits


def test_each_day_of_every_other_layer_carries_its_own_rows(five_days):
    cfg, instance, _, klines = five_days
    feed = cfg.feed("crypto")
    raw = _by_partition(instance, asset_key(feed, "raw", "1h"))
    quarantine = _by_partition(instance, asset_key(feed, "quarantine", "1h"))
    derived = _by_partition(instance, asset_key(feed, "derived", "4h"))
    enriched = _by_partition(instance, asset_key(feed, "enriched", "4h"))
    dataset = _by_partition(instance, asset_key(feed, "dataset", "4h"))
    for day in DAYS:
        k = f"{day}|BTCUSDT"
        assert raw[k]["dagster/row_count"].value == len(_served(klines, day)), day
        assert quarantine[k]["dagster/row_count"].value == (1 if day == "2024-01-04" else 0), day
        assert derived[k]["dagster/row_count"].value == 6, day
        assert derived[k]["first_candle"].value == pd.Timestamp(day, tz="UTC").isoformat()
        assert derived[k]["incomplete_bars"].value == {"2024-01-02": 2, "2024-01-04": 1}.get(day, 0), day
        assert enriched[k]["dagster/row_count"].value == 6, day
        assert dataset[k]["dagster/row_count"].value <= 6, day
    # The dataset's last day has no next-day target for its last candle: fewer examples than day 1.
    assert dataset[f"{DAYS[-1]}|BTCUSDT"]["dagster/row_count"].value < 6


def test_completeness_check_names_the_days_and_symbols_with_gaps(five_days):
    _, _, result, _ = five_days
    ev = next(e for e in result.get_asset_check_evaluations() if e.check_name == "complete_against_calendar")
    assert not ev.passed
    table = ev.metadata["missing_by_partition"].value
    rows = sorted((r.data["day"], r.data["symbol"], r.data["missing"]) for r in table.records)
    assert rows == [("2024-01-02", "BTCUSDT", 3), ("2024-01-04", "BTCUSDT", 1)]
    assert len(repr(ev.metadata["completeness"].value)) <= 7


def test_catalog_names_where_each_layer_lives(tmp_path):
    """Definition metadata from the routes: DuckDB/Postgres table, Parquet root, storage kinds, column
    descriptions, and tags to filter the catalog by layer."""
    cfg = parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data"), "postgres_url": "postgresql://postgres@127.0.0.1:5432/test"},
            "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
                       "derived_timeframes": ["4h"], "enrich_timeframes": ["4h"], "symbols": ["BTCUSDT"],
                       "start_date": START, "end_date": "2024-01-05"}],
            "routes": [
                {"id": "lake", "destinations": ["parquet", "duckdb"]},
                {"id": "pg", "match": {"layer": ["enriched"]}, "destinations": ["postgres"]},
            ],
            "dataset": {"enabled": False},
        },
        env={},
    )  # fmt: skip
    specs = {s.key: s for s in build_definitions(cfg).resolve_all_asset_specs()}
    feed = cfg.feed("crypto")
    norm = specs[asset_key(feed, "normalized", "1h")]
    assert norm.metadata["dagster/table_name"] == "crypto.normalized_ohlcv_1h"
    assert norm.metadata["dagster/uri"] == str(tmp_path / "data" / "parquet" / "crypto" / "normalized_ohlcv_1h")
    assert {"parquet", "duckdb"} <= norm.kinds and "postgres" not in norm.kinds
    assert norm.tags["layer"] == "normalized" and norm.tags["timeframe"] == "1h" and norm.tags["feed"] == "crypto"
    cols = {c.name: c for c in norm.metadata["dagster/column_schema"].columns}
    assert "open time" in cols["ts"].description and cols["is_final"].description
    enriched = specs[asset_key(feed, "enriched", "4h")]
    assert {"parquet", "duckdb", "postgres"} <= enriched.kinds
    assert enriched.metadata["data_puller/tables"].data == {
        "duckdb": "crypto.enriched_ohlcv_4h", "postgres": "crypto.enriched_ohlcv_4h"
    }
    assert {s.tags.get("layer") for s in specs.values()} >= {"raw", "normalized", "quarantine", "derived", "enriched"}
