"""From what a notebook or a shell says (`"BTCUSDT"`, `"1h"`, `start="2024-01-01"`) to the pipeline's own
values: a validated AppConfig, a FeedConfig for the symbol and a PartitionSlice of whole UTC days.

Why the library builds a FeedConfig even without a config file: every step of the pipeline (adapter
options, calendar, table names, Parquet layout, day acceptance) is keyed on a feed. A symbol pulled
without a config gets the feed a config would most likely have (`crypto` for Binance, `forex` /
`equity` for Twelve Data), so what `data-puller pull` stores is exactly where a later Dagster config
with that feed reads it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from data_puller_dagster import timeframes
from data_puller_dagster.config import (
    AppConfig,
    ConfigError,
    FeedConfig,
    load_config,
    parse_config,
    render_errors,
)
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.symbols import check_symbol, partition_key
from data_puller_dagster.transform.lookback import days_for_candles

ConfigLike = AppConfig | str | Path | None
# Quote assets of Binance spot pairs: a symbol ending in one of these (and longer than it) is crypto.
CRYPTO_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL")
DEFAULT_LIMIT = 1000  # candles, when neither start nor limit is given
_DAY_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A placeholder feed: AppConfig needs one; it carries no meaning beyond "defaults for storage/sources".
PLACEHOLDER_FEED = "data_puller_defaults"
_PLACEHOLDER = {"name": PLACEHOLDER_FEED, "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                "symbols": ["BTCUSDT"], "start_date": "2017-08-17"}  # fmt: skip


def base_config(config: ConfigLike = None) -> AppConfig:
    """An AppConfig as given, the file at a path (load_config's checks and messages), or, for None, the
    config models' defaults (storage under DATA_PULLER_HOME or ./data, base URLs and the Twelve Data key
    from their environment variables, as in data_puller.yaml without those keys)."""
    if isinstance(config, AppConfig):
        return config
    if config is not None:
        return load_config(config)
    return parse_config({"feeds": [_PLACEHOLDER]}, "default configuration")


def infer_source(symbol: str, cfg: AppConfig | None = None, source: str | None = None) -> tuple[str, str]:
    """(source, asset_class) for a symbol: see `data_puller_dagster.api.pull` for the rule."""
    check_symbol(symbol)
    feed = _config_feed(cfg, symbol, source) if cfg is not None else None
    if feed is not None:
        return feed.source, feed.asset_class
    if source is None:
        source = "twelvedata" if "/" in symbol or not _crypto_pair(symbol) else "binance"
    if source == "binance":
        return source, "crypto"
    return source, "forex" if "/" in symbol else "equity"


def _crypto_pair(symbol: str) -> bool:
    return any(symbol.endswith(q) and len(symbol) > len(q) + 1 for q in CRYPTO_QUOTES)


def _config_feed(cfg: AppConfig, symbol: str, source: str | None) -> FeedConfig | None:
    for feed in cfg.feeds:
        if feed.name == PLACEHOLDER_FEED:
            continue
        if symbol in feed.symbols and (source is None or feed.source == source):
            return feed
    return None


def feed_for(
    cfg: AppConfig,
    symbol: str,
    timeframe: str,
    source: str | None = None,
    asset_class: str | None = None,
    start_date: date | None = None,
) -> FeedConfig:
    """The feed `symbol` is pulled as: the config's feed listing it (its name, source, asset class and
    price decimals) at `timeframe`, or a feed named after the asset class. Only this symbol, no derived
    timeframes. Raises ConfigError for a bad symbol, timeframe, source or asset class."""
    timeframes.check_timeframe(timeframe)
    src, cls = infer_source(symbol, cfg, source)
    existing = _config_feed(cfg, symbol, source)
    spec: dict[str, Any] = {
        "name": existing.name if existing is not None else (asset_class or cls),
        "source": src,
        "asset_class": asset_class or cls,
        "timeframe": timeframe,
        "symbols": [symbol],
        "start_date": existing.start_date if existing is not None else (start_date or today()),
    }
    if existing is not None and existing.price_decimals is not None:
        spec["price_decimals"] = existing.price_decimals
    try:
        return FeedConfig.model_validate(spec)
    except ValidationError as e:
        raise ConfigError(render_errors(e, FeedConfig), f"request for {symbol} {timeframe}") from None


def with_feed(cfg: AppConfig, feed: FeedConfig) -> AppConfig:
    """`cfg` whose feeds are `feed` alone (the routes, storage and sources stay)."""
    return cfg.model_copy(update={"feeds": [feed]})


@dataclass(frozen=True)
class Request:
    """A request in pipeline terms: the whole UTC days fetched (`window`), and the rows returned,
    [lo, hi) and at most `limit` of them (the last ones, or the first ones when a start was given)."""

    window: PartitionSlice
    lo: pd.Timestamp
    hi: pd.Timestamp
    limit: int | None
    from_start: bool


def utc(value: Any, what: str) -> tuple[pd.Timestamp, bool]:
    """(UTC timestamp, whether it was a bare day) of a date, datetime, Timestamp or ISO string; naive
    values are UTC."""
    if isinstance(value, str) and _DAY_ONLY.match(value.strip()):
        return pd.Timestamp(value.strip(), tz="UTC"), True
    if isinstance(value, date) and not isinstance(value, datetime):
        return pd.Timestamp(value, tz="UTC"), True
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(f"{what}={value!r} is not a date or time; use e.g. '2024-01-31' or '2024-01-31T12:00'") from None
    if ts is pd.NaT:
        raise ValueError(f"{what} is NaT; pass a date or time")
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")), False


def request(
    symbol: str,
    asset_class: str,
    timeframe: str,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    now: pd.Timestamp | None = None,
) -> Request:
    """The whole UTC days that hold [start, end) (or the last `limit` candles before `end`).

    A bare day (`"2024-01-31"`, a `date`) as `end` includes that whole day; a time is exclusive. `end`
    defaults to now, `start` to `limit` candles before `end` (DEFAULT_LIMIT without either), counted
    on the market's calendar with a margin (`days_for_candles`), then cut to `limit` rows.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} must be a positive number of candles")
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    step = pd.Timedelta(seconds=timeframes.seconds(timeframe))
    lo = utc(start, "start")[0] if start is not None else None
    if end is not None:
        hi, day = utc(end, "end")
        hi = hi + pd.Timedelta(days=1) if day else hi
    elif lo is not None and limit is not None:
        hi = min(now, lo + step * limit + pd.Timedelta(days=days_for_candles(asset_class, timeframe, limit)))
    else:
        hi = now
    if lo is None:
        candles = limit or DEFAULT_LIMIT
        lo = (hi - pd.Timedelta(days=days_for_candles(asset_class, timeframe, candles))).floor("D")
        limit = candles
    if hi <= lo:
        raise ValueError(f"{symbol}: end {hi} is not after start {lo}; pass start < end")
    if lo > now:
        raise ValueError(f"{symbol}: start {lo} is in the future")
    first, last = lo.date(), (hi - pd.Timedelta(1)).date()
    window = PartitionSlice({partition_key(symbol): symbol}, first, last)
    return Request(window, lo, hi, limit, from_start=start is not None)


def day_chunks(window: PartitionSlice, timeframe: str, candles: int) -> list[PartitionSlice]:
    """`window` cut into consecutive slices of whole days holding about `candles` candles each.

    Why: `data-puller pull` fetches, checks and stores a chunk at a time, so a year of 1m candles never
    sits in memory at once and each stored chunk is final even if a later one fails; a chunk is large
    enough (dozens of 1000-candle pages) for the adapter's concurrent page fetches to stay busy.
    """
    per_day = max(1, timeframes.candles_per_day(timeframe))
    days = max(1, math.ceil(candles / per_day))
    out = []
    start = window.start
    while start <= window.end:
        end = min(window.end, start + timedelta(days=days - 1))
        out.append(PartitionSlice(window.symbols, start, end))
        start = end + timedelta(days=1)
    return out


def today() -> date:
    return datetime.now(UTC).date()
