"""What the asset catalog shows about where each layer lives and what its columns mean.

Why here: the UI can only point a user at the data if the asset definition says where it is. From the
routes that take a layer (config `routes`), each asset gets `dagster/table_name` (its DuckDB or Postgres
table), `dagster/uri` (its Parquet root), storage kinds (parquet, duckdb, postgres, ...), a column
schema with descriptions for the canonical layers, and user-facing tags (layer, timeframe, feed) so the
catalog can be filtered by layer. The router's own definition metadata (`data_puller/*`, read by the IO
manager) is kept as it is.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from data_puller_dagster.assets.naming import table_metadata, table_name, table_ref
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.frames import redact_url
from data_puller_dagster.io.router import route_matches
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES

# What each canonical column means (transform.canonical holds the names and dtypes).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "ts": "Candle open time (UTC), aligned to the timeframe grid",
    "symbol": "Display symbol: BTCUSDT, EUR/USD, AAPL",
    "asset_class": "crypto, forex, equity, commodity or index",
    "timeframe": "Candle length, e.g. 1m, 1h, 1d",
    "source": "Provider the candle came from (binance, twelvedata)",
    "open": "Open price",
    "high": "Highest price in the candle",
    "low": "Lowest price in the candle",
    "close": "Close price",
    "volume": "Traded volume in the base asset; NaN where the provider has none (forex)",
    "trades": "Number of trades; null where unknown",
    "quote_volume": "Traded volume in the quote asset; NaN where unknown",
    "fetched_at": "When the candle was fetched (UTC)",
    "is_final": "The candle had closed when it was fetched",
}
_EXTRA_COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "quarantine": {
        "raw_ts": ("string", "The timestamp as the provider sent it"),
        "rule": ("string", "The rule the row broke (see transform.normalize.RULES)"),
        "detail": ("string", "Why the row broke the rule"),
    },
    "derived": {
        "complete": ("bool", "Every base candle of the bar was present"),
        "source_candles": ("Int64", "Base candles the bar was built from"),
    },
}
_CANONICAL_LAYERS = ("normalized", "quarantine", "derived")


def destinations_for(cfg: AppConfig, feed: FeedConfig, layer: str, timeframe: str) -> list[str]:
    """Destinations of every enabled route that takes this layer, in config order, without repeats."""
    table = table_ref(feed, layer, timeframe)
    out: list[str] = []
    for route in cfg.routes:
        if route.enabled and route_matches(route, table):
            out += [d for d in route.destinations if d not in out]
    return out


def storage_kinds(cfg: AppConfig, feed: FeedConfig, layer: str, timeframe: str) -> set[str]:
    """The destination types (parquet, duckdb, redis_stream, ...) this layer is routed to: Dagster's kinds."""
    return {cfg.destination_type(d) for d in destinations_for(cfg, feed, layer, timeframe)}


def catalog_tags(feed: FeedConfig, layer: str, timeframe: str) -> dict[str, str]:
    """User-facing definition tags the catalog filters on."""
    return {"layer": layer, "timeframe": timeframe, "feed": feed.name}


def column_schema(layer: str) -> dg.TableSchema | None:
    """Canonical columns (with descriptions) of the layers that hold canonical candles; None otherwise."""
    if layer not in _CANONICAL_LAYERS:
        return None
    cols = [dg.TableColumn(c, t, description=COLUMN_DESCRIPTIONS.get(c)) for c, t in CANONICAL_DTYPES.items()]
    cols += [dg.TableColumn(c, t, description=d) for c, (t, d) in _EXTRA_COLUMNS.get(layer, {}).items()]
    return dg.TableSchema(columns=cols)


def catalog_metadata(cfg: AppConfig, feed: FeedConfig, layer: str, timeframe: str) -> dict[str, Any]:
    """Definition metadata of a routed layer: the router's keys plus where it lives and its columns."""
    md: dict[str, Any] = dict(table_metadata(feed, layer, timeframe))
    dests = destinations_for(cfg, feed, layer, timeframe)
    name = table_name(layer, timeframe)
    tables: dict[str, str] = {}
    uri: str | None = None
    for d in dests:
        kind, options = cfg.destination_type(d), cfg.destination_spec(d).options
        if kind == "duckdb":
            tables.setdefault(d, f"{feed.name}.{name}")
        elif kind == "postgres":
            prefix = options.get("schema_prefix") or cfg.storage.postgres_schema_prefix
            tables.setdefault(d, f"{prefix}{feed.name}.{name}")
        elif kind == "parquet" and uri is None:
            root = str(options.get("root") or cfg.storage.parquet_location)
            uri = redact_url(f"{root.rstrip('/')}/{feed.name}/{name}")
    if tables:
        # The table SQL users query: the primary store's when it is a database, else the first one.
        md["dagster/table_name"] = tables.get(cfg.storage.primary) or next(iter(tables.values()))
        md["data_puller/tables"] = dg.MetadataValue.json(tables)
    if uri is not None:
        md["dagster/uri"] = uri
    schema = column_schema(layer)
    if schema is not None:
        md["dagster/column_schema"] = schema
    return md
