"""Real fixture candle series as canonical frames, for indicator and dataset tests.

Why a direct loader (not the raw -> normalize path): these tests are about what happens *after*
normalization, so they start from the canonical contract itself (transform/canonical.py), built straight
from the recorded files with their real values, gaps and orderings resolved the way normalization would
(ascending ts, one row per candle).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_puller_dagster.transform.canonical import coerce_canonical

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _canonical(
    ts: pd.Series,
    ohlcv: pd.DataFrame,
    *,
    symbol: str,
    asset_class: str,
    timeframe: str,
    source: str,
    trades: pd.Series | None = None,
    quote_volume: pd.Series | None = None,
) -> pd.DataFrame:
    n = len(ts)
    df = pd.DataFrame(
        {
            "ts": pd.DatetimeIndex(ts).tz_convert("UTC")
            if pd.DatetimeIndex(ts).tz
            else pd.DatetimeIndex(ts).tz_localize("UTC"),
            "symbol": symbol,
            "asset_class": asset_class,
            "timeframe": timeframe,
            "source": source,
            "open": ohlcv["open"].to_numpy(float),
            "high": ohlcv["high"].to_numpy(float),
            "low": ohlcv["low"].to_numpy(float),
            "close": ohlcv["close"].to_numpy(float),
            "volume": ohlcv["volume"].to_numpy(float),
            "trades": pd.array(trades.to_numpy() if trades is not None else [pd.NA] * n, dtype="Int64"),
            "quote_volume": quote_volume.to_numpy(float) if quote_volume is not None else np.nan,
            "fetched_at": pd.Timestamp("2025-01-01", tz="UTC"),
            "is_final": True,
        }
    )
    df = coerce_canonical(df)
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


def btcusdt_1h() -> pd.DataFrame:
    """Binance BTCUSDT 1h, 2020-12-01 .. 2021-05-31: 4357 candles, 6 real gaps (11 missing hours)."""
    raw = pd.read_csv(FIXTURES / "binance" / "Binance_BTCUSDT_1h_2020-12_2021-05.cdd.csv")
    return _canonical(
        pd.to_datetime(raw["unix"], unit="ms", utc=True),
        raw.rename(columns={"Volume BTC": "volume"}),
        symbol="BTCUSDT",
        asset_class="crypto",
        timeframe="1h",
        source="binance",
        trades=raw["tradecount"],
        quote_volume=raw["Volume USDT"],
    )


def eurusd_1h() -> pd.DataFrame:
    """EUR/USD 1h (5000 candles, weekend gaps) as a forex feed: volume absent (NaN), like Twelve Data's."""
    raw = pd.read_csv(FIXTURES / "backtesting_py" / "EURUSD.csv", index_col=0, parse_dates=True)
    ohlcv = raw.rename(columns=str.lower).assign(volume=np.nan)
    return _canonical(
        pd.Series(raw.index),
        ohlcv,
        symbol="EUR/USD",
        asset_class="forex",
        timeframe="1h",
        source="twelvedata",
    )


def xrpeth_1m() -> pd.DataFrame:
    """Binance XRP/ETH 1m, 3560 continuous candles incl. 1091 zero-volume fillers."""
    rows = json.loads((FIXTURES / "freqtrade" / "XRP_ETH-1m.json").read_text())
    raw = pd.DataFrame(rows, columns=["open_ms", "open", "high", "low", "close", "volume"])
    return _canonical(
        pd.to_datetime(raw["open_ms"].astype("int64"), unit="ms", utc=True),
        raw,
        symbol="XRPETH",
        asset_class="crypto",
        timeframe="1m",
        source="binance",
    )
