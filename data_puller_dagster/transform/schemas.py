"""pandera models of every OHLCV layer: raw (per provider), normalized (canonical) and enriched.

Why pandera models *and* `normalize`: normalize enforces the rules row by row (moving bad rows to
quarantine); the models are the independent contract check the normalized asset runs before storing,
so a bug in normalize (or a hand-edited file) cannot slip into final stores. Validation is lazy (every
failing rule is reported with its count, not just the first) and cheap: only built-in vectorized
checks and whole-frame vectorized checks, never element-wise Python checks, so it keeps up with
normalize on millions of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors
from pandera.typing.pandas import Series

from data_puller_dagster import timeframes
from data_puller_dagster.symbols import SYMBOL_PATTERN
from data_puller_dagster.transform.canonical import CANONICAL_COLUMNS, CANONICAL_DTYPES, SCHEMA_VERSION

UTC_TS = Annotated[pd.DatetimeTZDtype, "ns", "UTC"]
ASSET_CLASSES = ["crypto", "forex", "equity", "commodity", "index"]
BINANCE_SOURCES = ["binance", "binance_archive"]
TWELVEDATA_SOURCES = ["twelvedata"]
ENRICHED_OPTIONAL = {"indicators_ready": "bool", "complete": "bool", "source_candles": "Int64"}
_TF_NS = {tf: timeframes.seconds(tf) * 10**9 for tf in timeframes.TIMEFRAMES}
_HALF_HOUR_NS = 1800 * 10**9


# ------------------------------------------------------------------------------------ shared checks
def high_ge_open_close(df: pd.DataFrame) -> pd.Series:
    """OHLC integrity: the high is at least the open and the close."""
    return df["high"] >= np.maximum(df["open"], df["close"])


def low_le_open_close(df: pd.DataFrame) -> pd.Series:
    """OHLC integrity: the low is at most the open and the close."""
    return df["low"] <= np.minimum(df["open"], df["close"])


def high_ge_low(df: pd.DataFrame) -> pd.Series:
    return df["high"] >= df["low"]


def ts_aligned(df: pd.DataFrame) -> pd.Series:
    """`ts` lies on its timeframe's grid (epoch grid; equity/index 1h/4h only need the half-hour grid,
    because their bars start at the 09:30 session open; `calendars.on_grid` is the exact check)."""
    step = df["timeframe"].map(_TF_NS).astype("float64").fillna(0).to_numpy().astype("int64")
    exchange = df["asset_class"].isin(["equity", "index"]).to_numpy() & (step > _HALF_HOUR_NS) & (step < 86400 * 10**9)
    step = np.where(exchange, _HALF_HOUR_NS, step)
    values = df["ts"].to_numpy("datetime64[ns]").view("int64")
    ok = (step > 0) & (values % np.where(step > 0, step, 1) == 0)
    return pd.Series(ok, index=df.index)


def exempt_all_null_rows(df: pd.DataFrame, ok: pd.Series) -> pd.Series:
    """pandera's `ignore_na` for a row-wise dataframe check: rows whose every column is null pass.

    Same result as pandera's `ok | df.isna().all(axis=1)`, but computed only when some row failed, column
    by column (numeric columns first) and stopping at the first column without nulls; pandera's version
    runs `isna()` over the whole frame on every check, which on `string[python]` columns was most of the
    cost of validating a million rows. Checks using it are declared with `ignore_na=False`.
    """
    ok = ok if isinstance(ok, pd.Series) else pd.Series(ok, index=df.index)
    if len(ok) == 0 or bool(ok.all()) or not ok.index.equals(df.index):
        return ok
    cols = sorted(df.columns, key=lambda c: df[c].dtype == object or isinstance(df[c].dtype, pd.StringDtype))
    all_null = np.ones(len(df), dtype=bool)
    for c in cols:
        all_null &= df[c].isna().to_numpy(dtype=bool)
        if not all_null.any():
            return ok
    return ok | all_null


def symbols_valid(s: pd.Series) -> bool:
    """Every distinct symbol matches the project's symbol pattern (checked once per distinct value)."""
    uniq = pd.unique(s.dropna())
    return all(SYMBOL_PATTERN.match(str(u)) for u in uniq)


# --------------------------------------------------------------------------------------------- raw
class RawBinanceModel(pa.DataFrameModel):
    """Structure of a Binance klines frame (REST or archive) as the adapter hands it over.

    Values are deliberately not checked here (they are strings exactly as sent); normalize decides.
    """

    open_time: Series[np.int64]
    open: Series[pd.StringDtype] = pa.Field(nullable=True)
    high: Series[pd.StringDtype] = pa.Field(nullable=True)
    low: Series[pd.StringDtype] = pa.Field(nullable=True)
    close: Series[pd.StringDtype] = pa.Field(nullable=True)
    volume: Series[pd.StringDtype] = pa.Field(nullable=True)
    close_time: Series[np.int64]
    quote_volume: Series[pd.StringDtype] = pa.Field(nullable=True)
    trades: Series[np.int64]
    taker_buy_base: Series[pd.StringDtype] = pa.Field(nullable=True)
    taker_buy_quote: Series[pd.StringDtype] = pa.Field(nullable=True)
    ignore: Series[pd.StringDtype] = pa.Field(nullable=True)
    ts: Series[UTC_TS] = pa.Field(nullable=True)
    symbol: Series[pd.StringDtype]
    timeframe: Series[pd.StringDtype] = pa.Field(isin=list(timeframes.TIMEFRAMES))
    source: Series[pd.StringDtype] = pa.Field(isin=BINANCE_SOURCES)
    fetched_at: Series[UTC_TS]

    class Config:
        strict = False


class RawTwelveDataModel(pa.DataFrameModel):
    """Structure of a Twelve Data time_series frame as the adapter hands it over (strings as sent)."""

    datetime: Series[pd.StringDtype] = pa.Field(nullable=True)
    open: Series[pd.StringDtype] = pa.Field(nullable=True)
    high: Series[pd.StringDtype] = pa.Field(nullable=True)
    low: Series[pd.StringDtype] = pa.Field(nullable=True)
    close: Series[pd.StringDtype] = pa.Field(nullable=True)
    volume: Series[pd.StringDtype] = pa.Field(nullable=True)
    # meta.interval of the response; optional so raw partitions stored before it existed still read.
    interval: Series[pd.StringDtype] | None = pa.Field(nullable=True)
    ts: Series[UTC_TS] = pa.Field(nullable=True)
    symbol: Series[pd.StringDtype]
    timeframe: Series[pd.StringDtype] = pa.Field(isin=list(timeframes.TIMEFRAMES))
    source: Series[pd.StringDtype] = pa.Field(isin=TWELVEDATA_SOURCES)
    fetched_at: Series[UTC_TS]

    class Config:
        strict = False


# -------------------------------------------------------------------------------------- normalized
class NormalizedModel(pa.DataFrameModel):
    """The canonical table (`canonical.CANONICAL_DTYPES`, schema version `SCHEMA_VERSION`): exactly
    these columns in this order with these dtypes, and every OHLC integrity rule."""

    ts: Series[UTC_TS] = pa.Field(nullable=False)
    symbol: Series[pd.StringDtype] = pa.Field(nullable=False)
    asset_class: Series[pd.StringDtype] = pa.Field(isin=ASSET_CLASSES)
    timeframe: Series[pd.StringDtype] = pa.Field(isin=list(timeframes.TIMEFRAMES))
    source: Series[pd.StringDtype] = pa.Field(nullable=False)
    open: Series[np.float64] = pa.Field(gt=0, nullable=False)
    high: Series[np.float64] = pa.Field(gt=0, nullable=False)
    low: Series[np.float64] = pa.Field(gt=0, nullable=False)
    close: Series[np.float64] = pa.Field(gt=0, nullable=False)
    volume: Series[np.float64] = pa.Field(ge=0, nullable=True)
    trades: Series[pd.Int64Dtype] = pa.Field(ge=0, nullable=True)
    quote_volume: Series[np.float64] = pa.Field(ge=0, nullable=True)
    fetched_at: Series[UTC_TS] = pa.Field(nullable=False)
    is_final: Series[bool] = pa.Field(nullable=False)

    class Config:
        strict = True
        ordered = True
        unique = ["symbol", "timeframe", "ts"]

    @pa.check("symbol", name="symbol_pattern", ignore_na=False)  # symbols_valid skips nulls itself
    @classmethod
    def _symbol_pattern(cls, s: pd.Series) -> bool:
        return symbols_valid(s)

    @pa.check("open", "high", "low", "close", name="finite_price")
    @classmethod
    def _finite(cls, s: pd.Series) -> pd.Series:
        return pd.Series(np.isfinite(s.to_numpy()), index=s.index)

    @pa.dataframe_check(name="high_ge_open_close", ignore_na=False)
    @classmethod
    def _high(cls, df: pd.DataFrame) -> pd.Series:
        return exempt_all_null_rows(df, high_ge_open_close(df))

    @pa.dataframe_check(name="low_le_open_close", ignore_na=False)
    @classmethod
    def _low(cls, df: pd.DataFrame) -> pd.Series:
        return exempt_all_null_rows(df, low_le_open_close(df))

    @pa.dataframe_check(name="high_ge_low", ignore_na=False)
    @classmethod
    def _hl(cls, df: pd.DataFrame) -> pd.Series:
        return exempt_all_null_rows(df, high_ge_low(df))

    @pa.dataframe_check(name="ts_aligned", ignore_na=False)
    @classmethod
    def _aligned(cls, df: pd.DataFrame) -> pd.Series:
        return exempt_all_null_rows(df, ts_aligned(df))


class EnrichedModel(NormalizedModel):
    """Normalized columns (same order, first) + float64 indicator columns + `indicators_ready` bool.

    Extra columns are allowed but must be float64, except the known non-float extras in
    `ENRICHED_OPTIONAL` (`complete`/`source_candles` of resampled bars)."""

    indicators_ready: Series[bool] = pa.Field(nullable=False)

    class Config:
        strict = False
        ordered = False
        unique = ["symbol", "timeframe", "ts"]

    @pa.dataframe_check(name="canonical_columns_first")
    @classmethod
    def _canonical_first(cls, df: pd.DataFrame) -> bool:
        return list(df.columns[: len(CANONICAL_COLUMNS)]) == CANONICAL_COLUMNS

    @pa.dataframe_check(name="extra_columns_float64")
    @classmethod
    def _extras_float(cls, df: pd.DataFrame) -> bool:
        extras = [c for c in df.columns if c not in CANONICAL_DTYPES]
        return all(
            str(df[c].dtype) == ENRICHED_OPTIONAL.get(c, "float64") for c in extras
        )


# ------------------------------------------------------------------------------------ validation
@dataclass
class ValidationSummary:
    """Outcome of a lazy validation: every failing rule with its count and a few offending rows.

    `failures` maps "<column or DataFrameSchema>:<check>" to the number of failure cases.
    """

    ok: bool
    failures: dict[str, int] = field(default_factory=dict)
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)
    rows: int = 0
    schema_version: int = SCHEMA_VERSION

    def as_metadata(self) -> dict[str, Any]:
        return {"schema_ok": self.ok, "schema_failures": dict(self.failures), "schema_version": self.schema_version}


def _summarize(df: pd.DataFrame, err: SchemaErrors | SchemaError, sample_rows: int) -> ValidationSummary:
    fc = err.failure_cases if isinstance(err, SchemaErrors) else err.failure_cases
    if isinstance(fc, pd.DataFrame) and len(fc):
        cols = fc["column"].astype("string").fillna("DataFrameSchema") if "column" in fc else "DataFrameSchema"
        key = (pd.Series(cols, index=fc.index).astype(str) + ":" + fc["check"].astype(str)).to_numpy()
        failures = {str(k): int(v) for k, v in pd.Series(key).value_counts().items()}
        idx = pd.Series(fc.get("index", pd.Series(dtype=object))).dropna().unique()
        idx = [i for i in idx if i in df.index][:sample_rows]
        sample = df.loc[idx] if idx else df.head(0)
    else:
        failures = {str(err).splitlines()[0][:200]: 1}
        sample = df.head(0)
    return ValidationSummary(ok=False, failures=failures, sample=sample, rows=len(df))


def _validate(model: type[pa.DataFrameModel], df: pd.DataFrame, sample_rows: int) -> ValidationSummary:
    try:
        model.validate(df, lazy=True)
    except (SchemaErrors, SchemaError) as err:
        return _summarize(df, err, sample_rows)
    return ValidationSummary(ok=True, rows=len(df))


def validate_normalized(df: pd.DataFrame, sample_rows: int = 10) -> ValidationSummary:
    """Lazily validate a canonical frame; never raises for data problems, reports them."""
    return _validate(NormalizedModel, df, sample_rows)


def validate_enriched(df: pd.DataFrame, sample_rows: int = 10) -> ValidationSummary:
    return _validate(EnrichedModel, df, sample_rows)


def validate_raw(df: pd.DataFrame, sample_rows: int = 10) -> ValidationSummary:
    """Validate an adapter's raw frame against the model of its provider (by its columns)."""
    model = RawBinanceModel if "open_time" in df.columns else RawTwelveDataModel
    return _validate(model, df, sample_rows)
