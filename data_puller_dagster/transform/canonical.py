"""The canonical OHLCV table: column names and dtypes every layer after `raw` relies on.

Kept as plain data (no pandera) so that sources, IO and assets can import it cheaply; the pandera
models in `transform.schemas` are built from it. Dtypes are identical across partitions, empty frames
included, so Parquet files of different days always have one schema.
"""

from __future__ import annotations

import functools

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


_EMPTY: dict[tuple[str, str], pd.DataFrame] = {}


def cached_empty(dtypes: dict[str, str], name: str) -> pd.DataFrame:
    """A zero-row frame of these dtypes, a fresh copy per call.

    Why cached: building one column by column costs ~0.5 ms, a copy of a built one a tenth of that, and
    the live stream's normalize() asks for two per micro-batch. Keyed by pandas' string storage too, since
    "string" means another dtype when that option changes.
    """
    key = (name, _string_storage())
    if (frame := _EMPTY.get(key)) is None:
        frame = _EMPTY[key] = pd.DataFrame({c: pd.Series(dtype=d) for c, d in dtypes.items()})
    return frame.copy(deep=True)


def canonical_dtype_objects() -> list[object]:
    """CANONICAL_DTYPES as dtype objects, in column order ("string" resolved with the current storage):
    compared with a frame's `dtypes` to skip a cast that would change nothing."""
    return _resolved(_string_storage())


def _string_storage() -> str:
    """What pandas' "string" dtype means right now (the key of both caches here)."""
    return str(pd.get_option("mode.string_storage"))


@functools.cache
def _resolved(string_storage: str) -> list[object]:
    return [pd.api.types.pandas_dtype(d) for d in CANONICAL_DTYPES.values()]


def empty_canonical() -> pd.DataFrame:
    """A zero-row canonical frame with the exact dtypes."""
    return cached_empty(CANONICAL_DTYPES, "canonical")


def coerce_canonical(df: pd.DataFrame, extra: bool = False) -> pd.DataFrame:
    """Order columns canonically and cast to the canonical dtypes (extra columns kept after, if asked)."""
    out = df[CANONICAL_COLUMNS].astype(CANONICAL_DTYPES)
    if extra:
        rest = [c for c in df.columns if c not in CANONICAL_DTYPES]
        out = pd.concat([out, df[rest]], axis=1)
    return out
