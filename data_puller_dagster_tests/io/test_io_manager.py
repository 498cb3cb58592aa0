"""The router IO manager inside real Dagster runs: a tiny date x symbol asset materialized for one
partition and for a date range of one symbol, and a downstream asset reading a 3-day window of it
through load_input (TimeWindowPartitionMapping offset on date, identity on symbol)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from data_puller_dagster.assets.naming import table_metadata, table_ref
from data_puller_dagster.assets.partitions import context_window, feed_partitions, window_mapping
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.io.io_manager import IOManagerContractError, build_io_manager, slice_from_keys
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.io.conftest import candles, sort_rows


def make_cfg(tmp_path: Path) -> AppConfig:
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path), "primary": "duckdb"},
            "feeds": [
                {
                    "name": "forex",
                    "source": "twelvedata",
                    "asset_class": "forex",
                    "timeframe": "1h",
                    "symbols": ["EUR/USD", "GBP/USD"],
                    "start_date": "2024-01-01",
                    "end_date": "2024-01-31",
                }
            ],
            "routes": [{"id": "warehouse", "destinations": ["parquet", "duckdb"]}],
        },
        env={},
    )


def build(cfg: AppConfig) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition, dict]:
    feed = cfg.feed("forex")
    parts = feed_partitions(feed)
    seen: dict = {}

    @dg.asset(
        key=["forex", "normalized_ohlcv_1h"],
        partitions_def=parts,
        metadata=table_metadata(feed, "normalized", "1h"),
    )
    def normalized(context) -> pd.DataFrame:
        w = context_window(context, cfg, feed)
        frames = [candles(feed.symbol_keys[k], w.start, w.days, seed_offset=1) for k in w.keys]
        return pd.concat(frames, ignore_index=True)

    @dg.asset(
        key=["forex", "enriched_ohlcv_1h"],
        partitions_def=parts,
        metadata=table_metadata(feed, "enriched", "1h"),
        ins={"src": dg.AssetIn(key=["forex", "normalized_ohlcv_1h"], partition_mapping=window_mapping(2))},
    )
    def enriched(context, src: pd.DataFrame) -> pd.DataFrame:
        w = context_window(context, cfg, feed)
        seen["input"] = src
        out = src[(src["ts"] >= pd.Timestamp(w.start_ts)) & (src["ts"] < pd.Timestamp(w.end_ts))].copy()
        out["rows_in_window"] = pd.Series(len(src), index=out.index, dtype="Int64")
        return out.reset_index(drop=True)

    return normalized, enriched, seen


def test_single_partition_range_and_windowed_input(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    normalized, enriched, seen = build(cfg)
    resources = {"io_manager": build_io_manager(cfg)}
    router = Router(cfg)
    norm_t, enr_t = (
        table_ref(cfg.feed("forex"), "normalized", "1h"),
        table_ref(cfg.feed("forex"), "enriched", "1h"),
    )

    # 1. one partition
    res = dg.materialize([normalized], partition_key="2024-01-02|GBPUSD", resources=resources)
    assert res.success
    mat = res.asset_materializations_for_node("forex__normalized_ohlcv_1h")[0]
    assert mat.metadata["slice"].value == "GBPUSD x 2024-01-02"
    want_gbp = candles("GBP/USD", date(2024, 1, 2), 1, seed_offset=1)
    assert mat.metadata["routed_rows"].value == {
        "warehouse/parquet": len(want_gbp),
        "warehouse/duckdb": len(want_gbp),
    }

    # 2. a date range for one symbol in one run (what backfills launch)
    res = dg.materialize(
        [normalized],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": "2024-01-01|EURUSD",
            "dagster/asset_partition_range_end": "2024-01-05|EURUSD",
        },
    )
    assert res.success
    want_eur = candles("EUR/USD", date(2024, 1, 1), 5, seed_offset=1)
    for dest in ("parquet", "duckdb"):
        got = router.destination(dest).read(
            norm_t, PartitionSlice({"EURUSD": "EUR/USD"}, date(2024, 1, 1), date(2024, 1, 5))
        )
        pd.testing.assert_frame_equal(sort_rows(got), sort_rows(want_eur), check_exact=True)

    # 3. downstream partition 2024-01-05 reads upstream days 01-03..01-05 in one load_input
    res = dg.materialize(
        [normalized, enriched], partition_key="2024-01-05|EURUSD", resources=resources, selection=[enriched]
    )
    assert res.success
    window = want_eur[want_eur["ts"] >= pd.Timestamp("2024-01-03", tz="UTC")]
    pd.testing.assert_frame_equal(sort_rows(seen["input"]), sort_rows(window), check_exact=True)
    stored = router.read(enr_t, PartitionSlice({"EURUSD": "EUR/USD"}, date(2024, 1, 5), date(2024, 1, 5)))
    day5 = window[window["ts"] >= pd.Timestamp("2024-01-05", tz="UTC")]
    assert len(stored) == len(day5) > 0
    assert (stored["rows_in_window"] == len(window)).all()


def test_slice_from_keys_rejects_sparse_runs_and_unknown_symbols(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    part = slice_from_keys(
        cfg,
        "forex",
        ["2024-01-02|EURUSD", "2024-01-03|EURUSD", "2024-01-02|GBPUSD", "2024-01-03|GBPUSD"],
        "x",
    )
    assert part == PartitionSlice(
        {"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}, date(2024, 1, 2), date(2024, 1, 3)
    )
    with pytest.raises(IOManagerContractError, match="do not form a full symbols x days range"):
        slice_from_keys(cfg, "forex", ["2024-01-02|EURUSD", "2024-01-04|EURUSD"], "x")
    with pytest.raises(IOManagerContractError, match=r"\['USDJPY'\] are not symbols of feed 'forex'"):
        slice_from_keys(cfg, "forex", ["2024-01-02|USDJPY"], "x")
    assert slice_from_keys(
        cfg, "forex", ["2024-01-02|EURUSD", "2024-01-04|EURUSD"], "x", exact=False
    ).end == date(2024, 1, 2) + timedelta(days=2)
