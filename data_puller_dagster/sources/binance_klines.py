"""Binance kline rows -> the raw frame's columns: the wire format's parsing, shared by REST, archive and
websocket.

Why a module of its own: REST bodies (JSON lists of 12 fields), archive CSVs and websocket events all
end in the same raw columns, and the exactness rules live here once: integral epochs and counts (else a
MalformedResponseError naming the column), price and volume text kept verbatim (Arrow strings when
pandas uses them), open times in ms or µs (the archive switched in 2025) normalized to ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data_puller_dagster.sources.base import BINANCE_RAW_DTYPES, KLINE_FIELDS, provenance_columns, raw_empty
from data_puller_dagster.sources.errors import MalformedResponseError

PROVIDER = "binance"
_MICROS_THRESHOLD = 10**14  # ms epochs have 13 digits until year 5138; µs have 16


def _int_column(values: pd.Series, name: str, what: str) -> np.ndarray:
    """Strictly integral int64 (no NaN, no fractions); else MalformedResponseError naming the column."""
    num = pd.to_numeric(values, errors="coerce")
    arr = num.to_numpy(dtype="float64", na_value=np.nan) if len(num) else np.empty(0)
    bad = np.isnan(arr) | (arr != np.floor(arr))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MalformedResponseError(
            f"{what}: {int(bad.sum())} row(s) have a non-integer {name} (first: {values.iloc[i]!r}); "
            "the response is not Binance's 12-field kline format",
            provider=PROVIDER,
        )
    # Re-parse as int64 directly to avoid float rounding of 16-digit µs epochs.
    return pd.to_numeric(values, errors="raise").astype("int64").to_numpy()


# One response's klines as columns: int64 arrays for INT_FIELDS (epochs as sent, µs not yet converted)
# and, for the text fields (exactly as sent), the storage of the raw frame's text dtype: Arrow
# large_string arrays ("string[pyarrow]") or object arrays of str ("string", Python storage).
KlineColumns = dict[str, "np.ndarray | pa.Array"]
INT_FIELDS = ("open_time", "close_time", "trades")


def text_dtype() -> pd.StringDtype:
    """The dtype of the Binance raw frame's text columns (base.BINANCE_TEXT_DTYPE, read at call time)."""
    return pd.api.types.pandas_dtype(BINANCE_RAW_DTYPES["open"])


def _arrow_text() -> bool:
    return text_dtype().storage == "pyarrow"


def frame_columns(rows: pd.DataFrame, what: str) -> KlineColumns:
    """12 kline columns of any object dtype (archive CSV text, decoded JSON) -> typed columns.

    Integer fields must be integral (int or text); text fields become strings exactly like
    `astype("string")` (a number sent where Binance sends text keeps its Python spelling).
    """
    if rows.shape[1] != len(KLINE_FIELDS):
        raise MalformedResponseError(
            f"{what}: kline rows have {rows.shape[1]} fields, expected {len(KLINE_FIELDS)}", provider=PROVIDER
        )
    rows.columns = KLINE_FIELDS
    rows = rows.reset_index(drop=True)
    cols: KlineColumns = {c: _int_column(rows[c], c, what) for c in INT_FIELDS}
    arrow = _arrow_text()
    for c in KLINE_FIELDS:
        if c not in INT_FIELDS:
            text = rows[c].astype("string").array
            cols[c] = pa.array(text, type=pa.large_string()) if arrow else text.to_numpy(dtype=object)
    return cols


def _exact_columns(body: list[Any]) -> KlineColumns | None:
    """The columns of a body shaped exactly as Binance sends it, or None to take the general path.

    Why: decoding into a frame of Python objects and converting it column by column cost ~7 ms a page
    under the GIL (most of a REST pull's CPU). Here the rows are transposed in C (`zip`) and each
    column converted once to NumPy/Arrow; the row lists die with the page. Exactly: every row a list of
    12, the integer fields Python ints within int64, the text fields str (Arrow rejects any other
    value itself except bytes, which a decoded JSON body never holds). Anything else (numbers as text,
    floats, nulls, short rows) returns None, so `frame_columns` accepts or rejects it as before, with
    the same values or errors.
    """
    if set(map(type, body)) != {list} or set(map(len, body)) != {len(KLINE_FIELDS)}:
        return None
    arrow = _arrow_text()
    cols: KlineColumns = {}
    for name, values in zip(KLINE_FIELDS, zip(*body, strict=True), strict=True):
        if name in INT_FIELDS:
            if set(map(type, values)) != {int}:  # np.array would also take floats, bools and text
                return None
            try:
                cols[name] = np.array(values, dtype=np.int64)
            except OverflowError:
                return None
        elif arrow:  # Arrow copies the text out of the str objects
            try:
                cols[name] = pa.array(values, type=pa.large_string())
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                return None
            if cols[name].null_count:
                return None
        else:  # Python storage keeps the decoded str objects themselves
            if set(map(type, values)) != {str}:
                return None
            cols[name] = np.array(values, dtype=object)
    return cols


def kline_columns(body: Any, what: str) -> KlineColumns:
    """A decoded `/api/v3/klines` body (list of 12-field lists) -> its typed columns.

    Raises MalformedResponseError (naming `what`) for a body that is not an array of 12-field,
    non-null kline rows.
    """
    if not isinstance(body, list):
        raise MalformedResponseError(
            f"{what}: expected a JSON array of klines, got {type(body).__name__}", provider=PROVIDER
        )
    if not body:
        return {c: np.empty(0, "int64" if c in INT_FIELDS else object) for c in KLINE_FIELDS}
    cols = _exact_columns(body)
    if cols is not None:
        return cols
    try:
        rows = pd.DataFrame(body, dtype=object)
    except (ValueError, TypeError) as e:
        raise MalformedResponseError(f"{what}: kline rows are not arrays ({e})", provider=PROVIDER) from None
    if rows.shape[1] != len(KLINE_FIELDS) or rows.isna().to_numpy().any():
        short = int(rows.isna().any(axis=1).sum()) if rows.shape[1] == len(KLINE_FIELDS) else len(rows)
        raise MalformedResponseError(
            f"{what}: {short} kline row(s) do not have the {len(KLINE_FIELDS)} non-null fields of Binance's "
            "kline format", provider=PROVIDER)  # fmt: skip
    return frame_columns(rows, what)


def _text_array(parts: list[np.ndarray | pa.Array], dtype: pd.StringDtype) -> pd.api.extensions.ExtensionArray:
    """One text column of `dtype` from the pages' parts (Arrow arrays or object arrays of str / NA)."""
    if dtype.storage == "pyarrow":
        arrays = [
            p if isinstance(p, pa.Array) else pa.array(p, type=pa.large_string(), from_pandas=True) for p in parts
        ]
        return dtype.__from_arrow__(pa.chunked_array(arrays, type=pa.large_string()).combine_chunks())
    objects = [p.to_numpy(zero_copy_only=False) if isinstance(p, pa.Array) else p for p in parts]
    # A fresh array (concatenated, or the only page's own), so StringArray may normalize its nulls in place.
    return pd.arrays.StringArray(np.concatenate(objects) if len(objects) > 1 else objects[0])


def ms_epochs(v: np.ndarray) -> np.ndarray:
    """Epochs in ms: the archive's µs values (2025+) divided down, ms values unchanged."""
    micros = v >= _MICROS_THRESHOLD
    return np.where(micros, v // 1000, v) if micros.any() else v


def columns_frame(
    pages: list[tuple[KlineColumns, pd.Timestamp]], symbol: str, timeframe: str, source: str
) -> pd.DataFrame:
    """(columns, fetched_at) of one or more responses, in order -> one Binance raw frame.

    Why once for all pages: building (and concatenating) a frame per 1,000-row page was a third of a
    REST pull's CPU. Each column is concatenated once and the pages' arrays are released as it goes
    (the page dicts are emptied), so a year holds about one copy of its columns at a time.
    """
    lengths = np.array([len(cols["open_time"]) for cols, _ in pages], dtype="int64")
    n = int(lengths.sum())
    if n == 0:
        return raw_empty(PROVIDER)
    text = text_dtype()
    out: dict[str, Any] = {}
    for c in KLINE_FIELDS:
        parts = [cols.pop(c) for cols, _ in pages]
        if c in INT_FIELDS:
            v = np.concatenate(parts) if len(parts) > 1 else parts[0]
            out[c] = ms_epochs(v) if c != "trades" else v
        else:
            out[c] = _text_array(parts, text)
        del parts
    ts = pd.Series(pd.to_datetime(out["open_time"], unit="ms", utc=True))
    fetched_ns = np.array([pd.Timestamp(f).as_unit("ns").value for _, f in pages], dtype="int64")  # per page
    fetched = pd.array(np.repeat(fetched_ns, lengths).view("datetime64[ns]"), dtype="datetime64[ns]")
    out.update(provenance_columns(ts, symbol, timeframe, source, fetched.tz_localize("UTC"), text))
    # One frame from finished columns (no column inserts); copy=False keeps them as they are.
    return pd.DataFrame(out, index=pd.RangeIndex(n), copy=False)


def klines_frame(
    rows: pd.DataFrame, symbol: str, timeframe: str, source: str, fetched_at: pd.Timestamp, what: str
) -> pd.DataFrame:
    """12 kline columns (any object dtype) -> Binance raw frame. µs epochs are converted to ms."""
    return columns_frame([(frame_columns(rows, what), fetched_at)], symbol, timeframe, source)


def parse_klines_body(
    body: Any, symbol: str, timeframe: str, fetched_at: pd.Timestamp, what: str
) -> pd.DataFrame:
    """A `/api/v3/klines` JSON body (list of 12-field lists) -> Binance raw frame ("binance" source)."""
    return columns_frame([(kline_columns(body, what), fetched_at)], symbol, timeframe, "binance")
