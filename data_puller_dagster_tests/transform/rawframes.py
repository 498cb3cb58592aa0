"""Fixture files -> raw frames shaped exactly like the adapters' output (reusable by any test).

Why: transform tests must run on real candles, through the same raw layout the adapters produce
(strings exactly as sent, int64 ms open times, provenance columns), not on hand-made canonical frames.

Binance layout: open_time int64, open/high/low/close/volume string, close_time int64, quote_volume
string, trades int64, taker_buy_base/taker_buy_quote/ignore string, ts datetime64[ns, UTC], symbol,
timeframe, source, fetched_at. Twelve Data layout: datetime string, open/high/low/close/volume string
(volume <NA> for forex), ts, symbol, timeframe, source="twelvedata", fetched_at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_puller_dagster import timeframes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KLINE_FIELDS = [
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote", "ignore",
]  # fmt: skip
STRING_FIELDS = ["open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote", "ignore"]


def _late_fetch(ts: pd.Series, days: int = 1) -> pd.Series:
    """A fetch time after every candle closed (fixtures are history)."""
    return pd.Series(ts.max() + pd.Timedelta(days=days), index=ts.index).astype("datetime64[ns, UTC]")


def binance_raw_from_rows(
    rows: pd.DataFrame,
    symbol: str,
    timeframe: str,
    source: str = "binance",
    fetched_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """12-field kline rows (any dtypes) -> Binance raw frame. Open time magnitude is kept (ms or µs)."""
    out = pd.DataFrame(index=rows.index)
    out["open_time"] = rows["open_time"].astype("int64")
    for c in ("open", "high", "low", "close", "volume"):
        out[c] = rows[c].astype("string")
    out["close_time"] = rows["close_time"].astype("int64")
    out["quote_volume"] = rows["quote_volume"].astype("string")
    out["trades"] = rows["trades"].astype("int64")
    for c in ("taker_buy_base", "taker_buy_quote", "ignore"):
        out[c] = rows[c].astype("string")
    ot = out["open_time"].to_numpy()
    unit = np.where(ot >= 10**14, "us", "ms")
    ns = np.where(unit == "us", ot * 1_000, ot * 1_000_000)
    out["ts"] = pd.Series(ns.view("datetime64[ns]"), index=rows.index).dt.tz_localize("UTC")
    out["symbol"] = pd.Series(symbol, index=rows.index, dtype="string")
    out["timeframe"] = pd.Series(timeframe, index=rows.index, dtype="string")
    out["source"] = pd.Series(source, index=rows.index, dtype="string")
    if fetched_at is None:
        out["fetched_at"] = _late_fetch(out["ts"])
    else:
        out["fetched_at"] = pd.Series(pd.Timestamp(fetched_at), index=rows.index).astype("datetime64[ns, UTC]")
    return out.reset_index(drop=True)


def binance_klines_json(path: Path, symbol: str, timeframe: str, **kw: object) -> pd.DataFrame:
    """A recorded `/api/v3/klines` body (list of 12-field lists)."""
    rows = pd.DataFrame(json.loads(path.read_text()), columns=KLINE_FIELDS)
    return binance_raw_from_rows(rows, symbol, timeframe, **kw)


def binance_archive_csv(path: Path, symbol: str, timeframe: str, **kw: object) -> pd.DataFrame:
    """A data.binance.vision archive CSV (no header, 12 columns), strings kept exactly as in the file."""
    rows = pd.read_csv(path, header=None, names=KLINE_FIELDS, dtype=str)
    return binance_raw_from_rows(rows, symbol, timeframe, source="binance_archive", **kw)


def binance_cdd_csv(path: Path, symbol: str = "BTCUSDT", timeframe: str = "1h", **kw: object) -> pd.DataFrame:
    """A CryptoDataDownload export of Binance candles (descending order kept, as the file has it).

    CDD drops the taker columns; they become <NA>, which normalize never reads.
    """
    f = pd.read_csv(path, dtype=str)
    step_ms = timeframes.seconds(timeframe) * 1000
    rows = pd.DataFrame(
        {
            "open_time": f["unix"].astype("int64"),
            "open": f["open"],
            "high": f["high"],
            "low": f["low"],
            "close": f["close"],
            "volume": f[f.columns[7]],
            "close_time": f["unix"].astype("int64") + step_ms - 1,
            "quote_volume": f[f.columns[8]],
            "trades": f["tradecount"].astype("int64"),
            "taker_buy_base": pd.NA,
            "taker_buy_quote": pd.NA,
            "ignore": "0",
        }
    )
    return binance_raw_from_rows(rows, symbol, timeframe, **kw)


def freqtrade_json_raw(path: Path, symbol: str, timeframe: str, **kw: object) -> pd.DataFrame:
    """freqtrade `[open_ms, o, h, l, c, v]` float rows -> Binance raw frame (8-decimal strings, like Binance).

    Trades are unknown in this file: they are written as 0 for zero-volume candles and 1 otherwise
    (only zero/non-zero matters to the transforms; quote volume likewise is close * volume)."""
    a = np.asarray(json.loads(path.read_text()), dtype="float64")
    fmt = np.vectorize(lambda x: f"{x:.8f}", otypes=[object])  # test helper only, 3.5k rows
    step_ms = timeframes.seconds(timeframe) * 1000
    rows = pd.DataFrame(
        {
            "open_time": a[:, 0].astype("int64"),
            "open": fmt(a[:, 1]),
            "high": fmt(a[:, 2]),
            "low": fmt(a[:, 3]),
            "close": fmt(a[:, 4]),
            "volume": fmt(a[:, 5]),
            "close_time": a[:, 0].astype("int64") + step_ms - 1,
            "quote_volume": fmt(a[:, 4] * a[:, 5]),
            "trades": (a[:, 5] > 0).astype("int64"),
            "taker_buy_base": "0",
            "taker_buy_quote": "0",
            "ignore": "0",
        }
    )
    return binance_raw_from_rows(rows, symbol, timeframe, **kw)


def twelvedata_raw_from_csv(
    path: Path,
    symbol: str,
    timeframe: str,
    *,
    keep_volume: bool = True,
    fetched_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """backtesting.py CSV (`,Open,High,Low,Close,Volume`, naive datetimes) -> Twelve Data raw frame.

    The first column is already Twelve Data's text form ("YYYY-MM-DD HH:MM:SS" or "YYYY-MM-DD").
    `keep_volume=False` gives the forex shape (volume <NA>)."""
    f = pd.read_csv(path, dtype=str)
    out = pd.DataFrame({"datetime": f[f.columns[0]].astype("string")})
    for src, dst in (("Open", "open"), ("High", "high"), ("Low", "low"), ("Close", "close")):
        out[dst] = f[src].astype("string")
    out["volume"] = f["Volume"].astype("string") if keep_volume else pd.Series(pd.NA, index=f.index, dtype="string")
    out["ts"] = pd.to_datetime(out["datetime"], format="ISO8601", errors="coerce").dt.tz_localize("UTC")
    out["symbol"] = pd.Series(symbol, index=f.index, dtype="string")
    out["timeframe"] = pd.Series(timeframe, index=f.index, dtype="string")
    out["source"] = pd.Series("twelvedata", index=f.index, dtype="string")
    if fetched_at is None:
        out["fetched_at"] = _late_fetch(out["ts"], days=2)
    else:
        out["fetched_at"] = pd.Series(pd.Timestamp(fetched_at), index=f.index).astype("datetime64[ns, UTC]")
    return out


def btcusdt_1h() -> pd.DataFrame:
    return binance_cdd_csv(FIXTURES / "binance" / "Binance_BTCUSDT_1h_2020-12_2021-05.cdd.csv")


def eurusd_1h(keep_volume: bool = False) -> pd.DataFrame:
    return twelvedata_raw_from_csv(FIXTURES / "backtesting_py" / "EURUSD.csv", "EUR/USD", "1h", keep_volume=keep_volume)


def goog_1d() -> pd.DataFrame:
    return twelvedata_raw_from_csv(FIXTURES / "backtesting_py" / "GOOG.csv", "GOOG", "1d")


def xrpeth(timeframe: str) -> pd.DataFrame:
    return freqtrade_json_raw(FIXTURES / "freqtrade" / f"XRP_ETH-{timeframe}.json", "XRPETH", timeframe)
