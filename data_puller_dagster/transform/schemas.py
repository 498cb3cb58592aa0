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
from pandera import dtypes as pa_dtypes
from pandera.engines import pandas_engine
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


def text_codes(s: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """(codes, distinct values) of a column like `pd.factorize` (missing -> -1, first-seen order).

    A column holding one string (one symbol, timeframe or asset class: the usual normalized frame) is
    settled by one vectorized comparison instead of hashing a million Python strings.
    """
    if len(s) and isinstance(first := s.iloc[0], str) and not isinstance(s.dtype, pd.CategoricalDtype):
        same: np.ndarray | None
        if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":  # Arrow compute, no strs
            same = (s == first).to_numpy(dtype=bool, na_value=False)
        else:
            try:
                same = np.asarray(np.asarray(s.array, dtype=object) == first, dtype=bool)
            except TypeError:  # pd.NA compares to NA, which has no truth value: take the general path
                same = None
        if same is not None and same.shape == (len(s),) and bool(same.all()):
            return np.zeros(len(s), dtype=np.intp), [first]
    codes, uniques = pd.factorize(s)
    return codes, list(uniques)


def ts_aligned(df: pd.DataFrame) -> pd.Series:
    """`ts` lies on its timeframe's grid (epoch grid; equity/index 1h/4h only need the half-hour grid,
    because their bars start at the 09:30 session open; `calendars.on_grid` is the exact check)."""
    tf_codes, tf_values = text_codes(df["timeframe"])  # per distinct timeframe, not per row
    tf_steps = [_TF_NS.get(v, 0) if isinstance(v, str) else 0 for v in tf_values]
    step = np.array([*tf_steps, 0], dtype=np.int64)[tf_codes]  # code -1 (missing): no grid
    ac_codes, ac_values = text_codes(df["asset_class"])
    exchange_class = np.array([isinstance(v, str) and v in ("equity", "index") for v in ac_values] + [False])
    exchange = exchange_class[ac_codes] & (step > _HALF_HOUR_NS) & (step < 86400 * 10**9)
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
    _, uniq = text_codes(s)  # nulls are not among the distinct values (cheaper than dropna on every row)
    return all(SYMBOL_PATTERN.match(str(u)) for u in uniq)


# --------------------------------------------------------------------------------------------- raw
@pandas_engine.Engine.register_dtype
@pa_dtypes.immutable(init=True)
class RawText(pandas_engine.STRING):
    """pandas "string" of either storage: Python objects or Arrow (`string[pyarrow]`).

    Binance raw text is Arrow-backed (sources.base.BINANCE_TEXT_DTYPE); Twelve Data's, and raw
    partitions stored before, hold Python strings; both hold the same values. Every other dtype is
    judged (and reported, as `dtype('string[python]')`) exactly as pandera's own string dtype does.
    """

    def check(self, pandera_dtype: pa_dtypes.DataType, data_container: Any = None) -> Any:
        try:
            resolved = pandas_engine.Engine.dtype(pandera_dtype)
        except TypeError:
            return False
        if isinstance(resolved, pandas_engine.STRING):
            return True if data_container is None else np.full(len(data_container), True, dtype=bool)
        return super().check(pandera_dtype, data_container)


class RawBinanceModel(pa.DataFrameModel):
    """Structure of a Binance klines frame (REST or archive) as the adapter hands it over.

    Values are deliberately not checked here (they are strings exactly as sent); normalize decides.
    """

    open_time: Series[np.int64]
    open: Series[RawText] = pa.Field(nullable=True)
    high: Series[RawText] = pa.Field(nullable=True)
    low: Series[RawText] = pa.Field(nullable=True)
    close: Series[RawText] = pa.Field(nullable=True)
    volume: Series[RawText] = pa.Field(nullable=True)
    close_time: Series[np.int64]
    quote_volume: Series[RawText] = pa.Field(nullable=True)
    trades: Series[np.int64]
    taker_buy_base: Series[RawText] = pa.Field(nullable=True)
    taker_buy_quote: Series[RawText] = pa.Field(nullable=True)
    ignore: Series[RawText] = pa.Field(nullable=True)
    ts: Series[UTC_TS] = pa.Field(nullable=True)
    symbol: Series[RawText]
    timeframe: Series[RawText] = pa.Field(isin=list(timeframes.TIMEFRAMES))
    source: Series[RawText] = pa.Field(isin=BINANCE_SOURCES)
    fetched_at: Series[UTC_TS]

    class Config:
        strict = False


class RawTwelveDataModel(pa.DataFrameModel):
    """Structure of a Twelve Data time_series frame as the adapter hands it over (strings as sent)."""

    datetime: Series[RawText] = pa.Field(nullable=True)
    open: Series[RawText] = pa.Field(nullable=True)
    high: Series[RawText] = pa.Field(nullable=True)
    low: Series[RawText] = pa.Field(nullable=True)
    close: Series[RawText] = pa.Field(nullable=True)
    volume: Series[RawText] = pa.Field(nullable=True)
    # meta.interval of the response; optional so raw partitions stored before it existed still read.
    interval: Series[RawText] | None = pa.Field(nullable=True)
    ts: Series[UTC_TS] = pa.Field(nullable=True)
    symbol: Series[RawText]
    timeframe: Series[RawText] = pa.Field(isin=list(timeframes.TIMEFRAMES))
    source: Series[RawText] = pa.Field(isin=TWELVEDATA_SOURCES)
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
    # inplace=True: pandera otherwise copies the whole frame before checking it (and every column again);
    # without coercion (none of these models coerces) validation only reads the frame.
    try:
        model.validate(df, lazy=True, inplace=True)
    except (SchemaErrors, SchemaError) as err:
        return _summarize(df, err, sample_rows)
    return ValidationSummary(ok=True, rows=len(df))


_FRAME_CHECKS = {
    "high_ge_open_close": high_ge_open_close,
    "low_le_open_close": low_le_open_close,
    "high_ge_low": high_ge_low,
    "ts_aligned": ts_aligned,
}


def _column_passes(col: Any, s: pd.Series) -> tuple[bool, np.ndarray | None]:
    """(whether every value of `s` provably passes column schema `col`, its integer sort codes or None).

    Only an exact dtype, the nullability and the checks this function knows (by name, with their
    statistics and ignore_na) are judged; anything else is "not proven".
    """
    if col.coerce or col.unique or col.regex or not col.required or s.dtype != getattr(col.dtype, "type", None):
        return False, None
    if isinstance(s.dtype, pd.StringDtype):
        codes, values = text_codes(s)
        if (codes < 0).any():  # a null: pandera reports it (or passes it) in its own words
            return False, None
        for check in col.checks:
            if check.name == "isin":
                ok = all(v in check.statistics["allowed_values"] for v in values)
            elif check.name == "symbol_pattern":
                ok = all(SYMBOL_PATTERN.match(str(v)) for v in values)
            else:
                return False, None
            if not ok:
                return False, None
        return True, codes
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        i8 = s.array.asi8
        return (not col.checks and (col.nullable or not (i8 == np.iinfo(np.int64).min).any())), i8
    if s.dtype == np.bool_:
        return not col.checks, None
    if s.dtype == np.float64 or isinstance(s.dtype, pd.Int64Dtype):
        v = s.to_numpy(dtype="float64", na_value=np.nan)  # Int64 as float: the sign and zero are exact
        null = np.isnan(v)
        if not col.nullable and null.any():
            return False, None
        for check in col.checks:
            with np.errstate(invalid="ignore"):
                if check.name == "greater_than":
                    ok = v > check.statistics["min_value"]
                elif check.name == "greater_than_or_equal_to":
                    ok = v >= check.statistics["min_value"]
                elif check.name == "finite_price":
                    ok = np.isfinite(v)
                else:
                    return False, None
            if not (ok | null if check.ignore_na else ok).all():
                return False, None
        return True, None
    return False, None


def proven_valid(schema: pa.DataFrameSchema, df: pd.DataFrame) -> bool:
    """Whether `df` passes `schema` by cheap whole-column tests (True), or pandera has to decide (False).

    Why: pandera checks nulls, allowed values and key uniqueness by scanning (and hashing) every Python
    string of the text columns several times - most of the cost of validating a million normalized
    rows, which normalize itself produces valid. This is only a sufficient test: the frame's columns and
    exact dtypes are the schema's, every check of the schema is one it knows (otherwise: not proven) and
    passes on every row, and the unique key is strictly increasing row over row (sorted keys are
    distinct). A frame it does not prove valid is validated (and reported) by pandera exactly as before.
    """
    if schema.strict is not True or not schema.ordered or schema.coerce or schema.index is not None:
        return False
    if list(df.columns) != list(schema.columns) or getattr(schema, "parsers", None):
        return False
    codes: dict[str, np.ndarray | None] = {}
    for name, col in schema.columns.items():
        ok, codes[name] = _column_passes(col, df[name])
        if not ok:
            return False
    for check in schema.checks:
        fn = _FRAME_CHECKS.get(check.name)
        if fn is None or not np.asarray(fn(df), dtype=bool).all():
            return False
    if schema.unique and len(df) > 1:
        keys = [codes.get(c) for c in ([schema.unique] if isinstance(schema.unique, str) else schema.unique)]
        if any(k is None for k in keys):
            return False
        greater = np.zeros(len(df) - 1, dtype=bool)
        equal = np.ones(len(df) - 1, dtype=bool)
        for k in keys:
            before, after = k[:-1], k[1:]  # type: ignore[index]
            greater |= equal & (after > before)
            equal &= after == before
        if not greater.all():
            return False
    return True


def validate_normalized(df: pd.DataFrame, sample_rows: int = 10) -> ValidationSummary:
    """Lazily validate a canonical frame; never raises for data problems, reports them."""
    if proven_valid(NormalizedModel.to_schema(), df):
        return ValidationSummary(ok=True, rows=len(df))
    return _validate(NormalizedModel, df, sample_rows)


def validate_enriched(df: pd.DataFrame, sample_rows: int = 10) -> ValidationSummary:
    return _validate(EnrichedModel, df, sample_rows)


def validate_raw(df: pd.DataFrame, sample_rows: int = 10) -> ValidationSummary:
    """Validate an adapter's raw frame against the model of its provider (by its columns)."""
    model = RawBinanceModel if "open_time" in df.columns else RawTwelveDataModel
    return _validate(model, df, sample_rows)
