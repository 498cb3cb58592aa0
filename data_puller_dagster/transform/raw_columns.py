"""Raw column parsers for normalize(): one vectorized conversion per column, whatever form it arrived in.

Why a module of their own: each is a small exactness-preserving conversion (text to float bit-identical
to Python's `float`, epoch values in any unit, Twelve Data's local strings, text columns factorized once)
with its own fast and slow paths; normalize() composes them and applies the rules.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_puller_dagster import timeframes


def arrow_text(s: pd.Series) -> pa.Array | None:
    """The Arrow data of a text column (string[pyarrow]: its own; string[python]: converted), else None."""
    if not isinstance(s.dtype, pd.StringDtype):
        return None
    if s.dtype.storage == "python":  # one C pass over the str objects (np.asarray: no copy; <NA> -> null)
        return pa.array(np.asarray(s.array, dtype=object), type=pa.string(), from_pandas=True)
    return pa.array(s.array)  # Arrow storage: its own buffers


def python_text(s: pd.Series) -> pd.Series:
    """`s` with Python string storage (the rare slow paths below were written, and are exact, for it)."""
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage != "python":
        return s.astype(pd.StringDtype("python"))
    return s


def to_float(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, unparseable mask). Null stays NaN and is *not* unparseable; junk text is.

    Text columns without nulls are parsed by Arrow's C++ cast (no Python object per value): for every
    string it accepts and parses to a finite number, the result is bit-identical to Python's `float`
    (both round correctly). Anything else - a null, a string Arrow refuses (" 5", "1_0"), a
    non-finite result - takes the original NumPy/pandas path on Python strings, so the values and
    the unparseable mask stay exactly what they were.
    """
    if pd.api.types.is_float_dtype(s.dtype) or pd.api.types.is_integer_dtype(s.dtype):
        vals = s.to_numpy(dtype="float64", na_value=np.nan, copy=True)  # never a view of the raw frame
        return vals, np.zeros(len(s), dtype=bool)
    arrow = arrow_text(s)
    if arrow is not None and len(s) and arrow.null_count == len(s):  # e.g. forex volume: all missing
        return np.full(len(s), np.nan), np.zeros(len(s), dtype=bool)
    if arrow is not None and arrow.null_count == 0:
        try:
            vals = pc.cast(arrow, pa.float64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            vals = None
        if vals is not None and np.isfinite(vals).all():
            return vals, np.zeros(len(s), dtype=bool)
    s = python_text(s)
    try:  # numpy's C string->float on clean columns (np.asarray: no copy of a StringArray)
        vals = np.asarray(s.array, dtype=object).astype(np.float64)
        return vals, np.zeros(len(s), dtype=bool)
    except (ValueError, TypeError):
        pass
    vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isnan(vals) & s.notna().to_numpy()
    return vals, bad


def as_text(s: pd.Series) -> pd.Series:
    """`s` as a pandas string column (either storage kept), like `astype("string")` for other dtypes."""
    return s if isinstance(s.dtype, pd.StringDtype) else s.astype("string")


def text_codes(s: pd.Series) -> tuple[np.ndarray, list[object]]:
    """(codes, sorted distinct values) of a column as text; code -1 for nulls, like
    `pd.factorize(sort=True)`.

    The usual raw frame has one symbol, one timeframe and one source: one vectorized comparison then
    settles it (no hashing of a million strings). The column is rebuilt from these few values instead
    of converted row by row: an Arrow column costs no Python object per row, a Python one shares one
    object per distinct value.
    """
    s = as_text(s)
    if len(s) and isinstance(first := s.iloc[0], str):
        if s.dtype.storage == "python":  # NumPy's object comparison (pandas' own adds a mask pass)
            try:
                eq = np.asarray(np.asarray(s.array, dtype=object) == first, dtype=bool)  # no copy of the array
                same = eq.shape == (len(s),) and bool(eq.all())
            except TypeError:  # <NA> == str has no truth value: not a one-value column
                same = False
        else:
            same = bool((s == first).to_numpy(dtype=bool, na_value=False).all())
        if same:
            return np.zeros(len(s), dtype=np.intp), [first]
    codes, uniques = pd.factorize(s, sort=True)
    return codes, list(uniques)


def from_codes(codes: np.ndarray, uniques: list[object]) -> pd.Series:
    """The "string" column whose row i is uniques[codes[i]] (<NA> where the code is -1)."""
    values = np.empty(len(uniques) + 1, dtype=object)
    values[: len(uniques)] = uniques
    values[-1] = pd.NA  # index -1
    return pd.Series(pd.arrays.StringArray(values[codes]), copy=False)


def trades_column(col: pd.Series) -> pd.Series:
    """Trades as Int64 (rounded), <NA> where missing or unparseable."""
    if col.dtype == np.int64:
        v = col.to_numpy()
        if len(v) == 0 or int(np.abs(v).max()) <= 2**53:  # exact in float64: the round trip is the identity
            return pd.Series(pd.array(v, dtype="Int64"), copy=False)
    return pd.to_numeric(col, errors="coerce").astype("Float64").round().astype("Int64")


def ts_unit(v: np.ndarray) -> np.ndarray:
    """ns per unit of each Binance epoch value, decided by magnitude (s, ms, µs or ns)."""
    return np.select([v < 10**11, v < 10**14, v < 10**17], [10**9, 10**6, 10**3], 1)


def epoch_ints(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, valid mask) of an epoch column that may arrive as ints, floats or text."""
    if pd.api.types.is_integer_dtype(col.dtype) and not isinstance(col.dtype, pd.Int64Dtype):
        v = col.to_numpy(dtype="int64")
        return v, v > 0
    num = pd.to_numeric(col, errors="coerce").astype("Float64")
    valid = (num.notna() & (num > 0) & (num == num.round())).fillna(False).to_numpy(dtype=bool)
    return np.where(valid, num.fillna(0).to_numpy(dtype="float64"), 0).astype("int64"), valid


def binance_interval_s(raw: pd.DataFrame) -> np.ndarray:
    """Seconds each kline says it spans (`close_time - open_time + 1`, in open_time's unit); NaN if unknown."""
    if "close_time" not in raw.columns:
        return np.full(len(raw), np.nan)
    ot, ot_ok = epoch_ints(raw["open_time"])
    ct, ct_ok = epoch_ints(raw["close_time"])
    ok = ot_ok & ct_ok & (ct >= ot)
    span = np.where(ok, ct - ot + 1, 0).astype("float64") * ts_unit(np.where(ok, ot, 1)) / 1e9
    return np.where(ok, span, np.nan)


def twelvedata_interval_s(raw: pd.DataFrame) -> np.ndarray:
    """Seconds of the `interval` the response's meta stated (NaN where the raw frame has none)."""
    if "interval" not in raw.columns:
        return np.full(len(raw), np.nan)
    text = raw["interval"].astype("string")
    uniq = pd.unique(text.dropna())  # a handful of names per frame, not per row
    secs = {u: timeframes.interval_seconds(u) for u in uniq}
    mapped = text.map(lambda u: secs.get(u) if u is not pd.NA else None, na_action="ignore")
    return pd.to_numeric(mapped, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def binance_ts(raw: pd.DataFrame) -> tuple[np.ndarray, pd.Series]:
    """open_time in s/ms/µs/ns (by magnitude) -> ns int64 (NaT value where unparseable), raw text."""
    ot = raw["open_time"]
    v, valid = epoch_ints(ot)
    mult = ts_unit(v)
    with np.errstate(over="ignore"):
        ns = v * mult
    valid &= (ns // mult) == v  # overflow guard
    ns = np.where(valid, ns, np.iinfo("int64").min)
    return ns, ot  # stringified only for quarantined rows


def twelvedata_ts(raw: pd.DataFrame, raw_tz: str) -> tuple[np.ndarray, pd.Series]:
    """Twelve Data `datetime` strings ("YYYY-MM-DD HH:MM:SS" or "YYYY-MM-DD", in raw_tz) -> UTC ns."""
    text = raw["datetime"].astype("string")
    parsed = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    todo = parsed.isna() & text.notna()
    if todo.any():
        parsed.loc[todo] = pd.to_datetime(text[todo], format="%Y-%m-%d", errors="coerce")
    local = parsed.dt.tz_localize(raw_tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    ns = local.to_numpy("datetime64[ns]").view("int64").copy()
    todo = local.isna() & text.notna()
    if todo.any():  # explicit offsets ("2023-08-24T11:09:00+00:00") are honoured, never reinterpreted
        iso = pd.to_datetime(text[todo], format="ISO8601", errors="coerce", utc=True)
        ns[todo.to_numpy()] = iso.to_numpy("datetime64[ns]").view("int64")
    return ns, text


def utc_col(raw: pd.DataFrame, col: str) -> pd.Series:
    s = raw[col]
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        s = pd.to_datetime(s, errors="coerce", utc=True)
    return s.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
