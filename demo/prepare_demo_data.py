"""Build the offline demo's market data from the real series bundled in the test fixtures.

Run once (its output is committed under demo/market_data); kept so anyone can see and redo exactly
how the demo files were derived:

- Binance archive layout (data.binance.vision): `binance/data/spot/daily/klines/<SYM>/<INT>/
  <SYM>-<INT>-<DAY>.zip` + `.zip.CHECKSUM` (sha256), 12-column header-less CSV, ms timestamps.
  * BTCUSDT 1h, 2020-12-01..2021-05-31, from the CryptoDataDownload export of Binance candles (with its
    six real maintenance gaps). That export has no taker-buy volumes: those two columns are left empty.
  * XRPETH 1m, 2019-10-11..2019-10-12, from freqtrade's Binance candles; trades, quote volume and taker
    buy volumes are aggregated from freqtrade's real Binance aggTrades of the same days (SOURCES.md: the
    aggregation reproduces every non-zero-volume candle exactly). Zero-trade minutes keep trades=0.
- Twelve Data `/time_series` response bodies (`twelvedata/time_series/<KEY>/<interval>.json`, order asc,
  timezone UTC, all values strings):
  * EUR/USD 1h, 2017-04-19..2018-02-07 (backtesting.py sample; its tick volume is dropped because Twelve
    Data forex has no volume; its tz-naive clock is taken as UTC).
  * GOOG 1day, 2004-08-19..2013-03-01 (backtesting.py sample, pre-2014-split prices).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
FIX = ROOT.parent / "data_puller_dagster_tests" / "fixtures"
OUT = ROOT / "market_data"
BINANCE_COLS = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
                "trades", "taker_buy_base", "taker_buy_quote", "ignore"]


def _fmt(x: pd.Series, decimals: int = 8) -> pd.Series:
    return x.map(lambda v: f"{v:.{decimals}f}")  # formatting strings only, once per demo build


def write_archive(df: pd.DataFrame, symbol: str, interval: str) -> int:
    """One zip per UTC day, with its CHECKSUM file, exactly like data.binance.vision."""
    base = OUT / "binance" / "data" / "spot" / "daily" / "klines" / symbol / interval
    base.mkdir(parents=True, exist_ok=True)
    days = pd.to_datetime(df["open_time"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    n = 0
    for day, rows in df.groupby(days, sort=True):
        name = f"{symbol}-{interval}-{day}"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo(f"{name}.csv", date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, rows[BINANCE_COLS].to_csv(header=False, index=False, lineterminator="\n"))
        data = buf.getvalue()
        (base / f"{name}.zip").write_bytes(data)
        (base / f"{name}.zip.CHECKSUM").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}.zip\n")
        n += 1
    return n


def btcusdt_1h() -> pd.DataFrame:
    raw = pd.read_csv(FIX / "binance" / "Binance_BTCUSDT_1h_2020-12_2021-05.cdd.csv", dtype=str)
    raw = raw.iloc[::-1].reset_index(drop=True)  # the export is newest first
    ot = raw["unix"].astype("int64")
    return pd.DataFrame({
        "open_time": ot, "open": raw["open"], "high": raw["high"], "low": raw["low"], "close": raw["close"],
        "volume": raw["Volume BTC"], "close_time": ot + 3_600_000 - 1, "quote_volume": raw["Volume USDT"],
        "trades": raw["tradecount"], "taker_buy_base": "", "taker_buy_quote": "", "ignore": "0",
    })


def xrpeth_1m() -> pd.DataFrame:
    candles = pd.DataFrame(json.loads((FIX / "freqtrade" / "XRP_ETH-1m.json").read_text()),
                           columns=["open_time", "open", "high", "low", "close", "volume"])
    with gzip.open(FIX / "freqtrade" / "XRP_ETH-trades.json.gz", "rt") as f:
        info = pd.DataFrame([t["info"] for t in json.load(f)])
    info["minute"] = (info["T"] // 60_000) * 60_000
    info["qty"] = info["q"].astype(float)
    info["quote"] = info["qty"] * info["p"].astype(float)
    info["trades"] = info["l"] - info["f"] + 1
    info["taker_buy"] = np.where(~info["m"], info["qty"], 0.0)  # m: buyer is maker -> taker sold
    info["taker_buy_quote"] = np.where(~info["m"], info["quote"], 0.0)
    agg = info.groupby("minute")[["trades", "quote", "taker_buy", "taker_buy_quote"]].sum()
    c = candles.join(agg, on="open_time")
    c[["trades", "quote", "taker_buy", "taker_buy_quote"]] = c[["trades", "quote", "taker_buy",
                                                              "taker_buy_quote"]].fillna(0)
    c = c[(c["open_time"] >= 1570752000000) & (c["open_time"] < 1570924800000)]  # 10-11 and 10-12 only
    return pd.DataFrame({
        "open_time": c["open_time"].astype("int64"), "open": _fmt(c["open"]), "high": _fmt(c["high"]),
        "low": _fmt(c["low"]), "close": _fmt(c["close"]), "volume": _fmt(c["volume"]),
        "close_time": c["open_time"].astype("int64") + 59_999, "quote_volume": _fmt(c["quote"]),
        "trades": c["trades"].astype("int64"), "taker_buy_base": _fmt(c["taker_buy"]),
        "taker_buy_quote": _fmt(c["taker_buy_quote"]), "ignore": "0",
    })


def twelvedata_file(csv: str, key: str, symbol: str, interval: str, meta: dict, volume: bool, daily: bool) -> int:
    df = pd.read_csv(FIX / "backtesting_py" / csv, index_col=0, dtype=str)
    ts = pd.to_datetime(df.index)
    values = pd.DataFrame({
        "datetime": ts.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M:%S"),
        "open": df["Open"].values, "high": df["High"].values, "low": df["Low"].values, "close": df["Close"].values,
    })
    if volume:
        values["volume"] = df["Volume"].values
    body = {"meta": {"symbol": symbol, "interval": interval, **meta}, "values": values.to_dict("records"),
            "status": "ok"}
    path = OUT / "twelvedata" / "time_series" / key / f"{interval}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, separators=(",", ":")))
    return len(values)


def main() -> None:
    print("BTCUSDT 1h days:", write_archive(btcusdt_1h(), "BTCUSDT", "1h"))
    print("XRPETH 1m days:", write_archive(xrpeth_1m(), "XRPETH", "1m"))
    fx_meta = {"currency_base": "Euro", "currency_quote": "US Dollar", "type": "Physical Currency"}
    print("EUR/USD rows:", twelvedata_file("EURUSD.csv", "EURUSD", "EUR/USD", "1h", fx_meta, False, False))
    eq_meta = {"currency": "USD", "exchange_timezone": "America/New_York", "exchange": "NASDAQ",
               "mic_code": "XNGS", "type": "Common Stock"}
    print("GOOG rows:", twelvedata_file("GOOG.csv", "GOOG", "GOOG", "1day", eq_meta, True, True))


if __name__ == "__main__":
    main()
