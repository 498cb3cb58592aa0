"""Named destination instances with options, the short form, route transforms, and the errors a user
gets for unknown types and bad options (through parse_config, the path every door takes)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.config import ConfigError, parse_config
from data_puller_dagster.io.errors import RoutingError
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows

NORM = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
PART = PartitionSlice({"EURUSD": "EUR/USD"}, date(2024, 1, 1), date(2024, 1, 3))
FEED = {
    "name": "forex", "source": "twelvedata", "asset_class": "forex", "timeframe": "1h",
    "symbols": ["EUR/USD"], "start_date": "2024-01-01",
}  # fmt: skip


def config(tmp_path: Path, **top):
    return parse_config({"storage": {"data_dir": str(tmp_path)}, "feeds": [FEED], **top}, env={})


def problems(tmp_path: Path, **top) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config(tmp_path, **top)
    return e.value.problems


def test_two_instances_of_one_type_keep_their_own_options(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        destinations={"lake": {"type": "parquet"}, "archive": {"type": "parquet", "root": str(tmp_path / "cold")}},
        storage={"data_dir": str(tmp_path), "primary": "lake"},
        routes=[{"id": "main", "destinations": ["lake", "duckdb"]}, {"id": "cold", "destinations": ["archive"]}],
    )
    router = Router(cfg)
    df = candles("EUR/USD", PART.start, PART.days)
    summary = router.write(NORM, df, PART)
    assert summary.rows_by_destination == {"main/lake": len(df), "main/duckdb": len(df), "cold/archive": len(df)}
    assert router.destination("lake").root == str(tmp_path / "parquet")  # default: storage's location
    assert router.destination("archive").root == str(tmp_path / "cold")
    assert list((tmp_path / "cold" / "forex" / "normalized_ohlcv_1h").rglob("*.parquet"))
    for name in ("lake", "archive", "duckdb"):
        pd.testing.assert_frame_equal(sort_rows(router.store(name).read(NORM, PART)), sort_rows(df))
    assert sort_rows(router.read(NORM, PART)).equals(sort_rows(df))  # primary: the instance "lake"


def test_short_form_still_means_the_types_with_storage_locations(tmp_path: Path) -> None:
    cfg = config(tmp_path, routes=[{"id": "w", "destinations": ["parquet", "duckdb"]}])
    router = Router(cfg)
    assert router.destination("duckdb").path == tmp_path / "warehouse.duckdb"
    assert cfg.destination_type("duckdb") == "duckdb"


def test_unknown_types_and_bad_options_name_the_path_and_what_is_allowed(tmp_path: Path) -> None:
    got = problems(tmp_path, destinations={"ts": {"type": "influx"}}, routes=[{"id": "r", "destinations": ["ts"]}])
    assert got[0].startswith("destinations.ts.type: 'influx' is not an installed destination type; installed: ")
    assert "influxdb" in got[0] and "parquet" in got[0]
    got = problems(
        tmp_path,
        destinations={"wh": {"type": "duckdb", "lock_timeout_seconds": -1, "colour": "red"}},
        routes=[{"id": "r", "destinations": ["parquet", "wh"]}],
    )
    assert "destinations.wh.lock_timeout_seconds: -1 is invalid: Input should be greater than 0" in got
    assert "destinations.wh.colour: unknown key (check its spelling); allowed keys here: path, lock_timeout_seconds" in got
    got = problems(tmp_path, routes=[{"id": "r", "destinations": ["parquet", "warehouse"]}])
    assert got == [
        "routes[0].destinations[1]: 'warehouse' is neither a destination declared under destinations: (none) "
        "nor an installed destination type (" + ", ".join(sorted(_installed())) + ")"
    ]
    got = problems(tmp_path, destinations={"Bad Name": {"type": "csv"}})
    assert any("not a valid destination name" in p for p in got), got


def test_postgres_secret_options_are_never_printed(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        destinations={"pg": {"type": "postgres", "url": ["postgresql://u:hunter2@h/db"]}},
        routes=[{"id": "r", "destinations": ["parquet", "pg"]}],
    )
    assert any(p.startswith("destinations.pg.url: (secret, not shown)") for p in got), got
    assert not any("hunter2" in p for p in got)


def test_transforms_reshape_a_mirror_route_but_never_the_primary_route(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        destinations={"bt": {"type": "csv", "dir": str(tmp_path / "backtest")}},
        routes=[
            {"id": "main", "destinations": ["parquet"]},
            {"id": "backtest", "destinations": ["bt"], "transform": "backtest_ohlcv"},
            {"id": "light", "destinations": ["jsonl"], "transform": {"type": "columns", "keep": ["close"]}},
        ],
    )
    router = Router(cfg)
    df = candles("EUR/USD", PART.start, PART.days)
    assert 0 < int((~df["is_final"]).sum()) < len(df)  # the fixture has open (not final) candles
    router.write(NORM, df, PART)
    day1 = pd.read_csv(tmp_path / "backtest" / "forex" / "normalized_ohlcv_1h" / "EURUSD" / "2024-01-01.csv")
    assert list(day1.columns) == ["symbol", "ts", "open", "high", "low", "close", "volume"]
    bt = router.store("bt").read(NORM, PART)
    final = df[df["is_final"]].reset_index(drop=True)
    assert bt["ts"].tolist() == final["ts"].tolist()  # open candles left out of a backtest export
    assert (bt["close"] == final["close"]).all()
    light = router.store("jsonl").read(NORM, PART)
    assert list(light.columns) == ["symbol", "ts", "close"] and len(light) == len(df)

    with pytest.raises(RoutingError, match="without filter/symbol restrictions or transform"):
        Router(config(tmp_path, routes=[{"id": "m", "destinations": ["parquet"], "transform": "backtest_ohlcv"}])).validate([NORM])
    got = problems(tmp_path, routes=[{"id": "m", "destinations": ["parquet"], "transform": {"type": "columns"}}])
    assert got == ["routes[0].transform.keep: required key is missing"]
    got = problems(tmp_path, routes=[{"id": "m", "destinations": ["parquet"], "transform": "pivot"}])
    assert got[0].startswith("routes[0].transform.type: 'pivot' is not an installed route transform type")
    bad = config(tmp_path, routes=[{"id": "m", "destinations": ["parquet"]},
                                   {"id": "x", "destinations": ["csv"], "transform": {"type": "columns", "keep": ["spread"]}}])  # fmt: skip
    with pytest.raises(Exception, match=r"transform 'columns' failed: ValueError: columns: column\(s\) \['spread'\]"):
        Router(bad).write(NORM, df, PART)


def _installed() -> list[str]:
    from data_puller_dagster import plugins

    return plugins.installed(plugins.DESTINATION_GROUP)


def test_realtime_match_separates_live_tables_from_batch_tables(tmp_path: Path) -> None:
    from data_puller_dagster.io.router import route_matches

    live = TableRef("forex", "live_ohlcv_1h", "live", "forex", "1h", ("symbol", "ts"))
    cfg = config(
        tmp_path,
        routes=[
            {"id": "all", "destinations": ["parquet"]},
            {"id": "alerts", "match": {"realtime": True}, "destinations": ["jsonl"]},
            {"id": "batch", "match": {"realtime": False}, "destinations": ["csv"]},
        ],
    )
    taken = {t.name: [r.id for r in cfg.routes if route_matches(r, t)] for t in (NORM, live)}
    assert taken == {"normalized_ohlcv_1h": ["all", "batch"], "live_ohlcv_1h": ["all", "alerts"]}


def test_in_progress_live_updates_never_reach_a_store(tmp_path: Path) -> None:
    live = TableRef("forex", "live_ohlcv_1h", "live", "forex", "1h", ("symbol", "ts"))
    cfg = config(tmp_path, routes=[{"id": "all", "destinations": ["parquet"], "in_progress": True}])
    router = Router(cfg)
    df = candles("EUR/USD", PART.start, PART.days)
    router.write(live, df, PART)
    got = router.read(live, PART)
    assert len(got) == int(df["is_final"].sum()) < len(df) and got["is_final"].all()


def test_an_s3_parquet_instance_from_the_config_file(tmp_path: Path, s3_server, s3_bucket) -> None:
    """The options an s3:// Parquet instance takes in data_puller.yaml reach the real S3 server."""
    lake = {
        "type": "parquet", "root": f"s3://{s3_bucket}/lake", "endpoint_url": s3_server.endpoint,
        "key_id": s3_server.key_id, "secret": s3_server.secret, "region": "us-east-1",
    }  # fmt: skip
    cfg = config(
        tmp_path,
        destinations={"lake": lake},
        storage={"data_dir": str(tmp_path), "primary": "lake"},
        routes=[{"id": "main", "destinations": ["lake"]}],
    )
    router = Router(cfg)
    df = candles("EUR/USD", PART.start, PART.days)
    router.write(NORM, df, PART)
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert "lake/forex/normalized_ohlcv_1h/symbol_key=EURUSD/date=2024-01-01/part-0.parquet" in keys
    pd.testing.assert_frame_equal(sort_rows(router.read(NORM, PART)), sort_rows(df))
    assert s3_server.secret not in repr(router.destination("lake"))
    got = problems(tmp_path, destinations={"lake": {**lake, "secret": None}}, routes=[{"id": "m", "destinations": ["lake"]}])
    assert any("key_id and secret go together" in p for p in got), got
    assert not any(s3_server.key_id in p for p in got)
    got = problems(tmp_path, destinations={"cold": {"type": "parquet", "root": str(tmp_path), "region": "eu-west-1"}})
    assert any("region apply to an s3:// root only" in p for p in got), got


def test_backtest_csv_keeps_the_seed_filename_pattern(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        destinations={"bt": {"type": "csv", "dir": str(tmp_path / "bt"),
                             "filename_pattern": "{symbol}_{timeframe}_{date_range}.csv"}},  # fmt: skip
        routes=[{"id": "main", "destinations": ["parquet"]}, {"id": "bt", "destinations": ["bt"]}],
    )
    router = Router(cfg)
    df = candles("EUR/USD", PART.start, PART.days)
    router.write(NORM, df, PART)
    folder = tmp_path / "bt" / "forex" / "normalized_ohlcv_1h" / "EURUSD"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert names == [f"EURUSD_1h_2024010{d}-2024010{d}.csv" for d in (1, 2, 3)]
    pd.testing.assert_frame_equal(sort_rows(router.store("bt").read(NORM, PART)), sort_rows(df))
    # Replacing the slice with two days' rows empties the third day's file (found by the pattern).
    router.write(NORM, df[df["ts"] < pd.Timestamp("2024-01-03", tz="UTC")], PART)
    assert not (folder / "EURUSD_1h_20240103-20240103.csv").exists()
    got = problems(tmp_path, destinations={"bt": {"type": "csv", "filename_pattern": "{symbol}_{month}.csv"}})
    assert any(p.startswith("destinations.bt.filename_pattern: ") and "unknown placeholder(s) ['month']" in p for p in got), got
    got = problems(tmp_path, destinations={"bt": {"type": "csv", "filename_pattern": "{symbol}.csv"}})
    assert any("needs {date} or {date_range}" in p for p in got), got
    got = problems(tmp_path, destinations={"bt": {"type": "csv", "filename_pattern": "../{date}.csv"}})
    assert any("no path" in p for p in got), got
