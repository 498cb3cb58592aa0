"""The router on real stores: route matching, symbol matches, row filters, warn/fail policies,
definitions-time validation, and one table routed to Parquet, DuckDB and Postgres at once."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.config import AppConfig, RowFilter, parse_config
from data_puller_dagster.io.errors import DestinationWriteError, RoutingError
from data_puller_dagster.io.router import Router, filter_mask
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows

NORM = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
DERIVED = TableRef("forex", "ohlcv_4h", "derived", "forex", "4h", ("symbol", "ts"))
PART = PartitionSlice({"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}, date(2024, 1, 1), date(2024, 1, 5))


def config(tmp_path: Path, routes: list[dict], **storage) -> AppConfig:
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path), "primary": "parquet", **storage},
            "feeds": [
                {
                    "name": "forex",
                    "source": "twelvedata",
                    "asset_class": "forex",
                    "timeframe": "1h",
                    "derived_timeframes": ["4h"],
                    "symbols": ["EUR/USD", "GBP/USD"],
                    "start_date": "2024-01-01",
                }
            ],
            "routes": routes,
        },
        env={},
    )


def frame() -> pd.DataFrame:
    return pd.concat(
        [candles("EUR/USD", PART.start, PART.days), candles("GBP/USD", PART.start, PART.days, seed_offset=2)],
        ignore_index=True,
    )


def test_one_table_to_parquet_duckdb_and_postgres_yields_identical_rows(tmp_path: Path, pg_schema) -> None:
    url, prefix = pg_schema
    cfg = config(
        tmp_path,
        [{"id": "all", "destinations": ["parquet", "duckdb", "postgres"]}],
        postgres_url=url,
        postgres_schema_prefix=prefix,
    )
    router = Router(cfg)
    df = frame()
    summary = router.write(NORM, df, PART)
    assert summary.rows_by_destination == {
        "all/parquet": len(df),
        "all/duckdb": len(df),
        "all/postgres": len(df),
    }
    reads = {
        name: sort_rows(router.destination(name).read(NORM, PART))
        for name in ("parquet", "duckdb", "postgres")
    }
    for name, got in reads.items():
        pd.testing.assert_frame_equal(got, sort_rows(df), check_exact=True, obj=name)
    pd.testing.assert_frame_equal(reads["duckdb"], reads["postgres"], check_exact=True)
    pd.testing.assert_frame_equal(sort_rows(router.read(NORM, PART)), reads["parquet"], check_exact=True)


def test_routes_match_layers_symbols_and_filters(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        [
            {"id": "lake", "destinations": ["parquet"]},
            {
                "id": "eur_csv",
                "match": {"layer": ["derived"], "symbol": ["EUR/USD"]},
                "destinations": ["csv"],
            },
            {
                "id": "busy_jsonl",
                "match": {"timeframe": ["4h"]},
                "destinations": ["jsonl"],
                "filter": [
                    {"column": "volume", "op": "gt", "value": 1500},
                    {"column": "trades", "op": "notnull"},
                ],
            },
            {"id": "off", "destinations": ["duckdb"], "enabled": False},
        ],
    )
    router = Router(cfg)
    assert [r.id for r in router.routes_for(NORM)] == ["lake"]
    assert [r.id for r in router.routes_for(DERIVED)] == ["lake", "eur_csv", "busy_jsonl"]

    df = frame().assign(timeframe=pd.array(["4h"] * len(frame()), dtype="string"))
    summary = router.write(DERIVED, df, PART)
    eur = df[df["symbol"] == "EUR/USD"]
    busy = df[(df["volume"] > 1500) & df["trades"].notna()]
    assert 0 < len(busy) < len(df)
    assert summary.rows_by_destination == {
        "lake/parquet": len(df),
        "eur_csv/csv": len(eur),
        "busy_jsonl/jsonl": len(busy),
    }
    pd.testing.assert_frame_equal(
        sort_rows(router.destination("csv").read(DERIVED, PART)), sort_rows(eur), check_exact=True
    )
    got = router.destination("jsonl").read(DERIVED, PART)
    pd.testing.assert_frame_equal(sort_rows(got), sort_rows(busy))
    assert not (tmp_path / "warehouse.duckdb").exists()

    # A second write where fewer rows pass the filter empties the filtered-out partitions there.
    quiet = df.assign(volume=df["volume"].clip(upper=1000.0))
    router.write(DERIVED, quiet, PART)
    assert router.destination("jsonl").read(DERIVED, PART).empty


def test_filter_ops_are_declarative_and_vectorized() -> None:
    df = frame()
    cases = [
        ("eq", "EUR/USD", df["symbol"] == "EUR/USD"),
        ("ne", "EUR/USD", df["symbol"] != "EUR/USD"),
        ("in", ["GBP/USD"], df["symbol"] == "GBP/USD"),
        ("not_in", ["GBP/USD"], df["symbol"] != "GBP/USD"),
    ]
    for op, value, want in cases:
        got = filter_mask(df, [RowFilter(column="symbol", op=op, value=value)])
        assert got.tolist() == want.tolist(), op
    ge = filter_mask(df, [RowFilter(column="ts", op="ge", value="2024-01-03")])
    assert ge.tolist() == (df["ts"] >= pd.Timestamp("2024-01-03", tz="UTC")).tolist()
    assert filter_mask(df, [RowFilter(column="trades", op="isnull")]).tolist() == df["trades"].isna().tolist()
    lt = filter_mask(df, [RowFilter(column="trades", op="lt", value=1000)])
    assert lt.tolist() == (df["trades"] < 1000).fillna(False).tolist()
    with pytest.raises(RoutingError, match="'nope' is not in the table"):
        filter_mask(df, [RowFilter(column="nope", op="isnull")], "route x")


def test_warn_route_failure_is_reported_and_fail_route_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "csv_is_a_file"
    blocker.write_text("not a directory")
    routes = [
        {"id": "lake", "destinations": ["parquet"]},
        {"id": "export", "destinations": ["csv"], "on_error": "warn"},
    ]
    router = Router(
        config(tmp_path, routes, csv_dir=str(blocker), postgres_url="postgresql://u:hunter2@127.0.0.1:1/x")
    )
    summary = router.write(NORM, frame(), PART)
    assert summary.rows_by_destination == {"lake/parquet": len(frame())}
    assert len(summary.warnings) == 1 and summary.warnings[0].startswith("export/csv:")
    assert len(router.read(NORM, PART)) == len(frame())

    routes[1]["on_error"] = "fail"
    router = Router(config(tmp_path, routes, csv_dir=str(blocker)))
    with pytest.raises(
        DestinationWriteError,
        match=r"route 'export'.*normalized_ohlcv_1h.*EURUSD,GBPUSD x 2024-01-01\.\.2024-01-05.*'csv'",
    ):
        router.write(NORM, frame(), PART)


def test_postgres_failure_never_leaks_the_password(tmp_path: Path) -> None:
    routes = [
        {"id": "lake", "destinations": ["parquet"]},
        {"id": "pg", "destinations": ["postgres"], "on_error": "warn"},
    ]
    router = Router(config(tmp_path, routes, postgres_url="postgresql://dp:s3cr3tpw@127.0.0.1:1/nowhere"))
    summary = router.write(NORM, frame(), PART)
    assert len(summary.warnings) == 1 and "cannot connect" in summary.warnings[0]
    assert "s3cr3tpw" not in repr(summary) and "s3cr3tpw" not in str(summary.results)


def test_validate_rejects_unrouted_reads_and_duplicate_destinations(tmp_path: Path) -> None:
    ok = Router(config(tmp_path, [{"id": "lake", "destinations": ["parquet", "duckdb"]}]))
    ok.validate([NORM, DERIVED])

    filtered = Router(
        config(
            tmp_path,
            [
                {"id": "lake", "match": {"layer": ["derived"]}, "destinations": ["parquet"]},
                {
                    "id": "some",
                    "match": {"layer": ["normalized"]},
                    "destinations": ["parquet"],
                    "filter": [{"column": "volume", "op": "gt", "value": 0}],
                },
            ],
        )
    )
    with pytest.raises(RoutingError, match=r"forex\.normalized_ohlcv_1h is read by downstream assets"):
        filtered.validate([NORM, DERIVED])
    filtered.validate([NORM, DERIVED], read_downstream=[DERIVED])

    dup = Router(
        config(
            tmp_path,
            [
                {"id": "a", "destinations": ["parquet"]},
                {"id": "b", "match": {"layer": ["derived"]}, "destinations": ["parquet", "csv"]},
            ],
        )
    )
    with pytest.raises(RoutingError, match=r"ohlcv_4h is sent to 'parquet' by routes 'a' and 'b'"):
        dup.validate([NORM, DERIVED])
