"""The adapter contract and the raw frame layouts.

Why raw frames keep the provider's strings: the raw layer is the audit trail and the replay input. Any
float conversion here would silently lose what the provider said (and hide malformed values the
normalizer must quarantine). Dtypes are fixed per provider, empty frames included, so every Parquet
partition of a raw asset has one schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pandas as pd

if TYPE_CHECKING:
    from data_puller_dagster.config import AppConfig, FeedConfig

KLINE_FIELDS: list[str] = [
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote", "ignore",
]  # fmt: skip
PROVENANCE_DTYPES: dict[str, str] = {
    "ts": "datetime64[ns, UTC]",
    "symbol": "string",
    "timeframe": "string",
    "source": "string",
    "fetched_at": "datetime64[ns, UTC]",
}
BINANCE_RAW_DTYPES: dict[str, str] = {
    "open_time": "int64",
    "open": "string",
    "high": "string",
    "low": "string",
    "close": "string",
    "volume": "string",
    "close_time": "int64",
    "quote_volume": "string",
    "trades": "int64",
    "taker_buy_base": "string",
    "taker_buy_quote": "string",
    "ignore": "string",
    **PROVENANCE_DTYPES,
}
TWELVEDATA_RAW_DTYPES: dict[str, str] = {
    "datetime": "string",
    "open": "string",
    "high": "string",
    "low": "string",
    "close": "string",
    "volume": "string",
    # The response's own `meta.interval` (e.g. "1h", "1day"): the evidence that tells a wrong-interval
    # answer from real data (normalize's interval_mismatch rule). <NA> when the body had no meta.
    "interval": "string",
    **PROVENANCE_DTYPES,
}
RAW_DTYPES: dict[str, dict[str, str]] = {"binance": BINANCE_RAW_DTYPES, "twelvedata": TWELVEDATA_RAW_DTYPES}


@runtime_checkable
class SourceAdapter(Protocol):
    """(display symbol, timeframe, [start, end) UTC) -> raw frame, complete or an exception."""

    provider: str

    def fetch(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> pd.DataFrame: ...

    def close(self) -> None: ...


def raw_empty(provider: str) -> pd.DataFrame:
    """Zero-row raw frame with the exact dtypes of `provider` ("binance" or "twelvedata")."""
    if provider not in RAW_DTYPES:
        raise ValueError(f"unknown provider {provider!r}; use one of {', '.join(RAW_DTYPES)}")
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in RAW_DTYPES[provider].items()})


def build_adapter(cfg: AppConfig, feed: FeedConfig) -> SourceAdapter:
    """The adapter for `feed.source`, configured from `cfg.sources` (one HTTP session per adapter).

    Binance bans are persisted under `<storage.data_dir>/.state/bans.json` so every process of the
    deployment (step retries, daemon runs, CLI commands) honours them (see sources/bans.py).
    """
    if feed.source == "binance":
        from data_puller_dagster.sources.bans import BanStore
        from data_puller_dagster.sources.binance import BinanceAdapter

        return BinanceAdapter.from_config(
            cfg.sources.binance, bans=BanStore.for_data_dir(cfg.storage.data_dir)
        )
    if feed.source == "twelvedata":
        from data_puller_dagster.sources.twelvedata import TwelveDataAdapter

        return TwelveDataAdapter.from_config(cfg.sources.twelvedata)
    raise ValueError(f"feed {feed.name!r}: unknown source {feed.source!r}; use binance or twelvedata")


def check_range(
    provider: str, symbol: str, timeframe: str, start: datetime, end: datetime
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Validate a request before anything is sent; return UTC Timestamps."""
    from data_puller_dagster import timeframes
    from data_puller_dagster.symbols import check_symbol

    check_symbol(symbol)
    timeframes.check_timeframe(timeframe)
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(
            f"{provider} {symbol}: start/end must be timezone-aware UTC datetimes, got {start!r}, {end!r}"
        )
    s, e = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    if e < s:
        raise ValueError(
            f"{provider} {symbol}: end {e} is before start {s}; pass [start, end) with start <= end"
        )
    return s, e


def add_provenance(
    df: pd.DataFrame, ts: pd.Series, symbol: str, timeframe: str, source: str, fetched_at: pd.Timestamp
) -> pd.DataFrame:
    """Append ts/symbol/timeframe/source/fetched_at columns with the contract dtypes (vectorized)."""
    n = len(df)
    # `.array` (positional, like to_numpy) keeps the DatetimeArray; to_numpy() of a tz-aware column is an
    # object array of Timestamps that pandas then had to infer back, row by row.
    df["ts"] = ts.astype("datetime64[ns, UTC]").array if n else pd.Series(dtype="datetime64[ns, UTC]")
    df["ts"] = df["ts"].astype("datetime64[ns, UTC]")
    df["symbol"] = pd.array([symbol] * n, dtype="string") if n else pd.array([], dtype="string")
    df["timeframe"] = pd.array([timeframe] * n, dtype="string") if n else pd.array([], dtype="string")
    df["source"] = pd.array([source] * n, dtype="string") if n else pd.array([], dtype="string")
    df["fetched_at"] = pd.Series(pd.Timestamp(fetched_at), index=df.index, dtype="datetime64[ns, UTC]")
    return df
