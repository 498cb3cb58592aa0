"""The code location loads (what `dagster dev` and the daemon import) and shows every layer of every
feed, partitioned by UTC day x symbol."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from data_puller_dagster.config import load_config, parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster.io.errors import RoutingError

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load():
    from data_puller_dagster.definitions import defs

    dg.Definitions.validate_loadable(defs)


@pytest.mark.parametrize("config", ["data_puller.yaml", "demo/data_puller.demo.yaml"])
def test_every_layer_of_every_feed_is_listed_with_partitions(config, monkeypatch):
    monkeypatch.setenv("DATA_PULLER_DEMO_MARKET_DATA", str(REPO / "demo" / "market_data"))
    cfg = load_config(REPO / config)
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for feed in cfg.feeds:
        expected = {
            f"{feed.name}/raw_ohlcv_{feed.timeframe}",
            f"{feed.name}/normalized_ohlcv_{feed.timeframe}",
            f"{feed.name}/quarantine_ohlcv_{feed.timeframe}",
            *(f"{feed.name}/ohlcv_{tf}" for tf in feed.derived_timeframes),
            *(f"{feed.name}/enriched_ohlcv_{tf}" for tf in feed.enriched_timeframes),
            f"{feed.name}/llm_dataset_{feed.llm_timeframe}",
            f"{feed.name}/llm_dataset_{feed.llm_timeframe}_files",
        }
        assert expected <= keys
        raw = graph.get(dg.AssetKey([feed.name, f"raw_ohlcv_{feed.timeframe}"]))
        pdef = raw.partitions_def
        assert isinstance(pdef, dg.MultiPartitionsDefinition)
        first = pdef.get_partition_keys()[0]
        assert first.keys_by_dimension == {"date": feed.start_date.isoformat(), "symbol": sorted(feed.symbol_keys)[0]}
        assert raw.group_name == feed.name and raw.code_version
        checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys if c.asset_key.path[0] == feed.name}
        assert {"schema_valid", "complete_against_calendar", "fresh"} <= checks
    assert {s.name for s in defs.schedules} == {f"{f.name}_daily" for f in cfg.feeds}


def test_routes_that_starve_the_primary_store_are_rejected_at_load():
    data = {
        "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
                   "symbols": ["BTCUSDT"], "start_date": "2024-01-01"}],
        "routes": [{"id": "only_duck", "destinations": ["duckdb"]}],
    }
    with pytest.raises(RoutingError, match="parquet"):
        build_definitions(parse_config(data, env={}))


def test_backfill_policy_follows_config():
    base = {
        "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
                   "symbols": ["BTCUSDT"], "start_date": "2024-01-01"}],
    }
    for policy, expected in (("multi_run", 7), ("single_run", None)):
        cfg = parse_config({**base, "runs": {"backfill_policy": policy, "max_partitions_per_run": 7}}, env={})
        graph = build_definitions(cfg).resolve_asset_graph()
        partitioned = [graph.get(k) for k in graph.get_all_asset_keys() if graph.get(k).partitions_def]
        assert partitioned
        assert {n.backfill_policy.max_partitions_per_run for n in partitioned} == {expected}
