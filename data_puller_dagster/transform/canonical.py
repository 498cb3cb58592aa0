"""The canonical OHLCV table: column names and dtypes every layer after `raw` relies on.

Kept as plain data (no pandera) so that sources, IO and assets can import it cheaply; the pandera
models in `transform.schemas` are built from it. Dtypes are identical across partitions, empty frames
included, so Parquet files of different days always have one schema.
"""

from __future__ import annotations

import pandas as pd

SCHEMA_VERSION = 1

# column -> pandas dtype
CANONICAL_DTYPES: dict[str, str] = {
    "ts": "datetime64[ns, UTC]",  # candle open time, aligned to the timeframe grid
    "symbol": "string",  # display form: BTCUSDT, EUR/USD, AAPL
    "asset_class": "string",
    "timeframe": "string",
    "source": "string",
    "open": "float64",
    "high": "float64",
    "low": "float64",
    "close": "float64",
    "volume": "float64",  # NaN where the provider has none (forex)
    "trades": "Int64",  # nullable
    "quote_volume": "float64",  # NaN where unknown
    "fetched_at": "datetime64[ns, UTC]",
    "is_final": "bool",  # the candle had closed when fetched
}
CANONICAL_COLUMNS: list[str] = list(CANONICAL_DTYPES)


def empty_canonical() -> pd.DataFrame:
    """A zero-row canonical frame with the exact dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in CANONICAL_DTYPES.items()})


def coerce_canonical(df: pd.DataFrame, extra: bool = False) -> pd.DataFrame:
    """Order columns canonically and cast to the canonical dtypes (extra columns kept after, if asked)."""
    out = df[CANONICAL_COLUMNS].astype(CANONICAL_DTYPES)
    if extra:
        rest = [c for c in df.columns if c not in CANONICAL_DTYPES]
        out = pd.concat([out, df[rest]], axis=1)
    return out
