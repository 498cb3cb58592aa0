"""The pipeline without an orchestrator: a Python API for notebooks and scripts.

```python
from data_puller_dagster import pull, DataPipeline, BinanceAdapter, DataNormalizer, DataRouter, Route

df = pull("BTCUSDT", "1h", start="2024-01-01", end="2024-01-31")        # canonical candles
res = pull("EUR/USD", "1h", limit=500, report=True)                        # + quarantine, gaps, quality
pipeline = DataPipeline(
    source=BinanceAdapter(weight_budget_per_minute=1200),
    normalizer=DataNormalizer(),
    router=DataRouter([Route("liquid", lambda df: df["volume"] > 0, "parquet")]),
)
pipeline.fetch_and_process(symbol="BTCUSDT", timeframe="1h", limit=1000)
```

Every call is a door into the same code the Dagster assets run (sources/, transform/, io/router.py):
same adapters and rate limits, same normalization, quarantine and per-day acceptance, same gap and
quality figures, same stores and layout. Nothing here needs Dagster to be running (or imported).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from data_puller_dagster.sources.binance import BinanceAdapter
from data_puller_dagster.sources.twelvedata import TwelveDataAdapter
from data_puller_dagster.standalone import resolve
from data_puller_dagster.standalone.features import build_llm_dataset, enrich
from data_puller_dagster.standalone.pipeline import (
    DataNormalizer,
    DataPipeline,
    PullResult,
    pull_window,
)
from data_puller_dagster.standalone.resolve import ConfigLike, infer_source
from data_puller_dagster.standalone.routing import DataRouter, Route

__all__ = [
    "BinanceAdapter",
    "DataNormalizer",
    "DataPipeline",
    "DataRouter",
    "PullResult",
    "Route",
    "TwelveDataAdapter",
    "build_llm_dataset",
    "enrich",
    "infer_source",
    "pull",
]


def pull(
    symbol: str,
    timeframe: str,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    source: str | None = None,
    config: ConfigLike = None,
    report: bool = False,
    *,
    asset_class: str | None = None,
) -> pd.DataFrame | PullResult:
    """Fetch, normalize and validate one symbol's candles; return the canonical table (nothing is stored).

    - `timeframe`: 1m, 5m, 15m, 30m, 1h, 4h or 1d.
    - `start` / `end`: a day (`"2024-01-31"`, a `date`: as `end`, the whole day is included) or a
      time (`"2024-01-31T12:00"`, a datetime, a Timestamp: as `end`, exclusive); naive means UTC.
      `end` defaults to now (the candle still open is included, `is_final=False`). Without `start`,
      the last `limit` candles (1000 when no limit is given); with `start` and `limit`, the first
      `limit` from `start`. Whole UTC days are fetched and judged, as the pipeline's day partitions.
    - `source`: "binance" or "twelvedata" (or an installed source plug-in). When None it is inferred:
      a feed of `config` that lists the symbol decides (its source and asset class); otherwise a pair
      ending in a crypto quote asset (USDT, USDC, FDUSD, BUSD, TUSD, DAI, BTC, ETH, BNB, EUR, TRY, BRL,
      e.g. BTCUSDT, ETHBTC) is Binance crypto, a symbol with a slash (EUR/USD, XAU/USD) Twelve Data
      forex, anything else (AAPL, BRK.B) Twelve Data equity. `asset_class` overrides the last (e.g.
      "index", "commodity").
    - `config`: an AppConfig, a path to a data_puller.yaml, or None for the config models' defaults:
      base URLs from BINANCE_BASE_URL / BINANCE_ARCHIVE_URL / TWELVEDATA_BASE_URL, the key from
      TWELVEDATA_API_KEY, Binance bans recorded under DATA_PULLER_HOME (./data), as in the pipeline.
    - `report=True` returns a PullResult: `.data`, `.quarantine` (rows that broke a rule, with it),
      `.gaps` (runs of missing candles against the market calendar), `.quality` (per day: rows,
      quarantined, missing, completeness, quality_score, rejection), `.rejected`, `.score`.

    Source errors are raised as they are (sources.errors: UnreachableError, IpBannedError,
    InvalidRequestError, ...), their messages naming the request and the fix; bad arguments raise
    ConfigError / ValueError naming the argument.
    """
    cfg = resolve.base_config(config)
    feed = resolve.feed_for(cfg, symbol, timeframe, source, asset_class)
    req = resolve.request(symbol, feed.asset_class, timeframe, start, end, limit)
    normalizer = DataNormalizer(max_quarantined_fraction=cfg.validation.max_quarantined_fraction)
    result = pull_window(cfg, feed, req, normalizer)
    return result if report else result.data
