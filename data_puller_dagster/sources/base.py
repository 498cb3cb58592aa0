"""The adapter contract and the raw frame layouts.

Why raw frames keep the provider's strings: the raw layer is the audit trail and the replay input. Any
float conversion here would silently lose what the provider said (and hide malformed values the
normalizer must quarantine). Dtypes are fixed per provider, empty frames included, so every Parquet
partition of a raw asset has one schema.

Binance frames hold their text (prices as sent, and the string provenance columns) as Arrow-backed
strings, `BINANCE_TEXT_DTYPE` = "string[pyarrow]": the REST parser and the archive reader produce them
without a Python object per value, and a year of 1m candles takes ~140 MB instead of ~450 MB with
"string" (Python storage). Both print as `string`, hold the same values and validate the same; every
store writes them as Arrow `string` and reads them back as written (io.frames.dtype_name). Twelve Data
frames keep "string".
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa

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
BINANCE_TEXT_DTYPE = "string[pyarrow]"  # see the module docstring; "string" for Python str objects
BINANCE_RAW_DTYPES: dict[str, str] = {
    "open_time": "int64",
    "open": BINANCE_TEXT_DTYPE,
    "high": BINANCE_TEXT_DTYPE,
    "low": BINANCE_TEXT_DTYPE,
    "close": BINANCE_TEXT_DTYPE,
    "volume": BINANCE_TEXT_DTYPE,
    "close_time": "int64",
    "quote_volume": BINANCE_TEXT_DTYPE,
    "trades": "int64",
    "taker_buy_base": BINANCE_TEXT_DTYPE,
    "taker_buy_quote": BINANCE_TEXT_DTYPE,
    "ignore": BINANCE_TEXT_DTYPE,
    **{c: BINANCE_TEXT_DTYPE if d == "string" else d for c, d in PROVENANCE_DTYPES.items()},
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


def raw_empty(layout: str) -> pd.DataFrame:
    """Zero-row raw frame with the exact dtypes of a raw layout ("binance" or "twelvedata")."""
    if layout not in RAW_DTYPES:
        raise ValueError(f"unknown raw layout {layout!r}; use one of {', '.join(RAW_DTYPES)}")
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in RAW_DTYPES[layout].items()})


def source_class(source: str) -> Any:
    """The adapter class registered for a source type (entry-point group data_puller_dagster.sources).

    A source plug-in's class carries `Options` (its pydantic options model, read from
    `sources.<type>`), `asset_classes`, `raw_layout` (which raw layout its frames use: "binance", or
    "twelvedata" for the generic `datetime, open, high, low, close, volume` text layout, so the
    normalizer's rules apply unchanged) and `from_options(options, cfg)`."""
    from data_puller_dagster import plugins

    return plugins.load(plugins.SOURCE_GROUP, source)


def raw_layout(source: str) -> str:
    return source if source in RAW_DTYPES else str(source_class(source).raw_layout)


def build_adapter(cfg: AppConfig, feed: FeedConfig) -> SourceAdapter:
    """The adapter for `feed.source`, configured from `sources.<type>` (one HTTP session per adapter)."""
    cls = source_class(feed.source)
    options = cfg.sources.options_for(feed.source)
    if not isinstance(options, cls.Options):
        options = cls.Options.model_validate(options)
    return cls.from_options(options, cfg)


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


def constant_text(value: str, n: int, dtype: str | pd.StringDtype = "string") -> pd.api.extensions.ExtensionArray:
    """`n` copies of `value` as a text array of `dtype`, built without a list of `n` references.

    Why: the provenance columns repeat one value per frame; a year of 1m candles is 527,040 rows.
    """
    dt = pd.api.types.pandas_dtype(dtype)
    if isinstance(dt, pd.StringDtype) and dt.storage == "pyarrow":
        data = value.encode()
        offsets = np.arange(n + 1, dtype=np.int64) * len(data)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data * n)]
        return dt.__from_arrow__(pa.Array.from_buffers(pa.large_string(), n, buffers))
    if isinstance(dt, pd.StringDtype) and dt.storage == "python":
        values = np.empty(n, dtype=object)
        values.fill(value)  # one shared str object (np.full would make a new one per row)
        return pd.arrays.StringArray(values)
    return pd.array([value] * n, dtype=dt)


def provenance_columns(
    ts: pd.Series,
    symbol: str,
    timeframe: str,
    source: str,
    fetched_at: pd.Timestamp | pd.api.extensions.ExtensionArray,
    text_dtype: str | pd.StringDtype = "string",
) -> dict[str, pd.api.extensions.ExtensionArray]:
    """The ts/symbol/timeframe/source/fetched_at columns of `len(ts)` rows, with the contract dtypes.

    `fetched_at`: one time for every row, or one per row (a frame assembled from several responses).
    `text_dtype`: the dtype of the three string columns (the provider's text dtype in `RAW_DTYPES`).
    """
    n = len(ts)
    utc = "datetime64[ns, UTC]"
    # `.array` (positional, like to_numpy) keeps the DatetimeArray; to_numpy() of a tz-aware column is an
    # object array of Timestamps that pandas then had to infer back, row by row.
    ts_array = ts.astype(utc, copy=False).array if n else pd.array([], dtype=utc)
    if isinstance(fetched_at, pd.api.extensions.ExtensionArray):
        fetched = pd.Series(fetched_at, copy=False).astype(utc, copy=False).array
    else:
        fetched = pd.Series(pd.Timestamp(fetched_at), index=pd.RangeIndex(n), dtype=utc).array
    return {
        "ts": ts_array,
        "symbol": constant_text(symbol, n, text_dtype),
        "timeframe": constant_text(timeframe, n, text_dtype),
        "source": constant_text(source, n, text_dtype),
        "fetched_at": fetched,
    }


def add_provenance(
    df: pd.DataFrame,
    ts: pd.Series,
    symbol: str,
    timeframe: str,
    source: str,
    fetched_at: pd.Timestamp | pd.api.extensions.ExtensionArray,
    text_dtype: str | pd.StringDtype = "string",
) -> pd.DataFrame:
    """Append ts/symbol/timeframe/source/fetched_at columns with the contract dtypes (vectorized)."""
    for name, values in provenance_columns(ts, symbol, timeframe, source, fetched_at, text_dtype).items():
        df[name] = values
    return df
