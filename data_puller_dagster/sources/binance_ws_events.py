"""Kline websocket events -> the Binance raw frame, one micro-batch at a time.

Why a batch at a time: one `orjson.loads` over the joined messages decodes the whole micro-batch in C,
and each field becomes one column (one list comprehension and one Arrow/NumPy conversion per field), so
the per-event cost is a few dictionary lookups, not a frame per event. The frame has exactly the raw
layout of the REST adapter (`sources/base.py` BINANCE_RAW_DTYPES, prices as the text Binance sent), so
`transform.normalize` applies every rule unchanged: kline field `t` is `open_time`, `T` `close_time`,
`o/h/l/c/v` the prices and volume, `q` `quote_volume`, `n` `trades`, `V/Q` the taker volumes, `B`
`ignore`; the provenance columns say `source` "binance_ws" and `fetched_at` is the receipt time.

What the raw layout has no column for travels beside the frame, positionally aligned: `final` (`k.x`:
only a closed candle is final; the stream runner sets `is_final` from it), the event time `E` (lag and
latency) and the connection each event came on.

An event whose fields are missing or of the wrong type does not fail the batch: its columns take the
general path (text from any value, integers coerced, missing as null) and normalize quarantines the row
(e.g. `unparseable_price`). Messages that are not kline events (subscription answers) are counted and
skipped; messages that are not JSON at all are counted as `malformed`.
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from data_puller_dagster.sources.base import BINANCE_RAW_DTYPES, constant_text
from data_puller_dagster.sources.binance_klines import text_dtype
from data_puller_dagster.sources.live import RawBatch, empty_batch

SOURCE = "binance_ws"
# raw column <- kline field
TEXT_FIELDS = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v", "quote_volume": "q",
               "taker_buy_base": "V", "taker_buy_quote": "Q", "ignore": "B"}  # fmt: skip
INT_FIELDS = {"open_time": "t", "close_time": "T", "trades": "n"}


def _decode(messages: list[bytes]) -> tuple[list[object], int]:
    """All messages in one orjson call; a batch holding a broken message is decoded one by one."""
    try:
        return orjson.loads(b"[" + b",".join(messages) + b"]"), 0
    except orjson.JSONDecodeError:
        out, bad = [], 0
        for m in messages:
            try:
                out.append(orjson.loads(m))
            except orjson.JSONDecodeError:
                out.append(None)
                bad += 1
        return out, bad


def _text(values: list[object]) -> pd.api.extensions.ExtensionArray:
    dtype = text_dtype()
    try:
        arr = pa.array(values, type=pa.large_string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a number or other value where Binance sends text
        arr = pa.array([None if v is None else str(v) for v in values], type=pa.large_string())
    if dtype.storage == "pyarrow":
        return dtype.__from_arrow__(arr)
    return pd.array(arr.to_pylist(), dtype=dtype)


def _ints(values: list[object]) -> np.ndarray | pd.api.extensions.ExtensionArray:
    try:
        if set(map(type, values)) <= {int}:
            return np.array(values, dtype=np.int64)
    except OverflowError:
        pass
    return pd.array(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce"), dtype="Float64")


def parse_events(
    messages: list[bytes], received_ns: list[int], conns: list[int], timeframe: str
) -> RawBatch:
    """Kline events (combined-stream wrapped or raw) -> RawBatch of the Binance raw layout."""
    if not messages:
        return empty_batch()
    decoded, malformed = _decode(messages)
    keep: list[int] = []
    datas: list[dict] = []
    for i, d in enumerate(decoded):  # unwrap; a loop of one isinstance and two lookups per event
        if isinstance(d, dict) and "data" in d:
            d = d["data"]
        if isinstance(d, dict) and d.get("e") == "kline" and isinstance(d.get("k"), dict):
            keep.append(i)
            datas.append(d)
    skipped = len(decoded) - len(datas) - malformed
    if not datas:
        out = empty_batch()
        out.malformed, out.skipped = malformed, skipped
        return out
    ks = [d["k"] for d in datas]
    cols: dict[str, object] = {}
    for col, f in INT_FIELDS.items():
        cols[col] = _ints([k.get(f) for k in ks])
    for col, f in TEXT_FIELDS.items():
        cols[col] = _text([k.get(f) for k in ks])
    n = len(ks)
    symbols = _text([k.get("s") for k in ks])
    recv = np.asarray(received_ns, dtype=np.int64)[keep] if len(keep) < len(messages) else np.asarray(received_ns, dtype=np.int64)
    ot = cols["open_time"]
    if isinstance(ot, np.ndarray):
        ts = pd.array((ot * 1_000_000).view("datetime64[ns]"), dtype="datetime64[ns]").tz_localize("UTC")
    else:  # some open time is not an integer: those rows get NaT (normalize: unparseable_ts)
        otf = ot.to_numpy(dtype="float64", na_value=np.nan)
        ok = np.isfinite(otf) & (otf > 0) & (otf < 2**53)
        ns = np.where(ok, otf, 0).astype("int64") * 1_000_000
        ts = pd.array(np.where(ok, ns, np.iinfo("int64").min).view("datetime64[ns]"), dtype="datetime64[ns]")
        ts = ts.tz_localize("UTC")
    cols.update(
        ts=ts,
        symbol=symbols,
        timeframe=constant_text(timeframe, n, text_dtype()),
        source=constant_text(SOURCE, n, text_dtype()),
        fetched_at=pd.array(recv.view("datetime64[ns]"), dtype="datetime64[ns]").tz_localize("UTC"),
    )
    raw = pd.DataFrame({c: cols[c] for c in BINANCE_RAW_DTYPES}, index=pd.RangeIndex(n), copy=False)
    final = np.fromiter((k.get("x") is True for k in ks), dtype=bool, count=n)
    event = _ints([d.get("E") for d in datas])
    event_ms = event if isinstance(event, np.ndarray) else event.to_numpy(dtype="float64", na_value=0).astype("int64")
    conn = np.asarray(conns, dtype=np.int16)[keep] if len(keep) < len(messages) else np.asarray(conns, dtype=np.int16)
    return RawBatch(raw, final, event_ms, conn, malformed, skipped)
