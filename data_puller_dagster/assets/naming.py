"""Asset keys, table names and the definition metadata the router's IO manager reads.

One place decides that `crypto/normalized_ohlcv_1m` is the normalized layer of feed `crypto` at 1m, so
the UI, the stores (schema `crypto`, table `normalized_ohlcv_1m`) and the sensors agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_puller_dagster.config import FeedConfig

if TYPE_CHECKING:  # Dagster is imported by the functions that build keys: table names need no Dagster,
    import dagster as dg  # so the library and `data-puller` (api.py, cli.py) start without it

PK = "symbol,ts"

_TABLE = {
    "raw": "raw_ohlcv_{tf}",
    "normalized": "normalized_ohlcv_{tf}",
    "quarantine": "quarantine_ohlcv_{tf}",
    "derived": "ohlcv_{tf}",
    "enriched": "enriched_ohlcv_{tf}",
    "dataset": "llm_dataset_{tf}",
    # Candles of `data-puller stream` (data_puller_dagster/stream): canonical rows, one per (symbol, ts),
    # in their own table so the stream's day rewrites never touch the batch pipeline's partitions.
    "live": "live_ohlcv_{tf}",
}
_HAS_PK = {"normalized", "derived", "enriched", "live"}


def table_name(layer: str, timeframe: str) -> str:
    return _TABLE[layer].format(tf=timeframe)


def asset_key(feed: FeedConfig, layer: str, timeframe: str) -> dg.AssetKey:
    import dagster as dg

    return dg.AssetKey([feed.name, table_name(layer, timeframe)])


def dataset_files_key(feed: FeedConfig) -> dg.AssetKey:
    import dagster as dg

    return dg.AssetKey([feed.name, f"llm_dataset_{feed.llm_timeframe}_files"])


def ohlcv_key(feed: FeedConfig, timeframe: str) -> dg.AssetKey:
    """The clean candle table of a timeframe: normalized for the base, derived otherwise."""
    return asset_key(feed, "normalized" if timeframe == feed.timeframe else "derived", timeframe)


def table_metadata(feed: FeedConfig, layer: str, timeframe: str) -> dict[str, str]:
    """Definition metadata the IO manager turns into a TableRef (see io.io_manager)."""
    return {
        "data_puller/feed": feed.name,
        "data_puller/layer": layer,
        "data_puller/asset_class": feed.asset_class,
        "data_puller/timeframe": timeframe,
        "data_puller/table": table_name(layer, timeframe),
        "data_puller/primary_key": PK if layer in _HAS_PK else "",
    }


def table_ref(feed: FeedConfig, layer: str, timeframe: str):
    """The router's TableRef for a layer of a feed (what the IO manager builds from table_metadata)."""
    from data_puller_dagster.io.tables import TableRef

    return TableRef(
        feed=feed.name,
        name=table_name(layer, timeframe),
        layer=layer,
        asset_class=feed.asset_class,
        timeframe=timeframe,
        primary_key=tuple(PK.split(",")) if layer in _HAS_PK else None,
    )
